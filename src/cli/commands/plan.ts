/**
 * `dbuild plan [all|STACK...] [--json] [--dot]` and `dbuild why STACK`: wiring only.
 */
import type { Command } from "commander";
import { loadProject } from "../../project/load.js";
import type { Project } from "../../project/types.js";
import { makePlan } from "../../plan/planner.js";
import type { Plan } from "../../plan/types.js";
import { whyDiff } from "../../plan/why.js";
import { OciClient } from "../../cache/oci.js";
import { buildMatrix } from "../../cache/shard.js";
import { remoteStatus } from "../../cache/sync.js";
import { renderPlanDot, renderPlanJson, renderPlanText, renderWhy } from "../../report/plan.js";
import type { StoreView } from "../../store/types.js";
import { DbuildError, errorMessage } from "../../util/errors.js";

export interface PlanCliOptions {
  json?: boolean;
  dot?: boolean;
  /** A GitHub Actions matrix of the work left (stale and not in the remote cache). */
  matrix?: boolean;
  /** Remote cache to ask (default: demobuild.yaml cache.from, else cache.to). */
  cache?: string;
  /** Where output goes (default stdout). */
  write?: (s: string) => void;
  color?: boolean;
}

type StoreSource = StoreView | ((project: Project) => StoreView);
const storeFor = (s: StoreSource, p: Project): StoreView => (typeof s === "function" ? s(p) : s);

function rootOf(cmd: Command): string {
  const dir = cmd.optsWithGlobals<{ dir?: string }>().dir;
  return dir ?? process.cwd();
}

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
  const plan = await makePlan(project, stacks.length ? stacks : "all", storeFor(store, project));
  const cache = opts.cache ?? project.settings.cache.from ?? project.settings.cache.to;
  if (cache) await markRemote(plan, cache);
  if (opts.matrix) write(JSON.stringify(buildMatrix(plan.nodes)) + "\n");
  else if (opts.json) write(renderPlanJson(plan));
  else if (opts.dot) write(renderPlanDot(plan));
  else write(renderPlanText(plan, { color: opts.color ?? (process.stdout.isTTY && !process.env.NO_COLOR) }));
  return plan;
}

/**
 * Sets `remote` on every stale node. A registry that cannot be asked is a warning, not an error: the plan
 * is still right, only less informed (every stale node then counts as work left).
 */
async function markRemote(plan: Plan, url: string): Promise<void> {
  const stale = plan.nodes.filter((n) => n.status === "stale");
  if (!stale.length) return;
  // Few retries: a plan is interactive, and an unreachable cache only makes it less informed.
  const client = new OciClient(url, { retry: { retries: 1 }, requestTimeoutMs: 10_000 });
  try {
    const has = await remoteStatus(client, stale.map((n) => n.key), { signal: AbortSignal.timeout(60_000) });
    for (const n of stale) n.remote = has.get(n.key) ? "hit" : "miss";
  } catch (e) {
    if (e instanceof DbuildError && e.problems.some((p) => p.reason === "bad-cache-url")) throw e;
    const why = e instanceof DbuildError ? e.problems.map((p) => p.message).join("; ") : errorMessage(e);
    process.stderr.write(`warning: cannot ask the cache, every stale node counts as a miss: ${why}\n`);
  }
}

export async function runWhy(root: string, stack: string, opts: Pick<PlanCliOptions, "write" | "color">, store: StoreSource): Promise<number> {
  const write = opts.write ?? ((s: string) => void process.stdout.write(s));
  const project = await loadProject(root);
  const view = storeFor(store, project);
  const plan = await makePlan(project, [stack], view);
  const node = plan.nodes.find((n) => n.stack === stack)!;
  const record = await view.currentRecord(stack);
  write(renderWhy(node, whyDiff(node, record), record !== undefined, { color: opts.color ?? (process.stdout.isTTY && !process.env.NO_COLOR) }));
  return 0;
}

export function registerPlanCommands(program: Command, getStore: (project: Project) => StoreView): void {
  program
    .command("plan")
    .description("show what a build would do: the stack tree, what is stale and why, and the steps (builds nothing)")
    .argument("[stacks...]", "stacks to plan, or `all` (default: every file in targets/)")
    .option("--json", "print the plan as JSON")
    .option("--dot", "print the plan as a Graphviz digraph")
    .option("--matrix", "print a GitHub Actions matrix ({\"include\":[{\"name\",\"stacks\"}]}) of the work left")
    .option("--cache <url>", "remote cache to ask for each stale node (default: demobuild.yaml cache.from, else cache.to)")
    .option("--cache-from <url>", "same as --cache")
    .action(async (stacks: string[], o: { json?: boolean; dot?: boolean; matrix?: boolean; cache?: string; cacheFrom?: string }, cmd: Command) => {
      const cache = o.cache ?? o.cacheFrom;
      process.exitCode = await runPlan(
        rootOf(cmd),
        stacks.length ? stacks : "all",
        { json: o.json ?? false, dot: o.dot ?? false, matrix: o.matrix ?? false, ...(cache ? { cache } : {}) },
        getStore,
      );
    });
  program
    .command("why")
    .description("list the inputs of STACK that differ from what its current image was built from")
    .argument("<stack>", "a stack, e.g. micro:web")
    .action(async (stack: string, _o: unknown, cmd: Command) => {
      process.exitCode = await runWhy(rootOf(cmd), stack, {}, getStore);
    });
}
