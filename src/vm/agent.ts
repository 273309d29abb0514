/**
 * QEMU guest agent client over the host side of the agent's virtio-serial chardev (a unix socket).
 *
 * The agent answers requests in order but has no session: replies to requests sent before the guest
 * opened the port, or before a reconnect, may still be queued. `guest-sync-delimited` resynchronises:
 * we send 0xFF (resets the agent's JSON parser) plus a fresh random id, drop every byte up to the 0xFF
 * the agent writes before its reply, and skip replies whose id is not ours. After any timeout the
 * stream is treated as dirty and the next command syncs first.
 */
import { randomInt } from "node:crypto";
import type net from "node:net";
import { connectUnix } from "./qmp.js";
import { abortError } from "../util/sleep.js";
import { TimeoutError } from "./wait.js";

export class AgentError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    desc: string,
  ) {
    super(`guest agent ${command}: ${errorClass}: ${desc}`);
    this.name = "AgentError";
  }
}

export interface GuestIpAddress {
  "ip-address": string;
  "ip-address-type": "ipv4" | "ipv6";
  prefix: number;
}
export interface GuestNetworkInterface {
  name: string;
  "hardware-address"?: string;
  "ip-addresses"?: GuestIpAddress[];
}

interface Waiter {
  command: string;
  /** For guest-sync-delimited: discard input until 0xFF, and accept only `return === syncId`. */
  syncId?: number;
  sawSentinel: boolean;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

interface Reply {
  return?: unknown;
  error?: { class?: string; desc?: string };
}

export interface AgentCallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

export class GuestAgent {
  private buf: Buffer = Buffer.alloc(0);
  private waiter?: Waiter;
  private chain: Promise<unknown> = Promise.resolve();
  private dirty = true;
  private closedError?: Error;

  constructor(private readonly sock: net.Socket) {
    sock.on("data", (d: Buffer) => this.onData(d));
    sock.on("error", (e) => this.onClose(e));
    sock.on("close", () => this.onClose());
  }

