/**
 * File watching for `dbuild watch`: chokidar on the given paths, editors' noise filtered out, paths
 * reported relative to the project root. Debouncing is the state machine's job, not this one's.
 */
import type { Stats } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { watch, type FSWatcher } from "chokidar";
import { DbuildError } from "../util/errors.js";
import { isEditorNoise } from "../util/editor-noise.js";

/**
 * Files editors write next to the one being edited: vim swap files and its `4913` write probe,
 * backups (`file~`), emacs lock and autosave files, GNOME's atomic-save temporaries, `*.tmp`.
 */
export { isEditorNoise };

function inside(child: string, dir: string): boolean {
  const rel = path.relative(dir, child);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}

export interface WatchSpec {
  /** Absolute path the user asked to watch (a directory or a file). */
  path: string;
  /** What chokidar watches: the path itself, or a file's directory (survives atomic renames). */
  watchRoot: string;
  isDir: boolean;
}

/**
 * Resolve and check the paths given on the command line. Each must exist inside the project: a
 * layer directory (`layers/web`), a file in it (`layers/web/target/install`), or any project path.
 */
export async function resolveWatchPaths(root: string, given: readonly string[], cwd = process.cwd()): Promise<WatchSpec[]> {
  if (!given.length) {
    throw new DbuildError({ reason: "bad-option", where: "watch", message: "no path to watch", hint: "e.g. dbuild watch layers/NAME" });
  }
  const out: WatchSpec[] = [];
  for (const g of given) {
    // Relative to the current directory as a shell would, but `layers/x` also works from elsewhere with -C.
    const candidates = path.isAbsolute(g) ? [g] : [path.resolve(cwd, g), path.resolve(root, g)];
    let found: { p: string; st: Stats } | undefined;
    for (const c of candidates) {
      try {
        found = { p: c, st: await fs.stat(c) };
        break;
      } catch {
        // try the next candidate
      }
    }
    if (!found) {
      throw new DbuildError({ reason: "no-such-path", where: g, message: "no such file or directory", hint: "watch a layer directory, e.g. layers/NAME" });
    }
    if (!inside(found.p, root)) {
      throw new DbuildError({ reason: "outside-project", where: g, message: `not inside the project ${root}`, hint: "watch a path under layers/ of the project (-C DIR selects the project)" });
    }
    const isDir = found.st.isDirectory();
    out.push({ path: found.p, watchRoot: isDir ? found.p : path.dirname(found.p), isDir });
  }
  return out;
}

export interface WatcherOptions {
  root: string;
  specs: readonly WatchSpec[];
  /** Directories never reported nor descended into (the build dir, .git). */
  ignoreDirs: readonly string[];
  onChange: (relPath: string) => void;
  onError: (e: Error) => void;
  signal?: AbortSignal;
  /** How long to wait for the initial scan (ms). */
  readyTimeoutMs?: number;
}

export interface Watcher {
  close(): Promise<void>;
}

/** Start watching; resolves once chokidar has scanned the trees, so no later change is missed. */
export async function startWatcher(o: WatcherOptions): Promise<Watcher> {
  const ignored = (p: string): boolean => isEditorNoise(p) || o.ignoreDirs.some((d) => inside(p, d));
  const wanted = (p: string): boolean => !ignored(p) && o.specs.some((s) => (s.isDir ? inside(p, s.path) : p === s.path));
  const roots = [...new Set(o.specs.map((s) => s.watchRoot))];
  const w: FSWatcher = watch(roots, {
    ignoreInitial: true,
    ignored,
    // An editor that saves by writing a temporary file and renaming it over the original shows up as
    // unlink + add within a few ms: reported as one change.
    atomic: 100,
    // Large files copied into target/ are reported once complete, not at every write.
    awaitWriteFinish: { stabilityThreshold: 50, pollInterval: 20 },
    followSymlinks: true,
  });
  const report = (p: string): void => {
    const abs = path.resolve(p);
    if (wanted(abs)) o.onChange(path.relative(o.root, abs) || ".");
  };
  for (const ev of ["add", "change", "unlink", "addDir", "unlinkDir"] as const) w.on(ev, report);
  w.on("error", (e) => o.onError(e instanceof Error ? e : new Error(String(e))));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => {
      cleanup();
      reject(new Error(`watching ${roots.join(", ")}: no initial scan after ${o.readyTimeoutMs ?? 30_000} ms`));
    }, o.readyTimeoutMs ?? 30_000);
    const onAbort = (): void => {
      cleanup();
      reject(o.signal?.reason instanceof Error ? o.signal.reason : new Error("aborted"));
    };
    const cleanup = (): void => {
      clearTimeout(t);
      o.signal?.removeEventListener("abort", onAbort);
    };
    o.signal?.addEventListener("abort", onAbort, { once: true });
    w.once("ready", () => {
      cleanup();
      resolve();
    });
  }).catch(async (e: unknown) => {
    await w.close();
    throw e;
  });
  return { close: () => w.close() };
}
