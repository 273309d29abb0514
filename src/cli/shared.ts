/**
 * What several commands share: the project root, the build-dir lock, Ctrl-C handling, reporters, option
 * parsing and the plan printer (`dbuild plan` and `dbuild build --dry-run`). Commands import this module
 * and never each other, so each command file can change without touching the others.
 */
import * as os from "node:os";
import type { Command } from "commander";
import { buildMatrix } from "../cache/shard.js";
import type { PulledNode } from "../cache/artifact.js";
import type { NodeKey, Plan, PlanNode } from "../model/plan.js";
import type { StoreView } from "../model/store.js";
import { makePlan } from "../plan/planner.js";
import { loadProject } from "../project/load.js";
import type { Project } from "../project/types.js";
import type { Reporter } from "../report/events.js";
import { renderPlanDot, renderPlanJson, renderPlanText } from "../report/plan.js";
import { JsonReporter, PlainReporter, TtyReporter } from "../report/reporters.js";
import { LOCKED_EXIT, lockBuildDir as lockStore, waitingMessage, type Release } from "../store/lock.js";
import type { Store } from "../store/store.js";
import { reapOrphanVms } from "../vm/orphans.js";
import { DbuildError, errorMessage } from "../util/errors.js";

/** `-C DIR`, else the current directory. */
export function projectRoot(cmd: Command): string {
  const o = cmd.optsWithGlobals<{ dir?: string }>();
  return o.dir ?? process.cwd();
}

/**
 * The options of `cmd` and of the commands above it (`dbuild --progress json build X` means the same as
 * `dbuild build X --progress json`), where a value given on the command line beats a default at any level.
 * commander's optsWithGlobals lets the outer command win, so the root's default for a negatable flag
 * (`--no-wait`: wait = true) would hide `dbuild all --no-wait`.
 */
export function commandOptions<T>(cmd: Command): T {
  const chain: Command[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) chain.unshift(c);
  const out: Record<string, unknown> = {};
  for (const c of chain) {
    for (const [k, v] of Object.entries(c.opts())) {
      if (c.getOptionValueSource(k) !== "default" || !(k in out)) out[k] = v;
    }
  }
  return out as T;
}

export function makeReporter(mode: string | undefined): Reporter {
  const write = (s: string): void => {
    process.stdout.write(s);
  };
  const m = mode ?? (process.stdout.isTTY ? "tty" : "plain");
  switch (m) {
    case "tty":
      return new TtyReporter(write);
    case "plain":
      return new PlainReporter(write);
    case "json":
      return new JsonReporter(write);
    default:
      throw new DbuildError({ reason: "bad-option", where: "--progress", message: `unknown mode "${m}"`, hint: "use tty, plain or json" });
  }
}

export function parseJobs(v: string | undefined, project: Project): number {
  if (v === undefined) return project.settings.jobs;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) {
    throw new DbuildError({ reason: "bad-option", where: "-j", message: `"${v}" is not a positive whole number`, hint: `e.g. -j ${os.availableParallelism()}` });
  }
  return n;
}

export const NO_WAIT_FLAG = "--no-wait";
export const NO_WAIT_HELP = `if another dbuild holds the build dir, fail (exit ${LOCKED_EXIT}) instead of waiting`;

/**
 * Hold the build dir (two builds in one dir would race on the same tmp objects). If another dbuild holds
 * it, say who and wait (cargo's "Blocking waiting for file lock"), unless --no-wait.
 */
export async function lockBuildDir(store: Store, o: { wait?: boolean; signal?: AbortSignal } = {}): Promise<Release> {
  return lockStore(store, {
    command: ["dbuild", ...process.argv.slice(2)].join(" "),
    wait: o.wait ?? true,
    ...(o.signal ? { signal: o.signal } : {}),
    onWait: (holder) => process.stderr.write(`${waitingMessage(store, holder)}\n`),
  });
}

/**
 * Called with the build-dir lock held, before a build: no other dbuild runs here, so QEMU processes left
 * by a dbuild that died (their pidfiles in .dbuild/vms) are orphans: kill them before their temporary
 * disks are removed.
 */
export async function prepareBuildDir(store: Store): Promise<void> {
  const reaped = await reapOrphanVms(store.vmsDir);
  if (reaped.length) process.stderr.write(`dbuild: stopped ${reaped.length} QEMU process(es) left by an earlier dbuild that died (pid ${reaped.join(", ")})\n`);
  await store.cleanTmp();
}

/** Ctrl-C / SIGTERM abort the build: running VMs are stopped, nothing half-built is published. */
export function interruptController(): { signal: AbortSignal; dispose: () => void } {
  const ac = new AbortController();
  const onSig = (): void => {
    if (ac.signal.aborted) process.exit(130);
    ac.abort(new Error("interrupted"));
  };
  process.on("SIGINT", onSig);
  process.on("SIGTERM", onSig);
  return {
    signal: ac.signal,
    dispose: () => {
      process.off("SIGINT", onSig);
      process.off("SIGTERM", onSig);
    },
  };
}

export interface PlanCliOptions {
  json?: boolean;
  dot?: boolean;
  /** A GitHub Actions matrix of the work left (stale and not in the remote cache). */
  matrix?: boolean;
  /** Remote cache to ask (default: demobuild.yaml cache.from, else cache.to). */
  cache?: string;
  /** `--force` (with build --dry-run): these stacks and their descendants are rebuilt whatever is cached. */
  force?: string[];
  /** Where output goes (default stdout). */
  write?: (s: string) => void;
  color?: boolean;
  /** --no-test: tests neither run nor make a node stale. */
  noTest?: boolean;
  /** `dbuild test --dry-run`: these stacks' tests run even when a pass is recorded ("all": every node's). */
  forceTests?: "all" | readonly string[];
}

