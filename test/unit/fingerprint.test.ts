import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadProject } from "../../src/project/load.js";
import { canonicalJson, layerKeyer, nodeKey, nodeKeyFrom, nodeScalars } from "../../src/plan/fingerprint.js";
import type { NodeKey } from "../../src/model/plan.js";
import { makePlan } from "../../src/plan/planner.js";
import { StatCache } from "../../src/plan/statcache.js";
import type { Plan } from "../../src/model/plan.js";
import { DbuildError } from "../../src/util/errors.js";
import { FakeStore, demoProject, exe, writeFixture } from "../helpers/fixture.js";
import type { Description, Fixture } from "../helpers/fixture.js";

let fx: Fixture;
afterEach(async () => {
  await fx.cleanup();
});

async function plan(opts: { statCache?: StatCache } = {}): Promise<Plan> {
  const project = await loadProject(fx.root);
  return makePlan(project, "all", new FakeStore(project.settings.buildDir), opts);
}

async function keys(): Promise<Record<string, string>> {
  return Object.fromEntries((await plan()).nodes.map((n) => [n.stack, n.key]));
}

/** Stacks whose key differs between two key maps (stacks only in one side count as changed). */
function changed(a: Record<string, string>, b: Record<string, string>): string[] {
  return [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((s) => a[s] !== b[s]).sort();
}

const ALL = ["micro", "micro:db", "micro:db:openstack", "micro:web", "micro:web:openstack", "micro:web:vagrant"];
const WEB = ["micro:web", "micro:web:openstack", "micro:web:vagrant"];

async function setup(extra: Description = {}): Promise<Record<string, string>> {
  fx = await writeFixture(demoProject(extra));
  return keys();
}

describe("fingerprints", () => {
  it("are deterministic sha256 keys over a canonical manifest", async () => {
    const k = await setup();
    expect(Object.keys(k).sort()).toEqual(ALL);
    for (const v of Object.values(k)) expect(v).toMatch(/^[0-9a-f]{64}$/);
    expect(await keys()).toEqual(k);
    expect(canonicalJson({ b: "1", a: "2" })).toBe('{"a":"2","b":"1"}');
    expect(nodeKey({ b: "1", a: "2" })).toBe(nodeKey({ a: "2", b: "1" }));
  });

  it("canonical JSON is JSON.stringify of the sorted object, escapes and index-like keys included", () => {
    const sorted = (m: Record<string, string>): string => JSON.stringify(Object.fromEntries(Object.keys(m).sort().map((k) => [k, m[k]])));
    const manifests: Record<string, string>[] = [{}, { "file:a\"b": "x\ny", "dir:\u0001": "dir", "link:é": "../ü" }, { "10": "a", "9": "b", z: "c", "": "d" }, { "setting:NAME": 'q"u' }, { a: undefined as unknown as string, b: "1" }];
    for (const m of manifests) {
      expect(canonicalJson(m)).toBe(sorted(m));
    }
  });

  it("a layer's keyer gives every node the key nodeKeyFrom gives it, byte for byte", () => {
    const files = "f".repeat(64);
    const parents: (NodeKey | null)[] = [null, "a".repeat(64) as NodeKey];
    const settingsList: Record<string, string>[] = [{}, { MEM: "2048", CPUS: "2", NAME: "micro:web:openstack" }, { ZED: 'a "quoted" \\ value', A_1: "" }];
    for (const kind of ["base", "intermediate", "finalizing"] as const) {
      for (const epoch of [undefined, "2", 'e"p']) {
        const keyer = layerKeyer({ kind, layer: "web", ...(epoch !== undefined ? { epoch } : {}) }, files);
        for (const parentKey of parents) {
          for (const settings of settingsList) {
            for (const project of [undefined, { X: "1" }]) {
              const scalars = nodeScalars({ kind, layer: "web", parentKey, settings, ...(epoch !== undefined ? { epoch } : {}), ...(project ? { project } : {}) });
              expect(keyer(parentKey, settings, project)).toBe(nodeKeyFrom(scalars, files));
            }
          }
        }
      }
    }
  });

  it("ignore editors' swap, backup and lock files (rsync does not copy them either)", async () => {
    const k = await setup();
    for (const f of ["layers/web/target/.install.swp", "layers/web/target/install~", "layers/web/target/.#install", "layers/micro/4913"]) {
      await fs.writeFile(fx.path(f), "editor noise");
    }
    expect(changed(k, await keys())).toEqual([]);
    await fs.writeFile(fx.path("layers/web/target/notes.txt"), "a real file");
    expect(changed(k, await keys())).toEqual(WEB);
  });

  it("ignore timestamps: touch changes no key", async () => {
    const k = await setup();
    const later = new Date(Date.now() + 3600_000);
    for (const f of ["layers/web/target/install", "layers/micro/install", "layers/openstack/convert", "layers/openstack/layer.yaml", "targets/micro:web:openstack"]) {
      await fs.utimes(fx.path(f), later, later);
    }
    expect(changed(k, await keys())).toEqual([]);
  });

  it("edit then revert gives the old keys back; the edit changes the layer and every descendant, nothing else", async () => {
    const k = await setup();
    const f = "layers/web/target/etc/httpd.conf";
    await fx.write(f, "Listen 8080\n");
    const edited = await keys();
    expect(changed(k, edited)).toEqual(WEB);
    await fx.write(f, "Listen 80\n");
    expect(await keys()).toEqual(k);
  });

  it("a base change propagates to every node", async () => {
    const k = await setup();
    await fx.write("layers/micro/README", "changed\n");
    expect(changed(k, await keys())).toEqual(ALL);
  });

  it("renaming a file or a layer changes keys", async () => {
    const k = await setup();
    await fs.rename(fx.path("layers/web/target/etc/httpd.conf"), fx.path("layers/web/target/etc/apache.conf"));
    expect(changed(k, await keys())).toEqual(WEB);

    await fs.rename(fx.path("layers/web/target/etc/apache.conf"), fx.path("layers/web/target/etc/httpd.conf"));
    await fs.rename(fx.path("layers/db"), fx.path("layers/database"));
    await fs.rename(fx.path("targets/micro:db:openstack"), fx.path("targets/micro:database:openstack"));
    const renamed = await keys();
    expect(renamed["micro:web"]).toBe(k["micro:web"]);
    // identical files, other name: a different stack
    expect(renamed["micro:database"]).toBeDefined();
    expect(Object.values(k)).not.toContain(renamed["micro:database"]);
    expect(Object.values(k)).not.toContain(renamed["micro:database:openstack"]);
  });

  it("chmod +x changes the key", async () => {
    const k = await setup();
    await fs.chmod(fx.path("layers/web/target/etc/httpd.conf"), 0o755);
    expect(changed(k, await keys())).toEqual(WEB);
    await fs.chmod(fx.path("layers/web/target/etc/httpd.conf"), 0o644);
    expect(await keys()).toEqual(k);
  });

  it("a retargeted symlink changes the key even when the contents are identical", async () => {
    const k = await setup({ "layers/web/target/a": "same\n", "layers/web/target/b": "same\n", "layers/web/target/link": { symlink: "a" } });
    await fx.write("layers/web/target/link", { symlink: "b" });
    expect(changed(k, await keys())).toEqual(WEB);
  });

  it("follows symlinks in target/ as rsync -L does: the content behind them counts", async () => {
    const k = await setup({ "shared/conf/x.conf": "x=1\n", "layers/web/target/conf": { symlink: "../../../shared/conf" } });
    await fx.write("shared/conf/x.conf", "x=2\n");
    expect(changed(k, await keys())).toEqual(WEB);
    await fx.write("shared/conf/y.conf", "new\n");
    const k3 = await keys();
    expect(changed(k, k3)).toEqual(WEB);
  });

  it("a targets/ value changes only its own node; a default changes the finalizing nodes that use it", async () => {
    const k = await setup();
    await fx.write("targets/micro:web:openstack", "MEM=4096\n");
    expect(changed(k, await keys())).toEqual(["micro:web:openstack"]);
    await fx.write("targets/micro:web:openstack", "MEM=2048\n");
    await fx.write("demobuild.yaml", "defaults: { mem: 3000 }\njobs: 7\ntimeouts: { install: 10 }\n");
    // micro:web:openstack sets MEM itself
    expect(changed(k, await keys())).toEqual(["micro:db:openstack", "micro:web:vagrant"]);
  });

  it("settings that only change how a build runs change no key", async () => {
    const k = await setup();
    await fx.write("demobuild.yaml", "jobs: 1\nmemoryBudget: 900\nbuildVm: { mem: 600 }\ntimeouts: { boot: 5 }\naccelerator: tcg\n");
    expect(changed(k, await keys())).toEqual([]);
  });

  it("an intermediate layer's README and other files outside target/ do not count; a base's do", async () => {
    const k = await setup();
    await fx.write("layers/web/README", "docs\n");
    await fx.write("layers/web/notes.txt", "scratch\n");
    expect(changed(k, await keys())).toEqual([]);
    await fx.write("layers/web/layer.yaml", "kind: intermediate\nmem: 768\n");
    expect(changed(k, await keys())).toEqual(WEB);
  });

  it("reports symlink loops and dangling symlinks in target/ with their path", async () => {
    fx = await writeFixture(demoProject({ "layers/web/target/etc/loop": { symlink: ".." }, "layers/db/target/gone": { symlink: "nowhere" } }));
    const err = await plan().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbuildError);
    const ps = (err as DbuildError).problems.map((p) => `${p.where} [${p.reason}]`).sort();
    expect(ps).toEqual(["layers/db/target/gone [dangling-symlink]", "layers/web/target/etc/loop [symlink-loop]"]);
  });
});

