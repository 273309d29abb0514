/**
 * One QEMU process booting one disk: start, wait until usable (QMP, guest agent, IP, SSH), run
 * commands, stop. Readiness is event-driven where QEMU offers events (QMP greeting, VSERPORT_CHANGE
 * when the guest opens the agent port) and otherwise retried with short, bounded attempts.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, promises as fs, readFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { DbuildError, errorMessage } from "../util/errors.js";
import { accelArgs, resolveAccelerator, type ResolvedAccel } from "./accel.js";
import { GuestAgent } from "./agent.js";
import { freeTcpPort, randomMac, releasePort } from "./ports.js";
import { withParentDeathSignal } from "../util/parent-death.js";
import { QmpClient } from "./qmp.js";
import { resumeIncoming } from "./warm.js";
import { installVmCleanupHandlers, registerVm, unregisterVm } from "./registry.js";
import { guestHostKeys, knownHostsLine } from "./hostkeys.js";
import { HOST_ALIAS, rsyncTo } from "./rsync.js";
import { writeNoCloudSeed } from "./seed.js";
import { SshSession, waitForSsh } from "./ssh.js";
import type { ExecOptions, ExecResult, Vm, VmOptions, VmUsage } from "./types.js";
import { abortError, sleep } from "../util/sleep.js";
import { TimeoutError } from "./wait.js";

const AGENT_PORT = "org.qemu.guest_agent.0";
/** sun_path is 108 bytes on Linux; keep a margin for the socket names. */
const MAX_SOCKET_DIR = 90;

/** Milliseconds since QEMU was spawned at which each readiness stage completed. */
export interface BootTimings {
  qmp?: number;
  /** When the guest opened the agent's virtio port (QMP VSERPORT_CHANGE). */
  agentPortOpen?: number;
  /** guest-sync attempts sent before one was answered. */
  agentAttempts?: number;
  /** SSH connection attempts (user-mode networking accepts before the guest listens). */
  sshAttempts?: number;
  agent?: number;
  ip?: number;
  ssh?: number;
}

function qemuPath(p: string): string {
  return p.replace(/,/g, ",,"); // QEMU option values escape commas by doubling them
}

/** Last `n` lines of a log file, without terminal control noise. */
export function tailFile(file: string, n = 15): string {
  try {
    const text = readFileSync(file, "latin1")
      .replace(/\r/g, "")
      // eslint-disable-next-line no-control-regex -- strip ANSI escapes the guest console emits
      .replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
    return text.split("\n").filter((l) => l.trim() !== "").slice(-n).join("\n");
  } catch {
    return "";
  }
}

/** Linux reports process times in clock ticks of USER_HZ, which is 100 on every architecture QEMU runs on. */
const USER_HZ = 100;

/** utime + stime of a process in seconds, or undefined if /proc does not have it (gone, not Linux). */
export function procCpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "latin1");
    // Field 2 (comm) is in parentheses and may contain spaces: count fields after the last ')'.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state field (field 3).
    const ticks = Number(f[11]) + Number(f[12]);
    return Number.isFinite(ticks) ? ticks / USER_HZ : undefined;
  } catch {
    return undefined;
  }
}

/**
 * What cloud-init said on the serial console, for a guest that never answered SSH: its stages and
 * failures show there even when nothing else can be read from the guest.
 */
export function cloudInitStatus(serialLog: string): string {
  let text: string;
  try {
    text = readFileSync(serialLog, "latin1").replace(/\r/g, "");
  } catch {
    return "";
  }
  const lines = text.split("\n").filter((l) => /cloud-init|ci-info: (?!\+|\|)/i.test(l));
  if (lines.length === 0) return "";
  return `\ncloud-init on the console (last ${Math.min(lines.length, 8)} of ${lines.length} lines):\n${lines.slice(-8).join("\n")}`;
}

