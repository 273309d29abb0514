/**
 * The build executor: where layers meet VMs. Takes a plan, builds its stale nodes (parents first,
 * independent branches in parallel) and publishes each image atomically through the store.
 *
 * What every node shares lives here: pull from a remote cache, restore from the store, publish, record,
 * events, clean-up, --keep-failed, the layer's secrets (read before anything boots, masked in its log),
 * and its tests. What differs by kind is a runner in ./runners/ (base install, import, VM cycle,
 * finalize), picked by runnerFor().
 *
 * Tests gate the view: for a layer with tests (layers/NAME/test/), the image published to the store is
 * tested in a throwaway VM (layer-tests.ts) before the view switches. A failure keeps the image in the
 * store, held back (Store.hold), and fails the node, so no child builds on it; the next build finds it
 * cached in the store and only reruns the tests.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { hasWork } from "../model/plan.js";
import type { Plan, PlanNode } from "../model/plan.js";
import type { Project } from "../project/types.js";
import type { BuildEvent, Step } from "../report/events.js";
import { qemuImg } from "../store/qemu-img.js";
import type { Store } from "../store/store.js";
import type { NodeRecord } from "../model/store.js";
import { errorMessage } from "../util/errors.js";
import { diskFullError, isDiskFull } from "./disk-full.js";
import { NodeLog } from "./node-log.js";
import { runnerFor } from "./runners/index.js";
import type { RunContext } from "./runners/types.js";
import { runGraph, type SchedNode } from "./scheduler.js";
import { StepError } from "./step-error.js";
import { StepTimer } from "./step-timer.js";
import { WarmStore } from "../store/warm.js";
import { BuildProxy } from "./build-proxy.js";
import type { ProxyCounters } from "../report/events.js";
import type { WarmMode } from "./warm-start.js";
import { TestsFailed, testGate } from "./layer-tests.js";
import { layerSecrets, readBuildSecrets, secretMasker } from "./secrets.js";
import type { VmUsage } from "../vm/types.js";
import type { HandoffRequest } from "./handoff.js";

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
  /** `watch --shell`: keep this node's build VM for the shell (exec/handoff.ts). */
  handoff?: HandoffRequest;
}

export interface BuildResult {
  ok: boolean;
  interrupted: boolean;
  built: string[];
  failed: string[];
  skipped: string[];
}