describe("stat cache", () => {
  it("never re-reads unchanged files, and notices content replaced behind the same size and mtime", async () => {
    fx = await writeFixture(demoProject());
    // Files written within the racy window are not trusted; let them age past it.
    await new Promise((r) => setTimeout(r, 150));
    const first = await plan();
    expect(first.hashStats!.hashed).toBe(first.hashStats!.files);
    expect(first.hashStats!.files).toBeGreaterThan(5);
    const cacheFile = StatCache.cachePath(path.join(fx.root, "build"));
    await fs.access(cacheFile);
    // plan writes nothing but its stat cache
    expect(await fs.readdir(path.join(fx.root, "build"))).toEqual([".dbuild"]);
    expect(await fs.readdir(path.join(fx.root, "build", ".dbuild"))).toEqual(["statcache.json"]);

    const cache = await StatCache.load(path.join(fx.root, "build"), fx.root);
    const read: string[] = [];
    cache.onHash = (p) => read.push(p);
    const second = await plan({ statCache: cache });
    expect(read).toEqual([]);
    expect(second.hashStats!.hashed).toBe(0);
    expect(second.nodes.map((n) => n.key)).toEqual(first.nodes.map((n) => n.key));

    // Same size, same mtime, different bytes: only ctime (and maybe inode) tell.
    const f = fx.path("layers/web/target/etc/httpd.conf");
    const st = await fs.stat(f);
    await fs.writeFile(f, "Listen 81\n");
    await fs.utimes(f, st.atime, st.mtime);
    const cache3 = await StatCache.load(path.join(fx.root, "build"), fx.root);
    const read3: string[] = [];
    cache3.onHash = (p) => read3.push(p);
    const third = await plan({ statCache: cache3 });
    expect(read3).toEqual(["layers/web/target/etc/httpd.conf"]);
    expect(third.nodes.find((n) => n.stack === "micro:web")!.key).not.toBe(first.nodes.find((n) => n.stack === "micro:web")!.key);
  });

  it("is written only when it changed, and drops vanished files", async () => {
    fx = await writeFixture(demoProject({ "layers/web/target/tmp.txt": "x\n" }));
    await new Promise((r) => setTimeout(r, 150));
    await plan();
    const cacheFile = StatCache.cachePath(path.join(fx.root, "build"));
    const m1 = (await fs.stat(cacheFile)).mtimeMs;
    await new Promise((r) => setTimeout(r, 20));
    await plan();
    expect((await fs.stat(cacheFile)).mtimeMs).toBe(m1);
    await fx.remove("layers/web/target/tmp.txt");
    await plan();
    const text = await fs.readFile(cacheFile, "utf8");
    expect(text).toContain('"install"');
    expect(text).not.toContain("tmp.txt");
  });

  it("keeps entries of layers a partial plan did not look at", async () => {
    fx = await writeFixture(demoProject());
    await new Promise((r) => setTimeout(r, 150));
    await plan();
    const project = await loadProject(fx.root);
    await makePlan(project, ["micro:db"], new FakeStore(project.settings.buildDir));
    const cache = await StatCache.load(path.join(fx.root, "build"), fx.root);
    const again = await makePlan(project, "all", new FakeStore(project.settings.buildDir), { statCache: cache });
    expect(again.hashStats!.hashed).toBe(0);
  });
});

