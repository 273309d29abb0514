/**
 * The build executor: where layers meet VMs. Takes a plan, builds its stale nodes (parents first,
 * independent branches in parallel) and publishes each image atomically through the store.
 *
 * Per kind:
 *   base          host `install` writing DBUILD_OUTPUT, or a declarative import (from + sha256)
 *   intermediate  the seed's seven steps: COW child, boot + agent IP, rsync target/, run target/install,
 *                 remove the directory, remove MAC references (+ sync, fstrim), power off
 *   finalizing    the same VM cycle, then the layer's host `convert` writes the deliverable
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { Plan, PlanNode } from "../model/plan.js";
import type { Layer, Project } from "../project/types.js";
import type { BuildEvent, Step } from "../report/events.js";
import { qemuImg } from "../store/qemu-img.js";
import type { Store } from "../store/store.js";
import type { NodeRecord } from "../model/store.js";
import { userCacheDir } from "../store/user-cache.js";
import { errorMessage } from "../util/errors.js";
import { ensureProjectKey } from "../vm/keys.js";
import type { Vm } from "../vm/types.js";
import { fetchImport, runHostScript } from "./host.js";
import { NodeLog } from "./node-log.js";
import { runGraph } from "./scheduler.js";
import { StepError } from "./step-error.js";
import { WarmStore } from "../store/warm.js";
import { startBuildVm, type BuildVm, type WarmMode } from "./warm-start.js";

export interface BuildOptions {
  jobs: number;
  keepGoing: boolean;
  keepFailed: boolean;
  signal: AbortSignal;
  emit: (e: BuildEvent) => void;
  /** Optional hook to satisfy a node without building it (remote cache pull). True = done. */
  tryPull?: (node: PlanNode, signal: AbortSignal) => Promise<boolean>;
  /** "cold": build VMs boot instead of resuming warm snapshots, and none are saved (--cold). Default "warm". */
  warm?: WarmMode;
  /** Optional hook after a node is published (remote cache push). */
  afterPublish?: (node: PlanNode, record: NodeRecord) => Promise<void>;
}

export interface BuildResult {
  ok: boolean;
  interrupted: boolean;
  built: string[];
  failed: string[];
  skipped: string[];
}

/** Directory in the guest the layer's target/ is copied to (removed before power-off). */
const GUEST_DIR = "/tmp/dbuild-layer";

/** Step 6 and the disk trim, in one guest command: keeps deltas small and images portable. */
const GUEST_CLEANUP = [
  `rm -rf ${GUEST_DIR}`,
  "rm -f /etc/udev/rules.d/70-persistent-net.rules",
  "for f in /etc/sysconfig/network-scripts/ifcfg-*; do [ -f \"$f\" ] && sed -i -e '/^HWADDR=/d' -e '/^MACADDR=/d' \"$f\"; done",
  "sync",
  "(command -v fstrim >/dev/null 2>&1 && fstrim / 2>/dev/null) || true",
  "sync",
].join("; ");