  static async connect(socketPath: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<GuestAgent> {
    return new GuestAgent(await connectUnix(socketPath, { timeoutMs: opts.timeoutMs ?? 10_000, signal: opts.signal }));
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  close(): void {
    this.sock.destroy();
    this.onClose();
  }

  private onClose(err?: Error): void {
    if (this.closedError) return;
    this.closedError = new Error(`guest agent connection closed${err ? `: ${err.message}` : ""}`);
    this.waiter?.reject(this.closedError);
    this.waiter = undefined;
  }

  private onData(d: Buffer): void {
    const w = this.waiter;
    if (!w) return; // nobody asked: a stale reply, resync will skip anything left over anyway
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      if (w.syncId !== undefined && !w.sawSentinel) {
        const i = this.buf.indexOf(0xff);
        if (i < 0) {
          this.buf = Buffer.alloc(0);
          return;
        }
        this.buf = this.buf.subarray(i + 1);
        w.sawSentinel = true;
      }
      const nl = this.buf.indexOf(0x0a);
      if (nl < 0) return;
      const line = this.buf.subarray(0, nl).toString("utf8").trim();
      this.buf = this.buf.subarray(nl + 1);
      if (!line) continue;
      let msg: Reply;
      try {
        msg = JSON.parse(line) as Reply;
      } catch {
        continue;
      }
      if (w.syncId !== undefined && !msg.error && msg.return !== w.syncId) {
        // A reply to an older sync: ours comes after its own 0xFF.
        w.sawSentinel = false;
        continue;
      }
      this.waiter = undefined;
      this.buf = Buffer.alloc(0);
      if (msg.error) w.reject(new AgentError(w.command, msg.error.class ?? "GenericError", msg.error.desc ?? "unknown error"));
      else w.resolve(msg.return);
      return;
    }
  }

  /** One request at a time: the agent protocol has no request ids we can rely on. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn, fn);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private request(command: string, args: Record<string, unknown> | undefined, opts: AgentCallOptions, syncId?: number): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    if (opts.signal?.aborted) return Promise.reject(abortError(opts.signal));
    const timeoutMs = opts.timeoutMs ?? 5000;
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(t);
        opts.signal?.removeEventListener("abort", onAbort);
        if (this.waiter === w) this.waiter = undefined;
      };
      const fail = (e: Error): void => {
        cleanup();
        this.dirty = true;
        reject(e);
      };
      const onAbort = (): void => fail(abortError(opts.signal));
      const t = setTimeout(() => fail(new TimeoutError(`guest agent ${command}: no reply within ${timeoutMs} ms`)), timeoutMs);
      const w: Waiter = {
        command,
        syncId,
        sawSentinel: false,
        resolve: (v) => {
          cleanup();
          resolve(v);
        },
        reject: fail,
      };
      opts.signal?.addEventListener("abort", onAbort, { once: true });
      this.waiter = w;
      this.buf = Buffer.alloc(0);
      const body = JSON.stringify(args === undefined ? { execute: command } : { execute: command, arguments: args }) + "\n";
      this.sock.write(syncId !== undefined ? Buffer.concat([Buffer.from([0xff]), Buffer.from(body)]) : body);
    });
  }

  private async doSync(opts: AgentCallOptions): Promise<void> {
    const id = randomInt(1, 2 ** 31 - 1);
    await this.request("guest-sync-delimited", { id }, { timeoutMs: opts.timeoutMs ?? 1000, signal: opts.signal }, id);
    this.dirty = false;
  }

  /** Resynchronise the stream. Short per-attempt timeout: callers retry while the guest boots. */
  sync(opts: AgentCallOptions = {}): Promise<void> {
    return this.serial(() => this.doSync(opts));
  }

  /** Run a command, syncing first if an earlier request timed out or nothing was synced yet. */
  call<T = unknown>(command: string, args?: Record<string, unknown>, opts: AgentCallOptions = {}): Promise<T> {
    return this.serial(async () => {
      if (this.dirty) await this.doSync(opts);
      return (await this.request(command, args, opts)) as T;
    });
  }

  async ping(opts: AgentCallOptions = {}): Promise<void> {
    await this.call("guest-ping", undefined, opts);
  }

  networkInterfaces(opts: AgentCallOptions = {}): Promise<GuestNetworkInterface[]> {
    return this.call<GuestNetworkInterface[]>("guest-network-get-interfaces", undefined, opts);
  }

  /** A small file's content (guest-file-open/read/close), or undefined if it cannot be opened. */
  async readFile(file: string, opts: AgentCallOptions & { maxBytes?: number } = {}): Promise<Buffer | undefined> {
    let handle: number;
    try {
      handle = await this.call<number>("guest-file-open", { path: file, mode: "r" }, opts);
    } catch {
      return undefined;
    }
    try {
      const r = await this.call<{ "buf-b64": string; count: number }>("guest-file-read", { handle, count: opts.maxBytes ?? 65536 }, opts);
      return Buffer.from(r["buf-b64"], "base64");
    } finally {
      await this.call("guest-file-close", { handle }, opts).catch(() => undefined);
    }
  }

  /** First IPv4 address of a non-loopback interface, or undefined if none is configured yet. */
  async firstIpv4(opts: AgentCallOptions = {}): Promise<string | undefined> {
    return pickIpv4(await this.networkInterfaces(opts));
  }

  /**
   * Power the guest off. On success the agent sends no reply (it is shutting down), so this only
   * waits for the write; an error reply that arrives quickly is still reported.
   */
  shutdown(mode: "powerdown" | "halt" | "reboot" = "powerdown", opts: AgentCallOptions = {}): Promise<void> {
    return this.serial(async () => {
      if (this.dirty) await this.doSync(opts);
      try {
        await this.request("guest-shutdown", { mode }, { timeoutMs: opts.timeoutMs ?? 300, signal: opts.signal });
      } catch (e) {
        if (e instanceof TimeoutError || (this.closedError && e === this.closedError)) return;
        throw e;
      }
    });
  }
}

export function pickIpv4(ifaces: readonly GuestNetworkInterface[]): string | undefined {
  for (const i of ifaces) {
    if (i.name === "lo") continue;
    for (const a of i["ip-addresses"] ?? []) {
      if (a["ip-address-type"] === "ipv4" && !a["ip-address"].startsWith("127.")) return a["ip-address"];
    }
  }
  return undefined;
}
