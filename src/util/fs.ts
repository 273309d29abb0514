import { accessSync, constants, realpathSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";

/** True if the path exists (follows symlinks: a dangling link does not exist). */
export async function pathExists(p: string): Promise<boolean> {
  try {
    await fs.access(p);
    return true;
  } catch {
    return false;
  }
}

/** The executable `cmd` in a directory of PATH (then of `extraDirs`), or undefined. */
export function findOnPath(cmd: string, extraDirs: readonly string[] = []): string | undefined {
  for (const dir of [...(process.env.PATH ?? "").split(path.delimiter), ...extraDirs]) {
    if (!dir) continue;
    try {
      accessSync(path.join(dir, cmd), constants.X_OK);
      return path.join(dir, cmd);
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The path with every symlink resolved; when it cannot be (it does not exist), just made absolute. */
export function realPathOr(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}
