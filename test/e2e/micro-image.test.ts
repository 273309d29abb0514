/**
 * The micro guest end to end: the cached build is reused, a rebuild downloads nothing, and a COW
 * child boots with plain QEMU (no -kernel: the disk boots itself), answers the guest agent, accepts
 * ssh with the test key, and powers off on `poweroff`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs/promises";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { execa } from "execa";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildMicroImage, ensureMicroImage, makeChild, repoDir, testCacheDir, type MicroImage } from "../helpers/micro.js";

let tmp: string;
let micro: MicroImage;
let qemu: ChildProcess | undefined;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-micro-"));
  micro = await ensureMicroImage();
}, 600_000);

afterAll(async () => {
  if (qemu && qemu.exitCode === null && qemu.signalCode === null) qemu.kill("SIGKILL");
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

async function listing(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await fs.readdir(dir)).sort()) {
    const st = await fs.stat(path.join(dir, name));
    out.push(`${name} ${st.size} ${st.mtimeMs}`);
  }
  return out;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const a = srv.address();
      const port = typeof a === "object" && a ? a.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Minimal guest-agent probe: until the deadline, connect and send guest-sync with a fresh id every
 * second (commands written before qemu-ga opens its port are lost) until that id comes back.
 */
async function waitForAgent(sock: string, deadline: number): Promise<void> {
  let lastErr = "no attempt";
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.createConnection(sock);
      let buf = "";
      let id = 0;
      const ids = new Set<number>();
      const send = () => {
        id = Math.floor(Math.random() * 1e9);
        ids.add(id);
        c.write(`${JSON.stringify({ execute: "guest-sync", arguments: { id } })}\n`);
      };
      const timer = setInterval(send, 1000);
      const finish = (v: boolean) => {
        clearInterval(timer);
        c.destroy();
        resolve(v);
      };
      const stop = setTimeout(() => finish(false), Math.max(0, deadline - Date.now()));
      c.on("connect", send);
      c.on("data", (d) => {
        buf += d.toString("utf8");
        for (const line of buf.split("\n")) {
          try {
            const msg = JSON.parse(line) as { return?: unknown };
            if (typeof msg.return === "number" && ids.has(msg.return)) {
              clearTimeout(stop);
              finish(true);
              return;
            }
          } catch {
            // partial line: wait for more
          }
        }
      });
      c.on("error", (e) => {
        lastErr = e.message;
        clearTimeout(stop);
        finish(false);
      });
    });
    if (ok) return;
    await sleep(100);
  }
  throw new Error(`guest agent did not answer on ${sock} (${lastErr})`);
}

function sshArgs(port: number, command: string): string[] {
  return [
    "-i", micro.key,
    "-p", String(port),
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "ConnectTimeout=5",
    "-o", "LogLevel=ERROR",
    "root@127.0.0.1",
    command,
  ];
}

