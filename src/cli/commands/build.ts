/**
 * `dbuild all`, `dbuild build STACK...`, `dbuild STACK...`: wire project -> plan -> executor -> reporters.
 */
import type { Command } from "commander";
import type { BuildOptions } from "../../exec/executor.js";
import { makePlan, untestedWarning } from "../../plan/planner.js";
import { loadProject } from "../../project/load.js";
import type { Project } from "../../project/types.js";
import type { BuildEvent, Reporter } from "../../report/events.js";
import { MultiReporter } from "../../report/events.js";
import { Store } from "../../store/store.js";
import { installVmCleanupHandlers } from "../../vm/registry.js";
import { DbuildError } from "../../util/errors.js";
import { parseShard, shardSelect } from "../../cache/shard.js";
import { commandOptions, interruptController, lockBuildDir, makeReporter, NO_WAIT_FLAG, NO_WAIT_HELP, parseJobs, prepareBuildDir, projectRoot, runPlan, warnReport } from "../shared.js";
import { requireHostTools } from "../../exec/host-tools.js";
import type { Release } from "../../store/lock.js";

export interface BuildCliOptions {
  jobs?: string;
  keepGoing?: boolean;
  keepFailed?: boolean;
  dryRun?: boolean;
  json?: boolean;
  dot?: boolean;
  progress?: string;
  junit?: string;
  cacheFrom?: string;
  cacheTo?: string;
  shard?: string;
  cold?: boolean;
  force?: boolean;
  trace?: string;
  /** --no-wait sets false: fail instead of waiting for another dbuild's lock. */
  wait?: boolean;
  /** commander's --no-test: false when given. */
  test?: boolean;
}

export function addBuildOptions(cmd: Command): Command {
  return cmd
    .option("-j, --jobs <n>", "nodes built at once (default: demobuild.yaml jobs, else the number of cores)")
    .option("-k, --keep-going", "after a failure, build everything the failure does not block")
    .option("--keep-failed", "keep a failed VM's disk under build/failed/ and print how to boot it")
    .option("-n, --dry-run", "print the plan (same as `dbuild plan`) and build nothing")
    .option("--json", "with --dry-run: the plan as JSON")
    .option("--dot", "with --dry-run: the plan as Graphviz")
    .option("--progress <mode>", "tty | plain | json (default: tty on a terminal, else plain)")
    .option("--junit <file>", "also write a JUnit XML report, one testcase per node")
    .option("--trace <file>", "also write the build as a Chrome trace (Trace Event Format: Perfetto, chrome://tracing)")
    .option("--cache-from <url>", "pull stale nodes from this OCI cache (oci://HOST[:PORT]/REPO) instead of building them")
    .option("--cache-to <url>", "push every node built to this OCI cache (a failed push is a warning)")
    .option("--shard <i/n>", "build only share I of N of the stale nodes (CI; use with a shared cache)")
    .option("--cold", "boot every build VM instead of resuming a warm snapshot of its parent (discards those snapshots)")
    .option("--force", "rebuild the named stacks and every stack below them in VMs, whatever the store or --cache-from holds")
    .option(NO_WAIT_FLAG, NO_WAIT_HELP)
    .option("--no-test", "skip layer tests (layers/NAME/test/): images are published untested");
}

export interface RunBuildExtras {
  reporters?: Reporter[];
  hooks?: Pick<BuildOptions, "tryPull" | "afterPublish">;
  /** `dbuild test`: rerun the tests of these stacks ("all": of every node) even when a pass is recorded. */
  forceTests?: "all" | string[];
}

/**
 * `--force STACK...`: what to plan and what to force. The named stacks are forced (and, through the
 * planner, every node below them); every target below a named stack is planned too, so its descendants
 * are rebuilt, not left pointing at images over the old bytes.
 */
export function forcedStacks(project: Project, stacks: "all" | string[]): { plan: "all" | string[]; force: string[] } {
  if (stacks === "all" || stacks.includes("all")) return { plan: "all", force: project.targets.map((t) => t.stack) };
  const below = project.targets.map((t) => t.stack).filter((t) => stacks.some((s) => t === s || t.startsWith(`${s}:`)));
  return { plan: [...new Set([...stacks, ...below])], force: stacks };
}

