/**
 * Garbage collection: remove store objects no target needs, never one that a kept image, a snapshot
 * file in the project or a registered snapshot anywhere (snap, run, shell) is backed by.
 *
 * Kept: the objects of every node of every target's current plan (their keys' records), plus whatever
 * those objects and the project's snapshot files are really backed by (read from the qcow2 headers,
 * not from records: a child keeps the exact parent object it was built on, even after that parent
 * was rebuilt under a new name).
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { NodeKey } from "../model/plan.js";
import { qcow2Backing } from "./qcow2.js";
import { registeredSnapshots } from "./snapshots.js";

import type { Store } from "./store.js";
import { WarmStore } from "./warm.js";

export interface GcResult {
  removed: { file: string; bytes: number }[];
  freedBytes: number;
  kept: number;
}

/** Regular files under `dir` that are qcow2 images (snapshots), skipping the store and dependencies. */
async function findSnapshots(dir: string, skip: Set<string>, out: string[], depth = 0): Promise<void> {
  if (depth > 6) return;
  let entries: import("node:fs").Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (skip.has(p) || e.name === "node_modules" || e.name === ".git") continue;
    if (e.isDirectory()) await findSnapshots(p, skip, out, depth + 1);
    else if (e.isFile() && (await qcow2Backing(p)) !== undefined) out.push(p);
  }
}

export async function collectGarbage(
  store: Store,
  projectRoot: string,
  neededKeys: Iterable<NodeKey>,
  opts: { dryRun: boolean },
): Promise<GcResult> {
  const keep = new Set<string>();
  const keepChain = async (file: string): Promise<void> => {
    let cur: string | undefined = file;
    while (cur && path.dirname(cur) === store.objectsDir && !keep.has(path.basename(cur))) {
      keep.add(path.basename(cur));
      cur = await qcow2Backing(cur);
    }
  };
  const records = await store.allRecords();
  const needed = new Set<string>(neededKeys);
  for (const rec of records) {
    if (!needed.has(rec.key)) continue;
    await keepChain(store.objectPath(rec.object));
    if (rec.deliverable) keep.add(rec.deliverable.object);
  }
  // Objects the views of needed stacks show (a view may show an older build than the record's object).
  for (const rec of records) {
    if (!needed.has(rec.key)) continue;
    const shown = await store.viewObject(rec.stack);
    if (shown) await keepChain(store.objectPath(shown));
  }
  // Snapshot files anywhere in the project (and failed disks kept in the build dir).
  const snaps: string[] = [];
  await findSnapshots(projectRoot, new Set([store.internalDir]), snaps);
  if (!store.buildDir.startsWith(projectRoot + path.sep)) await findSnapshots(store.buildDir, new Set([store.internalDir]), snaps);
  // Snapshots registered by snap, run and shell, wherever they are (outside the project too).
  snaps.push(...(await registeredSnapshots(store, { prune: !opts.dryRun })));
  for (const s of snaps) {
    const b = await qcow2Backing(s);
    if (b) await keepChain(b);
  }
  const removed: GcResult["removed"] = [];
  // Warm snapshots of images that go (a snapshot's boot overlay is backed by its image), and leftovers.
  for (const w of await new WarmStore(store.internalDir).prune((o) => keep.has(o), opts.dryRun)) {
    removed.push({ file: w.dir, bytes: w.bytes });
  }
  let objects: string[] = [];
  try {
    objects = await fs.readdir(store.objectsDir);
  } catch {
    objects = [];
  }
  for (const name of objects) {
    if (keep.has(name) || name === ".dbuild") continue;
    const file = store.objectPath(name);
    const st = await fs.stat(file);
    removed.push({ file, bytes: st.blocks * 512 });
    if (!opts.dryRun) {
      await fs.rm(file, { force: true });
      await fs.rm(path.join(store.sumsDir, `${name}.json`), { force: true });
    }
  }
  if (!opts.dryRun) {
    // Records whose object is gone, and views/deliverable links left dangling.
    for (const rec of records) {
      if (!keep.has(rec.object)) await store.removeRecord(rec.key);
    }
    await removeDanglingLinks(store.buildDir, store.internalDir);
    // Recorded test passes of images that are gone.
    const live = new Set<string>(records.filter((r) => keep.has(r.object)).map((r) => r.key));
    for (const f of await fs.readdir(store.testsDir).catch(() => [] as string[])) {
      if (!live.has(f.split("-")[0] ?? "")) await fs.rm(path.join(store.testsDir, f), { force: true });
    }
  }
  return { removed, freedBytes: removed.reduce((a, r) => a + r.bytes, 0), kept: keep.size };
}

async function removeDanglingLinks(dir: string, skip: string): Promise<void> {
  for (const e of await fs.readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (p === skip) continue;
    if (e.isSymbolicLink()) {
      try {
        await fs.stat(p);
      } catch {
        await fs.rm(p, { force: true });
      }
    } else if (e.isDirectory()) {
      await removeDanglingLinks(p, skip);
    }
  }
}
