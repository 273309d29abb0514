/**
 * The one sha256 of a file. Hex digest; callers that speak OCI or the store's records write it as
 * `sha256:HEX`, the fingerprint keeps the bare hex (a FileDigest).
 */
import { createHash, hash } from "node:crypto";
import { closeSync, createReadStream, openSync, readSync } from "node:fs";
import * as fs from "node:fs/promises";
import { addAbortSignal } from "node:stream";

/** Files up to this size are read in one call: cheaper than a stream for the many small files of a layer. */
const ONE_READ = 1 << 20;

/** sha256 of a file's bytes, as hex. `size` (when the caller has a stat) picks one read for small files. */
export async function sha256File(file: string, opts: { size?: number; signal?: AbortSignal } = {}): Promise<string> {
  const h = createHash("sha256");
  if (opts.size !== undefined && opts.size <= ONE_READ) {
    h.update(await fs.readFile(file, opts.signal ? { signal: opts.signal } : {}));
  } else {
    const stream = createReadStream(file, { highWaterMark: 1 << 20 });
    if (opts.signal) addAbortSignal(opts.signal, stream);
    for await (const chunk of stream) h.update(chunk as Buffer);
  }
  return h.digest("hex");
}

/** sha256 of bytes in memory, as hex (one-shot: no Hash object per call). */
export function sha256Hex(data: string | Uint8Array): string {
  return hash("sha256", data, "hex");
}

/** The buffer sha256FileSync reads into, grown as needed and reused (a cold plan reads thousands of files). */
let scratch = Buffer.allocUnsafe(64 * 1024);

/**
 * sha256 of a (small) file's bytes, read synchronously to its end into a reused buffer: no stat, no new
 * buffer and no Hash object per file. `size` (from the caller's stat) sizes the buffer; a file that has
 * grown since is still read to its end.
 */
export function sha256FileSync(file: string, size = 0): string {
  const fd = openSync(file, "r");
  try {
    if (scratch.length <= size) scratch = Buffer.allocUnsafe(Math.max(size + 1, scratch.length * 2));
    let n = 0;
    for (;;) {
      if (n === scratch.length) {
        const bigger = Buffer.allocUnsafe(scratch.length * 2);
        scratch.copy(bigger, 0, 0, n);
        scratch = bigger;
      }
      const r = readSync(fd, scratch, n, scratch.length - n, null);
      if (r === 0) break;
      n += r;
    }
    return hash("sha256", scratch.subarray(0, n), "hex");
  } finally {
    closeSync(fd);
  }
}
