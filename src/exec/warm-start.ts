/**
 * Step (2) of the VM cycle, "a VM on a copy-on-write child of the parent", with warm starts:
 *
 *   parent has a usable warm snapshot  -> resume it on a fresh overlay over its boot overlay (seconds
 *                                          less than a boot), set the guest clock
 *   it has none                        -> boot on a boot overlay, and once ready save the snapshot
 *                                          (RAM + boot overlay) for the next child; go on in an overlay
 *   --cold, warm.enabled false, bridge -> plain boot on a child of the parent, nothing saved
 *
 * Either way the layer's writes land in `tmpImage`. Before publishing, `finish()` folds whatever lies
 * between it and the parent (the boot overlay) into it with a safe `qemu-img rebase`, so the published
 * image is one delta over the parent, exactly as after a plain boot.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Project } from "../project/types.js";
import { qemuImg } from "../store/qemu-img.js";
import type { Store } from "../store/store.js";
import { WarmStore, type WarmIdentity, type WarmMeta } from "../store/warm.js";
import { errorMessage } from "../util/errors.js";
import { pathExists } from "../util/fs.js";
import { projectVmOptions } from "../vm/options.js";
import { deviceSet, startVm, type QemuVm } from "../vm/qemu.js";
import type { VmOptions } from "../vm/types.js";
import { qemuVersion, saveWarmState, setGuestClock } from "../vm/warm.js";
import type { Handoff } from "./handoff.js";
import { SEED_INSTANCE_ID } from "./login.js";

export type WarmMode = "warm" | "cold";

export interface BuildVmRequest {
  project: Project;
  store: Store;
  warm: WarmStore;
  /** "cold": never resume; an existing snapshot of the parent is discarded and none is saved. */
  mode: WarmMode;
  /** Object file name of the parent image. */
  parentObject: string;
  /** Where the layer's writes go (created here). */
  tmpImage: string;
  vm: Pick<VmOptions, "mem" | "cpus" | "keyPath" | "serialLog" | "runDir" | "user" | "seed" | "pidFile">;
  /** The layer sets `disk:`: grow the child before the VM boots (a plain boot: a resumed guest's RAM knows the old size). */
  grow?: (file: string) => Promise<void>;
  signal: AbortSignal;
  /** A warm snapshot could not be used or saved (a warning event). */
  note: (message: string) => void;
  /** A line for the node's log. */
  log: (message: string) => void;
  /** The copy-on-write child is made and QEMU is about to start (the build's boot step begins). */
  booting?: () => void;
}

export interface BuildVm {
  vm: QemuVm;
  /** How the VM came up, for the boot step's detail. */
  start: "resumed" | "booted" | "booted, snapshot saved";
  /** After the VM is off: fold the boot overlay (if any) into tmpImage: one delta over the parent. */
  finish(signal: AbortSignal): Promise<void>;
  /** Always, at the end: drop a snapshot folder this VM made but did not install. */
  release(): Promise<void>;
}

