/**
 * A watch session: the file watcher feeds the state machine (state.ts); this class carries out its
 * effects: the debounce timer, a build cycle (reload project -> replan -> build the stale nodes ->
 * optional shell VM), the check that decides whether a change seen during a build aborts it, and
 * the exit. It prints nothing: it emits events for the CLI to render.
 */
import { promises as fs } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { removeHandoff, type Handoff, type HandoffRequest } from "../exec/handoff.js";
import { build, type BuildResult } from "../exec/executor.js";
import { makePlan, resolveStacks } from "../plan/planner.js";
import { hasWork } from "../model/plan.js";
import type { NodeKey, Plan, PlanNode } from "../model/plan.js";
import { loadProject } from "../project/load.js";
import type { Project } from "../project/types.js";
import type { BuildEvent } from "../report/events.js";
import { Store } from "../store/store.js";
import { DbuildError, errorMessage } from "../util/errors.js";
import { requireAffected } from "./affected.js";
import type { WatchEvent, WatchOutcome } from "./events.js";
import { startShell, type ShellVm } from "./shell.js";
import { WatchMachine, type WatchEffect, type WatchInput } from "./state.js";
import { startWatcher, type Watcher, type WatchSpec } from "./watcher.js";

export interface WatchSessionOptions {
  /** Absolute project root. */
  root: string;
  specs: readonly WatchSpec[];
  /** --stack: build these instead of the targets containing the changed layer. */
  stacks?: readonly string[];
  shell: boolean;
  /** Nodes built at once; default: the project's `jobs`. */
  jobs?: number;
  debounceMs: number;
  emit: (e: WatchEvent | BuildEvent) => void;
  /** Each cycle's plan, before it builds (the HTML report shows it). */
  onPlan?: (plan: Plan) => void;
  /** Aborted = stop (Ctrl-C): the running build is aborted, VMs are stopped, then run() resolves. */
  signal: AbortSignal;
  /**
   * Take the build-dir lock for one build (waiting if another dbuild holds it); resolves with its release.
   * The session holds the lock only while it builds, so other commands can run between changes.
   */
  lock?: (signal: AbortSignal) => Promise<() => Promise<void>>;
}

interface Running {
  cycle: number;
  ac: AbortController;
  /** Keys of every node of this cycle's plan once planned; undefined while still planning. */
  keys?: Map<string, NodeKey>;
}

function depth(stack: string): number {
  return stack.split(":").length;
}

export class WatchSession {
  private readonly machine = new WatchMachine();
  private timer: NodeJS.Timeout | undefined;
  private running: Running | undefined;
  /** Keys of each node as of the last cycle that ran to its end (built, failed or up to date). */
  private readonly lastKeys = new Map<string, NodeKey>();
  private cycleNo = 0;
  private shellVm: ShellVm | undefined;
  private planQueue: Promise<unknown> = Promise.resolve();
  private finish: (() => void) | undefined;
  private readonly relPaths: string[];

  constructor(private readonly o: WatchSessionOptions) {
    this.relPaths = o.specs.map((s) => path.relative(o.root, s.path) || ".");
  }

  /** Validate, watch, run the initial build, then rebuild on changes until the signal is aborted. */
  async run(): Promise<void> {
    const { o } = this;
    const project = await loadProject(o.root);
    // Fail early on a bad --stack or a layer no target uses: the session could never build anything.
    const stacks = requireAffected(project, this.relPaths, o.stacks);
    if (o.stacks?.length) resolveStacks(project, [...o.stacks]);
    const buildDir = project.settings.buildDir;
    const watcher: Watcher = await startWatcher({
      root: o.root,
      specs: o.specs,
      ignoreDirs: [buildDir, path.join(o.root, ".git")],
      onChange: (p) => this.send({ type: "change", path: p }),
      onError: (e) => o.emit({ type: "watch-error", time: Date.now(), cycle: this.cycleNo, problems: [{ reason: "watch-failed", where: this.relPaths.join(", "), message: e.message }] }),
      signal: o.signal,
    });
    const finished = new Promise<void>((resolve) => (this.finish = resolve));
    const onStop = (): void => this.send({ type: "stop" });
    o.emit({ type: "watch-start", time: Date.now(), paths: this.relPaths, stacks });
    if (o.signal.aborted) onStop();
    else {
      o.signal.addEventListener("abort", onStop, { once: true });
      this.send({ type: "start" });
    }
    try {
      await finished;
    } finally {
      o.signal.removeEventListener("abort", onStop);
      clearTimeout(this.timer);
      await watcher.close();
      await this.stopShell();
      o.emit({ type: "watch-stop", time: Date.now() });
    }
  }

  private send(input: WatchInput): void {
    for (const eff of this.machine.send(input)) this.apply(eff);
  }

