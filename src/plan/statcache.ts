/**
 * The stat cache: what the last walk of each layer saw, so unchanged files are never re-read and an
 * unchanged layer is not even re-serialised. Lives in `<buildDir>/.dbuild/statcache.json`; loaded once
 * per plan, written atomically (temp file + rename) and only when something changed.
 *
 * One record per layer dir: the files digest of the layer (see fingerprint.ts) and the tree it was
 * computed from: for every directory its listing and (mtime, ctime, inode), for every file
 * (size, mtime, ctime, inode) and sha256, for every symlink its target text. A layer owns its records:
 * a directory reached from two layers (through symlinks) is recorded in both, so one layer's walk can
 * never make another layer's digest look current.
 *
 * - A file whose size, mtime, ctime and inode all match is not read again (content edits move mtime or
 *   ctime; chmod moves ctime).
 * - A directory whose (mtime, ctime, inode) match is not listed again: creating, removing or renaming an
 *   entry moves the directory's mtime (git's untracked cache relies on the same). Its files are still
 *   stat'ed one by one: editing a file does not touch its directory.
 * - A layer where every directory, file and symlink matched keeps its digest, and its manifest is only
 *   built when someone asks for it.
 *
 * Racy entries: a file written in the same timestamp tick as our stat could change again without its
 * mtime/ctime moving. As git does with its index, the cache file itself is the stamp: it is written after
 * the walk, so its mtime is a time on the file system's own clock, at the file system's own granularity
 * (2 s on vfat), that is later than every stat the walk took. On the next run an entry is trusted only
 * if its mtime and ctime are strictly older than that stamp; anything else is hashed (or listed) again.
 * No wall clock is involved, so a coarse-timestamp file system cannot hide a same-size rewrite.
 * Entries on another file system than the stamp's (a symlink into another mount) are never trusted:
 * their clock cannot be compared with it. Records carried over from a run that did not walk their
 * layer are "smudged" (dropped) when they hold entries racy against the old stamp, before a new stamp
 * would make them look old (git smudges racily clean entries for the same reason).
 */
