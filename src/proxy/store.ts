/**
 * The package cache on disk: one entry per URL under the user cache (~/.cache/dbuild/proxy/).
 *
 *   entries/AB/<sha256(url)>.json        the entry: URL, size, data file name, cache policy (headers)
 *   entries/AB/<sha256(url)>.<rand>      the body
 *   tmp/                                 bodies and entries being written
 *
 * Writes are atomic: a body is written under tmp/, renamed into place under a fresh name, and only then
 * does the entry (written under tmp/ too) get renamed over the old one. The entry's rename is the commit
 * point, so a build killed at any moment leaves either the old entry or the new one, never an entry
 * pointing at half a file. Readers also check the body's size against the entry.
 */
import { randomBytes } from "node:crypto";
import { sha256Hex } from "../util/digest.js";
import { createWriteStream, type WriteStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type CachePolicy from "http-cache-semantics";

export interface CacheEntry {
  url: string;
  /** Body size in bytes. */
  size: number;
  /** Body file name, in the entry's directory. */
  data: string;
  /** When the entry was stored or last revalidated (ms since the epoch). */
  stored: number;
  policy: CachePolicy.CachePolicyObject;
}

export interface CachedBody {
  entry: CacheEntry;
  /** Absolute path of the body. */
  file: string;
}

/** A body being written. `commit` publishes it with its entry; `abort` leaves no trace. */
export interface BodyWriter {
  stream: WriteStream;
  commit(entry: Omit<CacheEntry, "data" | "size">): Promise<CacheEntry>;
  abort(): Promise<void>;
}

/** Temporary files older than this are leftovers of a killed build (a live write is far younger). */
const TMP_MAX_AGE_MS = 24 * 3600_000;

export class ProxyStore {
  readonly dir: string;
  private readonly tmpDir: string;
  private readonly entriesDir: string;

  constructor(cacheRoot: string) {
    this.dir = path.join(cacheRoot, "proxy");
    this.tmpDir = path.join(this.dir, "tmp");
    this.entriesDir = path.join(this.dir, "entries");
  }

  async init(): Promise<void> {
    await fs.mkdir(this.tmpDir, { recursive: true });
    await fs.mkdir(this.entriesDir, { recursive: true });
    // Another build may be writing right now: only sweep files that are clearly abandoned.
    const now = Date.now();
    for (const f of await fs.readdir(this.tmpDir)) {
      const p = path.join(this.tmpDir, f);
      const st = await fs.stat(p).catch(() => undefined);
      if (st && now - st.mtimeMs > TMP_MAX_AGE_MS) await fs.rm(p, { force: true });
    }
  }

  static key(url: string): string {
    return sha256Hex(url);
  }

  private entryPath(key: string): string {
    return path.join(this.entriesDir, key.slice(0, 2), `${key}.json`);
  }

  /** The stored entry for a URL, or undefined if there is none or its body is missing or short. */
  async read(url: string): Promise<CachedBody | undefined> {
    const file = this.entryPath(ProxyStore.key(url));
    let entry: CacheEntry;
    try {
      entry = JSON.parse(await fs.readFile(file, "utf8")) as CacheEntry;
    } catch {
      return undefined;
    }
    if (entry.url !== url) return undefined;
    const body = path.join(path.dirname(file), entry.data);
    const st = await fs.stat(body).catch(() => undefined);
    if (!st || st.size !== entry.size) return undefined;
    return { entry, file: body };
  }

  /** Replace an entry's metadata (after a 304), keeping its body. */
  async update(entry: CacheEntry): Promise<void> {
    await this.writeEntry(ProxyStore.key(entry.url), entry);
  }

  private async writeEntry(key: string, entry: CacheEntry): Promise<void> {
    const tmp = path.join(this.tmpDir, `${key}.${randomBytes(6).toString("hex")}.json`);
    await fs.writeFile(tmp, JSON.stringify(entry));
    const dest = this.entryPath(key);
    await fs.mkdir(path.dirname(dest), { recursive: true });
    await fs.rename(tmp, dest);
  }

  /** Start writing a new body for a URL. */
  writer(url: string): BodyWriter {
    const key = ProxyStore.key(url);
    const name = `${key}.${randomBytes(6).toString("hex")}`;
    const tmp = path.join(this.tmpDir, name);
    const stream = createWriteStream(tmp);
    stream.on("error", () => undefined); // reported through commit()
    const finished = (): Promise<void> =>
      new Promise((resolve, reject) => {
        if (stream.closed) return resolve();
        stream.once("close", resolve);
        stream.once("error", reject);
        stream.end();
      });
    return {
      stream,
      commit: async (meta) => {
        await finished();
        const bytes = (await fs.stat(tmp)).size;
        const dest = path.join(path.dirname(this.entryPath(key)), name);
        await fs.mkdir(path.dirname(dest), { recursive: true });
        const old = await this.read(url);
        await fs.rename(tmp, dest);
        const entry: CacheEntry = { ...meta, data: name, size: bytes };
        await this.writeEntry(key, entry);
        // The previous body is unreachable now; a reader that opened it keeps its open file.
        if (old && old.file !== dest) await fs.rm(old.file, { force: true });
        return entry;
      },
      abort: async () => {
        stream.destroy();
        await fs.rm(tmp, { force: true });
      },
    };
  }
}
