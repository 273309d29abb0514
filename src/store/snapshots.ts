/**
 * Snapshots registered with the store: `snap`, `run` and `shell` (and `watch --shell`) create qcow2 files
 * backed by store objects, anywhere on disk. gc cannot find a snapshot outside the project by walking it,
 * so each is registered here (one small file per snapshot, no lock needed) and gc keeps the backing chain
 * of every registered snapshot that still exists. Registrations of deleted snapshots are dropped by gc.
 */
import { sha256Hex } from "../util/digest.js";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Store } from "./store.js";
import { writeFileAtomic } from "./durable.js";
import { pathExists } from "../util/fs.js";

function registryDir(store: Store): string {
  return path.join(store.internalDir, "snapshots");
}

function entryFile(store: Store, file: string): string {
  return path.join(registryDir(store), `${sha256Hex(file).slice(0, 24)}.json`);
}

/** Record that `file` (a qcow2 snapshot) may be backed by an object of this store. */
export async function registerSnapshot(store: Store, file: string): Promise<void> {
  const abs = path.resolve(file);
  await fs.mkdir(registryDir(store), { recursive: true });
  await writeFileAtomic(entryFile(store, abs), JSON.stringify({ path: abs, registeredAt: new Date().toISOString() }) + "\n");
}

/** Drop the registration of `file` (the snapshot was removed by its owner). */
export async function unregisterSnapshot(store: Store, file: string): Promise<void> {
  await fs.rm(entryFile(store, path.resolve(file)), { force: true });
}

/** Registered snapshot files that still exist; with `prune`, registrations of vanished files are removed. */
export async function registeredSnapshots(store: Store, opts: { prune: boolean }): Promise<string[]> {
  let names: string[];
  try {
    names = await fs.readdir(registryDir(store));
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const n of names) {
    if (!n.endsWith(".json")) continue;
    const f = path.join(registryDir(store), n);
    let p: string | undefined;
    try {
      p = (JSON.parse(await fs.readFile(f, "utf8")) as { path?: string }).path;
    } catch {
      p = undefined;
    }
    if (p && (await pathExists(p))) out.push(p);
    else if (opts.prune) await fs.rm(f, { force: true });
  }
  return out;
}