/** The guest's first global IPv4: from the agent when its port is open, else over SSH (`ip`). */
async function guestIp(vm: QemuVm, s: SshSession, signal: AbortSignal): Promise<string> {
  if (vm.timings.agentPortOpen !== undefined) {
    try {
      vm.agent ??= await GuestAgent.connect(vm.agentSocket, { timeoutMs: 1000, signal });
      const ip = await vm.agent.firstIpv4({ timeoutMs: 2000, signal });
      if (ip) return ip;
    } catch {
      // fall back to asking over SSH
    }
  }
  let out = "";
  const r = await s.exec("ip -4 -o addr show scope global 2>/dev/null", { onStdout: (d) => (out += d.toString()), timeoutMs: 10_000, signal });
  if (r.code !== 0) return "";
  return /\binet (\d+\.\d+\.\d+\.\d+)/.exec(out)?.[1] ?? "";
}

interface Spawned {
  child: ChildProcess;
  /** stderr collected so far (non-detached), or read from the log file (detached). */
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function spawnQemu(args: string[], opts: { detached: boolean; logFile: string }): Spawned {
  let stderr = "";
  let child: ChildProcess;
  if (opts.detached) {
    const fd = openSync(opts.logFile, "a");
    try {
      child = spawn("qemu-system-x86_64", args, { detached: true, stdio: ["ignore", fd, fd] });
    } finally {
      closeSync(fd);
    }
    child.unref();
  } else {
    // Killed by the kernel if dbuild dies in any way, SIGKILL and the OOM killer included.
    const [file, argv] = withParentDeathSignal("qemu-system-x86_64", args);
    child = spawn(file, argv, { stdio: ["ignore", "ignore", "pipe"] });
    child.stderr?.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-8192);
    });
  }
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once("exit", (code, signal) => resolve({ code, signal }));
    child.once("error", (e) => {
      stderr += e.message;
      resolve({ code: null, signal: null });
    });
  });
  return { child, stderr: () => (opts.detached ? tailFile(opts.logFile, 20) : stderr), exited };
}

export class QemuVm implements Vm {
  ip = "";
  sshHost = "127.0.0.1";
  sshPort = 22;
  vncDisplay?: string;
  readonly forwarded = new Map<number, { host: string; port: number }>();
  readonly timings: BootTimings = {};
  private ssh?: SshSession;
  private sshConnecting?: Promise<SshSession>;
  qmp?: QmpClient;
  agent?: GuestAgent;
  private hasExited = false;
  private stopping?: Promise<void>;
  private hostPort?: number;
  private readonly spawnedAt = Date.now();
  private exitedAt?: number;
  private lastCpu?: number;
  /**
   * Set when the VM failed in a way no command will report in time (guest panic or reboot, QEMU killed,
   * host disk full): running and later commands fail at once with it, not after an SSH timeout.
   */
  fault?: DbuildError;
  private readonly faultCtl = new AbortController();
  /** The guest's SSH host key, checked through the guest agent at boot; every later connection must show it. */
  hostKey?: Buffer;
  /** known_hosts file with hostKey (for OpenSSH: rsync, `dbuild ssh`). */
  knownHosts?: string;

  constructor(
    readonly opts: VmOptions,
    readonly accel: ResolvedAccel,
    readonly mac: string,
    private readonly spawned: Spawned,
    /** Directories removed when the VM stops: runDir, and a short socket dir if one was needed. */
    private readonly dirs: string[],
    readonly qmpSocket: string,
    readonly agentSocket: string,
  ) {
    void spawned.exited.then((how) => {
      this.hasExited = true;
      this.exitedAt = Date.now();
      if (!opts.detached) unregisterVm(this.pid);
      if (!this.stopping) {
        const by = how.signal ? `was killed by ${how.signal}` : `exited with code ${how.code ?? "?"}`;
        this.setFault("qemu-exited", `QEMU (pid ${this.pid}) ${by} while the VM was in use`, "something outside dbuild stopped QEMU (the OOM killer, a kill command); see the serial console");
      }
    });
  }

  /** Record a fault (the first one wins), stop the VM and abort every command in flight. */
  setFault(reason: string, message: string, hint: string): void {
    if (this.fault) return;
    const tail = tailFile(this.opts.serialLog, 15);
    this.fault = new DbuildError(
      {
        reason,
        where: this.opts.disk,
        message: message + (tail ? `\nlast lines of the serial console (${this.opts.serialLog}):\n${tail}` : ""),
        hint,
      },
      1,
    );
    this.faultCtl.abort(this.fault);
    if (!this.hasExited) this.spawned.child.kill("SIGKILL");
  }