export async function build(project: Project, plan: Plan, store: Store, opts: BuildOptions): Promise<BuildResult> {
  const start = Date.now();
  const byStack = new Map(plan.nodes.map((n) => [n.stack, n]));
  const stale = plan.nodes.filter((n) => n.status === "stale");
  opts.emit({
    type: "build-start",
    time: start,
    stale: stale.map((n) => n.stack),
    fresh: plan.nodes.filter((n) => n.status === "fresh").map((n) => n.stack),
    jobs: opts.jobs,
  });
  await store.init();
  const s = project.settings;
  const sched = stale.map((n) => ({
    id: n.stack,
    parent: n.parent,
    mem: n.kind === "base" ? 0 : vmMem(project, n),
  }));
  const built: string[] = [];
  const result = await runGraph(
    sched,
    { jobs: opts.jobs, memoryBudget: s.memoryBudget, keepGoing: opts.keepGoing, signal: opts.signal },
    async (stack, signal) => {
      const node = byStack.get(stack)!;
      await buildNode(project, node, byStack, store, opts, signal);
      built.push(stack);
    },
  );
  await evictWarm(store, project, opts);
  const failed = [...result.outcome].filter(([, o]) => o === "failed").map(([id]) => id);
  const skipped = [...result.outcome].filter(([, o]) => o === "skipped" || o === "aborted").map(([id]) => id);
  for (const id of skipped) {
    opts.emit({ type: "node-skipped", time: Date.now(), stack: id, reason: result.skipReason.get(id) ?? "interrupted" });
  }
  const interrupted = opts.signal.aborted;
  const ok = failed.length === 0 && skipped.length === 0 && !interrupted;
  opts.emit({ type: "build-done", time: Date.now(), ok, built, failed, skipped, duration: (Date.now() - start) / 1000, interrupted });
  return { ok, interrupted, built, failed, skipped };
}

/** Keep warm snapshots within warm.maxMiB (least recently used go first). */
async function evictWarm(store: Store, project: Project, opts: BuildOptions): Promise<void> {
  try {
    await new WarmStore(store.internalDir).evict(project.settings.warm.maxMiB * 1048576);
  } catch (e) {
    opts.emit({ type: "warning", time: Date.now(), message: `could not evict warm snapshots: ${errorMessage(e)}` });
  }
}

function vmMem(project: Project, node: PlanNode): number {
  const layer = project.layers.get(node.layer);
  return layer?.config.mem ?? project.settings.buildVm.mem;
}

