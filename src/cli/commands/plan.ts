/**
 * `dbuild plan [all|STACK...] [--json] [--dot]` and `dbuild why STACK`: wiring only.
 */
import type { Command } from "commander";
import { loadProject } from "../../project/load.js";
import type { Project } from "../../project/types.js";
import { makePlan } from "../../plan/planner.js";
import { whyDiff } from "../../plan/why.js";
import { renderWhy } from "../../report/plan.js";
import type { StoreView } from "../../model/store.js";
import { markRemote, projectRoot, runPlan, storeFor, type PlanCliOptions, type StoreSource } from "../shared.js";

export async function runWhy(root: string, stack: string, opts: Pick<PlanCliOptions, "write" | "color" | "force">, store: StoreSource): Promise<number> {
  const write = opts.write ?? ((s: string) => void process.stdout.write(s));
  const project = await loadProject(root);
  const view = storeFor(store, project);
  const plan = await makePlan(project, [stack], view, opts.force ? { force: opts.force } : {});
  const cache = project.settings.cache.from ?? project.settings.cache.to;
  if (cache) await markRemote(plan, cache, view);
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
    .option("--no-test", "plan as `dbuild all --no-test` would run (layer tests skipped)")
    .action(async (stacks: string[], o: { json?: boolean; dot?: boolean; matrix?: boolean; cache?: string; cacheFrom?: string; test?: boolean }, cmd: Command) => {
      const cache = o.cache ?? o.cacheFrom;
      process.exitCode = await runPlan(
        projectRoot(cmd),
        stacks.length ? stacks : "all",
        { json: o.json ?? false, dot: o.dot ?? false, matrix: o.matrix ?? false, ...(cache ? { cache } : {}), ...(o.test === false ? { noTest: true } : {}) },
        getStore,
      );
    });
  program
    .command("why")
    .description("list the inputs of STACK that differ from what its current image was built from")
    .argument("<stack>", "a stack, e.g. micro:web")
    .action(async (stack: string, _o: unknown, cmd: Command) => {
      process.exitCode = await runWhy(projectRoot(cmd), stack, {}, getStore);
    });
}