export async function build(project: Project, plan: Plan, store: Store, opts: BuildOptions): Promise<BuildResult> {
  const start = Date.now();
  const byStack = new Map(plan.nodes.map((n) => [n.stack, n]));
  const stale = plan.nodes.filter(hasWork);
  opts.emit({
    type: "build-start",
    time: start,
    stale: stale.map((n) => n.stack),
    fresh: plan.nodes.filter((n) => n.status === "fresh").map((n) => n.stack),
    jobs: opts.jobs,
  });
  await store.init();
  // Every secret an install of this build may read, read now: a missing one is an error before any VM
  // boots. Nodes re-linked from the store install nothing (a pull may fail and build: those count).
  const secrets = readBuildSecrets(project, stale.filter((n) => !restoresFromStore(n)));
  const s = project.settings;
  const sched: SchedNode[] = stale.map((n) => ({
    id: n.stack,
    parent: n.parent,
    // A base install boots no VM, unless its layer has tests (the test VM boots the new image).
    mem: n.kind === "base" && !n.tests ? 0 : vmMem(project, n),
    // The scheduler starts the longest remaining chain first, from these recorded durations.
    ...(n.lastDuration !== undefined ? { seconds: n.lastDuration } : {}),
  }));
  const built: string[] = [];
  // The package cache runs for the length of the build, from the first node that needs it.
  const proxy = new BuildProxy(s, (message) => opts.emit({ type: "warning", time: Date.now(), message }));
  let result: Awaited<ReturnType<typeof runGraph>>;
  let proxyTotals: Awaited<ReturnType<BuildProxy["close"]>>;
  try {
    result = await runGraph(
      sched,
      { jobs: opts.jobs, memoryBudget: s.memoryBudget, keepGoing: opts.keepGoing, signal: opts.signal },
      async (stack, signal) => {
        const node = byStack.get(stack)!;
        await buildNode(project, node, byStack, store, opts, signal, proxy, secrets);
        built.push(stack);
      },
    );
  } finally {
    proxyTotals = await proxy.close();
  }
  await evictWarm(store, project, opts);
  const failed = [...result.outcome].filter(([, o]) => o === "failed").map(([id]) => id);
  const skipped = [...result.outcome].filter(([, o]) => o === "skipped" || o === "aborted").map(([id]) => id);
  for (const id of skipped) {
    opts.emit({ type: "node-skipped", time: Date.now(), stack: id, reason: result.skipReason.get(id) ?? "interrupted" });
  }
  const interrupted = opts.signal.aborted;
  const ok = failed.length === 0 && skipped.length === 0 && !interrupted;
  opts.emit({ type: "build-done", time: Date.now(), ok, built, failed, skipped, duration: (Date.now() - start) / 1000, interrupted, ...(proxyTotals ? { proxy: proxyTotals } : {}) });
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

/** The plan found the image for the node's inputs in the local store: at most its tests run, no install. */
function restoresFromStore(node: PlanNode): boolean {
  return node.status === "cached" && node.source === "store";
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
  proxy: BuildProxy,
  secretValues: ReadonlyMap<string, Buffer>,
): Promise<void> {
  const t0 = Date.now();
  const layer = project.layers.get(node.layer);
  if (!layer) throw new Error(`layer ${node.layer} vanished`);
  opts.emit({ type: "node-start", time: t0, stack: node.stack, layer: node.layer, kind: node.kind, key: node.key });
  const restoring = restoresFromStore(node);
  const shown = restoring && (await store.viewShows(node.stack, node.key));
  const secrets = restoring ? new Map<string, Buffer>() : layerSecrets(layer, secretValues);
  const log = new NodeLog(store.logPath(node.stack), node.stack, opts.emit, secretMasker(secrets.values()));
  // An image the view already shows keeps its install log (its tests write STACK.test.log).
  if (!shown) await log.open();
  let step: Step = "queued";
  const steps = new StepTimer(node.stack, opts.emit);
  const setStep = (s: Step, detail?: string): void => {
    step = s;
    log.note(detail ? `${s}: ${detail}` : s);
    steps.begin(s, detail);
  };
  const work: string[] = [];
  let keptDisk: string | undefined;
  const vmStopped = (pid: number, usage: VmUsage): void => opts.emit({ type: "vm-usage", time: Date.now(), stack: node.stack, pid, ...usage });
  const gate = (rec: NodeRecord, shows: boolean): Promise<boolean> =>
    testGate({ project, layer, node, store, rec, shown: shows, setStep, emit: opts.emit, vmStopped, signal, ...(opts.warm ? { warm: opts.warm } : {}) });
  try {
    // --force: a VM runs, whatever the store or a remote cache holds for this key.
    if (opts.tryPull && !node.forced) {
      setStep("pull");
      if (await opts.tryPull(node, signal)) {
        await log.close();
        const rec = await store.record(node.key);
        steps.end(true);
        opts.emit({ type: "node-done", time: Date.now(), stack: node.stack, duration: (Date.now() - t0) / 1000, image: store.viewPath(node.stack), pulled: true, ...(rec?.deliverable ? { deliverable: path.join(store.buildDir, rec.deliverable.path) } : {}) });
        return;
      }
    }
    // Edit, build, revert (or a deleted view): the image for these inputs is still in the store. Point
    // the view back instead of rebuilding; `--force` is the way to rebuild it. Only where the plan said
    // so: under a parent that is rebuilt the stored child no longer fits.
    // Its tests, if they are to run, gate the re-link as they gate a new image.
    const stored = restoring ? await store.record(node.key) : undefined;
    if (stored) {
      const tested = await gate(stored, shown);
      setStep("publish", shown ? "tests passed" : tested ? "tests passed, restored from the store" : "restored from the store");
      await store.commit(stored);
      await log.close();
      steps.end(true);
      opts.emit({ type: "node-done", time: Date.now(), stack: node.stack, duration: (Date.now() - t0) / 1000, image: store.viewPath(node.stack), ...(tested ? { testsOnly: true } : { restored: true }), ...(stored.deliverable ? { deliverable: path.join(store.buildDir, stored.deliverable.path) } : {}) });
      return;
    }
    const parentRec = node.parent ? await store.record(byStack.get(node.parent)!.key) : undefined;
    if (node.parent && !parentRec) throw new StepError("cow", `parent ${node.parent} has no image (was it deleted during the build?)`);
    const tmpImage = store.tmpPath(node.stack) + ".qcow2";
    work.push(tmpImage);
    const parent = parentRec ? { object: parentRec.object, path: store.objectPath(parentRec.object) } : null;
    const runner = runnerFor(node, layer);
    let proxyCounters: ProxyCounters | undefined;
    const ctx: RunContext = {
      project,
      layer,
      node,
      store,
      log,
      setStep,
      warn: (message) => {
        log.note(`warning: ${message}`);
        opts.emit({ type: "warning", time: Date.now(), stack: node.stack, message });
      },
      signal,
      tmpImage,
      parent,
      warm: opts.warm ?? "warm",
      work,
      proxy,
      countProxy: (c) => (proxyCounters = c),
      vmStopped,
      secrets,
      ...(opts.handoff?.stack === node.stack ? { handoff: opts.handoff } : {}),
    };
    try {
      await runner.buildImage(ctx);
    } catch (e) {
      if (parent && opts.keepFailed && !signal.aborted && !(e instanceof StepError && e.step === "cow")) {
        keptDisk = await keepFailedDisk(store, node, tmpImage, parent.path, signal);
        work.splice(work.indexOf(tmpImage), 1);
      }
      throw e;
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
    if (runner.afterPublish) {
      const out = await runner.afterPublish(ctx, object);
      rec.deliverable = out.deliverable;
      next = out.next;
    }
    const tested = await gate(rec, false);
    rec.duration = (Date.now() - t0) / 1000;
    await store.commit(rec);
    await log.close();
    steps.end(true);
    opts.emit({
      type: "node-done",
      time: Date.now(),
      stack: node.stack,
      duration: rec.duration,
      image: store.viewPath(node.stack),
      ...(rec.deliverable ? { deliverable: path.join(store.buildDir, rec.deliverable.path) } : {}),
      ...(next ? { next } : {}),
      ...(proxyCounters && proxyCounters.requests > 0 ? { proxy: proxyCounters } : {}),
    });
    // A puller trusts a pushed image's tests: one published untested (--no-test) is not pushed.
    if (opts.afterPublish && node.tests && !tested) {
      opts.emit({ type: "warning", time: Date.now(), stack: node.stack, message: "not pushed to the cache: its tests did not run (--no-test)" });
    } else if (opts.afterPublish) await opts.afterPublish(node, rec);
  } catch (caught) {
    let e = caught;
    if (!signal.aborted && isDiskFull(e)) e = await diskFullError(e, store, work);
    const message = signal.aborted ? "interrupted" : log.masked(errorMessage(e));
    log.note(`FAILED in ${step}: ${message}`);
    await log.close();
    steps.end(false);
    if (!signal.aborted) {
      opts.emit({
        type: "node-failed",
        time: Date.now(),
        stack: node.stack,
        step: e instanceof StepError ? e.step : step,
        duration: (Date.now() - t0) / 1000,
        message,
        ...(e instanceof StepError && e.exitCode !== undefined ? { exitCode: e.exitCode } : {}),
        logTail: e instanceof TestsFailed ? e.tail : log.lastLines(),
        logPath: e instanceof TestsFailed ? e.logPath : log.file,
        ...(keptDisk ? { keptDisk } : {}),
        ...(e instanceof TestsFailed ? { shell: e.shell } : {}),
      });
    }
    throw e;
  } finally {
    for (const f of work) await fs.rm(f, { force: true, recursive: true });
  }
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