async function buildNode(
  project: Project,
  node: PlanNode,
  byStack: Map<string, PlanNode>,
  store: Store,
  opts: BuildOptions,
  signal: AbortSignal,
): Promise<void> {
  const t0 = Date.now();
  const layer = project.layers.get(node.layer);
  if (!layer) throw new Error(`layer ${node.layer} vanished`);
  opts.emit({ type: "node-start", time: t0, stack: node.stack, layer: node.layer, kind: node.kind });
  const log = new NodeLog(store.logPath(node.stack), node.stack, opts.emit);
  await log.open();
  let step: Step = "queued";
  const setStep = (s: Step, detail?: string): void => {
    step = s;
    log.note(detail ? `${s}: ${detail}` : s);
    opts.emit({ type: "step", time: Date.now(), stack: node.stack, step: s, ...(detail ? { detail } : {}) });
  };
  const work: string[] = [];
  let keptDisk: string | undefined;
  try {
    if (opts.tryPull) {
      setStep("pull");
      if (await opts.tryPull(node, signal)) {
        await log.close();
        const rec = await store.record(node.key);
        opts.emit({ type: "node-done", time: Date.now(), stack: node.stack, duration: (Date.now() - t0) / 1000, image: store.viewPath(node.stack), pulled: true, ...(rec?.deliverable ? { deliverable: path.join(store.buildDir, rec.deliverable.path) } : {}) });
        return;
      }
    }
    // Edit, build, revert: the image for these inputs is still in the store and the view merely shows
    // another build. Point the view back instead of rebuilding. (A deleted view means "rebuild it".)
    const stored = await store.record(node.key);
    if (stored && (await store.viewExists(node.stack))) {
      setStep("publish", "restored from the store");
      await store.commit(stored);
      await log.close();
      opts.emit({ type: "node-done", time: Date.now(), stack: node.stack, duration: (Date.now() - t0) / 1000, image: store.viewPath(node.stack), restored: true, ...(stored.deliverable ? { deliverable: path.join(store.buildDir, stored.deliverable.path) } : {}) });
      return;
    }
    const parentRec = node.parent ? await store.record(byStack.get(node.parent)!.key) : undefined;
    if (node.parent && !parentRec) throw new StepError("cow", `parent ${node.parent} has no image (was it deleted during the build?)`);
    const tmpImage = store.tmpPath(node.stack) + ".qcow2";
    work.push(tmpImage);
    if (node.kind === "base") {
      await buildBase(project, layer, node, store, tmpImage, log, setStep, signal);
    } else {
      const parentObject = store.objectPath(parentRec!.object);
      try {
        await applyLayerInVm(project, layer, node, store, parentRec!.object, tmpImage, log, setStep, signal, opts);
      } catch (e) {
        if (opts.keepFailed && !signal.aborted && !(e instanceof StepError && e.step === "cow")) {
          keptDisk = await keepFailedDisk(store, node, tmpImage, parentObject, signal);
          work.splice(work.indexOf(tmpImage), 1);
        }
        throw e;
      }
    }
    setStep("publish");
    const object = await store.publishImage(tmpImage, node.key, parentRec?.object ?? null);
    work.splice(work.indexOf(tmpImage), 1);
    const rec: NodeRecord = {
      key: node.key,
      stack: node.stack,
      layer: node.layer,
      parentKey: parentRec?.key ?? null,
      inputs: node.inputs,
      object,
      duration: 0,
      builtAt: new Date().toISOString(),
    };
    let next: string | undefined;
    if (node.kind === "finalizing") {
      const out = await convertDeliverable(project, layer, node, store, object, log, setStep, signal, work);
      rec.deliverable = out.deliverable;
      next = out.next;
    }
    rec.duration = (Date.now() - t0) / 1000;
    await store.commit(rec);
    await log.close();
    opts.emit({
      type: "node-done",
      time: Date.now(),
      stack: node.stack,
      duration: rec.duration,
      image: store.viewPath(node.stack),
      ...(rec.deliverable ? { deliverable: path.join(store.buildDir, rec.deliverable.path) } : {}),
      ...(next ? { next } : {}),
    });
    if (opts.afterPublish) await opts.afterPublish(node, rec);
  } catch (e) {
    const message = signal.aborted ? "interrupted" : errorMessage(e);
    log.note(`FAILED in ${step}: ${message}`);
    await log.close();
    if (!signal.aborted) {
      opts.emit({
        type: "node-failed",
        time: Date.now(),
        stack: node.stack,
        step: e instanceof StepError ? e.step : step,
        duration: (Date.now() - t0) / 1000,
        message,
        ...(e instanceof StepError && e.exitCode !== undefined ? { exitCode: e.exitCode } : {}),
        logTail: log.lastLines(),
        logPath: log.file,
        ...(keptDisk ? { keptDisk } : {}),
      });
    }
    throw e;
  } finally {
    for (const f of work) await fs.rm(f, { force: true, recursive: true });
  }
}

async function buildBase(
  project: Project,
  layer: Layer,
  node: PlanNode,
  store: Store,
  tmpImage: string,
  log: NodeLog,
  setStep: (s: Step, d?: string) => void,
  signal: AbortSignal,
): Promise<void> {
  const imp = layer.config.import;
  if (imp) {
    setStep("import", imp.from);
    const file = await fetchImport(imp.from, imp.sha256, {
      layerDir: layer.dir,
      cacheDir: userCacheDir(),
      signal,
      progress: (d) => setStep("import", d),
    });
    // Converting (not copying) makes any input format a standalone qcow2 with no backing file.
    await qemuImg(["convert", "-O", "qcow2", file, tmpImage], signal);
    return;
  }
  const keys = await ensureProjectKey(project.root);
  const workdir = store.tmpPath(`${node.stack}-work`);
  await fs.mkdir(workdir, { recursive: true });
  const cache = path.join(userCacheDir(), "layers", layer.name);
  await fs.mkdir(cache, { recursive: true });
  setStep("install-host", "running install on the host");
  try {
    await runHostScript("install-host", path.join(layer.dir, "install"), {
      cwd: layer.dir,
      env: {
        ...layer.config.env,
        ...node.settings,
        LAYER: layer.name,
        STACK: node.stack,
        DBUILD_OUTPUT: tmpImage,
        DBUILD_PUBKEY: keys.pub,
        DBUILD_CACHE: cache,
        DBUILD_WORKDIR: workdir,
        DBUILD_PROJECT: project.root,
      },
      log,
      signal,
      timeoutMs: (layer.config.timeout ?? project.settings.timeouts.install) * 1000,
    });
  } finally {
    await fs.rm(workdir, { recursive: true, force: true });
  }
  try {
    const info = JSON.parse(await qemuImg(["info", "--output=json", tmpImage], signal)) as { format?: string; "backing-filename"?: string };
    if (info["backing-filename"]) throw new StepError("install-host", `install wrote an image with a backing file (${info["backing-filename"]}); a base image must stand alone`);
    if (info.format !== "qcow2") {
      const conv = `${tmpImage}.conv`;
      await qemuImg(["convert", "-O", "qcow2", tmpImage, conv], signal);
      await fs.rename(conv, tmpImage);
    }
  } catch (e) {
    if (e instanceof StepError) throw e;
    throw new StepError("install-host", `install finished but wrote no usable image to DBUILD_OUTPUT (${errorMessage(e)})`);
  }
}

