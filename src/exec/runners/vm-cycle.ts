/**
 * An intermediate node: the seed's seven steps, applied to a copy-on-write child of the parent image.
 *
 *   (1) cow       a copy-on-write child of the parent image, or of its warm snapshot's disk (choosing
 *                 which, i.e. whether a snapshot fits this QEMU and these devices, is part of the step)
 *   (2) boot      a VM on it: resumed from the parent's warm snapshot where one exists
 *                 (exec/warm-start.ts), else booted; ready once SSH runs commands
 *   (3) rsync     the layer's target/ into a temporary directory in the guest
 *   (4) install   the layer's secrets (if any) onto a tmpfs over SSH stdin, then target/install, run there
 *   (5)+(6) cleanup  unmount the secrets' tmpfs; remove that directory and MAC-address references;
 *                 sync + fstrim
 *   (7) poweroff, then fold whatever the VM started from into one delta over the parent
 *
 * Steps (3) to (6) are GUEST_STEPS, run in order against the running VM: a new step is one more function
 * in that list.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { WarmStore } from "../../store/warm.js";
import { errorMessage } from "../../util/errors.js";
import { ensureProjectKey } from "../../vm/keys.js";
import type { Vm } from "../../vm/types.js";
import { StepError } from "../step-error.js";
import { startBuildVm, type BuildVm } from "../warm-start.js";
import { saveHandoff, type PendingHandoff } from "../handoff.js";
import type { QemuVm } from "../../vm/qemu.js";
import { archiveFailuresInOutput, GUEST_PROXY_CLEANUP, unreachableArchiveMessage } from "../../proxy/guest.js";
import type { NodeProxy } from "../build-proxy.js";
import { loginFor, SEED_INSTANCE_ID } from "../login.js";
import { growDisk } from "./grow-disk.js";
import type { NodeRunner, RunContext } from "./types.js";
import { deliverSecrets, GUEST_SECRETS_DIR, removeSecrets } from "../secrets.js";

/** Directory in the guest the layer's target/ is copied to (removed before power-off). */
export const GUEST_DIR = "/tmp/dbuild-layer";

/** Steps 5 and 6 and the disk trim, in one guest command: keeps deltas small and images portable. */
const GUEST_CLEANUP = [
  `rm -rf ${GUEST_DIR}`,
  "rm -f /etc/udev/rules.d/70-persistent-net.rules",
  GUEST_PROXY_CLEANUP,
  "for f in /etc/sysconfig/network-scripts/ifcfg-*; do [ -f \"$f\" ] && sed -i -e '/^HWADDR=/d' -e '/^MACADDR=/d' \"$f\"; done",
  "sync",
  "(command -v fstrim >/dev/null 2>&1 && fstrim / 2>/dev/null) || true",
  "sync",
].join("; ");

/** One step run against the running build VM; `np` is the VM's package-cache listener (none when off). */
export type GuestStep = (ctx: RunContext, vm: Vm, np: NodeProxy | undefined) => Promise<void>;

/** (3) rsync target/ into a temporary directory in the guest, symlinks followed (-L). */
const copyTarget: GuestStep = async ({ layer, setStep, signal }, vm) => {
  setStep("rsync");
  try {
    await vm.rsyncTo(path.join(layer.dir, "target"), GUEST_DIR, { signal });
  } catch (e) {
    throw new StepError("rsync", errorMessage(e));
  }
};

/** (4) the layer's secrets as files on a tmpfs, written from the SSH channel's stdin (never a command line). */
const putSecrets: GuestStep = async ({ secrets, log, signal }, vm) => {
  if (!secrets.size) return;
  log.note(`secrets: ${[...secrets.keys()].join(", ")} in ${GUEST_SECRETS_DIR} (tmpfs)`);
  await deliverSecrets(vm, secrets, signal);
};