export async function startBuildVm(r: BuildVmRequest): Promise<BuildVm> {
  const s = r.project.settings;
  const parentPath = r.store.objectPath(r.parentObject);
  const { pidFile, ...vmOpts } = r.vm;
  const base = { ...projectVmOptions(s, { ...vmOpts, disk: r.tmpImage, signal: r.signal }), ...(pidFile ? { pidFile } : {}) };
  const plain = async (): Promise<BuildVm> => {
    await fs.rm(r.tmpImage, { force: true });
    await childOf(parentPath, r.tmpImage, r.signal);
    if (r.grow) await r.grow(r.tmpImage);
    r.booting?.();
    const vm = await startVm(base);
    return { vm, start: "booted", finish: nothing, release: nothing };
  };
  if (!s.warm.enabled || r.grow) return plain();
  const parentName = `the warm snapshot of ${r.parentObject.split(".")[0]?.slice(0, 12) ?? r.parentObject}`;
  if (s.network.mode !== "user") {
    const had = await r.warm.find({ object: r.parentObject, mem: 0, cpus: 0, qemu: "", devices: "" });
    if (had.discarded) r.note(`${parentName} was discarded: warm starts need user networking (network.mode is ${s.network.mode}); cold boot`);
    return plain();
  }
  const want = { object: r.parentObject, mem: r.vm.mem, cpus: r.vm.cpus, qemu: await qemuVersion(), devices: await deviceSet(base) };
  if (r.mode === "cold") {
    const had = await r.warm.find(want);
    if (had.snap || had.discarded) {
      await r.warm.discard(r.parentObject);
      r.note(`${parentName} was discarded (--cold); cold boot`);
    }
    return plain();
  }
  const fold = async (signal: AbortSignal): Promise<void> => {
    // Safe mode: copies into tmpImage every cluster where old and new backing chains differ.
    await qemuImg(["rebase", "-f", "qcow2", "-F", "qcow2", "-b", parentPath, r.tmpImage], signal);
  };

  const found = await r.warm.find(want);
  if (found.discarded) r.note(`${parentName} was discarded: ${found.discarded}; cold boot`);
  if (found.snap) {
    const snap = found.snap;
    await childOf(snap.boot, r.tmpImage, r.signal);
    r.booting?.();
    try {
      const vm = await startVm({ ...base, mac: snap.meta.mac, resume: { stateFile: snap.state, ip: snap.meta.ip } });
      try {
        await setGuestClock(vm, r.signal);
      } catch (e) {
        await vm.kill();
        throw e;
      }
      r.log(`resumed from ${snap.dir} in ${vm.timings.ssh ?? "?"} ms`);
      return { vm, start: "resumed", finish: fold, release: nothing };
    } catch (e) {
      if (r.signal.aborted) throw e;
      await r.warm.discard(r.parentObject);
      r.note(`${parentName} could not be resumed and was discarded (${firstLine(errorMessage(e))}); cold boot`);
      await fs.rm(r.tmpImage, { force: true });
    }
  }

  // Cold boot on a boot overlay that becomes the snapshot's disk.
  const saved = await bootAndSaveWarm({
    warm: r.warm,
    want,
    objectPath: parentPath,
    overlay: r.tmpImage,
    vm: base,
    signal: r.signal,
    note: r.note,
    log: r.log,
    ...(r.booting ? { booting: r.booting } : {}),
  });
  // Without the overlay the VM would be writing into the snapshot's disk: start over, plainly.
  if (!saved) return plain();
  return { vm: saved.vm, start: saved.installed ? "booted, snapshot saved" : "booted", finish: fold, release: saved.release };
}

/**
 * Boot `want.object` on the boot overlay of a new warm snapshot folder; once the guest is ready, save
 * the snapshot (RAM + boot overlay; installed for the image unless another VM got there first) and go
 * on in `overlay` (created here, by QEMU). Undefined when the overlay could not be made: nothing runs
 * then, and the caller boots plainly. `release()` (always, at the end) drops the folder unless installed.
 * Used by build VMs of a parent with no snapshot yet, and by the test VM of a freshly built image.
 */
export async function bootAndSaveWarm(r: {
  warm: WarmStore;
  want: WarmIdentity;
  /** Absolute path of the published object `want.object`. */
  objectPath: string;
  overlay: string;
  vm: VmOptions;
  signal: AbortSignal;
  note: (message: string) => void;
  log: (message: string) => void;
  booting?: () => void;
}): Promise<{ vm: QemuVm; installed: boolean; release: () => Promise<void> } | undefined> {
  const dir = await r.warm.create(r.want.object);
  const release = (): Promise<void> => r.warm.removeUnlessInstalled(dir, r.want.object);
  const boot = path.join(dir, "boot.qcow2");
  let vm: QemuVm | undefined;
  try {
    await childOf(r.objectPath, boot, r.signal);
    r.booting?.();
    vm = await startVm({ ...r.vm, disk: boot });
    const qmp = vm.qmp;
    if (!qmp) throw new Error("no QMP connection");
    const stateFile = path.join(dir, "state");
    let saved: { stateBytes: number; pausedMs: number } | undefined;
    try {
      saved = await saveWarmState(qmp, { overlay: r.overlay, stateFile, signal: r.signal });
    } catch (e) {
      if (r.signal.aborted) throw e;
      r.note(`could not save a warm snapshot (${firstLine(errorMessage(e))}); this VM goes on, the next one boots again`);
    }
    if (!(await pathExists(r.overlay))) throw new RetryPlain();
    await setGuestClock(vm, r.signal);
    let installed = false;
    if (saved) {
      const meta: WarmMeta = { ...r.want, mac: vm.mac, ip: vm.ip, stateBytes: saved.stateBytes, createdAt: new Date().toISOString() };
      installed = await r.warm.install(dir, meta);
      r.log(`warm snapshot: ${Math.round(saved.stateBytes / 1048576)} MiB of RAM state, guest paused ${saved.pausedMs} ms`);
    }
    return { vm, installed, release };
  } catch (e) {
    if (vm) await vm.kill();
    await release();
    if (e instanceof RetryPlain) return undefined;
    throw e;
  }
}