describe("micro image", () => {
  it("is a standalone qcow2 with free space, and a rebuild downloads nothing", async () => {
    const info = JSON.parse((await execa("qemu-img", ["info", "--output=json", micro.image])).stdout) as {
      format: string;
      "virtual-size": number;
      "actual-size": number;
      "backing-filename"?: string;
    };
    expect(info.format).toBe("qcow2");
    expect(info["backing-filename"]).toBeUndefined();
    expect(info["virtual-size"]).toBeGreaterThan(256 * 1024 * 1024);
    expect(info["actual-size"]).toBeLessThan(80 * 1024 * 1024);

    const debs = path.join(testCacheDir(), "debs");
    const before = await listing(debs);
    expect(before.some((l) => l.startsWith("linux-image-"))).toBe(true);
    const out = path.join(tmp, "rebuild.qcow2");
    const r = await buildMicroImage({ output: out, pubkey: micro.pubkey, cache: debs, workdir: path.join(tmp, "work") });
    console.log(`micro warm build: ${(r.ms / 1000).toFixed(1)} s`);
    expect(r.stdout).toMatch(/all \d+ packages cached/);
    expect(r.stdout).not.toMatch(/downloading/);
    // No package was downloaded again. (A resolution file may be added: it is keyed by the host's apt
    // lists, and an `apt-get update` since the cached image was built changes that key.)
    const debsOnly = (ls: string[]): string[] => ls.filter((l) => l.includes(".deb "));
    expect(debsOnly(await listing(debs))).toEqual(debsOnly(before));
    const check = await execa("qemu-img", ["check", out], { reject: false });
    expect(check.exitCode).toBe(0);
  }, 120_000);

  it("boots by itself, answers the agent and ssh, runs vm-functions, and powers off on `poweroff`", async () => {
    const child = await makeChild(micro.image, tmp);
    const port = await freePort();
    const agentSock = path.join(tmp, "qga.sock");
    const serial = path.join(tmp, "serial.log");
    const t0 = Date.now();
    qemu = spawn(
      "qemu-system-x86_64",
      [
        "-nodefaults", "-display", "none", "-machine", "pc", "-accel", "tcg", "-m", "256",
        "-drive", `file=${child},if=virtio,format=qcow2`,
        "-netdev", `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:22`,
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:d8:00:01",
        "-device", "virtio-rng-pci",
        "-chardev", `socket,id=qga,path=${agentSock},server=on,wait=off`,
        "-device", "virtio-serial",
        "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
        "-serial", `file:${serial}`,
      ],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    let stderr = "";
    qemu.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => qemu!.once("exit", (code) => resolve(code)));
    const serialTail = async () => (await fs.readFile(serial, "utf8").catch(() => "")).split("\n").slice(-30).join("\n");

    try {
      // The agent socket exists once QEMU is up; the guest answers only after boot.
      await waitForAgent(agentSock, t0 + 45_000);
      const tAgent = Date.now() - t0;

      // user-net accepts TCP before dropbear listens: retry a bounded number of times.
      let ssh: Awaited<ReturnType<typeof execa>> | undefined;
      for (let i = 0; i < 20 && Date.now() - t0 < 60_000; i++) {
        ssh = await execa("ssh", sshArgs(port, "cat /etc/os-release; rsync --version; command -v fstrim"), {
          reject: false,
          timeout: 15_000,
        });
        if (ssh.exitCode === 0) break;
        await sleep(300);
      }
      const tSsh = Date.now() - t0;
      console.log(`micro boot under TCG: agent ${(tAgent / 1000).toFixed(1)} s, ssh ${(tSsh / 1000).toFixed(1)} s`);
      expect(ssh?.exitCode, `ssh failed: ${String(ssh?.stderr)}`).toBe(0);
      const stdout = String(ssh?.stdout);
      expect(stdout).toMatch(/^ID=dbuild-micro$/m);
      expect(stdout).toMatch(/rsync\s+version/);
      expect(stdout).toMatch(/fstrim/);

      // utils/vm-functions as a layer uses it: a boot service in micro's /etc/rc.d convention (started
      // here by hand, as rcS would at boot), and a user the test key logs in as.
      const vmf = await fs.readFile(path.join(repoDir, "utils", "vm-functions"), "utf8");
      const layer = await execa(
        "ssh",
        sshArgs(
          port,
          [
            "mkdir -p /tmp/layer && cat >/tmp/layer/vm-functions && cd /tmp/layer && . ./vm-functions",
            "mkdir -p /srv/www && echo served-by-micro >/srv/www/index.html",
            "add_boot_service web httpd -f -p 8080 -h /srv/www",
            "add_user alice",
            "have rsync || die 'no rsync'",
            "for s in /etc/rc.d/S*; do [ -x \"$s\" ] && \"$s\" start; done",
            "sleep 1; wget -qO- http://127.0.0.1:8080/",
          ].join(" && "),
        ),
        { input: vmf, reject: false, timeout: 30_000 },
      );
      expect(layer.exitCode, `layer commands failed: ${layer.stderr}`).toBe(0);
      expect(layer.stdout).toMatch(/\[layer\] boot service web: 'httpd' '-f' '-p' '8080'/);
      expect(layer.stdout).toMatch(/^served-by-micro$/m);
      const alice = await execa("ssh", sshArgs(port, "id -un").map((a) => (a === "root@127.0.0.1" ? "alice@127.0.0.1" : a)), {
        reject: false,
        timeout: 15_000,
      });
      expect(alice.stdout.trim()).toBe("alice");

      const tOff = Date.now();
      await execa("ssh", sshArgs(port, "poweroff"), { reject: false, timeout: 15_000 });
      const code = await Promise.race([exited, sleep(30_000).then(() => "timeout" as const)]);
      console.log(`micro poweroff via ssh: ${((Date.now() - tOff) / 1000).toFixed(1)} s`);
      expect(code, "qemu did not exit after poweroff").toBe(0);
    } catch (e) {
      console.error(`qemu stderr:\n${stderr}\nserial tail:\n${await serialTail()}`);
      throw e;
    }
  }, 120_000);
});
