/**
 * waitForSsh against a local ssh2 server behind a TCP front that can swallow connections (as QEMU's
 * user network does with a connection forwarded before the guest has its address) or answer late.
 */
import * as net from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import ssh2 from "ssh2";
import { waitForSsh } from "../../src/vm/ssh.js";

interface Front {
  port: number;
  /** Connections accepted so far. */
  count: () => number;
  /** Logins the SSH server saw (a handshake that got past key exchange). */
  logins: () => number;
  close: () => Promise<void>;
}

const hostKey = ssh2.utils.generateKeyPairSync("ed25519").private;
const clientKey = ssh2.utils.generateKeyPairSync("ed25519").private;
const fronts: Front[] = [];

/**
 * A TCP server handing connections to an ssh2 server that accepts any key and runs any command with
 * status 0. `swallow(n)`: connection n (1-based) is accepted and never answered; `delayMs`: every
 * answered connection waits that long before the server speaks; `execDelayMs`: commands take that long.
 */
async function front(opts: { swallow?: (n: number) => boolean; delayMs?: number; execDelayMs?: number }): Promise<Front> {
  let logins = 0;
  const server = new ssh2.Server({ hostKeys: [hostKey] }, (client) => {
    client.on("authentication", (ctx) => {
      logins++;
      ctx.accept();
    });
    client.on("session", (accept) => {
      accept().on("exec", (acc) => {
        const stream = acc();
        setTimeout(() => {
          stream.exit(0);
          stream.end();
        }, opts.execDelayMs ?? 0);
      });
    });
    client.on("error", () => {});
  });
  let n = 0;
  const open = new Set<net.Socket>();
  const tcp = net.createServer((sock) => {
    n++;
    open.add(sock);
    sock.on("close", () => open.delete(sock));
    sock.on("error", () => {});
    if (opts.swallow?.(n)) return;
    setTimeout(() => {
      if (!sock.destroyed) server.injectSocket(sock);
    }, opts.delayMs ?? 0);
  });
  await new Promise<void>((r) => tcp.listen(0, "127.0.0.1", r));
  const port = (tcp.address() as net.AddressInfo).port;
  const f: Front = {
    port,
    count: () => n,
    logins: () => logins,
    close: async () => {
      for (const s of open) s.destroy();
      await new Promise<void>((r) => tcp.close(() => r()));
    },
  };
  fronts.push(f);
  return f;
}

afterEach(async () => {
  for (const f of fronts.splice(0)) await f.close();
});

const target = (port: number) => ({ host: "127.0.0.1", port, privateKey: clientKey });

describe("waitForSsh", () => {
  it("does not sit out a swallowed connection: the next attempt starts after staggerMs", async () => {
    const f = await front({ swallow: (n) => n === 1 });
    const t0 = Date.now();
    const s = await waitForSsh(target(f.port), { deadline: Date.now() + 20_000, staggerMs: 300 });
    const ms = Date.now() - t0;
    s.close();
    // One attempt at a time with its 5 s timeout would take at least 5 s here.
    expect(ms).toBeLessThan(3000);
    expect(f.count()).toBe(2);
  });

  it("lets a slow server finish: attempts overlap instead of being cut short", async () => {
    const f = await front({ delayMs: 1200 });
    const s = await waitForSsh(target(f.port), { deadline: Date.now() + 20_000, staggerMs: 300 });
    s.close();
    // At most three attempts in flight; the first one is served.
    expect(f.count()).toBeLessThanOrEqual(3);
  });

  it("drops the other attempts once one sees the host key, and starts none while it logs in", async () => {
    // Attempts start at 0, 200 and 400 ms (stagger 200); the server answers each 700 ms after it came,
    // and `true` takes 800 ms: without the rule the later two would log in while the first runs `true`.
    const f = await front({ delayMs: 700, execDelayMs: 800 });
    const s = await waitForSsh(target(f.port), { deadline: Date.now() + 20_000, staggerMs: 200 });
    s.close();
    await new Promise((r) => setTimeout(r, 300));
    expect(f.count()).toBe(3);
    // Only the first got as far as logging in: the guest served one login, not three.
    expect(f.logins()).toBe(1);
  });

  it("spaces attempts refused at once by minGapMs: no busy loop", async () => {
    // A port nothing listens on: every connection is refused at once.
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const seen: number[] = [];
    const t0 = Date.now();
    await expect(
      waitForSsh(target(port), { deadline: t0 + 1100, minGapMs: 200, onAttempt: () => seen.push(Date.now() - t0) }),
    ).rejects.toThrow();
    // Starts at 0, 200, ... 1000 ms: at most 6, each at least ~200 ms after the one before.
    expect(seen.length).toBeGreaterThanOrEqual(3);
    expect(seen.length).toBeLessThanOrEqual(6);
    for (let i = 1; i < seen.length; i++) expect(seen[i]! - seen[i - 1]!).toBeGreaterThanOrEqual(150);
  });

  it("gives up at the deadline when nothing ever answers", async () => {
    const f = await front({ swallow: () => true });
    const t0 = Date.now();
    await expect(waitForSsh(target(f.port), { deadline: Date.now() + 1500, staggerMs: 300 })).rejects.toThrow(/not done within/);
    expect(Date.now() - t0).toBeLessThan(4000);
  });

  it("stops at once when aborted", async () => {
    const f = await front({ swallow: () => true });
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(new Error("stop")), 300);
    const t0 = Date.now();
    await expect(waitForSsh(target(f.port), { deadline: Date.now() + 20_000, staggerMs: 100, signal: ctl.signal })).rejects.toThrow();
    expect(Date.now() - t0).toBeLessThan(1500);
  });
});
