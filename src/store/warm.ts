/**
 * Warm snapshots in the store: for a published image, the RAM state of a build VM that booted it and
 * the boot overlay that state belongs to, so later build VMs of its children resume instead of booting.
 *
 * Layout under .dbuild/warm/:
 *   <object>            -> <object>.<rand>   the snapshot in use for that image (a relative symlink;
 *                                              made with symlink(), which fails if one exists, so two
 *                                              builds saving at once cannot both install theirs)
 *   <object>.<rand>/boot.qcow2                 the boot overlay, backed by ../../objects/<object>
 *   <object>.<rand>/state                      the RAM state (QEMU migration stream)
 *   <object>.<rand>/meta.json                  what the state fits (memory, CPUs, QEMU, device set),
 *                                              the MAC and IP the guest had, the state's size; its
 *                                              mtime is the last use (LRU)
 *
 * A snapshot is local: the remote cache pushes objects and records only, never this folder.
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { pathExists } from "../util/fs.js";

/** What a saved state fits: a VM that differs in any of these cannot load it. */
export interface WarmIdentity {
  /** Object file name of the image the snapshot was booted from. */
  object: string;
  mem: number;
  cpus: number;
  /** `qemu-system-x86_64 --version` (first line). */
  qemu: string;
  /** The QEMU command line with per-run values blanked (vm/qemu.ts deviceSet). */
  devices: string;
}

export interface WarmMeta extends WarmIdentity {
  mac: string;
  ip: string;
  stateBytes: number;
  createdAt: string;
}

export interface WarmSnapshot {
  dir: string;
  boot: string;
  state: string;
  meta: WarmMeta;
}

export interface WarmEntry {
  object: string;
  dir: string;
  bytes: number;
  lastUsed: number;
}

export class WarmStore {
  readonly dir: string;

  constructor(internalDir: string) {
    this.dir = path.join(internalDir, "warm");
  }

  private link(object: string): string {
    return path.join(this.dir, object);
  }

  private async linkedDir(object: string): Promise<string | undefined> {
    try {
      return path.join(this.dir, await fs.readlink(this.link(object)));
    } catch {
      return undefined;
    }
  }

  /**
   * The usable snapshot of `want.object`, if any. One that exists but cannot be used is discarded and
   * the reason returned (the caller notes it and boots cold).
   */
  async find(want: WarmIdentity): Promise<{ snap?: WarmSnapshot; discarded?: string }> {
    const dir = await this.linkedDir(want.object);
    if (!dir) return {};
    const snap = { dir, boot: path.join(dir, "boot.qcow2"), state: path.join(dir, "state") };
    let reason: string | undefined;
    let meta: WarmMeta | undefined;
    try {
      meta = JSON.parse(await fs.readFile(path.join(dir, "meta.json"), "utf8")) as WarmMeta;
    } catch {
      reason = "its description (meta.json) is missing or unreadable";
    }
    if (meta) reason = mismatch(meta, want) ?? (await damage(snap, meta));
    if (reason || !meta) {
      await this.discard(want.object);
      return { discarded: reason };
    }
    const now = new Date();
    await fs.utimes(path.join(dir, "meta.json"), now, now).catch(() => undefined);
    return { snap: { ...snap, meta } };
  }

  /** The description of `object`'s snapshot, if one is installed (nothing is checked or discarded). */
  async peek(object: string): Promise<WarmMeta | undefined> {
    const dir = await this.linkedDir(object);
    if (!dir) return undefined;
    try {
      return JSON.parse(await fs.readFile(path.join(dir, "meta.json"), "utf8")) as WarmMeta;
    } catch {
      return undefined;
    }
  }

  /** A new, private folder for a snapshot being taken of `object` (install() publishes it). */
  async create(object: string): Promise<string> {
    await fs.mkdir(this.dir, { recursive: true });
    const dir = path.join(this.dir, `${object}.${randomBytes(4).toString("hex")}`);
    await fs.mkdir(dir);
    return dir;
  }

