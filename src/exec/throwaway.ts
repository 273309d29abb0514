/**
 * A throwaway VM of a published image, for `dbuild shell` and `dbuild watch --shell`: a copy-on-write
 * snapshot in a private temporary directory, started by startImageVm (resumed from the image's warm
 * snapshot where one fits, else booted) and ready once SSH runs commands.
 *
 * The snapshot, the sockets and the logs all live in that one directory, which is the VM's run dir: every
 * way the VM ends (stop(), a kill, Ctrl-C, a crash of this process through the cleanup registry) removes
 * it. Never in the build dir: published objects are immutable and other images are backed by them. The
 * snapshot is registered with the store while it exists, so gc keeps its backing chain.
 */
import { promises as fs } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Project } from "../project/types.js";
import { registerSnapshot, unregisterSnapshot } from "../store/snapshots.js";
import type { Store } from "../store/store.js";
import type { QemuVm } from "../vm/qemu.js";
import type { Login } from "./login.js";
import { SEED_INSTANCE_ID } from "./login.js";
import { startImageVm } from "./warm-start.js";
import { removeHandoff, type Handoff } from "./handoff.js";

export interface ThrowawayVm {
  vm: QemuVm;
  /** True when the VM was resumed (from the image's warm snapshot or a kept build VM) rather than booted. */
  resumed: boolean;
  from: "build VM" | "warm snapshot" | "boot";
  /** The snapshot the VM runs on. */
  disk: string;
  /** Kills the VM and removes its directory (idempotent). */
  stop(): Promise<void>;
}

export interface ThrowawayOptions {
  project: Project;
  store: Store;
  /** The image to run: pass the object a view links to, so that a later rebuild does not move it. */
  backing: string;
  keyPath: string;
  /** Who logs in (exec/login.ts); root with the key in the image when unset. */
  login?: Login;
  /** Asked for by the user; when unset, a warm snapshot's own size is taken, else the project defaults. */
  mem?: number;
  cpus?: number;
  /** File name of the snapshot, e.g. `snap.qcow2`. */
  diskName: string;
  /** Prefix of the temporary directory, e.g. `dbuild-shell-`. */
  tmpPrefix: string;
  signal: AbortSignal;
  /** A warm snapshot could not be used. */
  note: (message: string) => void;
  /** `watch --shell`: the kept build VM of this image, tried first; its directory goes with this VM. */
  handoff?: Handoff;
}

export async function startThrowawayVm(o: ThrowawayOptions): Promise<ThrowawayVm> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), o.tmpPrefix));
  const disk = path.join(dir, o.diskName);
  try {
    // Registered before it is created: gc must never remove the object this snapshot is backed by.
    await registerSnapshot(o.store, disk);
    const { vm, resumed, from } = await startImageVm({
      project: o.project,
      store: o.store,
      object: o.backing,
      disk,
      ...(o.mem !== undefined ? { mem: o.mem } : {}),
      ...(o.cpus !== undefined ? { cpus: o.cpus } : {}),
      vm: {
        keyPath: o.keyPath,
        serialLog: path.join(dir, "console.log"),
        runDir: dir,
        ...(o.login ? { user: o.login.user } : {}),
        ...(o.login?.seed ? { seed: { instanceId: SEED_INSTANCE_ID } } : {}),
      },
      signal: o.signal,
      note: o.note,
      ...(o.handoff ? { handoff: o.handoff } : {}),
    });
    let stopped: Promise<void> | undefined;
    return {
      vm,
      resumed,
      from,
      disk,
      stop: () => {
        stopped ??= (async () => {
          await vm.kill();
          await removeDirs(o, dir, disk);
        })();
        return stopped;
      },
    };
  } catch (e) {
    await removeDirs(o, dir, disk);
    throw e;
  }
}

/** This VM's directory, and the kept build VM it may have resumed (used once). */
async function removeDirs(o: ThrowawayOptions, dir: string, disk: string): Promise<void> {
  await fs.rm(dir, { recursive: true, force: true });
  await unregisterSnapshot(o.store, disk);
  if (o.handoff) await removeHandoff(o.store, o.handoff);
}
