/**
 * A QEMU Machine Protocol client over a unix socket: greeting, capabilities negotiation, commands
 * matched to replies by `id`, asynchronous events. QMP messages are one JSON object per line.
 */
import { EventEmitter } from "node:events";
import net from "node:net";
import { abortError, sleep } from "../util/sleep.js";
import { TimeoutError } from "./wait.js";

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`QMP ${command}: ${errorClass}: ${desc}`);
    this.name = "QmpError";
  }
}

interface Pending {
  command: string;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

type QmpMessage = {
  QMP?: unknown;
  id?: unknown;
  return?: unknown;
  error?: { class?: string; desc?: string };
  event?: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
};

/** Connect to a unix socket, retrying while it does not exist yet or refuses (QEMU still starting). */
export async function connectUnix(socketPath: string, opts: { timeoutMs: number; signal?: AbortSignal }): Promise<net.Socket> {
  const deadline = Date.now() + opts.timeoutMs;
  let wait = 5;
  for (;;) {
    if (opts.signal?.aborted) throw abortError(opts.signal);
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(socketPath);
        s.once("connect", () => {
          s.removeAllListeners("error");
          resolve(s);
        });
        s.once("error", reject);
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "ECONNREFUSED") throw e;
      if (Date.now() + wait > deadline) throw new TimeoutError(`${socketPath}: not accepting connections after ${opts.timeoutMs} ms`);
      await sleep(wait, opts.signal);
      wait = Math.min(wait * 2, 100);
    }
  }
}

export interface QmpClientEvents {
  event: [QmpEvent];
  close: [];
}

export class QmpClient extends EventEmitter<QmpClientEvents> {
  private buf = "";
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private greetingWaiter?: { resolve: (g: unknown) => void; reject: (e: Error) => void };
  private closedError?: Error;
  greeting: unknown;

  private constructor(private readonly sock: net.Socket) {
    super();
    sock.setEncoding("utf8");
    sock.on("data", (d: string) => this.onData(d));
    sock.on("error", (e) => this.onClose(e));
    sock.on("close", () => this.onClose());
  }

  /** Connect (retrying until the socket appears), read the greeting and leave negotiation mode. */
  static async connect(socketPath: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 10_000;
    const sock = await connectUnix(socketPath, { timeoutMs, signal: opts.signal });
    const c = new QmpClient(sock);
    try {
      c.greeting = await c.waitGreeting(timeoutMs, opts.signal);
      await c.execute("qmp_capabilities", undefined, { timeoutMs, signal: opts.signal });
    } catch (e) {
      c.close();
      throw e;
    }
    return c;
  }

  /** Wraps an already connected socket (tests, or a socket passed as an fd). */
  static async fromSocket(sock: net.Socket, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<QmpClient> {
    const c = new QmpClient(sock);
    c.greeting = await c.waitGreeting(opts.timeoutMs ?? 10_000, opts.signal);
    await c.execute("qmp_capabilities", undefined, opts);
    return c;
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  private waitGreeting(timeoutMs: number, signal?: AbortSignal): Promise<unknown> {
    if (this.greeting !== undefined) return Promise.resolve(this.greeting);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => done(new TimeoutError(`QMP greeting not received within ${timeoutMs} ms`)), timeoutMs);
      const onAbort = (): void => done(abortError(signal));
      const done = (e?: Error, g?: unknown): void => {
        clearTimeout(t);
        signal?.removeEventListener("abort", onAbort);
        this.greetingWaiter = undefined;
        if (e) reject(e);
        else resolve(g);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.greetingWaiter = { resolve: (g) => done(undefined, g), reject: (e) => done(e) };
      if (this.closedError) done(this.closedError);
    });
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf("\n")) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: QmpMessage;
    try {
      msg = JSON.parse(line) as QmpMessage;
    } catch {
      return; // QEMU never sends partial JSON on a line; ignore noise rather than kill the session
    }
    if (msg.QMP !== undefined) {
      this.greeting = msg.QMP;
      this.greetingWaiter?.resolve(msg.QMP);
      return;
    }
    if (typeof msg.event === "string") {
      this.emit("event", { event: msg.event, data: msg.data, timestamp: msg.timestamp });
      return;
    }
    if (msg.id === undefined) return;
    const key = JSON.stringify(msg.id);
    const p = this.pending.get(key);
    if (!p) return;
    this.pending.delete(key);
    if (msg.error) p.reject(new QmpError(p.command, msg.error.class ?? "GenericError", msg.error.desc ?? "unknown error"));
    else p.resolve(msg.return);
  }

  private onClose(err?: Error): void {
    if (this.closedError) return;
    this.closedError = new Error(`QMP connection closed${err ? `: ${err.message}` : ""}`);
    this.greetingWaiter?.reject(this.closedError);
    for (const p of this.pending.values()) p.reject(this.closedError);
    this.pending.clear();
    this.emit("close");
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (opts.signal?.aborted) return Promise.reject(abortError(opts.signal));
    const id = `dbuild-${this.nextId++}`;
    const key = JSON.stringify(id);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    return new Promise<T>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(t);
        opts.signal?.removeEventListener("abort", onAbort);
        this.pending.delete(key);
      };
      const onAbort = (): void => {
        cleanup();
        reject(abortError(opts.signal));
      };
      const t = setTimeout(() => {
        cleanup();
        reject(new TimeoutError(`QMP ${command}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      this.pending.set(key, {
        command,
        resolve: (v) => {
          cleanup();
          resolve(v as T);
        },
        reject: (e) => {
          cleanup();
          reject(e);
        },
      });
      const msg = args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.sock.write(JSON.stringify(msg) + "\n");
    });
  }

  /** Press the ACPI power button (the guest needs acpid or systemd-logind to act on it). */
  async systemPowerdown(opts: { timeoutMs?: number } = {}): Promise<void> {
    await this.execute("system_powerdown", undefined, opts);
  }

  /** Ask QEMU to exit now. QEMU may close the socket before replying: that counts as success. */
  async quit(opts: { timeoutMs?: number } = {}): Promise<void> {
    if (this.closedError) return;
    try {
      await this.execute("quit", undefined, opts);
    } catch (e) {
      if (!this.closedError) throw e;
    }
  }

  /** Resolves with the first event named `name` (optionally matching `pred`). */
  waitEvent(name: string, opts: { timeoutMs: number; signal?: AbortSignal; pred?: (e: QmpEvent) => boolean }): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(t);
        opts.signal?.removeEventListener("abort", onAbort);
        this.off("event", onEvent);
        this.off("close", onClose);
      };
      const onEvent = (e: QmpEvent): void => {
        if (e.event === name && (!opts.pred || opts.pred(e))) {
          cleanup();
          resolve(e);
        }
      };
      const onClose = (): void => {
        cleanup();
        reject(this.closedError ?? new Error("QMP connection closed"));
      };
      const onAbort = (): void => {
        cleanup();
        reject(abortError(opts.signal));
      };
      const t = setTimeout(() => {
        cleanup();
        reject(new TimeoutError(`QMP event ${name} not seen within ${opts.timeoutMs} ms`));
      }, opts.timeoutMs);
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      this.on("event", onEvent);
      this.on("close", onClose);
      if (this.closedError) onClose();
    });
  }

  close(): void {
    this.sock.destroy();
    this.onClose();
  }
}
