/**
 * Commands in the guest over SSH with the `ssh2` library: one connection per VM, streamed output,
 * exit status. The first handshake's host key is checked against the keys the guest holds, read through
 * the guest agent (vm/hostkeys.ts), then pinned for every later connection.
 */
import type { Client, ConnectConfig } from "ssh2";
import { loadSsh2 } from "../util/lazy.js";
import { DbuildError } from "../util/errors.js";
import type { ExecOptions, ExecResult } from "./types.js";
import { abortError, sleep } from "../util/sleep.js";

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

  /** One connection attempt; rejects if the handshake does not complete within `timeoutMs`. */
  static async connect(target: SshTarget, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<SshSession> {
    if (opts.signal?.aborted) throw abortError(opts.signal);
    const ssh2 = await loadSsh2();
    return SshSession.open(new ssh2.Client(), target, opts);
  }

  private static open(client: Client, target: SshTarget, opts: { timeoutMs?: number; signal?: AbortSignal }): Promise<SshSession> {
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
 * Connect, retrying until SSH answers and `true` runs. User-mode networking accepts TCP before the
 * guest listens and then drops the connection, so attempts are capped, not just the time.
 */
export async function waitForSsh(
  target: SshTarget,
  opts: { deadline: number; maxAttempts?: number; signal?: AbortSignal; onAttempt?: (n: number, err?: Error) => void },
): Promise<SshSession> {
  // No cap by default: the deadline bounds the wait (a Debian guest refuses or resets for a minute and more).
  const maxAttempts = opts.maxAttempts ?? Number.POSITIVE_INFINITY;
  let lastErr: Error | undefined;
  for (let attempt = 1; attempt <= maxAttempts; attempt++) {
    const left = opts.deadline - Date.now();
    if (left <= 0) break;
    const t0 = Date.now();
    try {
      const s = await SshSession.connect(target, { timeoutMs: Math.min(left, 5000), signal: opts.signal });
      try {
        const r = await s.exec("true", { timeoutMs: Math.max(1000, Math.min(opts.deadline - Date.now(), 5000)), signal: opts.signal });
        if (r.code === 0) return s;
        lastErr = new Error(`\`true\` exited with ${r.code ?? r.signal}`);
      } catch (e) {
        lastErr = e as Error;
      }
      s.close();
    } catch (e) {
      if (opts.signal?.aborted) throw abortError(opts.signal);
      lastErr = e as Error;
    }
    opts.onAttempt?.(attempt, lastErr);
    // Refused or dropped at once means nothing listens yet: pause a little rather than spin.
    const spent = Date.now() - t0;
    if (spent < 200) await sleep(200 - spent, opts.signal);
  }
  throw lastErr ?? new Error("ssh: deadline passed before the first attempt");
}
