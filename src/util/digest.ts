/**
 * The one sha256 of a file. Hex digest; callers that speak OCI or the store's records write it as
 * `sha256:HEX`, the fingerprint keeps the bare hex (a FileDigest).
 */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
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

/** sha256 of bytes in memory, as hex. */
export function sha256Hex(data: string | Uint8Array): string {
  return createHash("sha256").update(data).digest("hex");
}