/** (4) run target/install there, with the layer's env and the stack's settings. */
const runInstall: GuestStep = async ({ project, layer, node, log, setStep, signal, secrets }, vm, np) => {
  setStep("install");
  // DBUILD_SSH_KEY: the project's public key, so a finalizing layer can remove it from every user.
  const keys = await ensureProjectKey(project.root);
  const pub = (await fs.readFile(keys.pub, "utf8")).trim();
  // The proxy's variables first: a layer that sets http_proxy in layer.yaml env: keeps its own.
  const env: Record<string, string> = {
    ...np?.env,
    ...layer.config.env,
    ...node.settings,
    LAYER: layer.name,
    STACK: node.stack,
    DBUILD_SSH_USER: vm.user,
    DBUILD_SSH_KEY: pub,
    ...(secrets.size ? { DBUILD_SECRETS: GUEST_SECRETS_DIR } : {}),
  };
  const r = await vm.exec(`${np ? `${np.setup}; ` : ""}cd ${GUEST_DIR} && chmod +x ./install 2>/dev/null; ./install`, {
    env,
    asRoot: true,
    onStdout: (d) => log.chunk("stdout", d),
    onStderr: (d) => log.chunk("stderr", d),
    timeoutMs: (layer.config.timeout ?? project.settings.timeouts.install) * 1000,
    signal,
  });
  if (signal.aborted) throw new StepError("install", "interrupted");
  if (r.code !== 0) {
    const exit = `target/install exited with ${r.code === null ? `signal ${r.signal ?? "?"}` : `code ${r.code}`}`;
    const why = np ? np.explainFailure(layer.name, log.lastLines()) : explainWithoutProxy(layer.name, log.lastLines());
    throw new StepError("install", why ? `${why} (${exit})` : exit, r.code);
  }
};

/** proxy: off, or bridge networking: the install's own output is all there is to go on. */
function explainWithoutProxy(layer: string, tail: readonly string[]): string | undefined {
  const failures = archiveFailuresInOutput(tail);
  return failures.length ? unreachableArchiveMessage(layer, failures, "none (direct connection)") : undefined;
}

/** Before (5): the secrets' tmpfs unmounted and its mount point removed, so nothing of it reaches the disk. */
const dropSecrets: GuestStep = async ({ secrets, log, signal }, vm) => {
  if (!secrets.size) return;
  log.note(`secrets: unmounting ${GUEST_SECRETS_DIR}`);
  await removeSecrets(vm, signal);
};

/** (5) remove the directory, (6) MAC-address references, then sync + fstrim so the delta stays small. */
const cleanGuest: GuestStep = async ({ log, setStep, signal }, vm) => {
  setStep("cleanup");
  const c = await vm.exec(GUEST_CLEANUP, { asRoot: true, onStdout: (d) => log.chunk("stdout", d), onStderr: (d) => log.chunk("stderr", d), timeoutMs: 120_000, signal });
  if (c.code !== 0) throw new StepError("cleanup", `clean-up in the guest exited with code ${c.code}`, c.code);
};

/** Steps (3) to (6), in the order they run. */
export const GUEST_STEPS: readonly GuestStep[] = [copyTarget, putSecrets, runInstall, dropSecrets, cleanGuest];

export const vmCycleRunner: NodeRunner = {
  async buildImage(ctx: RunContext): Promise<void> {
    const runDir = `${ctx.tmpImage}.run`;
    let started: BuildVm | undefined;
    let vm: Vm | undefined;
    let np: NodeProxy | undefined;
    try {
      np = await ctx.proxy.forVm();
      started = await boot(ctx, runDir);
      vm = started.vm;
      for (const step of GUEST_STEPS) await step(ctx, vm, np);
      const handoff = ctx.handoff ? await handOff(ctx, started.vm) : undefined;
      await powerOff(ctx, vm);
      ctx.vmStopped(vm.pid, vm.usage());
      vm = undefined;
      // One delta over the parent, whatever the VM started from.
      if (handoff && ctx.handoff && ctx.parent) {
        const r = await handoff.settle(ctx.parent.path, ctx.signal);
        if (r.handoff) ctx.handoff.take(r.handoff);
        else ctx.warn(`the build VM could not be kept for the shell (${r.lost ?? "?"}); the shell boots the image`);
      } else await started.finish(ctx.signal);
      ctx.countProxy(np?.counters());
    } finally {
      if (vm) {
        await vm.kill();
        ctx.vmStopped(vm.pid, vm.usage());
      }
      await started?.release();
      await np?.close();
      await fs.rm(runDir, { recursive: true, force: true });
    }
  },
};

