// Finalizing layers against the real micro guest: the clean-up runs in a booted micro VM, each
// convert script turns that COW child (a real backing chain) into its deliverable, and the disks are
// booted on their own in plain QEMU (no -kernel) until the guest agent and SSH answer. The vSphere
// disk boots on the hardware its OVF declares (PVSCSI + VMXNET3, both emulated by QEMU).
import { execa } from "execa";
import { spawn, type ChildProcess } from "node:child_process";
import { access, mkdir, mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GuestAgent } from "../../src/vm/agent.js";
import { freeTcpPort } from "../../src/vm/ports.js";
import { ensureMicroImage, makeChild } from "../helpers/micro.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const BOOT_TIMEOUT_MS = 90_000;

interface ImgInfo {
  format: string;
  "virtual-size": number;
  "backing-filename"?: string;
  "format-specific"?: { data?: { "create-type"?: string } };
}

async function info(file: string): Promise<ImgInfo> {
  return JSON.parse((await execa("qemu-img", ["info", "--output=json", file])).stdout) as ImgInfo;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** One QEMU at a time (2 shared cores): every test awaits stop() before the next boot. */
class Guest {
  private exited: Promise<void>;
  private agent?: GuestAgent;
  constructor(
    readonly proc: ChildProcess,
    readonly dir: string,
    readonly sshPort: number,
    private readonly key: string,
  ) {
    this.exited = new Promise((r) => proc.once("exit", () => r()));
  }

  static async boot(dir: string, key: string, disk: string[], nic: string): Promise<Guest> {
    await mkdir(dir, { recursive: true });
    const port = await freeTcpPort();
    const args = [
      "-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1",
      "-display", "none", "-vga", "none", "-monitor", "none", "-no-user-config",
      "-serial", `file:${join(dir, "serial.log")}`,
      ...disk,
      "-netdev", `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:22`, "-device", `${nic},netdev=n0`,
      "-device", "virtio-rng-pci",
      "-chardev", `socket,path=${join(dir, "qga.sock")},server=on,wait=off,id=qga0`,
      "-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
    ];
    const proc = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    proc.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    const g = new Guest(proc, dir, port, key);
    running.add(g);
    proc.once("exit", (code) => {
      if (code) console.error(`qemu exited with ${code}: ${stderr}`);
    });
    return g;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Waits until the guest agent answers guest-ping. */
  async waitAgent(): Promise<void> {
    const sock = join(this.dir, "qga.sock");
    const deadline = Date.now() + BOOT_TIMEOUT_MS;
    while (Date.now() < deadline) {
      if (!this.alive) throw new Error(`qemu died; serial log:\n${await this.serial()}`);
      try {
        await access(sock);
        break;
      } catch {
        await sleep(50);
      }
    }
    this.agent = await GuestAgent.connect(sock, { timeoutMs: 5000 });
    while (Date.now() < deadline) {
      if (!this.alive) throw new Error(`qemu died; serial log:\n${await this.serial()}`);
      try {
        await this.agent.sync({ timeoutMs: 1000 });
        // guest-ping returns {} ({"return":{}} on the wire)
        expect(await this.agent.call("guest-ping", undefined, { timeoutMs: 5000 })).toEqual({});
        return;
      } catch (e) {
        if (e instanceof Error && e.name === "AssertionError") throw e;
      }
    }
    throw new Error(`guest agent did not answer within ${BOOT_TIMEOUT_MS} ms; serial log:\n${await this.serial()}`);
  }

  /**
   * One multiplexed connection per guest, like dbuild's executor: once target/install has removed
   * the host keys, dropbear (which re-executes itself per connection) refuses NEW connections.
   */
  sshArgs(): string[] {
    return [
      "-i", this.key, "-p", String(this.sshPort),
      "-o", "ControlMaster=auto", "-o", `ControlPath=${join(this.dir, "cm")}`, "-o", "ControlPersist=120",
      "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
      "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10",
    ];
  }

  /** user-net accepts TCP before dropbear listens: retry the first command a few times. */
  async ssh(command: string, tries = 10): Promise<{ stdout: string; stderr: string; exitCode: number }> {
    let last = "";
    for (let i = 0; i < tries; i++) {
      const r = await execa("ssh", [...this.sshArgs(), "root@127.0.0.1", command], { reject: false, timeout: 60_000 });
      // 255: ssh itself failed (connection, handshake); anything else is the command's status
      if (r.exitCode !== 255) return { stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode ?? -1 };
      last = r.stderr;
      await sleep(1000);
    }
    throw new Error(`ssh failed ${tries} times: ${last}`);
  }

  async rsyncTo(localDir: string, remoteDir: string, extra: string[] = []): Promise<void> {
    const e = ["ssh", ...this.sshArgs()].join(" ");
    await execa("rsync", ["-rL", ...extra, "-e", e, `${localDir}/`, `root@127.0.0.1:${remoteDir}/`], { timeout: 60_000 });
  }

  serial(): Promise<string> {
    return readFile(join(this.dir, "serial.log"), "utf8").catch(() => "");
  }

  /** Power off through the agent; kill if the guest does not stop in time. */
  async stop(): Promise<void> {
    if (this.alive && this.agent && !this.agent.closed) {
      await execa("ssh", [...this.sshArgs(), "-O", "exit", "root@127.0.0.1"], { reject: false, timeout: 10_000 });
      await this.agent.shutdown("powerdown").catch(() => undefined);
      await Promise.race([this.exited, sleep(30_000)]);
    }
    this.agent?.close();
    await this.kill();
  }

  async kill(): Promise<void> {
    if (this.alive) {
      await execa("ssh", [...this.sshArgs(), "-O", "exit", "root@127.0.0.1"], { reject: false, timeout: 10_000 });
      this.proc.kill("SIGKILL");
      await this.exited;
    }
    running.delete(this);
  }
}

const running = new Set<Guest>();

let tmp = "";
let key = "";
let child = "";
const results: { format: string; seconds: number; bytes: number; allocated: number; bootSeconds?: number }[] = [];

async function convert(layer: string, ext: string, env: Record<string, string> = {}): Promise<string> {
  const out = join(tmp, `out.${ext}`);
  const work = join(tmp, `work-${layer}`);
  await mkdir(work, { recursive: true });
  const t0 = performance.now();
  const r = await execa(join(root, "layers", layer, "convert"), [], {
    cwd: join(root, "layers", layer),
    env: { DBUILD_IMAGE: child, DBUILD_OUTPUT: out, DBUILD_WORKDIR: work, NAME: "micro-demo", MEM: "512", CPUS: "2", STACK: "micro:demo", LAYER: layer, ...env },
    timeout: 120_000,
    reject: false,
  });
  const seconds = (performance.now() - t0) / 1000;
  expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
  const st = await stat(out);
  results.push({ format: layer, seconds, bytes: st.size, allocated: st.blocks * 512 });
  return out;
}

async function bootVirtio(file: string, format: string, name: string): Promise<void> {
  const g = await Guest.boot(join(tmp, `vm-${name}`), key, ["-drive", `file=${file},if=virtio,format=${format},snapshot=on`], "virtio-net-pci");
  try {
    const t0 = performance.now();
    await g.waitAgent();
    const res = results.find((r) => r.format === name);
    if (res) res.bootSeconds = (performance.now() - t0) / 1000;
    // SSH proves the clean-up left a bootable sshd: host keys were removed and must be made again.
    const r = await g.ssh("ls /etc/dropbear");
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toContain("dropbear_ed25519_host_key");
  } finally {
    await g.stop();
  }
}

beforeAll(async () => {
  const micro = await ensureMicroImage();
  key = micro.key;
  tmp = await mkdtemp(join(tmpdir(), "dbuild-finalize-e2e-"));
  child = await makeChild(micro.image, tmp);
  expect((await info(child))["backing-filename"]).toBeTruthy();
});

afterAll(async () => {
  for (const g of [...running]) await g.kill();
  if (results.length) {
    console.log("format      convert s   bytes       allocated   boot-to-agent s");
    for (const r of results) {
      console.log(`${r.format.padEnd(11)} ${r.seconds.toFixed(2).padStart(9)}   ${String(r.bytes).padEnd(11)} ${String(r.allocated).padEnd(11)} ${r.bootSeconds?.toFixed(1) ?? "-"}`);
    }
  }
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe("finalizing layers on the micro guest", () => {
  it("target/install cleans a booted micro guest under busybox sh", async () => {
    const g = await Guest.boot(join(tmp, "vm-clean"), key, ["-drive", `file=${child},if=virtio,format=qcow2,discard=unmap`], "virtio-net-pci");
    try {
      const t0 = performance.now();
      await g.waitAgent();
      console.log(`child (host keys present) boot-to-agent ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      const before = await g.ssh("ls /etc/dropbear");
      expect(before.stdout).toContain("dropbear_ed25519_host_key");
      // vm-functions is owned by utils/ (another module); until it exists, rsync -L would report a
      // dangling link and fail, so leave it out then.
      const hasVmFunctions = await access(join(root, "utils/vm-functions")).then(() => true, () => false);
      await g.rsyncTo(join(root, "layers/openstack/target"), "/tmp/finalize", hasVmFunctions ? [] : ["--exclude=vm-functions"]);
      await g.ssh("echo 'ls /' > /root/.ash_history; echo line > /var/log/test.log");
      const r = await g.ssh("cd /tmp/finalize && LAYER=openstack STACK=micro:demo NAME=micro-demo MEM=512 CPUS=2 ./install");
      expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
      expect(r.stdout).toContain("openstack: removed ssh host keys");
      expect(r.stdout).toContain("openstack: clean-up done");
      // the drive has discard=unmap: busybox fstrim must have run
      expect(r.stdout).toMatch(/\/: \d+ bytes trimmed/);
      // over the connection opened before the clean-up (see sshArgs)
      const after = await g.ssh("ls -A /etc/dropbear; ls -A /root; wc -c < /var/log/test.log");
      expect(after.stdout).not.toContain("host_key");
      expect(after.stdout).not.toContain(".ash_history");
      expect(after.stdout.trim().split("\n").pop()).toBe("0");
    } finally {
      await g.stop();
    }
    expect((await info(child))["backing-filename"]).toBeTruthy();
  });

  it("openstack: standalone compressed qcow2 that boots on its own", async () => {
    const out = await convert("openstack", "qcow2");
    const i = await info(out);
    expect(i.format).toBe("qcow2");
    expect(i["backing-filename"]).toBeUndefined();
    await execa("qemu-img", ["check", out]);
    await execa("qemu-img", ["compare", child, out]);
    const plain = join(tmp, "uncompressed.qcow2");
    await execa("qemu-img", ["convert", "-O", "qcow2", child, plain]);
    expect((await stat(out)).size).toBeLessThan((await stat(plain)).size);
    await rm(plain);
    await bootVirtio(out, "qcow2", "openstack");
  });

  it("raw: sparse raw disk that boots on its own", async () => {
    const out = await convert("raw", "raw");
    expect((await info(out)).format).toBe("raw");
    const st = await stat(out);
    expect(st.size).toBe((await info(child))["virtual-size"]);
    expect(st.blocks * 512).toBeLessThan(st.size / 2);
    await bootVirtio(out, "raw", "raw");
  });

  it("vagrant: libvirt box whose box.img boots on its own", async () => {
    const out = await convert("vagrant", "box", { VAGRANT_SSH_USER: "root" });
    const list = (await execa("tar", ["-tf", out])).stdout.split("\n");
    expect(list).toEqual(["metadata.json", "Vagrantfile", "box.img"]);
    const x = join(tmp, "box-x");
    await mkdir(x);
    await execa("tar", ["-xf", out, "-C", x]);
    const meta = JSON.parse(await readFile(join(x, "metadata.json"), "utf8")) as Record<string, unknown>;
    const gib = Math.ceil((await info(child))["virtual-size"] / 2 ** 30);
    expect(meta).toEqual({ provider: "libvirt", format: "qcow2", virtual_size: gib });
    const vf = await readFile(join(x, "Vagrantfile"), "utf8");
    expect(vf).toMatch(/libvirt\.memory = 512\n/);
    expect(vf).toMatch(/libvirt\.cpus = 2\n/);
    const i = await info(join(x, "box.img"));
    expect(i.format).toBe("qcow2");
    expect(i["backing-filename"]).toBeUndefined();
    await bootVirtio(join(x, "box.img"), "qcow2", "vagrant");
  });

  it("vsphere: OVA whose VMDK boots on the OVF's hardware (PVSCSI disk, VMXNET3 NIC)", async () => {
    const out = await convert("vsphere", "ova");
    const list = (await execa("tar", ["-tf", out])).stdout.split("\n");
    expect(list).toEqual(["micro-demo.ovf", "micro-demo.mf", "micro-demo-disk1.vmdk"]);
    const x = join(tmp, "ova-x");
    await mkdir(x);
    await execa("tar", ["-xf", out, "-C", x]);
    await execa("xmllint", ["--noout", join(x, "micro-demo.ovf")]);
    const ovf = await readFile(join(x, "micro-demo.ovf"), "utf8");
    const vmdk = join(x, "micro-demo-disk1.vmdk");
    expect(ovf).toContain(`ovf:size="${(await stat(vmdk)).size}"`);
    expect(ovf).toContain(`ovf:capacity="${(await info(child))["virtual-size"]}"`);
    expect(ovf).toContain("<Name>micro-demo</Name>");
    expect(ovf).toMatch(/<rasd:ResourceType>4<\/rasd:ResourceType>\s*<rasd:VirtualQuantity>512</);
    expect(ovf).toMatch(/<rasd:ResourceType>3<\/rasd:ResourceType>\s*<rasd:VirtualQuantity>2</);
    const i = await info(vmdk);
    expect(i.format).toBe("vmdk");
    expect(i["format-specific"]?.data?.["create-type"]).toBe("streamOptimized");
    await execa("qemu-img", ["compare", child, vmdk]);
    const g = await Guest.boot(join(tmp, "vm-vsphere"), key, [
      "-device", "pvscsi,id=scsi0",
      "-drive", `file=${vmdk},if=none,id=d0,format=vmdk,snapshot=on`,
      "-device", "scsi-hd,drive=d0,bus=scsi0.0,bootindex=0",
    ], "vmxnet3");
    try {
      const t0 = performance.now();
      await g.waitAgent();
      results.find((r) => r.format === "vsphere")!.bootSeconds = (performance.now() - t0) / 1000;
      // over the VMXNET3 NIC, from a root on the PVSCSI disk
      const r = await g.ssh("grep ' / ' /proc/mounts; ls /sys/bus/pci/drivers");
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^\/dev\/sd/m);
      expect(r.stdout).toContain("vmw_pvscsi");
      expect(r.stdout).toContain("vmxnet3");
    } finally {
      await g.stop();
    }
  });
});
