/**
 * Commands in the guest over SSH with the `ssh2` library: one connection per VM, streamed output,
 * exit status. The first handshake's host key is checked against the keys the guest holds, read through
 * the guest agent (vm/hostkeys.ts), then pinned for every later connection.
 */
import * as net from "node:net";
import type { Client, ConnectConfig } from "ssh2";
import { loadSsh2 } from "../util/lazy.js";
import { DbuildError } from "../util/errors.js";
import type { ExecOptions, ExecResult } from "./types.js";
import { abortError } from "../util/sleep.js";

export interface SshTarget {
  host: string;
  port: number;
  /** Default root. */
  username?: string;
  privateKey: string | Buffer;
  /** Accept only this host key (raw blob); without it any key is accepted and reported to onHostKey. */
  hostKey?: Buffer;
  onHostKey?: (key: Buffer) => void;
}

/**
 * dropbear 2022.83 offers ssh-rsa even with only an ed25519 host key and then asserts if a client picks
 * it; ed25519 first avoids that whatever keys the guest holds.
 */
const HOST_KEY_ALGORITHMS = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256"] as const;

/** POSIX single-quote a word so any byte string survives `sh -c`. */
export function shellQuote(s: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Environment and working directory travel inside the command line, because dropbear (and OpenSSH
 * without AcceptEnv) ignores SSH `env` requests.
 */
export function buildRemoteCommand(command: string, opts: { env?: Record<string, string>; cwd?: string; sudo?: boolean } = {}): string {
  if (opts.sudo) {
    // The whole script (exports included) runs under sudo: sudo resets the environment, and -n fails at
    // once instead of prompting for a password nobody will type.
    return `exec sudo -n -- sh -c ${shellQuote(buildRemoteCommand(command, { ...opts, sudo: false }))}`;
  }
  const parts: string[] = [];
  for (const [k, v] of Object.entries(opts.env ?? {})) {
    if (!ENV_NAME.test(k)) throw new Error(`invalid environment variable name: ${JSON.stringify(k)}`);
    parts.push(`export ${k}=${shellQuote(v)}`);
  }
  if (opts.cwd !== undefined) parts.push(`cd ${shellQuote(opts.cwd)} || exit 1`);
  if (parts.length === 0) return command;
  // A newline, not `;`, before the command: it may itself start with a comment or a here-document.
  return `${parts.join("; ")}\n${command}`;
}

export class SshSession {
  private closed = false;
  /** Channels given up on (timeout, abort) whose close the guest has not confirmed yet. */
  private readonly closing = new Set<Promise<void>>();

  private constructor(
    private readonly client: Client,
    readonly target: SshTarget,
  ) {
    client.on("close", () => (this.closed = true));
    client.on("end", () => (this.closed = true));
    client.on("error", () => (this.closed = true));
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /**
   * One connection attempt; rejects if the handshake does not complete within `timeoutMs`. `onAnswer`:
   * called when the server sends its first bytes (its identification: something really listens).
   */
  static async connect(target: SshTarget, opts: { timeoutMs?: number; signal?: AbortSignal; onAnswer?: () => void } = {}): Promise<SshSession> {
    if (opts.signal?.aborted) throw abortError(opts.signal);
    const ssh2 = await loadSsh2();
    return SshSession.open(new ssh2.Client(), target, opts);
  }

  private static open(client: Client, target: SshTarget, opts: { timeoutMs?: number; signal?: AbortSignal; onAnswer?: () => void }): Promise<SshSession> {
    const cfg: ConnectConfig = {
      host: target.host,
      port: target.port,
      username: target.username ?? "root",
      privateKey: target.privateKey,
      // Our own timer below: ssh2's readyTimeout can fire as an error event after the attempt was given up.
      readyTimeout: 0,
      // Pinned once the key was checked through the guest agent (see vm/hostkeys.ts).
      hostVerifier: (key: Buffer) => {
        target.onHostKey?.(key);
        return target.hostKey ? key.equals(target.hostKey) : true;
      },
      algorithms: { serverHostKey: [...HOST_KEY_ALGORITHMS] },
      keepaliveInterval: 15_000,
      keepaliveCountMax: 4,
    };
    if (opts.onAnswer) {
      // Our own socket, to see the server's first bytes; ssh2 adds its listeners in client.connect
      // below, in this same tick, so it misses none of them.
      const sock = net.connect({ host: target.host, port: target.port });
      const onAnswer = opts.onAnswer;
      sock.once("data", () => onAnswer());
      cfg.sock = sock;
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        client.destroy();
        reject(new Error(`SSH handshake with ${target.host}:${target.port} not done within ${opts.timeoutMs ?? 10_000} ms`));
      }, opts.timeoutMs ?? 10_000);
      const onAbort = (): void => {
        clearTimeout(timer);
        client.destroy();
        reject(abortError(opts.signal));
      };
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      client.once("ready", () => {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        client.off("error", onError);
        resolve(new SshSession(client, target));
      });
      const onError = (e: Error): void => {
        // ssh2 may emit a second error (e.g. "Connection lost before handshake" after a timeout) on a
        // client already given up: keep listening so it is not an uncaught exception.
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        client.destroy();
        reject(e);
      };
      client.on("error", onError);
      // A server that sends its banner and then closes (sshd restarting while the guest boots) ends
      // with "close" and no error: without this the attempt would wait forever.
      const onClose = (): void => {
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        reject(new Error("connection closed during the SSH handshake"));
      };
      client.once("close", onClose);
      client.once("ready", () => client.off("close", onClose));
      client.connect(cfg);
    });
  }

  exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    if (this.closed) return Promise.reject(new Error("ssh connection is closed"));
    if (opts.signal?.aborted) return Promise.reject(abortError(opts.signal));
    const full = buildRemoteCommand(command, { ...opts, sudo: opts.asRoot === true && (this.target.username ?? "root") !== "root" });
    const where = `${this.target.host}:${this.target.port}`;
    return new Promise((resolve, reject) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const settle = (f: () => void): void => {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        this.client.off("close", onConnClose);
        f();
      };
      const onConnClose = (): void => settle(() => reject(new Error(`ssh connection to ${where} lost while running: ${command}`)));
      let stopStream: (() => void) | undefined;
      const onAbort = (): void => {
        stopStream?.();
        settle(() => reject(abortError(opts.signal)));
      };
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      this.client.on("close", onConnClose);
      if (opts.timeoutMs !== undefined) {
        const ms = opts.timeoutMs;
        timer = setTimeout(() => {
          stopStream?.();
          settle(() =>
            reject(
              new DbuildError(
                {
                  reason: "exec-timeout",
                  where,
                  message: `command did not finish within ${Math.round(ms / 1000)} s: ${command}`,
                  hint: "raise the timeout, or check the command for a prompt waiting for input",
                },
                1,
              ),
            ),
          );
        }, ms);
      }
      const start = (): void => {
        if (settled) return;
        this.client.exec(full, (err, stream) => {
        if (err) {
          settle(() => reject(err));
          return;
        }
        stopStream = () => {
          // Ask the guest to kill the process tree, then drop the channel whatever it does. Until the
          // guest confirms the close, the next exec waits (see closing).
          const closed = new Promise<void>((done) => {
            const t = setTimeout(done, 3000);
            stream.once("close", () => {
              clearTimeout(t);
              done();
            });
          });
          this.closing.add(closed);
          void closed.then(() => this.closing.delete(closed));
          try {
            stream.signal("KILL");
          } catch {
            // channel already closed
          }
          stream.close();
        };
        if (settled) {
          stopStream();
          return;
        }
        let code: number | null = null;
        let sig: string | null = null;
        stream.on("exit", (c: number | null, s?: string) => {
          code = typeof c === "number" ? c : null;
          sig = s ?? null;
        });
        stream.on("data", (d: Buffer) => opts.onStdout?.(d));
        // Standard input, then EOF (without stdin the channel's input stays open, as before).
        if (opts.stdin !== undefined) stream.end(opts.stdin);
        stream.stderr.on("data", (d: Buffer) => opts.onStderr?.(d));
        stream.on("close", () => settle(() => resolve({ code, signal: sig })));
        });
      };
      // Deferred: a throw from client.exec (connection gone) must still reject this exec, not escape.
      if (this.closing.size) void Promise.all(this.closing).then(start).catch((e: unknown) => settle(() => reject(e instanceof Error ? e : new Error(String(e)))));
      else start();
    });
  }

  close(): void {
    this.closed = true;
    this.client.end();
    this.client.destroy();
  }
}

