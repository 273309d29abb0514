/**
 * The stat cache: (path, size, mtime, ctime, inode) -> sha256, so unchanged files are never re-read.
 * Lives in `<buildDir>/.dbuild/statcache.json`; loaded once per plan, written atomically (temp file +
 * rename) and only when something changed.
 *
 * Racy entries: a file written in the same timestamp tick as our stat could change again without its
 * mtime/ctime moving. As git does with its index, an entry whose ctime/mtime is within RACY_MS of the
 * moment we looked is not trusted on the next run (it is simply not stored, so it gets hashed again).
 */
import { createHash } from "node:crypto";
import { createReadStream, readFileSync } from "node:fs";
import type { Stats } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { FileDigest } from "./types.js";

const VERSION = 1;
const RACY_MS = 100;
/** Files up to this size are read in one call; larger ones are streamed. */
export const SMALL_FILE = 1 << 20;

/** [size, mtimeMs, ctimeMs, ino, sha256], plus in memory a 1 once looked at in this run. */
type Entry = [number, number, number, number, string, number?];

export interface HashStats {
  /** Files whose digest was asked for. */
  files: number;
  /** Files actually read and hashed (cache misses). */
  hashed: number;
  bytesHashed: number;
}

export async function sha256File(file: string, size: number): Promise<FileDigest> {
  const h = createHash("sha256");
  if (size <= SMALL_FILE) {
    h.update(await fs.readFile(file));
  } else {
    for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  }
  return h.digest("hex") as FileDigest;
}

export class StatCache {
  private readonly entries: Map<string, Entry>;
  private readonly rootSlash: string;
  private dirty = false;
  readonly stats: HashStats = { files: 0, hashed: 0, bytesHashed: 0 };
  /** Test hook: called for every file actually read. */
  onHash?: (relPath: string) => void;

  private constructor(
    /** Cache file path, or undefined for an in-memory cache that is never saved. */
    readonly file: string | undefined,
    /** Keys are paths relative to this root (keeps the cache small and the project movable). */
    readonly root: string,
    entries: Map<string, Entry>,
  ) {
    this.entries = entries;
    this.rootSlash = root.endsWith("/") ? root : `${root}/`;
  }

  static inMemory(root: string): StatCache {
    return new StatCache(undefined, root, new Map());
  }

  static cachePath(buildDir: string): string {
    return path.join(buildDir, ".dbuild", "statcache.json");
  }

  /** Load the cache; a missing or unreadable cache is an empty one (it is only an optimisation). */
  static async load(buildDir: string, root: string): Promise<StatCache> {
    const file = StatCache.cachePath(buildDir);
    const entries = new Map<string, Entry>();
    try {
      const data = JSON.parse(await fs.readFile(file, "utf8")) as { version?: number; root?: string; entries?: Record<string, Entry> };
      if (data.version === VERSION && data.root === root && data.entries) {
        for (const [k, v] of Object.entries(data.entries)) if (Array.isArray(v) && v.length === 5) entries.set(k, v);
      }
    } catch {
      // absent or corrupt: start empty
    }
    return new StatCache(file, root, entries);
  }

  private keyOf(absPath: string): string {
    return absPath.startsWith(this.rootSlash) ? absPath.slice(this.rootSlash.length) : path.relative(this.root, absPath);
  }

  /** The cached digest if size, mtime, ctime and inode all match; never reads the file. */
  lookup(absPath: string, st: Stats): FileDigest | undefined {
    this.stats.files++;
    const e = this.entries.get(this.keyOf(absPath));
    // Marking the entry itself (rather than a set of keys) saves hashing every path twice.
    if (e) e[5] = 1;
    if (e && e[0] === st.size && e[1] === st.mtimeMs && e[2] === st.ctimeMs && e[3] === st.ino) return e[4] as FileDigest;
    return undefined;
  }

  /** Record a digest computed from `st` (taken before reading) at time `lookedAt`. */
  private store(absPath: string, st: Stats, digest: FileDigest, lookedAt: number): void {
    const key = this.keyOf(absPath);
    this.stats.hashed++;
    this.stats.bytesHashed += st.size;
    if (lookedAt - Math.max(st.mtimeMs, st.ctimeMs) >= RACY_MS) {
      this.entries.set(key, [st.size, st.mtimeMs, st.ctimeMs, st.ino, digest, 1]);
      this.dirty = true;
    } else if (this.entries.delete(key)) {
      this.dirty = true;
    }
  }

  /**
   * Hash a file the cache could not vouch for. Small files are read synchronously: on a cold plan of
   * thousands of ~10 KB files, a thread-pool round trip per file costs more than the read itself.
   */
  hashSync(absPath: string, st: Stats): FileDigest {
    const lookedAt = Date.now();
    this.onHash?.(this.keyOf(absPath));
    const digest = createHash("sha256").update(readFileSync(absPath)).digest("hex") as FileDigest;
    this.store(absPath, st, digest, lookedAt);
    return digest;
  }

  async hash(absPath: string, st: Stats): Promise<FileDigest> {
    const lookedAt = Date.now();
    this.onHash?.(this.keyOf(absPath));
    const digest = await sha256File(absPath, st.size);
    this.store(absPath, st, digest, lookedAt);
    return digest;
  }

  /** Digest of a file, given its stat (which must follow symlinks as the copy will). */
  async digest(absPath: string, st: Stats): Promise<FileDigest> {
    return this.lookup(absPath, st) ?? this.hash(absPath, st);
  }

  /**
   * Write the cache if it changed. Entries not looked at in this run are kept when their file still
   * exists (a plan of one stack must not evict every other layer) and dropped when it vanished.
   */
  async save(): Promise<void> {
    if (!this.file) return;
    const unseen = [...this.entries].filter(([, e]) => e[5] !== 1).map(([k]) => k);
    await Promise.all(
      unseen.map(async (k) => {
        try {
          await fs.stat(path.join(this.root, k));
        } catch {
          this.entries.delete(k);
          this.dirty = true;
        }
      }),
    );
    if (!this.dirty) return;
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.${Date.now()}.tmp`;
    const entries: Record<string, Entry> = {};
    for (const [k, e] of this.entries) entries[k] = [e[0], e[1], e[2], e[3], e[4]];
    const obj = { version: VERSION, root: this.root, entries };
    try {
      await fs.writeFile(tmp, JSON.stringify(obj));
      await fs.rename(tmp, this.file);
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw e;
    }
    this.dirty = false;
  }
}