export async function runBuild(root: string, stacks: "all" | string[], o: BuildCliOptions, extras: RunBuildExtras = {}): Promise<number> {
  if (o.force && stacks === "all") {
    throw new DbuildError({
      reason: "bad-option",
      where: "--force",
      message: "--force needs the stacks to rebuild",
      hint: "name them, e.g. dbuild build --force micro:web (its descendants are rebuilt too), or `dbuild build --force all`",
    });
  }
  const noTest = o.test === false;
  const testOpts = { ...(noTest ? { noTest } : {}), ...(extras.forceTests ? { forceTests: extras.forceTests } : {}) };
  if (o.dryRun) {
    const project = o.force ? await loadProject(root) : undefined;
    const f = project ? forcedStacks(project, stacks) : undefined;
    return runPlan(
      root,
      f ? f.plan : stacks,
      { json: o.json ?? false, dot: o.dot ?? false, ...(o.cacheFrom ? { cache: o.cacheFrom } : {}), ...(f ? { force: f.force } : {}), ...testOpts },
      (p: Project) => new Store(p.settings.buildDir),
    );
  }
  const project = await loadProject(root);
  // The build's machinery is loaded when a build runs: every other command (and --help) starts without it.
  const [{ build }, { cacheHooks }, { JunitReporter }, { writeChromeTrace }, { ReportWriter }] = await Promise.all([
    import("../../exec/executor.js"),
    import("../../exec/cache-hooks.js"),
    import("../../report/junit.js"),
    import("../../report/trace.js"),
    import("../../report/writer.js"),
  ]);
  const f = o.force ? forcedStacks(project, stacks) : undefined;
  const jobs = parseJobs(o.jobs, project);
  const shard = o.shard !== undefined ? parseShard(o.shard) : undefined;
  requireHostTools(project);
  const store = new Store(project.settings.buildDir);
  const report = new ReportWriter({ root, store, onError: warnReport });
  const reporter = new MultiReporter([
    makeReporter(o.progress),
    ...(o.junit ? [new JunitReporter(o.junit)] : []),
    report,
    ...(extras.reporters ?? []),
  ]);
  installVmCleanupHandlers();
  const intr = interruptController();
  let release: Release;
  try {
    release = await lockBuildDir(store, { wait: o.wait ?? true, signal: intr.signal });
  } catch (e) {
    intr.dispose();
    if (intr.signal.aborted) return 130;
    throw e;
  }
  try {
    await prepareBuildDir(store);
    const plan = await makePlan(project, f ? f.plan : stacks, store, { ...(f ? { force: f.force } : {}), ...testOpts });
    // The report shows each node as it is: another shard's share stays stale there (the executor skips it as fresh).
    report.setPlan(shard ? { ...plan, nodes: plan.nodes.map((n) => ({ ...n })) } : plan);
    const untested = extras.forceTests ? untestedWarning(plan, extras.forceTests) : undefined;
    if (untested) reporter.event({ type: "warning", time: Date.now(), message: untested });
    if (shard) {
      const keep = shardSelect(plan.nodes, shard);
      for (const n of plan.nodes) if (n.status !== "fresh" && !keep.has(n.stack)) n.status = "fresh";
    }
    const emit = (e: BuildEvent): void => reporter.event(e);
    const cache = cacheHooks(project, plan, store, o, emit, intr.signal);
    const res = await build(project, plan, store, {
      jobs,
      keepGoing: o.keepGoing ?? false,
      keepFailed: o.keepFailed ?? false,
      warm: o.cold ? "cold" : "warm",
      signal: intr.signal,
      emit,
      ...cache.hooks,
      ...extras.hooks,
    });
    // Pushes run behind the build; a failed one is a warning and never changes the build's exit code.
    await cache.drain();
    await report.finish();
    const trace = report.recorder.trace();
    if (o.trace && trace) writeChromeTrace(o.trace, trace);
    return res.interrupted ? 130 : res.ok ? 0 : 1;
  } finally {
    intr.dispose();
    reporter.close();
    await store.cleanTmp().catch(() => undefined);
    await release().catch(() => undefined);
  }
}

export function registerBuildCommands(program: Command): void {
  addBuildOptions(
    program.command("all").description("build every stack named in targets/ (parents first, only stale nodes)"),
  ).action(async (_o: BuildCliOptions, cmd: Command) => {
    process.exitCode = await runBuild(projectRoot(cmd), "all", commandOptions<BuildCliOptions>(cmd));
  });
  addBuildOptions(
    program.command("build").description("build the named stacks (or all targets with no argument)").argument("[stacks...]"),
  ).action(async (stacks: string[], _o: BuildCliOptions, cmd: Command) => {
    // optsWithGlobals: `dbuild --progress json build X` means the same as `dbuild build X --progress json`.
    process.exitCode = await runBuild(projectRoot(cmd), stacks.length ? stacks : "all", commandOptions<BuildCliOptions>(cmd));
  });
  addBuildOptions(
    program
      .command("test")
      .description("run the layer tests of the named stacks now, even if they passed before (stale parents are built first; default: every node of every target)")
      .argument("[stacks...]"),
  ).action(async (stacks: string[], _o: BuildCliOptions, cmd: Command) => {
    const o = commandOptions<BuildCliOptions>(cmd);
    if (o.test === false) {
      throw new DbuildError({ reason: "bad-option", where: "--no-test", message: "`dbuild test --no-test` would test nothing", hint: "drop --no-test" });
    }
    const all = !stacks.length || stacks.includes("all");
    process.exitCode = await runBuild(projectRoot(cmd), all ? "all" : stacks, o, { forceTests: all ? "all" : stacks });
  });
}