  /**
   * Watch QMP events for the VM's whole life. Run with -no-reboot and werror=stop: a reboot becomes a
   * SHUTDOWN, a host write error pauses the guest (BLOCK_IO_ERROR, then STOP) instead of corrupting it.
   */
  watchEvents(qmp: QmpClient): void {
    qmp.on("event", (ev: { event: string; data?: Record<string, unknown> }) => {
      const d = ev.data ?? {};
      const str = (v: unknown, dflt: string): string => (typeof v === "string" ? v : dflt);
      if (ev.event === "BLOCK_IO_ERROR") {
        const nospace = d.nospace === true;
        this.setFault(
          nospace ? "disk-full" : "disk-io-error",
          nospace
            ? `the host file system holding ${this.opts.disk} is full: QEMU could not write the VM's disk (${str(d.operation, "write")})`
            : `QEMU could not ${str(d.operation, "access")} the VM's disk: ${str(d.reason, "I/O error")}`,
          nospace ? "free space on that file system (or move the build dir), then build again" : "check the host disk (dmesg) and build again",
        );
      } else if (ev.event === "GUEST_PANICKED") {
        this.setFault("guest-panic", "the guest kernel panicked", "see the serial console above; the layer's install broke the guest");
      } else if (ev.event === "SHUTDOWN" && !this.stopping) {
        const reason = str(d.reason, "unknown");
        const what = reason === "guest-reset" ? "rebooted" : reason === "guest-panic" ? "panicked" : reason === "guest-shutdown" ? "powered off" : `shut down (${reason})`;
        this.setFault(
          reason === "guest-panic" ? "guest-panic" : "guest-shutdown",
          `the guest ${what} while dbuild was using it`,
          "a layer's install must not reboot or power off the VM (dbuild powers it off after the install)",
        );
      }
    });
  }

  /** `p`, or the fault if one happens first. */
  private guarded<T>(p: Promise<T>): Promise<T> {
    const fault = this.fault;
    if (fault) {
      p.catch(() => undefined);
      return Promise.reject(fault);
    }
    return new Promise<T>((resolve, reject) => {
      const onFault = (): void => reject(this.fault ?? new Error("VM fault"));
      this.faultCtl.signal.addEventListener("abort", onFault, { once: true });
      p.then(
        (v) => {
          this.faultCtl.signal.removeEventListener("abort", onFault);
          if (this.fault) reject(this.fault);
          else resolve(v);
        },
        (e: unknown) => {
          this.faultCtl.signal.removeEventListener("abort", onFault);
          // A lost SSH connection is often seen before QEMU's exit: give the exit (the real cause) a moment.
          let t: NodeJS.Timeout | undefined;
          void Promise.race([this.spawned.exited, new Promise((r) => (t = setTimeout(r, 500)))]).then(() => {
            clearTimeout(t);
            reject(this.fault ?? (e instanceof Error ? e : new Error(String(e))));
          });
        },
      );
    });
  }

  get pid(): number {
    return this.spawned.child.pid ?? -1;
  }

  get user(): string {
    return this.opts.user ?? "root";
  }

  get exited(): boolean {
    return this.hasExited;
  }

