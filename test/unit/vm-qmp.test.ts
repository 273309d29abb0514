import net from "node:net";
import os from "node:os";
import path from "node:path";
import { mkdtempSync, rmSync } from "node:fs";
import { afterEach, describe, expect, it } from "vitest";
import { QmpClient, QmpError, type QmpEvent } from "../../src/vm/qmp.js";

/** A fake QEMU: greets, then answers each command through `answer` (which may reply out of order). */
function fakeQemu(sockPath: string, answer: (msg: { execute: string; id?: unknown; arguments?: unknown }, conn: net.Socket) => void) {
  const seen: string[] = [];
  const server = net.createServer((conn) => {
    conn.write('{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}\r\n');
    let buf = "";
    conn.on("data", (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        const msg = JSON.parse(line) as { execute: string; id?: unknown; arguments?: unknown };
        seen.push(msg.execute);
        answer(msg, conn);
      }
    });
  });
  return new Promise<{ server: net.Server; seen: string[] }>((resolve) => server.listen(sockPath, () => resolve({ server, seen })));
}

let dir: string;
let servers: net.Server[] = [];
afterEach(() => {
  for (const s of servers) s.close();
  servers = [];
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("QmpClient", () => {
  it("negotiates capabilities, matches replies by id, reports errors and events", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "qmp-"));
    const sock = path.join(dir, "qmp.sock");
    let held: { id: unknown; conn: net.Socket } | undefined;
    const { server, seen } = await fakeQemu(sock, (msg, conn) => {
      if (msg.execute === "slow") {
        held = { id: msg.id, conn };
        return;
      }
      if (msg.execute === "query-status") {
        conn.write(JSON.stringify({ id: msg.id, return: { status: "running", running: true } }) + "\r\n");
        conn.write('{"event": "RESUME", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}\r\n');
        // the slow command's reply comes after a later command's reply
        if (held) held.conn.write(JSON.stringify({ id: held.id, return: "late" }) + "\r\n");
        return;
      }
      if (msg.execute === "bogus") {
        conn.write(JSON.stringify({ id: msg.id, error: { class: "CommandNotFound", desc: "The command bogus has not been found" } }) + "\r\n");
        return;
      }
      conn.write(JSON.stringify({ id: msg.id, return: {} }) + "\r\n");
    });
    servers.push(server);
    const qmp = await QmpClient.connect(sock, { timeoutMs: 2000 });
    expect(seen).toEqual(["qmp_capabilities"]);
    const events: QmpEvent[] = [];
    qmp.on("event", (e) => events.push(e));
    const slow = qmp.execute("slow");
    const status = await qmp.execute<{ status: string }>("query-status");
    expect(status.status).toBe("running");
    await expect(slow).resolves.toBe("late");
    expect(events.map((e) => e.event)).toEqual(["RESUME"]);
    const err = await qmp.execute("bogus").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(QmpError);
    expect((err as QmpError).errorClass).toBe("CommandNotFound");
    qmp.close();
  });

  it("retries until the socket appears, and quit succeeds when QEMU hangs up without replying", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "qmp-"));
    const sock = path.join(dir, "late.sock");
    const connecting = QmpClient.connect(sock, { timeoutMs: 3000 });
    await new Promise((r) => setTimeout(r, 150));
    const { server } = await fakeQemu(sock, (msg, conn) => {
      if (msg.execute === "quit") conn.destroy();
      else conn.write(JSON.stringify({ id: msg.id, return: {} }) + "\r\n");
    });
    servers.push(server);
    const qmp = await connecting;
    const closed = new Promise<void>((r) => qmp.once("close", () => r()));
    await qmp.quit();
    await closed;
    expect(qmp.closed).toBe(true);
    await expect(qmp.execute("query-status")).rejects.toThrow(/closed/);
  });

  it("rejects pending commands when the connection drops, and times out unanswered ones", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "qmp-"));
    const sock = path.join(dir, "qmp.sock");
    const { server } = await fakeQemu(sock, (msg, conn) => {
      if (msg.execute === "qmp_capabilities") conn.write(JSON.stringify({ id: msg.id, return: {} }) + "\r\n");
      if (msg.execute === "die") conn.destroy();
    });
    servers.push(server);
    const qmp = await QmpClient.connect(sock, { timeoutMs: 2000 });
    await expect(qmp.execute("never", undefined, { timeoutMs: 100 })).rejects.toThrow(/no reply within 100 ms/);
    const pending = qmp.execute("other", undefined, { timeoutMs: 5000 });
    void qmp.execute("die").catch(() => undefined);
    await expect(pending).rejects.toThrow(/closed/);
  });

  it("connect gives up after its timeout when nothing listens", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "qmp-"));
    const t0 = Date.now();
    await expect(QmpClient.connect(path.join(dir, "none.sock"), { timeoutMs: 300 })).rejects.toThrow(/not accepting/);
    expect(Date.now() - t0).toBeLessThan(1500);
  });
});