  private apply(eff: WatchEffect): void {
    switch (eff.type) {
      case "startTimer":
        clearTimeout(this.timer);
        this.timer = setTimeout(() => {
          this.timer = undefined;
          this.send({ type: "timerFired" });
        }, this.o.debounceMs);
        break;
      case "cancelTimer":
        clearTimeout(this.timer);
        this.timer = undefined;
        break;
      case "startBuild": {
        const run: Running = { cycle: ++this.cycleNo, ac: new AbortController() };
        this.running = run;
        void this.cycle(run, eff.paths)
          .catch((e: unknown) => this.reportError(run.cycle, e))
          .finally(() => {
            this.running = undefined;
            this.send({ type: "buildFinished" });
          });
        break;
      }
      case "checkBuild":
        void this.check(eff.paths).catch((e: unknown) => this.reportError(this.cycleNo, e));
        break;
      case "abortBuild":
        this.running?.ac.abort(new Error("stopped"));
        break;
      case "exit":
        this.running?.ac.abort(new Error("stopped"));
        this.finish?.();
        break;
    }
  }

  private reportError(cycle: number, e: unknown): void {
    const problems = e instanceof DbuildError ? [...e.problems] : [{ reason: "internal", where: "watch", message: errorMessage(e) }];
    this.o.emit({ type: "watch-error", time: Date.now(), cycle, problems });
  }

  /** Plans one at a time: a check during a build and the next cycle must not race on the stat cache. */
  private plan(project: Project, stacks: string[], signal: AbortSignal): Promise<Plan> {
    const p = this.planQueue.then(() => makePlan(project, stacks, new Store(project.settings.buildDir), { signal }));
    this.planQueue = p.catch(() => undefined);
    return p;
  }

  private async replan(paths: readonly string[], signal: AbortSignal): Promise<{ project: Project; stacks: string[]; plan: Plan }> {
    const project = await loadProject(this.o.root);
    const stacks = requireAffected(project, paths.length ? paths : this.relPaths, this.o.stacks);
    return { project, stacks, plan: await this.plan(project, stacks, signal) };
  }

  private async cycle(run: Running, paths: string[]): Promise<void> {
    const { o } = this;
    const t0 = Date.now();
    const signal = run.ac.signal;
    let planned: Awaited<ReturnType<WatchSession["replan"]>>;
    try {
      planned = await this.replan(paths, signal);
    } catch (e) {
      if (signal.aborted) return; // superseded while planning: the next cycle plans again
      throw e;
    }
    const { project, stacks, plan } = planned;
    run.keys = new Map(plan.nodes.map((n) => [n.stack, n.key]));
    o.onPlan?.(plan);
    if (paths.length && plan.nodes.every((n) => this.lastKeys.get(n.stack) === n.key)) {
      o.emit({ type: "watch-unchanged", time: Date.now(), cycle: run.cycle, changed: paths, stacks });
      return;
    }
    const stale = plan.nodes.filter(hasWork);
    o.emit({ type: "watch-cycle", time: Date.now(), cycle: run.cycle, changed: paths, stacks, rebuilding: stale.map((n) => n.stack) });
    // --shell: the build VM of the node the shell will show is kept just before its poweroff, and the
    // shell resumes it (exec/handoff.ts) rather than booting the new image.
    const kept: { req?: HandoffRequest; handoff?: Handoff } = {};
    const target = o.shell ? this.shellStack(plan, stale.map((n) => n.stack)) : undefined;
    if (target && stale.some((n) => n.stack === target && n.kind === "intermediate")) {
      const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-handoff-"));
      kept.req = { stack: target, dir, take: (h) => (kept.handoff = h) };
    }
    try {
      await this.buildAndShell(run, { project, stacks, plan, stale, t0, kept });
    } finally {
      // Not taken by a shell (failed, cancelled, or the shell shows another stack): nothing may keep it.
      if (kept.req) await removeHandoff(new Store(project.settings.buildDir), kept.handoff ?? { dir: kept.req.dir, disk: path.join(kept.req.dir, "disk.qcow2") });
    }
  }

