/**
 * Which accelerator QEMU should use. `/dev/kvm` existing proves little: on some hosts KVM hangs in
 * firmware or asserts on an MSR. So "auto" really boots SeaBIOS under KVM for a moment and waits for the
 * firmware to reach its boot phase; the answer is cached (per host boot) so it costs once.
 */
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { constants, promises as fs } from "node:fs";
import path from "node:path";
import type { Accelerator } from "../project/types.js";
import { DbuildError } from "../util/errors.js";

export type ResolvedAccel = "kvm" | "tcg";

export interface ProbeResult {
  kvm: boolean;
  /** Why KVM is (not) usable, for `dbuild doctor`-style output and logs. */
  detail: string;
}

interface CacheFile extends ProbeResult {
  bootId: string;
  probedAt: string;
}

/** SeaBIOS prints this (to the debug port) only after POST has run: the vCPU really executes. */
const FIRMWARE_DONE = /No bootable device|Booting from/;

let memo: Promise<ProbeResult> | undefined;

/** Boot SeaBIOS under KVM with no disk and wait (bounded) until it gives up looking for a boot device. */
export async function probeKvm(opts: { timeoutMs?: number; qemu?: string; signal?: AbortSignal } = {}): Promise<ProbeResult> {
  const timeoutMs = opts.timeoutMs ?? 3000;
  try {
    await fs.access("/dev/kvm", constants.R_OK | constants.W_OK);
  } catch {
    return { kvm: false, detail: "/dev/kvm is missing or not accessible" };
  }
  const child = spawn(
    opts.qemu ?? "qemu-system-x86_64",
    ["-accel", "kvm", "-nodefaults", "-display", "none", "-machine", "pc", "-m", "16", "-no-reboot",
      "-chardev", "stdio,id=dbg", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  return await new Promise<ProbeResult>((resolve) => {
    let out = "";
    let err = "";
    let done = false;
    const finish = (r: ProbeResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      child.kill("SIGKILL");
      resolve(r);
    };
    const onAbort = (): void => finish({ kvm: false, detail: "probe aborted" });
    const timer = setTimeout(
      () => finish({ kvm: false, detail: `KVM started but firmware did not finish within ${timeoutMs} ms (KVM hangs on this host)` }),
      timeoutMs,
    );
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString("latin1");
      if (FIRMWARE_DONE.test(out)) finish({ kvm: true, detail: "KVM runs firmware" });
      else if (out.length > 1 << 20) out = out.slice(-4096);
    });
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", (e) => finish({ kvm: false, detail: `cannot start QEMU: ${e.message}` }));
    child.on("exit", (code, sig) =>
      finish({ kvm: false, detail: `QEMU exited (${sig ?? code ?? "?"}) under KVM: ${err.trim().split("\n").slice(-3).join(" | ")}` }),
    );
  });
}

async function bootId(): Promise<string> {
  try {
    return (await fs.readFile("/proc/sys/kernel/random/boot_id", "utf8")).trim();
  } catch {
    return "unknown";
  }
}

/** Probe once per process and, with `cacheFile`, once per host boot. */
export async function kvmUsable(opts: { cacheFile?: string; signal?: AbortSignal; timeoutMs?: number } = {}): Promise<ProbeResult> {
  const id = await bootId();
  if (opts.cacheFile) {
    try {
      const c = JSON.parse(await fs.readFile(opts.cacheFile, "utf8")) as Partial<CacheFile>;
      if (c.bootId === id && typeof c.kvm === "boolean") return { kvm: c.kvm, detail: c.detail ?? "" };
    } catch {
      // missing or corrupt: probe again
    }
  }
  memo ??= probeKvm({ timeoutMs: opts.timeoutMs, signal: opts.signal });
  const r = await memo;
  if (r.detail === "probe aborted") memo = undefined;
  else if (opts.cacheFile) {
    // Best effort, and race-safe: VMs started at once (-j2) all get here with the same answer.
    const c: CacheFile = { ...r, bootId: id, probedAt: new Date().toISOString() };
    const tmp = `${opts.cacheFile}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
    try {
      await fs.mkdir(path.dirname(opts.cacheFile), { recursive: true });
      await fs.writeFile(tmp, JSON.stringify(c, null, 2) + "\n");
      await fs.rename(tmp, opts.cacheFile);
    } catch {
      await fs.rm(tmp, { force: true });
    }
  }
  return r;
}

export async function resolveAccelerator(
  setting: Accelerator,
  opts: { cacheFile?: string; signal?: AbortSignal } = {},
): Promise<ResolvedAccel> {
  switch (setting) {
    case "tcg":
      return "tcg";
    case "kvm":
      try {
        await fs.access("/dev/kvm", constants.R_OK | constants.W_OK);
      } catch {
        throw new DbuildError({
          reason: "no-kvm",
          where: "accelerator",
          message: "accelerator is set to kvm but /dev/kvm is missing or not accessible",
          hint: "set `accelerator: auto` (or tcg) in demobuild.yaml, or load the kvm module",
        });
      }
      return "kvm";
    case "auto":
      return (await kvmUsable(opts)).kvm ? "kvm" : "tcg";
  }
}

/** QEMU arguments selecting the accelerator and a CPU model that works with it. */
export function accelArgs(accel: ResolvedAccel): string[] {
  // Under TCG, multi-threaded TCG gives each vCPU a host thread; `-cpu max` exposes every feature TCG
  // emulates (the default qemu64 lacks e.g. x86-64-v2 that some distributions require).
  return accel === "kvm" ? ["-accel", "kvm", "-cpu", "host"] : ["-accel", "tcg,thread=multi", "-cpu", "max"];
}