  /** Resolves when QEMU has exited. */
  waitExit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.spawned.exited;
  }

  setHostPort(p: number | undefined): void {
    this.hostPort = p;
  }

  adoptSsh(s: SshSession): void {
    this.ssh = s;
  }

  private async session(signal?: AbortSignal): Promise<SshSession> {
    if (this.ssh?.isOpen) return this.ssh;
    this.sshConnecting ??= (async () => {
      try {
        const key = await fs.readFile(this.opts.keyPath);
        this.ssh = await SshSession.connect(
          { host: this.sshHost, port: this.sshPort, username: this.user, privateKey: key, ...(this.hostKey ? { hostKey: this.hostKey } : {}) },
          { timeoutMs: 15_000, signal },
        );
        return this.ssh;
      } finally {
        this.sshConnecting = undefined;
      }
    })();
    return this.sshConnecting;
  }

  async exec(command: string, opts: ExecOptions = {}): Promise<ExecResult> {
    if (this.fault) throw this.fault;
    if (this.hasExited) throw new Error(`VM ${this.opts.disk} is not running`);
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.faultCtl.signal]) : this.faultCtl.signal;
    return this.guarded((async () => (await this.session(signal)).exec(command, { ...opts, signal }))());
  }

  rsyncTo(localDir: string, remoteDir: string, opts: { signal?: AbortSignal } = {}): Promise<void> {
    const signal = opts.signal ? AbortSignal.any([opts.signal, this.faultCtl.signal]) : this.faultCtl.signal;
    const target = { host: this.sshHost, port: this.sshPort, keyPath: this.opts.keyPath, username: this.user, ...(this.knownHosts ? { knownHosts: this.knownHosts } : {}) };
    return this.guarded(rsyncTo(localDir, remoteDir, target, { signal }));
  }

  /** Close our connections without touching QEMU (detached VMs keep running after this). */
  disconnect(): void {
    this.ssh?.close();
    this.qmp?.close();
    this.agent?.close();
  }

  private async waitExitFor(ms: number): Promise<boolean> {
    if (this.hasExited) return true;
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.spawned.exited.then(() => true),
      new Promise<boolean>((resolve) => (t = setTimeout(() => resolve(false), ms))),
    ]);
    clearTimeout(t);
    return r;
  }

  /**
   * CPU time QEMU has used (all its threads, user + system), from /proc/PID/stat. Once QEMU has exited
   * the kernel no longer says, so shutdown() and kill() sample it first: the last sample is returned.
   */
  usage(): VmUsage {
    if (!this.hasExited) this.lastCpu = procCpuSeconds(this.pid) ?? this.lastCpu;
    return { ...(this.lastCpu !== undefined ? { cpuSeconds: this.lastCpu } : {}), wallSeconds: ((this.exitedAt ?? Date.now()) - this.spawnedAt) / 1000 };
  }

  shutdown(opts: { timeoutMs?: number } = {}): Promise<void> {
    this.usage();
    const before = this.fault;
    if (before) return this.kill().then(() => Promise.reject(before));
    this.stopping ??= this.doShutdown(opts.timeoutMs ?? 30_000);
    // A fault while powering off (the disk filled up during the last writes) still fails the node.
    return this.stopping.then(() => {
      if (this.fault) throw this.fault;
    });
  }

  private async doShutdown(timeoutMs: number): Promise<void> {
    this.ssh?.close();
    try {
      if (!this.hasExited) {
        // ACPI power button via QMP: measured faster than guest-shutdown (0.19 s vs 0.22 s) and it does
        // not depend on the agent. The agent is the fallback for guests without acpid.
        let asked = false;
        try {
          this.qmp ??= await QmpClient.connect(this.qmpSocket, { timeoutMs: 2000 });
          await this.qmp.systemPowerdown({ timeoutMs: 2000 });
          asked = true;
        } catch {
          // QMP gone: try the agent
        }
        if (!asked || !(await this.waitExitFor(Math.min(timeoutMs / 2, 10_000)))) {
          try {
            this.agent ??= await GuestAgent.connect(this.agentSocket, { timeoutMs: 1000 });
            await this.agent.shutdown("powerdown", { timeoutMs: 1000 });
          } catch {
            // agent not answering either: the timeout below decides
          }
        }
        if (!(await this.waitExitFor(timeoutMs))) {
          try {
            await this.qmp?.quit({ timeoutMs: 2000 });
          } catch {
            // fall through to SIGKILL
          }
          if (!(await this.waitExitFor(3000))) {
            this.spawned.child.kill("SIGKILL");
            await this.waitExitFor(5000);
          }
        }
      }
    } finally {
      await this.cleanup();
    }
  }

  kill(): Promise<void> {
    if (!this.stopping) this.usage();
    this.stopping ??= (async () => {
      this.ssh?.close();
      if (!this.hasExited) {
        this.spawned.child.kill("SIGKILL");
        await this.waitExitFor(5000);
      }
      await this.cleanup();
    })();
    return this.stopping;
  }

  private async cleanup(): Promise<void> {
    this.disconnect();
    if (this.hostPort !== undefined) releasePort(this.hostPort);
    if (this.opts.network.mode === "user") for (const f of this.forwarded.values()) releasePort(f.port);
    if (!this.opts.detached) unregisterVm(this.pid);
    if (this.opts.pidFile) await fs.rm(this.opts.pidFile, { force: true });
    for (const d of this.dirs) await fs.rm(d, { recursive: true, force: true });
  }

  /** QEMU's stderr so far (for error messages). */
  stderr(): string {
    return this.spawned.stderr();
  }
}