  private async buildAndShell(
    run: Running,
    c: { project: Project; stacks: string[]; plan: Plan; stale: PlanNode[]; t0: number; kept: { req?: HandoffRequest; handoff?: Handoff } },
  ): Promise<void> {
    const { o } = this;
    const { project, stacks, plan, stale, t0, kept } = c;
    const signal = run.ac.signal;
    let res: BuildResult | undefined;
    if (stale.length) {
      // The old shell shows an image that is about to be replaced, and it competes for the CPUs.
      await this.stopShell();
      let release: (() => Promise<void>) | undefined;
      try {
        release = await o.lock?.(signal);
      } catch (e) {
        if (!signal.aborted) throw e;
      }
      try {
        // Another dbuild may have built these nodes while we waited for the lock: plan again under it.
        const current = o.lock && !signal.aborted ? await this.plan(project, stacks, signal) : plan;
        if (current !== plan) o.onPlan?.(current);
        if (!signal.aborted) {
          res = await build(project, current, new Store(project.settings.buildDir), {
            jobs: o.jobs ?? project.settings.jobs,
            keepGoing: false,
            keepFailed: false,
            signal,
            emit: o.emit,
            ...(kept.req ? { handoff: kept.req } : {}),
          });
        }
      } finally {
        await release?.();
      }
    }
    const cancelled = signal.aborted;
    // A cancelled cycle proves nothing about its keys: the next change must build again even if it
    // restores the exact inputs of this one.
    for (const n of plan.nodes) {
      if (cancelled) this.lastKeys.delete(n.stack);
      else this.lastKeys.set(n.stack, n.key);
    }
    const outcome: WatchOutcome = cancelled ? "cancelled" : !res ? "up-to-date" : res.ok ? "done" : "failed";
    o.emit({
      type: "watch-cycle-done",
      time: Date.now(),
      cycle: run.cycle,
      outcome,
      built: res?.built ?? [],
      failed: res?.failed ?? [],
      duration: (Date.now() - t0) / 1000,
    });
    if (o.shell && (outcome === "done" || (outcome === "up-to-date" && !this.shellVm))) {
      const handoff = kept.handoff;
      // The shell owns the kept build VM from here on (its stop removes it), whether it uses it or not.
      kept.req = undefined;
      await this.openShell(run, project, plan, res?.built ?? stacks, handoff);
    }
  }

  /** The stack a shell shows: --stack, else the deepest rebuilt node that is not a finalizing one. */
  private shellStack(plan: Plan, candidates: readonly string[]): string | undefined {
    if (this.o.stacks?.[0]) return this.o.stacks[0];
    const byStack = new Map<string, PlanNode>(plan.nodes.map((n) => [n.stack, n]));
    const expand = candidates.flatMap((s) => {
      const n = byStack.get(s);
      // A finalizing layer typically removes the build key and the network identity: its parent boots usable.
      return n?.kind === "finalizing" && n.parent ? [n.parent] : [s];
    });
    return [...expand].sort((a, b) => depth(b) - depth(a))[0];
  }

  private async openShell(run: Running, project: Project, plan: Plan, candidates: readonly string[], handoff: Handoff | undefined): Promise<void> {
    const store = new Store(project.settings.buildDir);
    const stack = this.shellStack(plan, candidates);
    const usable = handoff && handoff.stack === stack ? handoff : undefined;
    if (handoff && !usable) await removeHandoff(store, handoff);
    if (!stack) return;
    await this.stopShell();
    try {
      const vm = await startShell(project, store, stack, run.ac.signal, usable);
      if (run.ac.signal.aborted) {
        await vm.stop();
        return;
      }
      this.shellVm = vm;
      this.o.emit({
        type: "watch-shell",
        time: Date.now(),
        cycle: run.cycle,
        stack,
        disk: vm.disk,
        pid: vm.pid,
        sshHost: vm.sshHost,
        sshPort: vm.sshPort,
        keyPath: vm.keyPath,
        user: vm.user,
        ssh: vm.ssh,
        bootSeconds: vm.bootSeconds,
        from: vm.from,
      });
    } catch (e) {
      if (run.ac.signal.aborted) return;
      this.o.emit({ type: "watch-shell-failed", time: Date.now(), cycle: run.cycle, stack, message: errorMessage(e) });
    }
  }

  private async stopShell(): Promise<void> {
    const vm = this.shellVm;
    if (!vm) return;
    this.shellVm = undefined;
    await vm.stop();
    this.o.emit({ type: "watch-shell-stopped", time: Date.now(), stack: vm.stack, pid: vm.pid });
  }

  /**
   * Changes arrived during a build: abort it only if a node of its plan now has another key. A
   * cycle still planning is aborted outright (cheaper than finding out what it read).
   */
  private async check(paths: readonly string[]): Promise<void> {
    const run = this.running;
    if (!run || run.ac.signal.aborted) return;
    if (!run.keys) {
      run.ac.abort(new Error("changed while planning"));
      return;
    }
    let plan: Plan;
    try {
      plan = (await this.replan(paths, run.ac.signal)).plan;
    } catch {
      // A project that does not load now is reported by the next cycle; the running build goes on.
      return;
    }
    const changed = plan.nodes.some((n) => run.keys!.has(n.stack) && run.keys!.get(n.stack) !== n.key);
    if (changed && this.running === run) run.ac.abort(new Error("inputs changed"));
  }
}