  /** Make `dir` the snapshot of `meta.object`. False if another one got there first (remove yours later). */
  async install(dir: string, meta: WarmMeta): Promise<boolean> {
    // Read-only, like published objects: every resumed VM's overlay is backed by boot.qcow2.
    for (const f of ["boot.qcow2", "state"]) await fs.chmod(path.join(dir, f), 0o444);
    await fs.writeFile(path.join(dir, "meta.json"), JSON.stringify(meta, null, 2) + "\n");
    try {
      await fs.symlink(path.basename(dir), this.link(meta.object));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
      throw e;
    }
  }

  /** Remove a folder from create() unless it was installed. */
  async removeUnlessInstalled(dir: string, object: string): Promise<void> {
    if ((await this.linkedDir(object)) === dir) return;
    await fs.rm(dir, { recursive: true, force: true });
  }

  /** Forget the snapshot of `object` (unlink first: a half-removed folder is never found). */
  async discard(object: string): Promise<void> {
    const dir = await this.linkedDir(object);
    await fs.rm(this.link(object), { force: true });
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  }

  /** Installed snapshots with their disk use and last use. */
  async list(): Promise<WarmEntry[]> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch {
      return [];
    }
    const out: WarmEntry[] = [];
    for (const object of names) {
      const dir = await this.linkedDir(object);
      if (!dir) continue;
      let bytes = 0;
      let lastUsed = 0;
      for (const f of ["boot.qcow2", "state", "meta.json"]) {
        const st = await fs.stat(path.join(dir, f)).catch(() => undefined);
        if (!st) continue;
        bytes += st.blocks * 512;
        if (f === "meta.json") lastUsed = st.mtimeMs;
      }
      out.push({ object, dir, bytes, lastUsed });
    }
    return out;
  }

  /**
   * Keep the snapshots within `maxBytes`, removing the least recently used first; also remove folders
   * no link points at (left by an interrupted build or a lost race). Call with the build dir locked.
   */
  async evict(maxBytes: number): Promise<WarmEntry[]> {
    const entries = (await this.list()).sort((a, b) => b.lastUsed - a.lastUsed);
    const removed: WarmEntry[] = [];
    let total = 0;
    for (const e of entries) {
      if (total + e.bytes > maxBytes) {
        await this.discard(e.object);
        removed.push(e);
      } else {
        total += e.bytes;
      }
    }
    await this.removeOrphans(new Set(entries.filter((e) => !removed.includes(e)).map((e) => e.dir)));
    return removed;
  }

  private async removeOrphans(live: Set<string>): Promise<void> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir, { withFileTypes: true }).then((d) => d.filter((e) => e.isDirectory()).map((e) => e.name));
    } catch {
      return;
    }
    for (const n of names) {
      const p = path.join(this.dir, n);
      if (!live.has(p)) await fs.rm(p, { recursive: true, force: true });
    }
  }

  /** gc: drop the snapshots of images that are not kept (and orphans). Returns what was (or would be) removed. */
  async prune(keepObject: (object: string) => boolean, dryRun: boolean): Promise<WarmEntry[]> {
    const entries = await this.list();
    const gone = entries.filter((e) => !keepObject(e.object));
    if (!dryRun) {
      for (const e of gone) await this.discard(e.object);
      await this.removeOrphans(new Set(entries.filter((e) => !gone.includes(e)).map((e) => e.dir)));
    }
    return gone;
  }
}

function mismatch(have: WarmIdentity, want: WarmIdentity): string | undefined {
  if (have.mem !== want.mem) return `it was taken with ${have.mem} MiB of memory, this VM has ${want.mem} MiB`;
  if (have.cpus !== want.cpus) return `it was taken with ${have.cpus} CPUs, this VM has ${want.cpus}`;
  if (have.qemu !== want.qemu) return `it was taken with ${have.qemu}, this is ${want.qemu}`;
  if (have.devices !== want.devices) return "it was taken with another QEMU device set";
  return undefined;
}

async function damage(snap: { boot: string; state: string }, meta: WarmMeta): Promise<string | undefined> {
  if (!(await pathExists(snap.boot))) return "its boot overlay is missing";
  const st = await fs.stat(snap.state).catch(() => undefined);
  if (!st) return "its state file is missing";
  if (st.size !== meta.stateBytes) return `its state file is damaged (${st.size} bytes, ${meta.stateBytes} expected)`;
  return undefined;
}