function buildArgs(o: {
  opts: VmOptions;
  accel: ResolvedAccel;
  mac: string;
  hostPort?: number;
  /** Guest port -> host port, user mode. */
  forwards?: ReadonlyMap<number, number>;
  qmpSocket: string;
  agentSocket: string;
  seedImage?: string;
}): string[] {
  const { opts } = o;
  const args = [
    "-name", `dbuild,debug-threads=on`,
    "-nodefaults", "-no-user-config", "-display", "none",
    "-machine", "pc",
    ...accelArgs(o.accel),
    "-m", String(opts.mem),
    "-smp", String(opts.cpus),
    // writeback (QEMU's default) rather than unsafe: a clean poweroff flushes either way, but
    // unsafe could leave a torn image if QEMU is killed while the store is publishing it.
    // werror/rerror=stop: a host I/O error (a full disk) pauses the guest and is reported by QMP at once,
    // instead of reaching the guest as a disk error it might not survive.
    "-drive", `file=${qemuPath(opts.disk)},if=virtio,format=qcow2,cache=writeback,discard=unmap,werror=stop,rerror=stop`,
    ...(o.seedImage ? ["-drive", `file=${qemuPath(o.seedImage)},if=virtio,format=raw,readonly=on`] : []),
    // A reboot (a reboot loop, or panic=N after a kernel panic) ends QEMU with a SHUTDOWN event.
    "-no-reboot",
    // pvpanic: a guest kernel panic is a GUEST_PANICKED event, where the guest driver is loaded.
    "-device", "pvpanic",
    "-device", "virtio-rng-pci",
    "-chardev", `socket,id=qmp,path=${qemuPath(o.qmpSocket)},server=on,wait=off`,
    "-mon", "chardev=qmp,mode=control",
    "-chardev", `socket,id=qga0,path=${qemuPath(o.agentSocket)},server=on,wait=off`,
    "-device", "virtio-serial-pci",
    // an id makes QEMU emit VSERPORT_CHANGE when the guest opens the port
    "-device", `virtserialport,id=agentport,chardev=qga0,name=${AGENT_PORT}`,
    "-serial", `file:${qemuPath(opts.serialLog)}`,
  ];
  if (opts.network.mode === "bridge") {
    args.push("-netdev", `bridge,id=net0,br=${opts.network.bridge}`);
  } else {
    const extra = [...(o.forwards ?? [])].map(([guest, host]) => `,hostfwd=tcp:127.0.0.1:${host}-:${guest}`).join("");
    args.push("-netdev", `user,id=net0,hostfwd=tcp:127.0.0.1:${o.hostPort}-:22${extra}`);
  }
  // romfile=: no iPXE option ROM; SeaBIOS would load and initialise it on every boot for nothing.
  args.push("-device", `virtio-net-pci,netdev=net0,mac=${o.mac},romfile=`);
  if (opts.vnc) args.push("-vga", "std", "-vnc", "127.0.0.1:0,to=99");
  // exec: runs through /bin/sh: quote the path. QEMU waits for the state before running the guest.
  if (opts.resume) args.push("-incoming", `exec:cat '${opts.resume.stateFile.replace(/'/g, "'\\''")}'`);
  // The next run reaps this QEMU by its pidfile if it was left behind (see orphans.ts).
  if (opts.pidFile) args.push("-pidfile", opts.pidFile);
  return args;
}

/**
 * The QEMU command line with per-run values (disk, files, sockets, port, MAC) blanked out. A saved RAM
 * state only loads into a VM with exactly this device set, so warm snapshots are keyed by it.
 */
export async function deviceSet(opts: VmOptions): Promise<string> {
  const accel = await resolveAccelerator(opts.accelerator, { cacheFile: opts.accelCacheFile, signal: opts.signal });
  const o: VmOptions = { ...opts, disk: "DISK", serialLog: "SERIAL" };
  delete o.resume;
  // A pidfile is per run (and not a device): a VM resumes whatever file its own pid goes to.
  delete o.pidFile;
  return buildArgs({ opts: o, accel, mac: "MAC", hostPort: 0, qmpSocket: "QMP", agentSocket: "QGA" }).join(" ");
}