import { isAscii } from "node:buffer";
import { closeSync, fstatSync, openSync, readFileSync, statSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { FileDigest } from "../model/plan.js";
import { sha256File, sha256Hex } from "../util/digest.js";

/**
 * Bump when the records' layout or the way fingerprint.ts turns a walk into a digest changes: a stored
 * layer digest is only reused by the code that made it.
 */
const VERSION = 3;
/** Files up to this size are read in one call; larger ones are streamed. */
export const SMALL_FILE = 1 << 20;

/** What a walk needs of a stat: numbers only, so records compare without Stats objects. */
export interface StatLike {
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
  mode: number;
}

export const FILE = 0;
export const DIR = 1;
export const LINK = 2;
/** Sockets, fifos, devices: listed (so a listing compares) but never copied nor keyed. */
export const OTHER = 3;

/**
 * A regular file (or, as the `followed` part of a symlink, what it points to). size is -1 when the
 * stat cannot be trusted next time (racy): the digest is still right for this run.
 */
export type FileEnt = [name: string, t: typeof FILE, size: number, mtimeMs: number, ctimeMs: number, ino: number, digest: string, exec: 0 | 1];
export type DirEnt = [name: string, t: typeof DIR, dir: DirRec];
/** A symlink: its target text, and in trees walked as `rsync -L` does, what it resolves to. */
export type LinkEnt = [name: string, t: typeof LINK, target: string, followed?: FileEnt | DirEnt];
export type OtherEnt = [name: string, t: typeof OTHER];
export type Ent = FileEnt | DirEnt | LinkEnt | OtherEnt;
/** A directory: [mtimeMs, ctimeMs, ino] when its listing can be trusted next time (else 0), its entries. */
export type DirRec = [st: [number, number, number] | 0, ents: Ent[]];

/** What the last walk of one layer saw. */
export interface LayerRec {
  /** Files digest of the layer (sha256 of the canonical JSON of its file entries). */
  digest: string;
  /** The walked tree; for non-base layers a synthetic top whose entries are install, layer.yaml, convert, target. */
  top: DirRec;
  /** Files matched by the layer's `inputs:` globs, each named by its path relative to the project root. */
  inputs?: FileEnt[];
}

/** The clock the racy check compares with: the previous cache file's mtime, on its file system. */
export interface Stamp {
  /** mtime of the cache file as last written (-Infinity when there is none: nothing is trusted). */
  ms: number;
  /** Device of the file system the stamp lives on. */
  dev: number;
}

export interface HashStats {
  /** Files whose digest was asked for. */
  files: number;
  /** Files actually read and hashed (cache misses). */
  hashed: number;
  bytesHashed: number;
}

export class StatCache {
  /** Layer records by layer dir relative to the root. */
  private readonly layers: Map<string, LayerRec>;
  private readonly seen = new Set<string>();
  private readonly rootSlash: string;
  private dirty = false;
  readonly stats: HashStats = { files: 0, hashed: 0, bytesHashed: 0 };
  /** Test hook: called for every file actually read. */
  onHash?: (relPath: string) => void;
  /** Test hook: called for every directory actually listed (its previous listing could not be reused). */
  onList?: (relPath: string) => void;

  private constructor(
    /** Cache file path, or undefined for an in-memory cache that is never saved. */
    readonly file: string | undefined,
    /** Keys are paths relative to this root (keeps the cache small and the project movable). */
    readonly root: string,
    layers: Map<string, LayerRec>,
    /** The stamp of the records loaded; entries at or after it are not trusted. */
    readonly stamp: Stamp,
  ) {
    this.layers = layers;
    this.rootSlash = root.endsWith("/") ? root : `${root}/`;
  }

  /** A cache that is never saved: it has no stamp, so it trusts no stat (every plan hashes everything). */
  static inMemory(root: string): StatCache {
    return new StatCache(undefined, root, new Map(), { ms: -Infinity, dev: -1 });
  }

  static cachePath(buildDir: string): string {
    return path.join(buildDir, ".dbuild", "statcache.json");
  }

  /** Load the cache; a missing or unreadable cache is an empty one (it is only an optimisation). */
  static load(buildDir: string, root: string): Promise<StatCache> {
    return Promise.resolve(StatCache.loadSync(buildDir, root));
  }

  static loadSync(buildDir: string, root: string): StatCache {
    const file = StatCache.cachePath(buildDir);
    const layers = new Map<string, LayerRec>();
    const stamp: Stamp = { ms: -Infinity, dev: deviceOf(path.dirname(file)) };
    try {
      // Synchronous, and decoded as latin1 when it is pure ASCII (the usual case): a warm plan spends
      // longer reading this file than on any other single step but the stats.
      const fd = openSync(file, "r");
      let buf: Buffer;
      try {
        const st = fstatSync(fd);
        buf = readFileSync(fd);
        stamp.ms = st.mtimeMs;
        stamp.dev = st.dev;
      } finally {
        closeSync(fd);
      }
      const data = JSON.parse(isAscii(buf) ? buf.toString("latin1") : buf.toString("utf8")) as { version?: number; root?: string; layers?: Record<string, unknown> };
      if (data.version === VERSION && data.root === root && data.layers) {
        for (const [k, v] of Object.entries(data.layers)) {
          // Only the outer shape is checked: a record is only ever compared against a fresh walk, and a
          // malformed one simply fails to match (see fingerprint.ts).
          if (Array.isArray(v) && (v.length === 2 || v.length === 3) && typeof v[0] === "string" && isDirRec(v[1])) {
            const rec: LayerRec = { digest: v[0], top: v[1] };
            if (Array.isArray(v[2])) rec.inputs = v[2] as FileEnt[];
            layers.set(k, rec);
          }
        }
      }
    } catch {
      // absent or corrupt: start empty
    }
    return new StatCache(file, root, layers, stamp);
  }

  /** True when a recorded (mtime, ctime) on device `dev` is older than the stamp: its stat can be trusted. */
  trusts(mtimeMs: number, ctimeMs: number): boolean {
    return mtimeMs < this.stamp.ms && ctimeMs < this.stamp.ms;
  }

  private keyOf(absPath: string): string {
    return absPath.startsWith(this.rootSlash) ? absPath.slice(this.rootSlash.length) : path.relative(this.root, absPath);
  }

  /** The record of the last walk of the layer in `layerDir`, if any. */
  previous(layerDir: string): LayerRec | undefined {
    const k = this.keyOf(layerDir);
    this.seen.add(k);
    return this.layers.get(k);
  }

  /** Tell the test hook a directory is being listed. */
  listing(absDir: string): void {
    this.onList?.(this.keyOf(absDir));
  }

  /** Replace the record of a layer after a walk that did not match the previous one in every detail. */
  update(layerDir: string, rec: LayerRec): void {
    this.layers.set(this.keyOf(layerDir), rec);
    this.dirty = true;
  }

  /**
   * Hash a file the cache could not vouch for. Small files are read synchronously: on a cold plan of
   * thousands of ~10 KB files, a thread-pool round trip per file costs more than the read itself.
   */
  hashSync(absPath: string, size: number): FileDigest {
    this.onHash?.(this.keyOf(absPath));
    const digest = sha256Hex(readFileSync(absPath)) as FileDigest;
    this.stats.hashed++;
    this.stats.bytesHashed += size;
    return digest;
  }

  async hash(absPath: string, size: number): Promise<FileDigest> {
    this.onHash?.(this.keyOf(absPath));
    const digest = (await sha256File(absPath, { size })) as FileDigest;
    this.stats.hashed++;
    this.stats.bytesHashed += size;
    return digest;
  }

  /**
   * Write the cache if it changed. Records of layers not walked in this run are kept when their
   * directory still exists (a plan of one stack must not evict every other layer) and dropped when it
   * vanished.
   */
  async save(): Promise<void> {
    if (!this.file) return;
    for (const [k, rec] of [...this.layers]) {
      if (this.seen.has(k)) continue;
      // Not walked now: its stats were trusted against the old stamp only. Drop it if anything in it is
      // racy against that stamp, before the new cache file (a newer stamp) would make it look settled.
      if (!statSync(path.join(this.root, k), { throwIfNoEntry: false })?.isDirectory() || hasRacy(rec, this.stamp.ms)) {
        this.layers.delete(k);
        this.dirty = true;
      }
    }
    if (!this.dirty) return;
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.${Date.now()}.tmp`;
    const layers: Record<string, [string, DirRec] | [string, DirRec, FileEnt[]]> = {};
    for (const [k, r] of this.layers) layers[k] = r.inputs ? [r.digest, r.top, r.inputs] : [r.digest, r.top];
    try {
      await fs.writeFile(tmp, JSON.stringify({ version: VERSION, root: this.root, layers }));
      await fs.rename(tmp, this.file);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw e;
    }
    this.dirty = false;
  }
}

export function isDirRec(v: unknown): v is DirRec {
  return Array.isArray(v) && v.length === 2 && Array.isArray(v[1]);
}

/** Device of `dir` or of its nearest existing ancestor (where the cache file will be written). */
function deviceOf(dir: string): number {
  for (let d = dir; ; d = path.dirname(d)) {
    const st = statSync(d, { throwIfNoEntry: false });
    if (st) return st.dev;
    if (path.dirname(d) === d) return -1;
  }
}

/** Does a record hold a file or directory stat that the stamp `ms` does not vouch for? */
function hasRacy(rec: LayerRec, ms: number): boolean {
  const racyEnt = (e: Ent): boolean => {
    switch (e[1]) {
      case FILE:
        return e[2] !== -1 && (e[3] >= ms || e[4] >= ms);
      case DIR:
        return racyDir(e[2]);
      case LINK:
        return e[3] !== undefined && racyEnt(e[3]);
      case OTHER:
        return false;
    }
  };
  const racyDir = (d: DirRec): boolean => (d[0] !== 0 && (d[0][0] >= ms || d[0][1] >= ms)) || d[1].some(racyEnt);
  return racyDir(rec.top) || (rec.inputs ?? []).some(racyEnt);
}
