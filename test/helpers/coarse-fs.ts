/**
 * A file system with coarse timestamps, for the stat cache's racy check: ext4 made with 128-byte inodes
 * keeps whole seconds only (no room for the nanosecond fields), like vfat's 2 s or some network file
 * systems. Loop-mounted from a small image file; needs root (CI runs as root). vfat itself would do as
 * well, but the kernel here has no vfat driver, and vfat has no symlinks.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";

export interface CoarseFs {
  /** Mount point (empty, writable). */
  dir: string;
  cleanup(): Promise<void>;
}

export const canMount = (): boolean => process.getuid?.() === 0;

export async function mountCoarseFs(): Promise<CoarseFs> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-coarse-"));
  const img = path.join(work, "fs.img");
  const dir = path.join(work, "mnt");
  await fs.mkdir(dir);
  await fs.writeFile(img, "");
  await fs.truncate(img, 16 << 20);
  execFileSync("mkfs.ext4", ["-q", "-F", "-I", "128", "-O", "^has_journal", img], { stdio: ["ignore", "ignore", "pipe"] });
  execFileSync("mount", ["-o", "loop", img, dir], { stdio: ["ignore", "ignore", "pipe"] });
  return {
    dir,
    cleanup: async () => {
      execFileSync("umount", [dir], { stdio: ["ignore", "ignore", "pipe"] });
      await fs.rm(work, { recursive: true, force: true });
    },
  };
}