describe("base layers", () => {
  it("count every file of the layer dir, symlinks followed and their target text too", async () => {
    const k = await setup({ "layers/micro/files/a": "a\n", "layers/micro/outside": { symlink: "../../shared/big" }, "shared/big": "1\n", "shared/other": "2\n" });
    await fx.write("shared/big", "2\n");
    const k2 = await keys();
    expect(changed(k, k2)).toEqual(ALL);
    // Same content behind another link text: still a different key (as for target/).
    await fx.write("layers/micro/outside", { symlink: "../../shared/other" });
    expect(changed(k2, await keys())).toEqual(ALL);
    const k3 = await keys();
    await fx.write("layers/micro/install", exe("#!/bin/sh\necho changed\n"));
    expect(changed(k3, await keys())).toEqual(ALL);
  });

  it("key a host install that is a symlink to a shared script by the script's content", async () => {
    const k = await setup({ "layers/micro/install": { symlink: "../../utils/mkbase.sh" }, "utils/mkbase.sh": exe("#!/bin/sh\necho one\n") });
    await fx.write("utils/mkbase.sh", exe("#!/bin/sh\necho two\n"));
    expect(changed(k, await keys())).toEqual(ALL);
  });

  it("key the files their inputs: globs match, and nothing else of the folder", async () => {
    const k = await setup({
      "layers/micro/layer.yaml": 'kind: base\ninputs: ["../../utils/*.sh"]\n',
      "utils/a.sh": exe("#!/bin/sh\n"),
      "utils/notes.txt": "x\n",
    });
    await fx.write("utils/notes.txt", "y\n");
    expect(changed(k, await keys())).toEqual([]);
    await fx.write("utils/a.sh", exe("#!/bin/sh\necho a\n"));
    const k2 = await keys();
    expect(changed(k, k2)).toEqual(ALL);
    const micro = (await plan()).nodes.find((n) => n.stack === "micro")!;
    expect(Object.keys(micro.inputs).filter((i) => i.startsWith("input:")).sort()).toEqual(["input:utils/a.sh", "input:utils/addlayer.sh"]);
    await fx.write("utils/b.sh", "#!/bin/sh\n");
    expect(changed(k2, await keys())).toEqual(ALL);
  });

  it("refuse an input outside the project, naming it", async () => {
    fx = await writeFixture(demoProject({ "layers/micro/layer.yaml": 'kind: base\ninputs: ["../../../elsewhere/*.sh"]\n' }));
    const err = await plan().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbuildError);
    expect((err as DbuildError).problems[0]).toMatchObject({ reason: "input-outside-project", where: "layers/micro/layer.yaml:2:10" });
    expect((err as DbuildError).problems[0]!.message).toContain("../../../elsewhere/*.sh");
  });

  it("refuse an input that a symlink leads out of the project, naming it", async () => {
    const outside = await fs.mkdtemp(path.join((await import("node:os")).tmpdir(), "dbuild-outside-"));
    try {
      await fs.writeFile(path.join(outside, "secret.sh"), "#!/bin/sh\n");
      fx = await writeFixture(demoProject({ "layers/micro/layer.yaml": 'kind: base\ninputs: ["../../utils/*.sh"]\n', "utils/ext.sh": { symlink: path.join(outside, "secret.sh") } }));
      const err = await plan().catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DbuildError);
      const p = (err as DbuildError).problems[0]!;
      expect(p).toMatchObject({ reason: "input-outside-project", where: "layers/micro/layer.yaml" });
      expect(p.message).toContain(path.join(fx.root, "utils/ext.sh"));
      expect(p.message).toContain(path.join(outside, "secret.sh"));
    } finally {
      await fs.rm(outside, { recursive: true, force: true });
    }
  });

  it("refuse inputs: on an intermediate layer (its scripts run in the VM)", async () => {
    fx = await writeFixture(demoProject({ "layers/web/layer.yaml": 'kind: intermediate\ninputs: ["../../utils/*.sh"]\n' }));
    const err = await plan().catch((e: unknown) => e);
    expect((err as DbuildError).problems[0]).toMatchObject({ reason: "layer-inputs-not-host", where: "layers/web/layer.yaml:2:9" });
  });
});

describe("finalizing layers", () => {
  it("key a convert script that is a symlink to a shared script by the script's content", async () => {
    const k = await setup({ "layers/openstack/convert": { symlink: "../../utils/convert.sh" }, "utils/convert.sh": exe("#!/bin/sh\necho one\n") });
    await fx.write("utils/convert.sh", exe("#!/bin/sh\necho two\n"));
    expect(changed(k, await keys())).toEqual(["micro:db:openstack", "micro:web:openstack"]);
  });

  it("do not key the addlayer.sh marker's content (dbuild never runs it)", async () => {
    const k = await setup();
    await fx.write("utils/addlayer.sh", exe("#!/bin/sh\necho edited\n"));
    expect(changed(k, await keys())).toEqual([]);
  });
});

describe("epoch:", () => {
  it("changes the key of the layer and of every node above it, and says so", async () => {
    const k = await setup();
    await fx.write("layers/web/layer.yaml", "kind: intermediate\nepoch: 2\n");
    const p = await plan();
    expect(changed(k, Object.fromEntries(p.nodes.map((n) => [n.stack, n.key])))).toEqual(WEB);
    expect(p.nodes.find((n) => n.stack === "micro:web")!.inputs.epoch).toBe("2");
  });
});
