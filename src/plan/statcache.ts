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
import { sha256File, sha256FileSync } from "../util/digest.js";

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
 * A regular file (or, as the `followed` part of a symlink, what it points to, named ""). size is -1 when
 * the stat cannot be trusted next time (racy, or on another file system than the stamp's): the digest is
 * still right for this run.
 */
export interface FileEnt {
  name: string;
  kind: typeof FILE;
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
  /** sha256 of the contents ("" while the walk has it queued for hashing). */
  digest: string;
  /** 1 if any exec bit is set. */
  exec: 0 | 1;
}
export interface DirEnt {
  name: string;
  kind: typeof DIR;
  dir: DirRec;
}
/** A symlink: its target text, and in trees walked as `rsync -L` does, what it resolves to. */
export interface LinkEnt {
  name: string;
  kind: typeof LINK;
  target: string;
  followed?: FileEnt | DirEnt;
}
export interface OtherEnt {
  name: string;
  kind: typeof OTHER;
}
export type Ent = FileEnt | DirEnt | LinkEnt | OtherEnt;
/** A directory's own stat, recorded when its listing can be trusted next time. */
export interface DirStat {
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
}
/** A directory: its stat (undefined when its listing must not be trusted next time) and its entries. */
export interface DirRec {
  st: DirStat | undefined;
  ents: Ent[];
}

/*
 * On disk the records stay positional (a third of the size of named JSON, and JSON.parse of the file is
 * the largest single step of a warm plan); they are decoded into the named shapes above when the file is
 * loaded and encoded back when it is saved, so no other code reads a tuple.
 *   file  [name, 0, size, mtimeMs, ctimeMs, ino, digest, exec]
 *   dir   [name, 1, [[mtimeMs, ctimeMs, ino] | 0, [entries...]]]
 *   link  [name, 2, target] or [name, 2, target, followed]
 *   other [name, 3]
 */
type DiskDir = [st: [number, number, number] | 0, ents: unknown[]];

const isNum = (v: unknown): v is number => typeof v === "number";

/** A decoded entry, or undefined when the tuple is not one (the whole layer record is then dropped). */
function decodeEnt(v: unknown): Ent | undefined {
  if (!Array.isArray(v) || typeof v[0] !== "string") return undefined;
  const name = v[0];
  switch (v[1]) {
    case FILE: {
      // Indexed, not destructured: destructuring an array runs its iterator, and this runs per file.
      const size: unknown = v[2];
      const mtimeMs: unknown = v[3];
      const ctimeMs: unknown = v[4];
      const ino: unknown = v[5];
      const digest: unknown = v[6];
      const exec: unknown = v[7];
      if (v.length !== 8 || !isNum(size) || !isNum(mtimeMs) || !isNum(ctimeMs) || !isNum(ino) || typeof digest !== "string" || (exec !== 0 && exec !== 1)) return undefined;
      return { name, kind: FILE, size, mtimeMs, ctimeMs, ino, digest, exec };
    }
    case DIR: {
      const dir = v.length === 3 ? decodeDir(v[2]) : undefined;
      return dir && { name, kind: DIR, dir };
    }
    case LINK: {
      if (typeof v[2] !== "string" || v.length > 4) return undefined;
      if (v.length === 3) return { name, kind: LINK, target: v[2] };
      const followed = decodeEnt(v[3]);
      return followed?.kind === FILE || followed?.kind === DIR ? { name, kind: LINK, target: v[2], followed } : undefined;
    }
    case OTHER:
      return v.length === 2 ? { name, kind: OTHER } : undefined;
    default:
      return undefined;
  }
}

function decodeDir(v: unknown): DirRec | undefined {
  if (!Array.isArray(v) || v.length !== 2 || !Array.isArray(v[1])) return undefined;
  const s: unknown = v[0];
  let st: DirStat | undefined;
  if (Array.isArray(s)) {
    if (s.length !== 3 || !isNum(s[0]) || !isNum(s[1]) || !isNum(s[2])) return undefined;
    st = { mtimeMs: s[0], ctimeMs: s[1], ino: s[2] };
  } else if (s !== 0) return undefined;
  const raw = v[1] as unknown[];
  const ents: Ent[] = new Array<Ent>(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const e = decodeEnt(raw[i]);
    if (e === undefined) return undefined;
    ents[i] = e;
  }
  return { st, ents };
}

function encodeEnt(e: Ent): unknown[] {
  switch (e.kind) {
    case FILE:
      return [e.name, FILE, e.size, e.mtimeMs, e.ctimeMs, e.ino, e.digest, e.exec];
    case DIR:
      return [e.name, DIR, encodeDir(e.dir)];
    case LINK:
      return e.followed ? [e.name, LINK, e.target, encodeEnt(e.followed)] : [e.name, LINK, e.target];
    case OTHER:
      return [e.name, OTHER];
  }
}

function encodeDir(d: DirRec): DiskDir {
  return [d.st ? [d.st.mtimeMs, d.st.ctimeMs, d.st.ino] : 0, d.ents.map(encodeEnt)];
}

/** A layer record as stored: [digest, top] or [digest, top, inputs]. */
function decodeLayer(v: unknown): LayerRec | undefined {
  if (!Array.isArray(v) || (v.length !== 2 && v.length !== 3) || typeof v[0] !== "string") return undefined;
  const top = decodeDir(v[1]);
  if (!top) return undefined;
  if (v.length === 2) return { digest: v[0], top };
  if (!Array.isArray(v[2])) return undefined;
  const inputs: FileEnt[] = [];
  for (const x of v[2] as unknown[]) {
    const e = decodeEnt(x);
    if (e?.kind !== FILE) return undefined;
    inputs.push(e);
  }
  return { digest: v[0], top, inputs };
}

function encodeLayer(r: LayerRec): unknown[] {
  return r.inputs ? [r.digest, encodeDir(r.top), r.inputs.map(encodeEnt)] : [r.digest, encodeDir(r.top)];
}

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
          // A record that does not decode is as good as absent: its layer is walked and hashed afresh.
          const rec = decodeLayer(v);
          if (rec) layers.set(k, rec);
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
    const digest = sha256FileSync(absPath, size) as FileDigest;
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
    const layers: Record<string, unknown[]> = {};
    for (const [k, r] of this.layers) layers[k] = encodeLayer(r);
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
    switch (e.kind) {
      case FILE:
        return e.size !== -1 && (e.mtimeMs >= ms || e.ctimeMs >= ms);
      case DIR:
        return racyDir(e.dir);
      case LINK:
        return e.followed !== undefined && racyEnt(e.followed);
      case OTHER:
        return false;
    }
  };
  const racyDir = (d: DirRec): boolean => (d.st !== undefined && (d.st.mtimeMs >= ms || d.st.ctimeMs >= ms)) || d.ents.some(racyEnt);
  return racyDir(rec.top) || (rec.inputs ?? []).some(racyEnt);
}