export type StoreSource = StoreView | ((project: Project) => StoreView);
export const storeFor = (s: StoreSource, p: Project): StoreView => (typeof s === "function" ? s(p) : s);

function checkFormats(o: PlanCliOptions): void {
  if ([o.json, o.dot, o.matrix].filter(Boolean).length > 1) {
    throw new DbuildError({ reason: "bad-option", where: "command line", message: "--json, --dot and --matrix cannot be used together", hint: "pick one output format" });
  }
}

/** Load, plan and print. Returns the exit code (0: printed; problems are thrown as DbuildError). */
export async function runPlan(root: string, stacks: "all" | string[], opts: PlanCliOptions, store: StoreSource): Promise<number> {
  await planAndPrint(root, stacks, opts, store);
  return 0;
}

/** Like runPlan, but hands back the plan too (for tests and callers that want both). */
export async function planAndPrint(root: string, stacks: "all" | string[], opts: PlanCliOptions, store: StoreSource): Promise<Plan> {
  checkFormats(opts);
  const write = opts.write ?? ((s: string) => void process.stdout.write(s));
  const project = await loadProject(root);
  const plan = await makePlan(project, stacks.length ? stacks : "all", storeFor(store, project), {
    ...(opts.force ? { force: opts.force } : {}),
    ...(opts.noTest ? { noTest: true } : {}),
    ...(opts.forceTests ? { forceTests: opts.forceTests } : {}),
  });
  const cache = opts.cache ?? project.settings.cache.from ?? project.settings.cache.to;
  if (cache) await markRemote(plan, cache, storeFor(store, project));
  if (opts.matrix) write(JSON.stringify(buildMatrix(plan.nodes)) + "\n");
  else if (opts.json) write(renderPlanJson(plan));
  else if (opts.dot) write(renderPlanDot(plan));
  else write(renderPlanText(plan, { color: opts.color ?? (process.stdout.isTTY && !process.env.NO_COLOR) }));
  return plan;
}

/**
 * Asks the remote cache about every stale node that is not forced, parents first. A node whose artifact
 * fits (a base, or built over exactly the parent image this build will have: the local one, or the one
 * pulled just before it) becomes cached from the remote; the build will pull it, as the executor's pull
 * makes the same checks. A registry that cannot be asked is a warning, not an error: the plan is still
 * right, only less informed (every stale node then counts as work left).
 */
export async function markRemote(plan: Plan, url: string, store: StoreView): Promise<void> {
  const ask = plan.nodes.filter((n) => n.status === "stale" && !n.forced);
  if (!ask.length) return;
  // The registry client is loaded only when a cache is asked.
  const [{ OciClient }, { remoteArtifacts }] = await Promise.all([import("../cache/oci.js"), import("../cache/sync.js")]);
  // Few retries: a plan is interactive, and an unreachable cache only makes it less informed.
  const client = new OciClient(url, { retry: { retries: 1 }, requestTimeoutMs: 10_000 });
  let found: Map<NodeKey, PulledNode | undefined>;
  try {
    found = await remoteArtifacts(client, ask.map((n) => n.key), { signal: AbortSignal.timeout(60_000) });
  } catch (e) {
    if (e instanceof DbuildError && e.problems.some((p) => p.reason === "bad-cache-url")) throw e;
    const why = e instanceof DbuildError ? e.problems.map((p) => p.message).join("; ") : errorMessage(e);
    process.stderr.write(`warning: cannot ask the cache, every stale node counts as a miss: ${why}\n`);
    return;
  }
  const byStack = new Map(plan.nodes.map((n) => [n.stack, n]));
  /** Digest of the image each node will have after the build, where it is known before building. */
  const willHave = new Map<string, string>();
  const imageDigest = async (n: PlanNode): Promise<string | undefined> => {
    const known = willHave.get(n.stack);
    if (known !== undefined) return known;
    if (n.status === "stale" || !store.objectDigest) return undefined;
    const rec = await store.record(n.key);
    return rec ? store.objectDigest(rec) : undefined;
  };
  for (const n of plan.nodes) {
    if (n.status !== "stale" || n.forced) continue;
    const info = found.get(n.key);
    n.remote = info ? "hit" : "miss";
    if (!info) continue;
    const parent = n.parent === null ? undefined : byStack.get(n.parent);
    const fits = parent === undefined ? info.parentKey === null : info.parentKey === parent.key && info.parentDigest !== null && info.parentDigest === (await imageDigest(parent));
    if (!fits) {
      n.reasons.push(parent?.status === "stale" ? `the cache's image fits only the old ${parent.stack}, which is rebuilt` : `the cache's image was built over another image of ${n.parent ?? "its parent"}`);
      continue;
    }
    n.status = "cached";
    n.source = "remote";
    n.pullBytes = info.size + (info.deliverable?.size ?? 0);
    n.steps = [`pull ${(n.pullBytes / 1048576).toFixed(1)} MiB from ${url}`, "check it fits the parent image", "publish (no VM)"];
    delete n.lastDuration;
    n.reasons.push(`the image for these inputs is in ${url}`);
    willHave.set(n.stack, info.digest);
  }
}

/** A report that cannot be written is worth a line on stderr, never a failed build. */
export function warnReport(message: string): void {
  process.stderr.write(`warning: ${message}\n`);
}
