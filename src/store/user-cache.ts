import * as os from "node:os";
import * as path from "node:path";

/**
 * Per-user cache of downloads (base layers' packages, imported images). Shared across projects and
 * build dirs because these are keyed by content or by package version, never by project state.
 * Override with DBUILD_CACHE_HOME; defaults to $XDG_CACHE_HOME/dbuild or ~/.cache/dbuild.
 */
export function userCacheDir(): string {
  if (process.env.DBUILD_CACHE_HOME) return path.resolve(process.env.DBUILD_CACHE_HOME);
  const xdg = process.env.XDG_CACHE_HOME;
  return path.join(xdg ? path.resolve(xdg) : path.join(os.homedir(), ".cache"), "dbuild");
}
