/** Durable writes: what a crash (or SIGKILL, or power loss) leaves is either the old or the new file. */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";

/** fsync a file or a directory (its entries) by path. */
export async function fsyncPath(p: string): Promise<void> {
  const fh = await fs.open(p, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Write `file` so that a crash leaves either the old or the new content, durably: fsync, rename, fsync dir. */
export async function writeFileAtomic(file: string, data: string): Promise<void> {
  const tmp = `${file}.tmp-${randomBytes(4).toString("hex")}`;
  const fh = await fs.open(tmp, "w");
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.rename(tmp, file);
  await fsyncPath(path.dirname(file));
}