async function applyLayerInVm(
  project: Project,
  layer: Layer,
  node: PlanNode,
  store: Store,
  parentObject: string,
  tmpImage: string,
  log: NodeLog,
  setStep: (s: Step, d?: string) => void,
  signal: AbortSignal,
  opts: BuildOptions,
): Promise<void> {
  const s = project.settings;
  const keys = await ensureProjectKey(project.root);
  // (1) copy-on-write child and (2) a VM on it: resumed from the parent's warm snapshot where one
  // exists (exec/warm-start.ts), else booted; ready once SSH runs commands.
  setStep("boot");
  const runDir = `${tmpImage}.run`;
  let vm: Vm | undefined;
  let started: BuildVm | undefined;
  try {
    try {
      started = await startBuildVm({
        project,
        store,
        warm: new WarmStore(store.internalDir),
        mode: opts.warm ?? "warm",
        parentObject,
        tmpImage,
        vm: {
          mem: layer.config.mem ?? s.buildVm.mem,
          cpus: layer.config.cpus ?? s.buildVm.cpus,
          keyPath: keys.key,
          serialLog: store.logPath(node.stack).replace(/\.log$/, ".console.log"),
          runDir,
        },
        signal,
        note: (message) => {
          log.note(`warning: ${message}`);
          opts.emit({ type: "warning", time: Date.now(), stack: node.stack, message });
        },
        log: (m) => log.note(m),
      });
      vm = started.vm;
    } catch (e) {
      throw new StepError("boot", errorMessage(e));
    }
    setStep("boot", started.start);
    log.note(`VM up: pid ${vm.pid}, guest IP ${vm.ip}, ssh ${vm.sshHost}:${vm.sshPort}`);
    // (3) rsync target/ into a temporary directory in the guest, symlinks followed (-L).
    setStep("rsync");
    try {
      await vm.rsyncTo(path.join(layer.dir, "target"), GUEST_DIR, { signal });
    } catch (e) {
      throw new StepError("rsync", errorMessage(e));
    }
    // (4) run target/install there.
    setStep("install");
    const env: Record<string, string> = { ...layer.config.env, ...node.settings, LAYER: layer.name, STACK: node.stack };
    const r = await vm.exec(`cd ${GUEST_DIR} && chmod +x ./install 2>/dev/null; ./install`, {
      env,
      onStdout: (d) => log.chunk("stdout", d),
      onStderr: (d) => log.chunk("stderr", d),
      timeoutMs: (layer.config.timeout ?? s.timeouts.install) * 1000,
      signal,
    });
    if (signal.aborted) throw new StepError("install", "interrupted");
    if (r.code !== 0) {
      throw new StepError("install", `target/install exited with ${r.code === null ? `signal ${r.signal ?? "?"}` : `code ${r.code}`}`, r.code);
    }
    // (5) remove the directory, (6) MAC-address references, then sync + fstrim so the delta stays small.
    setStep("cleanup");
    const c = await vm.exec(GUEST_CLEANUP, { onStdout: (d) => log.chunk("stdout", d), onStderr: (d) => log.chunk("stderr", d), timeoutMs: 120_000, signal });
    if (c.code !== 0) throw new StepError("cleanup", `clean-up in the guest exited with code ${c.code}`, c.code);
    // (7) power off.
    setStep("poweroff");
    await vm.shutdown({ timeoutMs: s.timeouts.shutdown * 1000 });
    vm = undefined;
    // One delta over the parent, whatever the VM started from.
    await started.finish(signal);
  } finally {
    if (vm) await vm.kill();
    await started?.release();
    await fs.rm(runDir, { recursive: true, force: true });
  }
}

