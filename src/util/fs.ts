import * as fs from "node:fs/promises";

/** True if the path exists (follows symlinks: a dangling link does not exist). */
export async function pathExists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}
