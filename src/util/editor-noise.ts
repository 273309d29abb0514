/**
 * Files editors leave next to the ones you edit (swap, backup, lock and temp files). They are not
 * part of a layer: the watcher ignores them, fingerprints skip them and rsync does not copy them, so
 * a vim session open on target/install neither changes a key nor lands in the image.
 */
import * as path from "node:path";

/** Each entry: the file-name test, and the same rule as an rsync --exclude pattern. */
const RULES: ReadonlyArray<readonly [RegExp, string]> = [
  [/^\..*\.sw[a-p]$/, ".*.sw[a-p]"], // vim swap: .file.swp, .file.swo, ...
  [/^\..*\.swx$/, ".*.swx"],
  [/~$/, "*~"], // backups (emacs, vim, gedit)
  [/^4913$/, "4913"], // vim's write-permission probe
  [/^\.#/, ".#*"], // emacs lock
  [/^#.*#$/, "#*#"], // emacs auto-save
  [/\.tmp$/, "*.tmp"],
  [/^\.goutputstream-/, ".goutputstream-*"], // GLib atomic-save temp
];

export function isEditorNoise(file: string): boolean {
  const base = path.basename(file);
  return RULES.some(([re]) => re.test(base));
}

/** rsync arguments excluding the same files. */
export const RSYNC_NOISE_EXCLUDES: readonly string[] = RULES.map(([, glob]) => `--exclude=${glob}`);
