/**
 * A rig that writes a temporary fixture project from a description object (files, symlinks, modes),
 * plus an in-memory StoreView so plan tests need no real store.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import type { NodeKey, Plan, PlanNode } from "../../src/model/plan.js";
import type { NodeRecord, StoreView } from "../../src/model/store.js";
import { DbuildError } from "../../src/util/errors.js";
import type { Problem } from "../../src/util/errors.js";

/** The problems `fn` throws as a DbuildError (it must throw one). */
export async function problemsOf(fn: () => Promise<unknown>): Promise<Problem[]> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof DbuildError) return [...e.problems];
    throw e;
  }
  throw new Error("expected a DbuildError");
}

/** A file's content, a file with a mode, a symlink, or an (empty) directory. */
export type Entry = string | { content: string; mode?: number } | { symlink: string } | { dir: true };
export type Description = Record<string, Entry>;

export interface Fixture {
  root: string;
  /** Absolute path of a project-relative path. */
  path(rel: string): string;
  write(rel: string, entry: Entry): Promise<void>;
  remove(rel: string): Promise<void>;
  cleanup(): Promise<void>;
}

async function writeEntry(root: string, rel: string, e: Entry): Promise<void> {
  const abs = path.join(root, rel);
  await fs.mkdir(path.dirname(abs), { recursive: true });
  if (typeof e === "string") {
    await fs.rm(abs, { force: true });
    await fs.writeFile(abs, e);
  } else if ("symlink" in e) {
    await fs.rm(abs, { force: true, recursive: true });
    await fs.symlink(e.symlink, abs);
  } else if ("dir" in e) {
    await fs.mkdir(abs, { recursive: true });
  } else {
    await fs.rm(abs, { force: true });
    await fs.writeFile(abs, e.content);
    if (e.mode !== undefined) await fs.chmod(abs, e.mode);
  }
}

export async function writeFixture(desc: Description, prefix = "dbuild-fixture-", parent = os.tmpdir()): Promise<Fixture> {
  const root = await fs.realpath(await fs.mkdtemp(path.join(parent, prefix)));
  for (const [rel, e] of Object.entries(desc)) await writeEntry(root, rel, e);
  return {
    root,
    path: (rel) => path.join(root, rel),
    write: (rel, e) => writeEntry(root, rel, e),
    remove: (rel) => fs.rm(path.join(root, rel), { recursive: true, force: true }),
    cleanup: () => fs.rm(root, { recursive: true, force: true }),
  };
}

export const exe = (content: string): Entry => ({ content, mode: 0o755 });
export const addlayer = (): Entry => ({ symlink: "../../utils/addlayer.sh" });

/**
 * A small Demobuilder-style project: base `micro`, intermediates `web` and `db`, finalizing
 * `openstack` and `vagrant`, and targets sharing prefixes.
 */
export function demoProject(extra: Description = {}): Description {
  return {
    "utils/addlayer.sh": exe("#!/bin/sh\nexec dbuild addlayer \"$@\"\n"),
    "layers/micro/install": exe("#!/bin/sh\necho build the micro base\n"),
    "layers/micro/README": "the micro test guest\n",
    "layers/web/install": addlayer(),
    "layers/web/target/install": exe("#!/bin/sh\necho web\n"),
    "layers/web/target/etc/httpd.conf": "Listen 80\n",
    "layers/db/install": addlayer(),
    "layers/db/target/install": exe("#!/bin/sh\necho db\n"),
    "layers/openstack/layer.yaml": "kind: finalizing\nformat: qcow2\n",
    "layers/openstack/convert": exe("#!/bin/sh\nqemu-img convert \"$@\"\n"),
    "layers/openstack/install": addlayer(),
    "layers/openstack/target/install": exe("#!/bin/sh\necho cloud-init\n"),
    "layers/vagrant/layer.yaml": "kind: finalizing\n",
    "layers/vagrant/install": addlayer(),
    "layers/vagrant/target/install": exe("#!/bin/sh\necho vagrant\n"),
    "targets/micro:web:openstack": "MEM=2048\n",
    "targets/micro:web:vagrant": "# a comment\n\nCPUS=2\n",
    "targets/micro:db:openstack": "",
    ...extra,
  };
}

/** In-memory StoreView: records by key, and which key each build/STACK.qcow2 view shows. */
export class FakeStore implements StoreView {
  readonly records = new Map<string, NodeRecord>();
  readonly views = new Map<string, NodeKey>();
  readonly durations = new Map<string, number>();
  /** Recorded passes of layer tests (absent: none recorded). */
  testsPassed?: (key: NodeKey, digest: string) => Promise<boolean>;
  constructor(readonly buildDir: string) {}

  viewPath(stack: string): string {
    return path.join(this.buildDir, `${stack}.qcow2`);
  }
  record(key: NodeKey): Promise<NodeRecord | undefined> {
    return Promise.resolve(this.records.get(key));
  }
  currentRecord(stack: string): Promise<NodeRecord | undefined> {
    const k = this.views.get(stack);
    return Promise.resolve(k === undefined ? undefined : this.records.get(k));
  }
  viewShows(stack: string, key: NodeKey): Promise<boolean> {
    return Promise.resolve(this.views.get(stack) === key);
  }
  lastDuration(stack: string): Promise<number | undefined> {
    return Promise.resolve(this.durations.get(stack));
  }

  /** Pretend a node was built and published. */
  publish(n: PlanNode, duration = 10): void {
    const parentKey = n.inputs.parent ? (n.inputs.parent as NodeKey) : null;
    this.records.set(n.key, {
      key: n.key,
      stack: n.stack,
      layer: n.layer,
      parentKey,
      inputs: { ...n.inputs },
      object: `${n.key}.qcow2`,
      duration,
      builtAt: new Date(0).toISOString(),
    });
    this.views.set(n.stack, n.key);
    this.durations.set(n.stack, duration);
  }
  publishAll(plan: Plan): void {
    for (const n of plan.nodes) this.publish(n);
  }
  /** Pretend the user deleted build/STACK.qcow2. */
  deleteView(stack: string): void {
    this.views.delete(stack);
  }
}