/** (1) copy-on-write child and (2) a VM on it, of the build VM's size (or the layer's). */
async function boot({ project, layer, node, store, log, setStep, warn, signal, tmpImage, parent, warm }: RunContext, runDir: string): Promise<BuildVm> {
  if (!parent) throw new StepError("cow", "a VM cycle needs a parent image");
  const s = project.settings;
  const keys = await ensureProjectKey(project.root);
  // The VM boots the parent's image, so the parent stack says who logs in and how.
  const login = loginFor(project, node.parent ?? node.stack);
  // The copy-on-write child first (over the parent, or over its warm snapshot's disk), then the VM.
  let step: "cow" | "boot" = "cow";
  setStep("cow");
  let started: BuildVm;
  try {
    started = await startBuildVm({
      project,
      store,
      warm: new WarmStore(store.internalDir),
      mode: warm,
      parentObject: parent.object,
      tmpImage,
      ...(layer.config.disk !== undefined ? { grow: (file: string) => growDisk(file, layer.config.disk!, "cow", signal) } : {}),
      vm: {
        mem: layer.config.mem ?? s.buildVm.mem,
        cpus: layer.config.cpus ?? s.buildVm.cpus,
        keyPath: keys.key,
        serialLog: store.logPath(node.stack).replace(/\.log$/, ".console.log"),
        runDir,
        user: login.user,
        ...(login.seed ? { seed: { instanceId: SEED_INSTANCE_ID } } : {}),
        // The next run reaps this QEMU by its pidfile if dbuild dies some way pdeathsig misses.
        pidFile: path.join(store.vmsDir, `${path.basename(tmpImage)}.pid`),
      },
      signal,
      note: warn,
      log: (m) => log.note(m),
      booting: () => {
        step = "boot";
        setStep("boot");
      },
    });
  } catch (e) {
    if (e instanceof StepError) throw e;
    throw new StepError(step, errorMessage(e));
  }
  setStep("boot", started.start);
  const vm = started.vm;
  log.note(`VM up: pid ${vm.pid}, guest IP ${vm.ip}, ssh ${vm.user}@${vm.sshHost}:${vm.sshPort}${login.seed ? " (key from the NoCloud seed)" : ""}`);
  return started;
}

/**
 * Before (7), for `watch --shell`: the VM's RAM and disk as they are now, kept for the shell
 * (exec/handoff.ts). A failure costs only the hand-off: the shell then boots the image.
 */
async function handOff(ctx: RunContext, vm: QemuVm): Promise<PendingHandoff | undefined> {
  const { layer, project, node, store, signal, tmpImage, handoff } = ctx;
  if (!handoff) return undefined;
  // Removed by the executor when the node ends (it is renamed away when all goes well).
  ctx.work.push(`${tmpImage}.next`);
  try {
    const t0 = Date.now();
    const p = await saveHandoff(vm, {
      req: handoff,
      tmpImage,
      store,
      mem: layer.config.mem ?? project.settings.buildVm.mem,
      cpus: layer.config.cpus ?? project.settings.buildVm.cpus,
      seed: Boolean(loginFor(project, node.parent ?? node.stack).seed),
      signal,
    });
    ctx.log.note(`kept the build VM's state for the shell (guest paused ${Date.now() - t0} ms)`);
    return p;
  } catch (e) {
    if (signal.aborted) throw e;
    ctx.warn(`the build VM could not be kept for the shell (${errorMessage(e)}); the shell boots the image`);
    return undefined;
  }
}

/** (7) power off (the image is complete only after a clean shutdown). */
async function powerOff({ project, setStep }: RunContext, vm: Vm): Promise<void> {
  setStep("poweroff");
  await vm.shutdown({ timeoutMs: project.settings.timeouts.shutdown * 1000 });
}