/** Boot `opts.disk` and resolve once SSH runs commands. Throws DbuildError("boot-timeout"|"qemu-failed"). */
export async function startVm(opts: VmOptions): Promise<QemuVm> {
  const accel = await resolveAccelerator(opts.accelerator, { cacheFile: opts.accelCacheFile, signal: opts.signal });
  await fs.mkdir(opts.runDir, { recursive: true });
  const dirs = opts.detached ? [] : [opts.runDir];
  let sockDir = opts.runDir;
  if (path.resolve(opts.runDir).length > MAX_SOCKET_DIR) {
    sockDir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-vm-"));
    if (!opts.detached) dirs.push(sockDir);
  }
  const qmpSocket = path.join(sockDir, "qmp.sock");
  const agentSocket = path.join(sockDir, "qga.sock");
  await fs.mkdir(path.dirname(opts.serialLog), { recursive: true });
  await fs.writeFile(opts.serialLog, "");
  if (!opts.detached) installVmCleanupHandlers();
  let seedImage: string | undefined;
  if (opts.seed) {
    seedImage = path.join(opts.runDir, "seed.img");
    const publicKey = await fs.readFile(`${opts.keyPath}.pub`, "utf8");
    await writeNoCloudSeed(seedImage, { user: opts.user ?? "root", publicKey, instanceId: opts.seed.instanceId });
  }

  const deadline = Date.now() + opts.bootTimeoutMs;
  // A busy port (another process took it between our probe and QEMU's bind) makes QEMU exit at once
  // with a hostfwd error: retry with another port.
  for (let attempt = 1; ; attempt++) {
    const hostPort = opts.network.mode === "user" ? await freeTcpPort() : undefined;
    const forwards = new Map<number, number>();
    if (opts.network.mode === "user") for (const p of opts.forwardPorts ?? []) if (!forwards.has(p)) forwards.set(p, await freeTcpPort());
    const mac = opts.mac ?? randomMac();
    await fs.rm(qmpSocket, { force: true });
    await fs.rm(agentSocket, { force: true });
    const args = buildArgs({ opts, accel, mac, hostPort, forwards, qmpSocket, agentSocket, ...(seedImage ? { seedImage } : {}) });
    const spawned = spawnQemu(args, { detached: opts.detached ?? false, logFile: path.join(opts.runDir, "qemu.log") });
    const vm = new QemuVm(opts, accel, mac, spawned, dirs, qmpSocket, agentSocket);
    vm.setHostPort(hostPort);
    for (const [guest, host] of forwards) vm.forwarded.set(guest, { host: "127.0.0.1", port: host });
    if (!opts.detached && spawned.child.pid !== undefined) registerVm(spawned.child.pid, dirs);
    try {
      await waitReady(vm, hostPort, deadline);
      if (opts.detached) {
        vm.disconnect();
        if (hostPort !== undefined) releasePort(hostPort);
      }
      return vm;
    } catch (e) {
      await vm.kill();
      if (e instanceof DbuildError && e.problems[0]?.reason === "qemu-failed" && /host forwarding|hostfwd/i.test(e.message) && attempt < 3) continue;
      throw e;
    }
  }
}

/**
 * The key SSH presented must be one the guest holds, read through the agent (no one on the network can
 * answer there). Bridge mode requires it; in user mode (a loopback port forward) a guest whose keys the
 * agent cannot read is accepted, a mismatch never is. The key is then pinned for every later connection.
 */
