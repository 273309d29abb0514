/**
 * What the rest of dbuild needs from the VM runtime. `vm/` knows nothing of layers or stacks:
 * it boots a disk image, waits for readiness, runs commands and copies files.
 */
import type { Accelerator, NetworkMode } from "../project/types.js";

export interface VmOptions {
  /** qcow2 disk to boot. It WILL be written: callers pass a throwaway COW child, never a published image. */
  disk: string;
  /** MiB. */
  mem: number;
  cpus: number;
  accelerator: Accelerator;
  network: { mode: NetworkMode; bridge: string };
  /** Private key (OpenSSH format) for the login user; `.pub` beside it. */
  keyPath: string;
  /** Login user (default root). Commands run with `asRoot` go through `sudo -n` when it is not root. */
  user?: string;
  /**
   * Attach a NoCloud seed (a FAT volume labelled CIDATA, written into runDir) giving `user` the public
   * key beside keyPath: how a cloud image with cloud-init is entered with no change to it.
   */
  seed?: { instanceId: string };
  /** Where the serial console is written. */
  serialLog: string;
  /** Directory for sockets and temporary files of this VM (created; removed on stop). */
  runDir: string;
  /**
   * Boot timeout (ms) until ready. User networking: an SSH login runs `true` (the guest agent is used
   * when present, for the IP, but not waited for). Bridge: the agent reports the IP, then SSH.
   */
  bootTimeoutMs: number;
  /** Guest TCP ports to forward from 127.0.0.1 (user mode; in bridge mode the guest IP is reached directly). */
  forwardPorts?: number[];
  /** Start a VNC server on 127.0.0.1. */
  vnc?: boolean;
  /**
   * QEMU writes its pid here (`-pidfile`), so that a later run can reap it if it outlived its dbuild
   * (see reapOrphanVms). Build VMs only: the caller must own the directory's lock.
   */
  pidFile?: string;
  /** Keep QEMU running after this process exits (throwaway `dbuild run`). Default false. */
  detached?: boolean;
  signal?: AbortSignal;
  /** Fixed MAC address (a resumed VM keeps the MAC its RAM state was saved with). Default: a random one. */
  mac?: string;
  /**
   * Resume from RAM state saved by `saveWarmState` (vm/warm.ts) instead of booting: QEMU starts with
   * `-incoming`, is continued once the state is loaded, and is ready when SSH answers. `ip` is the
   * guest address the agent reported when the state was saved (it is in the saved RAM).
   */
  resume?: { stateFile: string; ip: string };
  /** Where the KVM probe result is cached (e.g. `<buildDir>/.dbuild/accel.json`); probed once per host boot. */
  accelCacheFile?: string;
}

export interface ExecOptions {
  env?: Record<string, string>;
  /** Bytes written to the command's standard input, then EOF (how secrets travel: never on a command line). */
  stdin?: Buffer | string;
  cwd?: string;
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Run as root: through `sudo -n` when the login user is not root. */
  asRoot?: boolean;
}

export interface ExecResult {
  /** Exit status, or null when killed by a signal. */
  code: number | null;
  signal: string | null;
}

export interface Vm {
  readonly pid: number;
  /** Guest-reported IPv4 (first non-loopback address the agent reports). */
  readonly ip: string;
  /** Host and port to reach guest SSH: 127.0.0.1:PORT in user mode, IP:22 in bridge mode. */
  readonly sshHost: string;
  readonly sshPort: number;
  /** Login user. */
  readonly user: string;
  readonly vncDisplay?: string;
  /** Where each of `forwardPorts` is reached from the host: host and port (127.0.0.1:N, or IP:port in bridge mode). */
  readonly forwarded: ReadonlyMap<number, { host: string; port: number }>;
  exec(command: string, opts?: ExecOptions): Promise<ExecResult>;
  /** `rsync -rL` of a local directory's contents into remoteDir (created). */
  rsyncTo(localDir: string, remoteDir: string, opts?: { signal?: AbortSignal }): Promise<void>;
  /** Ask the guest to power off, wait, then QMP quit, then kill. Idempotent. */
  shutdown(opts?: { timeoutMs?: number }): Promise<void>;
  /** Kill at once (used on abort). Idempotent. */
  kill(): Promise<void>;
  /** CPU seconds QEMU used so far (sampled before it stops; absent if unknown) and seconds it has run. */
  usage(): VmUsage;
}

export interface VmUsage {
  /** utime + stime of the QEMU process (all its threads), from /proc/PID/stat; absent if unknown. */
  cpuSeconds?: number;
  wallSeconds: number;
}