/** A qcow2 child of `backing`, by a relative path: the files can move with the build dir. */
function childOf(backing: string, file: string, signal: AbortSignal): Promise<string> {
  return qemuImg(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", path.relative(path.dirname(file), backing), file], signal);
}

class RetryPlain extends Error {}

const nothing = (): Promise<void> => Promise.resolve();

function firstLine(s: string): string {
  return s.split("\n")[0] ?? s;
}

export interface ImageVmRequest {
  project: Project;
  store: Store;
  /** Absolute path of the published object to run. */
  object: string;
  /** The throwaway disk to create (outside the build dir; backed by absolute paths). */
  disk: string;
  /** Asked for by the user; when unset, a snapshot's own size is taken, else defaults. */
  mem?: number;
  cpus?: number;
  vm: Pick<VmOptions, "keyPath" | "serialLog" | "runDir" | "user" | "seed">;
  /** `watch --shell`: the build VM of this image, kept just before its poweroff (exec/handoff.ts); tried first. */
  handoff?: Handoff;
  signal: AbortSignal;
  note: (message: string) => void;
}

/**
 * A throwaway VM of a published image (`dbuild shell`): resumed from the image's warm snapshot when
 * one fits (the user asked for no other memory or CPUs), else booted as before. Nothing is saved.
 */
export async function startImageVm(r: ImageVmRequest): Promise<{ vm: QemuVm; resumed: boolean; from: "build VM" | "warm snapshot" | "boot" }> {
  const s = r.project.settings;
  const object = path.basename(r.object);
  const warm = new WarmStore(r.store.internalDir);
  const child = (backing: string): Promise<string> => qemuImg(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, r.disk], r.signal);
  const resumed = async (start: () => Promise<QemuVm>): Promise<QemuVm> => {
    const vm = await start();
    try {
      await setGuestClock(vm, r.signal);
    } catch (e) {
      await vm.kill();
      throw e;
    }
    return vm;
  };
  if (r.handoff) {
    const h = r.handoff;
    await child(h.disk);
    try {
      // The build VM's devices exactly (a NoCloud seed drive or none), or the state does not load.
      const { seed: _seed, ...vmOpts } = r.vm;
      const base = projectVmOptions(s, { ...vmOpts, user: h.user, disk: r.disk, mem: h.mem, cpus: h.cpus, signal: r.signal, ...(h.seed ? { seed: { instanceId: SEED_INSTANCE_ID } } : {}) });
      const vm = await resumed(() => startVm({ ...base, mac: h.mac, resume: { stateFile: h.state, ip: h.ip } }));
      return { vm, resumed: true, from: "build VM" };
    } catch (e) {
      if (r.signal.aborted) throw e;
      r.note(`the build VM kept for the shell could not be resumed (${firstLine(errorMessage(e))}); booting the image`);
      await fs.rm(r.disk, { force: true });
    }
  }
  const meta = s.warm.enabled && s.network.mode === "user" ? await warm.peek(object) : undefined;
  if (meta && (r.mem ?? meta.mem) === meta.mem && (r.cpus ?? meta.cpus) === meta.cpus) {
    const base = projectVmOptions(s, { ...r.vm, disk: r.disk, mem: meta.mem, cpus: meta.cpus, signal: r.signal });
    const found = await warm.find({ object, mem: meta.mem, cpus: meta.cpus, qemu: await qemuVersion(), devices: await deviceSet(base) });
    if (found.discarded) r.note(`the warm snapshot of this image was discarded: ${found.discarded}; booting`);
    if (found.snap) {
      await child(found.snap.boot);
      try {
        const snap = found.snap;
        const vm = await resumed(() => startVm({ ...base, mac: snap.meta.mac, resume: { stateFile: snap.state, ip: snap.meta.ip } }));
        return { vm, resumed: true, from: "warm snapshot" };
      } catch (e) {
        if (r.signal.aborted) throw e;
        await warm.discard(object);
        r.note(`the warm snapshot of this image could not be resumed and was discarded (${firstLine(errorMessage(e))}); booting`);
        await fs.rm(r.disk, { force: true });
      }
    }
  }
  await child(r.object);
  const vm = await startVm(projectVmOptions(s, { ...r.vm, disk: r.disk, mem: r.mem ?? s.defaults.mem, cpus: r.cpus ?? s.defaults.cpus, signal: r.signal }));
  return { vm, resumed: false, from: "boot" };
}
