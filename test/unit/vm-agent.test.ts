import net from "node:net";
import os from "node:os";
import path from "node:path";
import { mkdtempSync, rmSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { AgentError, GuestAgent, pickIpv4 } from "../../src/vm/agent.js";

interface FakeOpts {
  /** Bytes of garbage / stale replies to write before each sync reply. */
  staleBeforeSync?: () => Buffer;
  /** Ignore the first N requests entirely (guest agent not running yet). */
  deaf?: number;
}

const IFACES = [
  { name: "lo", "ip-addresses": [{ "ip-address": "127.0.0.1", "ip-address-type": "ipv4", prefix: 8 }] },
  {
    name: "eth0",
    "hardware-address": "52:54:00:aa:bb:cc",
    "ip-addresses": [
      { "ip-address": "fe80::1", "ip-address-type": "ipv6", prefix: 64 },
      { "ip-address": "10.0.2.15", "ip-address-type": "ipv4", prefix: 24 },
    ],
  },
];

/** Plays qemu-ga behind QEMU's chardev: newline-delimited JSON, 0xFF before guest-sync-delimited replies. */
function fakeAgent(sockPath: string, opts: FakeOpts = {}) {
  const log: string[] = [];
  let deaf = opts.deaf ?? 0;
  const server = net.createServer((conn) => {
    let buf = Buffer.alloc(0);
    conn.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      let nl;
      while ((nl = buf.indexOf(0x0a)) >= 0) {
        let line = buf.subarray(0, nl);
        buf = buf.subarray(nl + 1);
        if (line[0] === 0xff) line = line.subarray(1);
        const msg = JSON.parse(line.toString()) as { execute: string; arguments: { id: number } };
        log.push(msg.execute);
        if (deaf > 0) {
          deaf--;
          continue;
        }
        switch (msg.execute) {
          case "guest-sync-delimited":
            if (opts.staleBeforeSync) conn.write(opts.staleBeforeSync());
            conn.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: msg.arguments.id }) + "\n")]));
            break;
          case "guest-ping":
            conn.write('{"return": {}}\n');
            break;
          case "guest-network-get-interfaces":
            // split across writes to exercise reassembly
            {
              const s = JSON.stringify({ return: IFACES }) + "\n";
              conn.write(s.slice(0, 10));
              setTimeout(() => conn.write(s.slice(10)), 5);
            }
            break;
          case "guest-shutdown":
            break; // no reply on success
          default:
            conn.write(JSON.stringify({ error: { class: "CommandNotFound", desc: `no ${msg.execute}` } }) + "\n");
        }
      }
    });
  });
  return new Promise<{ server: net.Server; log: string[] }>((resolve) => server.listen(sockPath, () => resolve({ server, log })));
}

let dir: string;
let servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers) s.close();
  servers = [];
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("GuestAgent", () => {
  it("syncs past stale replies and garbage, then answers commands", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "qga-"));
    const sock = path.join(dir, "qga.sock");
    const { server, log } = await fakeAgent(sock, {
      // a stale sync reply with another id, after its own sentinel, plus junk bytes
      staleBeforeSync: () => Buffer.concat([Buffer.from('junk{"ret'), Buffer.from([0xff]), Buffer.from('{"return": 42}\n')]),
    });
    servers.push(server);
    const ga = await GuestAgent.connect(sock, { timeoutMs: 1000 });
    await ga.sync({ timeoutMs: 1000 });
    await ga.ping();
    expect(await ga.firstIpv4()).toBe("10.0.2.15");
    const err = await ga.call("guest-nope").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AgentError);
    expect(log).toEqual(["guest-sync-delimited", "guest-ping", "guest-network-get-interfaces", "guest-nope"]);
    ga.close();
  });

  it("retries sync while the agent is deaf, and resyncs after a timeout", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "qga-"));
    const sock = path.join(dir, "qga.sock");
    const { server, log } = await fakeAgent(sock, { deaf: 2 });
    servers.push(server);
    const ga = await GuestAgent.connect(sock, { timeoutMs: 1000 });
    await expect(ga.sync({ timeoutMs: 100 })).rejects.toThrow(/no reply within 100 ms/);
    await expect(ga.sync({ timeoutMs: 100 })).rejects.toThrow(/no reply/);
    await ga.sync({ timeoutMs: 1000 });
    await ga.ping();
    expect(log).toEqual(["guest-sync-delimited", "guest-sync-delimited", "guest-sync-delimited", "guest-ping"]);
    // guest-shutdown gets no reply on success: it must still resolve quickly
    const t0 = Date.now();
    await ga.shutdown();
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(log.at(-1)).toBe("guest-shutdown");
    ga.close();
  });

  it("a command after a timed-out one syncs first so the late reply is not mistaken for its own", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "qga-"));
    const sock = path.join(dir, "qga.sock");
    let delayed: (() => void) | undefined;
    const server = net.createServer((conn) => {
      let buf = "";
      conn.on("data", (d: Buffer) => {
        buf += d.toString("latin1");
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/^\xff/, "");
          buf = buf.slice(nl + 1);
          const msg = JSON.parse(line);
          if (msg.execute === "guest-sync-delimited") {
            delayed?.();
            delayed = undefined;
            conn.write(Buffer.concat([Buffer.from([0xff]), Buffer.from(JSON.stringify({ return: msg.arguments.id }) + "\n")]));
          } else if (msg.execute === "guest-info") {
            // answered only later, after the client gave up
            delayed = () => conn.write('{"return": {"version": "stale"}}\n');
          } else conn.write('{"return": {"fresh": true}}\n');
        }
      });
    });
    await new Promise<void>((r) => server.listen(sock, () => r()));
    servers.push(server);
    const ga = await GuestAgent.connect(sock);
    await ga.sync();
    await expect(ga.call("guest-info", undefined, { timeoutMs: 100 })).rejects.toThrow(/no reply/);
    expect(await ga.call("guest-get-time")).toEqual({ fresh: true });
    ga.close();
  });

  it("pickIpv4 skips loopback and IPv6", () => {
    expect(pickIpv4(IFACES as never)).toBe("10.0.2.15");
    expect(pickIpv4([{ name: "eth0", "ip-addresses": [] }])).toBeUndefined();
  });
});