async function verifyHostKey(vm: QemuVm, presented: Buffer | undefined, signal: AbortSignal): Promise<void> {
  const known = vm.agent ? await guestHostKeys(vm.agent, { signal }) : [];
  const bridge = vm.opts.network.mode === "bridge";
  if (presented && known.some((k) => k.equals(presented))) {
    vm.hostKey = presented;
    vm.knownHosts = path.join(vm.opts.runDir, "known_hosts");
    await fs.writeFile(vm.knownHosts, knownHostsLine(HOST_ALIAS, presented));
    return;
  }
  if (!bridge && known.length === 0) {
    if (presented) vm.hostKey = presented;
    return;
  }
  throw new DbuildError(
    {
      reason: "host-key",
      where: `${vm.sshHost}:${vm.sshPort}`,
      message: known.length
        ? "the SSH host key presented over the network is not one the guest holds (read through the guest agent): another machine may be answering for the guest's address"
        : "cannot check the guest's SSH host key: the guest agent could read none of /etc/ssh/ssh_host_*_key.pub or /etc/dropbear/dropbear_*_host_key",
      hint: known.length
        ? "check the bridge for a duplicate IP address or a man in the middle"
        : "bridge mode needs a guest agent that allows guest-file-open/guest-file-read on the host keys (or use network.mode: user)",
    },
    1,
  );
}

/** The last readiness stage: SSH runs commands (on the forwarded port in user mode, the guest IP in bridge mode). */
async function waitSshStage(vm: QemuVm, hostPort: number | undefined, deadline: number, signal: AbortSignal, t0: number): Promise<SshSession> {
  if (vm.opts.network.mode === "bridge") {
    vm.sshHost = vm.ip;
    vm.sshPort = 22;
    for (const p of vm.opts.forwardPorts ?? []) vm.forwarded.set(p, { host: vm.ip, port: p });
  } else {
    vm.sshHost = "127.0.0.1";
    vm.sshPort = hostPort ?? 22;
  }
  const key = await fs.readFile(vm.opts.keyPath);
  let presented: Buffer | undefined;
  // Bounded by the deadline only: a Debian guest takes a minute or more before sshd listens.
  const s = await waitForSsh({ host: vm.sshHost, port: vm.sshPort, username: vm.user, privateKey: key, onHostKey: (k) => (presented = k) }, {
    deadline,
    signal,
    onAttempt: (n) => (vm.timings.sshAttempts = n),
  });
  vm.timings.sshAttempts = (vm.timings.sshAttempts ?? 0) + 1;
  await verifyHostKey(vm, presented, signal).catch((e: unknown) => {
    s.close();
    throw e;
  });
  vm.adoptSsh(s);
  vm.timings.ssh = Date.now() - t0;
  return s;
}