async function convertDeliverable(
  project: Project,
  layer: Layer,
  node: PlanNode,
  store: Store,
  object: string,
  log: NodeLog,
  setStep: (s: Step, d?: string) => void,
  signal: AbortSignal,
  work: string[],
): Promise<{ deliverable: { path: string; object: string }; next?: string }> {
  const cfg = layer.config;
  const format = cfg.format ?? layer.name;
  const ext = cfg.extension ?? format;
  setStep("convert", `to ${format}`);
  const out = store.tmpPath(`${node.stack}.${ext}`);
  const workdir = store.tmpPath(`${node.stack}-convert`);
  work.push(out, workdir);
  await fs.mkdir(workdir, { recursive: true });
  const settings = node.settings;
  await runHostScript("convert", path.join(layer.dir, "convert"), {
    cwd: layer.dir,
    env: {
      ...layer.config.env,
      ...settings,
      LAYER: layer.name,
      STACK: node.stack,
      DBUILD_IMAGE: store.objectPath(object),
      DBUILD_OUTPUT: out,
      DBUILD_WORKDIR: workdir,
    },
    log,
    signal,
    timeoutMs: project.settings.timeouts.install * 1000,
  });
  try {
    await fs.access(out);
  } catch {
    throw new StepError("convert", `${layer.name}/convert finished but wrote nothing to DBUILD_OUTPUT`);
  }
  setStep("publish", "deliverable");
  const delivObject = await store.publishFile(out, node.key, ext);
  const rel = path.relative(store.buildDir, store.deliverablePath(layer.name, node.stack, ext));
  const vars: Record<string, string> = { ...settings, OUTPUT: path.join(store.buildDir, rel), STACK: node.stack, LAYER: layer.name };
  const next = cfg.next?.replace(/\{([A-Z_]+)\}/g, (m, k: string) => vars[k] ?? m);
  return { deliverable: { path: rel, object: delivObject }, ...(next ? { next } : {}) };
}

/**
 * --keep-failed: move the failed VM's disk next to the build dir's views, its backing file re-pointed so
 * it still resolves, and tell the user how to boot it (via a snapshot, like any store image).
 */
async function keepFailedDisk(store: Store, node: PlanNode, tmpImage: string, parentObject: string, signal: AbortSignal): Promise<string | undefined> {
  try {
    await fs.access(tmpImage);
  } catch {
    return undefined;
  }
  const dir = path.join(store.buildDir, "failed");
  await fs.mkdir(dir, { recursive: true });
  const dest = path.join(dir, `${node.stack}.qcow2`);
  // A warm-started disk sits on the parent's boot overlay, which is not kept: fold it in (safe rebase).
  await qemuImg(["rebase", "-f", "qcow2", "-F", "qcow2", "-b", parentObject, tmpImage], signal);
  await qemuImg(["rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", path.relative(dir, parentObject), tmpImage]);
  await fs.rename(tmpImage, dest);
  return dest;
}