/**
 * Connect, retrying until SSH answers and `true` runs, within the deadline (and `maxAttempts`, if
 * given). User-mode networking accepts TCP before the guest listens, then drops or stalls it.
 *
 * The schedule (unit-tested in test/unit/vm-ssh-wait.test.ts): an attempt refused or dropped at once
 * is followed by the next one `minGapMs` (200 ms) after it started, never a spin (busy probes starve a
 * TCG guest of the host's CPU); while the newest attempt has had no answer for `staggerMs`, another
 * starts, up to MAX_IN_FLIGHT at once (an unanswered attempt is not cut short: the server may be slow to
 * speak, sshd re-executing itself under TCG). As soon as
 * the server answers one attempt (its identification: the guest really listens), the others are
 * dropped and no new one starts while it logs in: a guest under TCG then serves one handshake, not
 * three at once, and a slow server is never cut short by the schedule.
 */
export async function waitForSsh(
  target: SshTarget,
  opts: {
    deadline: number;
    maxAttempts?: number;
    /** A new attempt starts when the newest one has had no answer for this long (default 1000 ms). */
    staggerMs?: number;
    /** Least time between the starts of two attempts (default 200 ms). */
    minGapMs?: number;
    signal?: AbortSignal;
    onAttempt?: (n: number, err?: Error) => void;
  },
): Promise<SshSession> {
  // No cap by default: the deadline bounds the wait (a Debian guest refuses or resets for a minute and more).
  const maxAttempts = opts.maxAttempts ?? Number.POSITIVE_INFINITY;
  const staggerMs = opts.staggerMs ?? 1000;
  const minGapMs = opts.minGapMs ?? 200;
  // Attempts overlap. QEMU's user network accepts the host's connection at once and forwards it to a
  // guest that may not have its address yet: that SYN is then lost, and the attempt would sit out its
  // whole timeout (measured: readiness came in 5 s steps; QEMU resends that SYN only after ~3 s). An
  // unanswered attempt costs the guest nothing, so a fresh one every staggerMs finds the guest soon
  // after it listens; answered ones beyond the first are dropped before they cost it a login.
  const MAX_IN_FLIGHT = 3;
  const ctl = new AbortController();
  const inFlight = new Map<number, { done: Promise<void>; ctl: AbortController }>();
  let winner: SshSession | undefined;
  let lastErr: Error | undefined;
  let attempts = 0;
  let lastStart = 0;
  let newestPending = false;
  /** The attempt the server answered, which is logging in, if any. */
  let live: number | undefined;
  let wake: () => void = () => {};

  const attempt = async (n: number, signal: AbortSignal): Promise<void> => {
    const t0 = Date.now();
    let err: Error | undefined;
    const onAnswer = (): void => {
      // Replaced already (its abort is under way).
      if (!inFlight.has(n)) return;
      if (live !== undefined || winner) {
        // Another attempt got there first: this one is dropped.
        inFlight.get(n)?.ctl.abort(new Error("another SSH attempt is logging in"));
        return;
      }
      live = n;
      for (const [m, a] of inFlight) if (m !== n) a.ctl.abort(new Error("another SSH attempt is logging in"));
    };
    try {
      const s = await SshSession.connect(target, { timeoutMs: Math.max(1, Math.min(opts.deadline - t0, 5000)), signal, onAnswer });
      try {
        const r = await s.exec("true", { timeoutMs: Math.max(1000, Math.min(opts.deadline - Date.now(), 5000)), signal });
        if (r.code === 0 && !winner) {
          winner = s;
          return;
        }
        if (r.code !== 0) err = new Error(`\`true\` exited with ${r.code ?? r.signal}`);
      } catch (e) {
        err = e as Error;
      }
      s.close();
    } catch (e) {
      err = e as Error;
    }
    if (live === n) live = undefined;
    if (winner || opts.signal?.aborted) return;
    // Dropped for another attempt that got further: not an attempt that failed.
    if (signal.aborted && !ctl.signal.aborted) return;
    lastErr = err;
    opts.onAttempt?.(n, err);
  };

  try {
    while (!winner) {
      if (opts.signal?.aborted) throw abortError(opts.signal);
      const now = Date.now();
      const canStart = attempts < maxAttempts && now < opts.deadline && live === undefined && inFlight.size < MAX_IN_FLIGHT;
      if (attempts >= maxAttempts || now >= opts.deadline) {
        if (inFlight.size === 0) break;
      }
      const next = lastStart + (newestPending ? staggerMs : minGapMs);
      if (canStart && now >= next) {
        lastStart = now;
        const n = ++attempts;
        newestPending = true;
        const actl = new AbortController();
        const signals = [ctl.signal, actl.signal, ...(opts.signal ? [opts.signal] : [])];
        const done = attempt(n, AbortSignal.any(signals)).finally(() => {
          inFlight.delete(n);
          if (n === attempts) newestPending = false;
          wake();
        });
        inFlight.set(n, { done, ctl: actl });
        continue;
      }
      const waitMs = canStart ? Math.max(0, next - now) : undefined;
      await new Promise<void>((resolve) => {
        const done = (): void => {
          if (t) clearTimeout(t);
          opts.signal?.removeEventListener("abort", done);
          wake = () => {};
          resolve();
        };
        // Woken by a settled attempt, the timer for the next start, or an abort.
        const t = waitMs !== undefined ? setTimeout(done, waitMs) : undefined;
        wake = done;
        opts.signal?.addEventListener("abort", done, { once: true });
      });
    }
  } finally {
    // Losers: their connections are dropped (an abort ends a handshake or a `true` still running).
    ctl.abort(new Error("another SSH attempt succeeded"));
    await Promise.allSettled([...inFlight.values()].map((a) => a.done));
  }
  if (winner) return winner;
  if (opts.signal?.aborted) throw abortError(opts.signal);
  throw lastErr ?? new Error("ssh: deadline passed before the first attempt");
}