async function waitReady(vm: QemuVm, hostPort: number | undefined, deadline: number): Promise<void> {
  const { opts } = vm;
  const t0 = Date.now();
  const ctl = new AbortController();
  const onOuterAbort = (): void => ctl.abort(abortError(opts.signal));
  if (opts.signal?.aborted) onOuterAbort();
  opts.signal?.addEventListener("abort", onOuterAbort, { once: true });
  let cause: "timeout" | "exit" | undefined;
  const timer = setTimeout(() => {
    cause ??= "timeout";
    ctl.abort(new TimeoutError("boot timeout"));
  }, Math.max(0, deadline - Date.now()));
  void vm.waitExit().then(() => {
    cause ??= "exit";
    ctl.abort(new Error("QEMU exited"));
  });
  const signal = ctl.signal;
  let stage = "QEMU start (QMP)";
  try {
    vm.qmp = await QmpClient.connect(vm.qmpSocket, { timeoutMs: Math.max(1, deadline - Date.now()), signal });
    vm.timings.qmp = Date.now() - t0;
    if (!opts.detached) vm.watchEvents(vm.qmp);
    // The guest opening the agent port is an event: use it to retry at once instead of waiting out an attempt.
    let attemptCtl = new AbortController();
    vm.qmp.on("event", (ev) => {
      if (ev.event === "VSERPORT_CHANGE" && ev.data?.open === true) {
        vm.timings.agentPortOpen ??= Date.now() - t0;
        attemptCtl.abort(new Error("agent port opened"));
      }
    });
    if (opts.vnc) {
      const info = await vm.qmp.execute<{ service?: string; host?: string }>("query-vnc", undefined, { signal });
      if (info.service) vm.vncDisplay = `127.0.0.1:${info.service}`;
    }

    if (opts.resume) {
      stage = "loading the saved RAM state";
      await resumeIncoming(vm.qmp, signal);
      vm.timings.agent = vm.timings.ip = Date.now() - t0;
      vm.ip = opts.resume.ip;
      await waitSshStage(vm, hostPort, deadline, signal, t0);
      return;
    }
    if (opts.network.mode === "bridge") {
      // Only the guest knows its address on the bridge: the agent is required here.
      stage = "guest agent";
      vm.agent = await GuestAgent.connect(vm.agentSocket, { timeoutMs: Math.max(1, deadline - Date.now()), signal });
      vm.timings.agentAttempts = 0;
      for (;;) {
        vm.timings.agentAttempts++;
        if (signal.aborted) throw abortError(signal);
        attemptCtl = new AbortController();
        const both = AbortSignal.any([signal, attemptCtl.signal]);
        const started = Date.now();
        try {
          await vm.agent.sync({ timeoutMs: 1000, signal: both });
          break;
        } catch (e) {
          if (signal.aborted) throw e;
          // An attempt that fails at once (socket closed because QEMU died) must not spin in microtasks:
          // that would starve the event loop, so QEMU's exit event would never be seen. Yield a little.
          if (Date.now() - started < 50) await sleep(50, signal);
        }
      }
      vm.timings.agent = Date.now() - t0;

      stage = "guest IP address (DHCP)";
      for (;;) {
        const ip = await vm.agent.firstIpv4({ timeoutMs: 2000, signal });
        if (ip) {
          vm.ip = ip;
          break;
        }
        await sleep(100, signal);
      }
      vm.timings.ip = Date.now() - t0;
    }
    // User networking: ready means an SSH login ran `true`. The guest agent is optional (stock cloud
    // images have none); QEMU accepts the forwarded TCP connection before the guest listens, so only
    // a completed handshake and login count.
    stage = "SSH";
    const s = await waitSshStage(vm, hostPort, deadline, signal, t0);
    if (!vm.ip) {
      vm.ip = await guestIp(vm, s, signal);
      vm.timings.ip = Date.now() - t0;
    }
  } catch (e) {
    // A socket closed by a dying QEMU can be seen before its exit: give the exit a moment to arrive.
    if (cause === undefined && !vm.exited && !opts.signal?.aborted) {
      let t: NodeJS.Timeout | undefined;
      await Promise.race([vm.waitExit(), new Promise((r) => (t = setTimeout(r, 500)))]);
      clearTimeout(t);
    }
    // A panic, reboot or full disk seen by QMP says more than "QEMU exited".
    if (vm.fault && vm.fault.problems[0]?.reason !== "qemu-exited") throw vm.fault;
    if (cause === "exit" || vm.exited) {
      await sleep(50); // let the stderr pipe drain
      const err = vm.stderr().trim();
      throw new DbuildError(
        {
          reason: "qemu-failed",
          where: opts.disk,
          message: `QEMU exited while waiting for ${stage}${err ? `:\n${err}` : ""}`,
          hint: stage.startsWith("QEMU") ? "check the QEMU command line error above" : `the guest powered off or crashed; see ${opts.serialLog}`,
        },
        1,
      );
    }
    if (cause === "timeout") {
      const tail = tailFile(opts.serialLog, 15);
      throw new DbuildError(
        {
          reason: "boot-timeout",
          where: opts.disk,
          message:
            `the VM did not become ready within ${Math.round(opts.bootTimeoutMs / 1000)} s (stuck at: ${stage}; last error: ${errorMessage(e)})` +
            (tail ? `\nlast lines of the serial console (${opts.serialLog}):\n${tail}` : `\nthe serial console (${opts.serialLog}) is empty`) +
            cloudInitStatus(opts.serialLog),
          hint:
            stage === "guest agent"
              ? "the image needs qemu-guest-agent running on the virtio port org.qemu.guest_agent.0 (bridge mode needs it for the guest's IP)"
              : stage === "SSH"
                ? `the image needs an SSH server accepting keys/demobuilder.pub for ${vm.user}` +
                  (opts.seed ? " (given through the NoCloud seed: the image needs cloud-init)" : "") +
                  "; set ssh: {user: NAME} in layer.yaml or demobuild.yaml if the image logs in as another user; raise timeouts.boot if the machine is just slow"
                : "raise timeouts.boot in demobuild.yaml if the machine is just slow",
        },
        1,
      );
    }
    throw e;
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener("abort", onOuterAbort);
  }
}
