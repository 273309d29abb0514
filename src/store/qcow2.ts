/** Reading a qcow2 header without qemu-img (fast enough to walk every backing chain on each plan). */
import { closeSync, openSync, readSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/** Where the header (its first 20 bytes) says the backing file name is: offset 8, u64 offset; offset 16, u32 size. */
function backingField(head: Buffer): { off: number; size: number } | undefined {
  if (head.length < 20 || !head.subarray(0, 4).equals(QCOW2_MAGIC)) return undefined;
  const off = Number(head.readBigUInt64BE(8));
  const size = head.readUInt32BE(16);
  if (!off || !size || size > 4096) return undefined;
  return { off, size };
}

/** Backing file name recorded in a qcow2 header, resolved against the file's directory and real. */
export async function qcow2Backing(file: string): Promise<string | undefined> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(file, "r");
    const head = Buffer.alloc(20);
    await fh.read(head, 0, 20, 0);
    const at = backingField(head);
    if (!at) return undefined;
    const name = Buffer.alloc(at.size);
    await fh.read(name, 0, at.size, at.off);
    const resolved = path.resolve(path.dirname(file), name.toString("utf8"));
    // Through the objects/.dbuild self-link: compare real paths.
    return await fs.realpath(resolved).catch(() => resolved);
  } catch {
    return undefined;
  } finally {
    await fh?.close();
  }
}

// The first bytes of a file, read at once: qemu-img writes the backing name right after the header.
const FIRST_BYTES = 1024;
let firstBuf: Buffer | undefined;

/**
 * The backing file name exactly as the qcow2 header of an open file records it (not resolved), read
 * synchronously: nearly always one read. Undefined for a file that is not a qcow2 or has no backing file.
 */
export function qcow2BackingNameFd(fd: number): string | undefined {
  try {
    const buf = (firstBuf ??= Buffer.allocUnsafe(FIRST_BYTES));
    const n = readSync(fd, buf, 0, FIRST_BYTES, 0);
    const at = backingField(buf.subarray(0, n));
    if (!at) return undefined;
    if (at.off + at.size <= n) return buf.toString("utf8", at.off, at.off + at.size);
    const name = Buffer.alloc(at.size);
    readSync(fd, name, 0, at.size, at.off);
    return name.toString("utf8");
  } catch {
    return undefined;
  }
}

/** qcow2BackingNameFd of a file by its path. */
export function qcow2BackingNameSync(file: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(file, "r");
    return qcow2BackingNameFd(fd);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
