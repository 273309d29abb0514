/**
 * Host-side steps: a base layer's `install`, a finalizing layer's `convert`, declarative imports.
 */
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { loadExeca } from "../util/lazy.js";
import { mib } from "../util/units.js";
import { withParentDeathSignal } from "../util/parent-death.js";
import type { Step } from "../report/events.js";
import type { NodeLog } from "./node-log.js";
import { StepError } from "./step-error.js";

/** How a host process ended. */
export interface HostRun {
  /** Exit status; null when killed (timeout, signal) or never started. */
  code: number | null;
  timedOut: boolean;
  signal?: string;
  /** The process could not start: "EACCES" (not executable), "ENOENT" (missing). */
  spawnError?: string;
}

/**
 * Run a host executable with its output streamed to the node log; the caller judges the result.
 * Its whole process tree is killed on abort or timeout.
 */
export async function runHostProcess(
  file: string,
  opts: { cwd: string; env: Record<string, string>; log: Pick<NodeLog, "chunk">; signal: AbortSignal; timeoutMs: number },
): Promise<HostRun> {
  // Checked here: under setpriv a missing or non-executable file is only an exit code of setpriv's.
  try {
    await fs.access(file, fs.constants.X_OK);
  } catch (e) {
    return { code: null, timedOut: false, spawnError: (e as NodeJS.ErrnoException).code === "ENOENT" ? "ENOENT" : "EACCES" };
  }
  const execa = await loadExeca();
  const [cmd, argv] = withParentDeathSignal(file, []);
  const child = execa(cmd, argv, {
    cwd: opts.cwd,
    env: opts.env,
    extendEnv: true,
    reject: false,
    cancelSignal: opts.signal,
    timeout: opts.timeoutMs,
    forceKillAfterDelay: 3000,
    stdin: "ignore",
    buffer: false,
    // Own process group: on abort the whole tree (apt-get, mkfs, ...) goes, not just the script.
    detached: true,
    cleanup: true,
  });
  const killTree = (): void => {
    if (child.pid) {
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
  };
  opts.signal.addEventListener("abort", killTree, { once: true });
  child.stdout?.on("data", (d: Buffer) => opts.log.chunk("stdout", d));
  child.stderr?.on("data", (d: Buffer) => opts.log.chunk("stderr", d));
  const r = await child;
  opts.signal.removeEventListener("abort", killTree);
  if (r.timedOut) killTree();
  const spawnError = r.failed && (r.code === "EACCES" || r.code === "ENOENT") ? r.code : undefined;
  return { code: r.exitCode ?? null, timedOut: r.timedOut, ...(r.signal ? { signal: r.signal } : {}), ...(spawnError ? { spawnError } : {}) };
}

/** Run a host script with its output streamed to the node log; non-zero exit is a StepError. */
export async function runHostScript(
  step: Step,
  file: string,
  opts: { cwd: string; env: Record<string, string>; log: NodeLog; signal: AbortSignal; timeoutMs: number },
): Promise<void> {
  opts.log.note(`${step}: ${file}`);
  const r = await runHostProcess(file, opts);
  if (opts.signal.aborted) throw new StepError(step, "interrupted");
  if (r.timedOut) throw new StepError(step, `${path.basename(file)} timed out after ${opts.timeoutMs / 1000} s`, null);
  if (r.spawnError === "EACCES") throw new StepError(step, `${file} is not executable (chmod +x it)`);
  if (r.spawnError === "ENOENT") throw new StepError(step, `${file} not found`);
  if (r.code !== 0) throw new StepError(step, `${path.basename(file)} exited with code ${r.code ?? "?"}${r.signal ? ` (${r.signal})` : ""}`, r.code);
}

/**
 * Fetch a declared import into the download cache (by sha256), verifying the checksum. `from` is a
 * path (relative to the layer dir) or an http(s)/file URL. Returns the cached file.
 */
export async function fetchImport(
  from: string,
  sha256: string,
  opts: { layerDir: string; cacheDir: string; signal: AbortSignal; progress: (detail: string) => void },
): Promise<string> {
  const want = sha256.toLowerCase();
  const cached = path.join(opts.cacheDir, "downloads", want);
  try {
    await fs.access(cached);
    opts.progress("cached");
    return cached;
  } catch {
    /* not cached */
  }
  await fs.mkdir(path.dirname(cached), { recursive: true });
  const tmp = `${cached}.part-${process.pid}`;
  const hash = createHash("sha256");
  let done = 0;
  let total = 0;
  let last = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      done += chunk.length;
      const now = Date.now();
      if (now - last > 1000) {
        last = now;
        opts.progress(total ? `${mib(done)} of ${mib(total)} (${Math.floor((done * 100) / total)}%)` : mib(done));
      }
      cb(null, chunk);
    },
  });
  try {
    let source: Readable;
    if (/^https?:\/\//.test(from)) {
      const res = await fetch(from, { signal: opts.signal });
      if (!res.ok || !res.body) throw new StepError("import", `download of ${from} failed: HTTP ${res.status}`);
      total = Number(res.headers.get("content-length") ?? 0);
      source = Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>);
    } else {
      const file = from.startsWith("file://") ? new URL(from).pathname : path.resolve(opts.layerDir, from);
      total = (await fs.stat(file).catch(() => {
        throw new StepError("import", `import source ${file} does not exist`);
      })).size;
      source = createReadStream(file);
    }
    await pipeline(source, meter, createWriteStream(tmp), { signal: opts.signal });
    const got = hash.digest("hex");
    if (got !== want) {
      throw new StepError("import", `checksum mismatch for ${from}: expected sha256 ${want}, got ${got} (fix sha256: in layer.yaml if the source changed on purpose)`);
    }
    await fs.rename(tmp, cached);
    opts.progress(`${mib(done)} verified`);
    return cached;
  } finally {
    await fs.rm(tmp, { force: true });
  }
}

