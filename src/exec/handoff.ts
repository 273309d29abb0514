/**
 * `watch --shell` hand-off: the shell of a layer that was just built resumes the build VM itself, as it
 * was after the clean-up and just before its poweroff, instead of booting the new image (measured on the
 * micro guest under TCG: a boot costs 9-11 s, a resume about 1 s).
 *
 * Saving, in the build VM, between clean-up and poweroff (vm/warm.ts saveWarmState):
 *   the layer's disk D (tmpImage) is frozen and the VM goes on writing to a fresh overlay N over D;
 *   the RAM goes to a state file. The VM then powers off as always, writing its last blocks into N.
 * After the poweroff, N is folded onto the parent (safe rebase: everything of D and of a warm boot
 * overlay below it is copied in) and becomes the image that gets published, so the published image is
 * the same one delta over the parent as without a hand-off. D moves into the hand-off directory, with an
 * absolute backing path, and holds the disk the saved RAM state belongs to.
 *
 * The hand-off is for a shell only: it is not the published image booted (a service the layer installed
 * but did not start is not running; a kernel it installed is not the one running), and it is never used to
 * build children (those resume the published image's own warm snapshot, taken after a real boot).
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Store } from "../store/store.js";
import { registerSnapshot, unregisterSnapshot } from "../store/snapshots.js";
import { qemuImg } from "../store/qemu-img.js";
import { imageInfo } from "../vm/image.js";
import type { QemuVm } from "../vm/qemu.js";
import { saveWarmState } from "../vm/warm.js";
import { errorMessage } from "../util/errors.js";
import { pathExists } from "../util/fs.js";

/** Where a build should leave the hand-off of one node, and who takes it. */
export interface HandoffRequest {
  /** The node whose build VM is handed off. */
  stack: string;
  /** An empty directory owned by the requester (outside the build dir). */
  dir: string;
  /** Called once the node is built, with what the shell needs. */
  take: (h: Handoff) => void;
}

export interface Handoff {
  stack: string;
  dir: string;
  /** The frozen layer disk (absolute backing chain down to the parent object). */
  disk: string;
  /** The build VM's RAM state. */
  state: string;
  mac: string;
  ip: string;
  mem: number;
  cpus: number;
  /** Login user of the build VM; whether it had a NoCloud seed (the resumed VM needs the same devices). */
  user: string;
  seed: boolean;
}

/** What the runner does with a hand-off between clean-up and publishing. */
export interface PendingHandoff {
  handoff: Handoff;
  /**
   * After the poweroff: make tmpImage the publishable image again (a failure here fails the node, as a
   * failed fold would), then give D to the hand-off. Resolves to the hand-off, or undefined with a reason
   * when only the hand-off was lost.
   */
  settle(parentPath: string, signal: AbortSignal): Promise<{ handoff?: Handoff; lost?: string }>;
}

/**
 * Freeze the running build VM (disk `tmpImage` and RAM) into `req.dir`. The VM goes on, on a new overlay.
 * Throws if nothing was saved; the VM then still runs on tmpImage as before.
 */
export async function saveHandoff(
  vm: QemuVm,
  o: { req: HandoffRequest; tmpImage: string; store: Store; mem: number; cpus: number; seed: boolean; signal: AbortSignal },
): Promise<PendingHandoff> {
  const qmp = vm.qmp;
  if (!qmp) throw new Error("no QMP connection to the build VM");
  const next = `${o.tmpImage}.next`;
  const state = path.join(o.req.dir, "state");
  await saveWarmState(qmp, { overlay: next, stateFile: state, signal: o.signal });
  if (!(await pathExists(next))) throw new Error("QEMU made no overlay");
  const disk = path.join(o.req.dir, "disk.qcow2");
  const handoff: Handoff = { stack: o.req.stack, dir: o.req.dir, disk, state, mac: vm.mac, ip: vm.ip, mem: o.mem, cpus: o.cpus, user: vm.user, seed: o.seed };
  return { handoff, settle: (parentPath, signal) => settleHandoff({ store: o.store, handoff, tmpImage: o.tmpImage, next, parentPath, signal }) };
}

/**
 * After the build VM's poweroff: `next` (the overlay the VM went on writing to) folded onto the parent
 * becomes `tmpImage`, the image to publish; the frozen layer disk moves to `handoff.disk`, backed by
 * absolute paths. Exported for the unit test.
 */
export async function settleHandoff(o: { store: Store; handoff: Handoff; tmpImage: string; next: string; parentPath: string; signal: AbortSignal }): Promise<{ handoff?: Handoff; lost?: string }> {
  const { handoff, signal } = o;
  // Everything the chain next -> tmpImage -> (boot overlay) holds above the parent, into next.
  await qemuImg(["rebase", "-f", "qcow2", "-F", "qcow2", "-b", o.parentPath, o.next], signal);
  const backing = (await imageInfo(o.tmpImage, { signal })).backingFileResolved;
  await registerSnapshot(o.store, handoff.disk);
  await fs.rename(o.tmpImage, handoff.disk);
  await fs.rename(o.next, o.tmpImage);
  try {
    if (!backing) throw new Error("the frozen disk has no backing file");
    // The frozen disk keeps its chain by absolute paths once it has left the build dir's temporary folder.
    await qemuImg(["rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", backing, handoff.disk], signal);
    return { handoff };
  } catch (e) {
    return { lost: errorMessage(e) };
  }
}

/** Remove a hand-off's directory and its registration (gc then no longer keeps its backing chain). */
export async function removeHandoff(store: Store, h: Pick<Handoff, "dir" | "disk">): Promise<void> {
  await fs.rm(h.dir, { recursive: true, force: true });
  await unregisterSnapshot(store, h.disk);
}
