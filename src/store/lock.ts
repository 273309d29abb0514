/**
 * The build-dir lock: one dbuild at a time builds, collects garbage, pushes or pulls in a build dir.
 *
 * A kernel-held lock (flock(2)), so it is released the moment its holder dies, whatever kills it
 * (SIGKILL, the OOM killer, a crash), and never judged stale by age: a suspended dbuild (Ctrl-Z, a laptop
 * asleep) keeps it. Node has no flock API; the lock is held by a child `flock` process (util-linux,
 * Essential on Debian) whose stdin is a pipe from this process: when this process dies, the kernel closes
 * the pipe, the child's `cat` sees EOF and exits, and the kernel drops the lock. This needs no native addon
 * (fs-ext is the npm flock binding: a compiled module, rarely released) and, unlike proper-lockfile's
 * mkdir lock refreshed by mtime, cannot go stale while its holder lives or outlive a dead holder.
 *
 * Beside the lock, `lock.json` says who holds it (pid, command, since when) so a waiting dbuild can say
 * what it waits for, as cargo's "Blocking waiting for file lock on build directory" does.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs/promises";
import type { Socket } from "node:net";
import * as path from "node:path";
import { DbuildError } from "../util/errors.js";
import type { Store } from "./store.js";

export interface LockHolder {
  pid: number;
  command: string;
  since: string;
}

export interface LockOptions {
  /** What this process is doing, shown to anyone waiting (e.g. "dbuild all"). */
  command: string;
  /** false: fail at once (exit 75) instead of waiting for the holder. */
  wait: boolean;
  /** Called once if the lock is busy and we are about to wait. */
  onWait?: (holder: LockHolder | undefined, lockFile: string) => void;
  signal?: AbortSignal;
}

/** Exit status when the build dir is locked and --no-wait was given (EX_TEMPFAIL: try again later). */
export const LOCKED_EXIT = 75;

export type Release = () => Promise<void>;

const CONFLICT = 75;

function holderFile(store: Store): string {
  return path.join(store.internalDir, "lock.json");
}

export async function readLockHolder(store: Store): Promise<LockHolder | undefined> {
  try {
    return JSON.parse(await fs.readFile(holderFile(store), "utf8")) as LockHolder;
  } catch {
    return undefined;
  }
}

function describeHolder(h: LockHolder | undefined): string {
  if (!h) return "another dbuild";
  return `pid ${h.pid}: ${h.command}, since ${h.since}`;
}

/**
 * Try to take the lock with `flock`: resolves with the holding child once it reports "locked", or
 * undefined if `nonBlocking` and the lock is busy.
 */
function flockChild(lockFile: string, nonBlocking: boolean, signal?: AbortSignal): Promise<ChildProcess | undefined> {
  const args = [...(nonBlocking ? ["-n", "-E", String(CONFLICT)] : []), "-x", lockFile, "-c", "echo locked; exec cat >/dev/null"];
  const child = spawn("flock", args, { stdio: ["pipe", "pipe", "pipe"] });
  return new Promise((resolve, reject) => {
    let out = "";
    let err = "";
    const onAbort = (): void => {
      child.kill("SIGKILL");
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    const done = (): void => signal?.removeEventListener("abort", onAbort);
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("locked")) {
        done();
        child.stdout.removeAllListeners("data");
        child.stdout.destroy();
        // The child lives as long as the lock is held; it must not keep the event loop alive.
        child.unref();
        (child.stdin as unknown as Socket).unref();
        (child.stderr as unknown as Socket).unref();
        resolve(child);
      }
    });
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.once("error", (e: NodeJS.ErrnoException) => {
      done();
      reject(
        new DbuildError(
          {
            reason: "missing-tool",
            where: "flock",
            message: `cannot run flock to lock the build dir (${e.message})`,
            hint: "install util-linux (apt-get install util-linux)",
          },
          2,
        ),
      );
    });
    child.once("exit", (code) => {
      done();
      if (out.includes("locked")) return;
      if (nonBlocking && code === CONFLICT) return resolve(undefined);
      if (signal?.aborted) return reject(signal.reason instanceof Error ? signal.reason : new Error("interrupted"));
      reject(new DbuildError({ reason: "lock", where: lockFile, message: `flock failed (exit ${code}): ${err.trim()}`, hint: "check that the build dir is writable" }, 1));
    });
  });
}

/** Take the build-dir lock (waiting for the holder unless `wait` is false). */
export async function lockBuildDir(store: Store, o: LockOptions): Promise<Release> {
  await store.init();
  const lockFile = path.join(store.internalDir, "lock");
  let child = await flockChild(lockFile, true, o.signal);
  if (!child) {
    const holder = await readLockHolder(store);
    if (!o.wait) {
      throw new DbuildError(
        {
          reason: "locked",
          where: store.buildDir,
          message: `the build dir is locked by ${describeHolder(holder)}`,
          hint: "wait for it to finish, or run without --no-wait to wait for it",
        },
        LOCKED_EXIT,
      );
    }
    o.onWait?.(holder, lockFile);
    child = await flockChild(lockFile, false, o.signal);
  }
  const holding = child!;
  const me: LockHolder = { pid: process.pid, command: o.command, since: new Date().toISOString() };
  await fs.writeFile(holderFile(store), JSON.stringify(me) + "\n");
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    await fs.rm(holderFile(store), { force: true }).catch(() => undefined);
    const exited = new Promise<void>((r) => {
      if (holding.exitCode !== null || holding.signalCode !== null) r();
      else holding.once("exit", () => r());
    });
    // Referenced again: waiting for an unreferenced child would let the event loop run dry meanwhile.
    holding.ref();
    (holding.stdin as unknown as Socket | null)?.ref();
    holding.stdin?.end();
    await exited;
  };
}

/** Is another process holding the build-dir lock now? A look only: nothing is created, nothing waits. */
export async function buildDirLocked(store: Store): Promise<boolean> {
  const lockFile = path.join(store.internalDir, "lock");
  try {
    await fs.access(lockFile);
  } catch {
    return false; // never locked here
  }
  const child = await flockChild(lockFile, true).catch(() => undefined);
  if (!child) return true;
  // Free: it was ours for a moment; let it go at once.
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.ref();
  child.stdin?.end();
  await exited;
  return false;
}

/** Describe the holder for a "waiting" message. */
export function waitingMessage(store: Store, holder: LockHolder | undefined): string {
  return `Blocking waiting for file lock on build directory ${store.buildDir} (held by ${describeHolder(holder)})`;
}
