/** Reading a qcow2 header without qemu-img (fast enough to walk every backing chain on each plan). */
import * as fs from "node:fs/promises";
import * as path from "node:path";

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/** Backing file name recorded in a qcow2 header (offset 8: u64 offset, offset 16: u32 size). */
export async function qcow2Backing(file: string): Promise<string | undefined> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(file, "r");
    const head = Buffer.alloc(20);
    await fh.read(head, 0, 20, 0);
    if (!head.subarray(0, 4).equals(QCOW2_MAGIC)) return undefined;
    const off = Number(head.readBigUInt64BE(8));
    const size = head.readUInt32BE(16);
    if (!off || !size || size > 4096) return undefined;
    const name = Buffer.alloc(size);
    await fh.read(name, 0, size, off);
    const resolved = path.resolve(path.dirname(file), name.toString("utf8"));
    // Through the objects/.dbuild self-link: compare real paths.
    return await fs.realpath(resolved).catch(() => resolved);
  } catch {
    return undefined;
  } finally {
    await fh?.close();
  }
}

