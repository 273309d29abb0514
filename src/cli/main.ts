/**
 * The CLI: parses flags, wires stages, renders errors, sets exit codes. No logic of its own.
 *
 * Exit codes: 0 success; 1 a build step failed; 2 bad project, stack name or option;
 * 75 the build dir is locked by another dbuild and --no-wait was given; 130 interrupted (SIGINT/SIGTERM).
 */
import { Command, CommanderError } from "commander";
import pc from "picocolors";
import { DbuildError, formatProblem } from "../util/errors.js";
import { addBuildOptions, registerBuildCommands, runBuild, type BuildCliOptions } from "./commands/build.js";
import { registerPlanCommands } from "./commands/plan.js";
import { registerVmCommands } from "./commands/vm.js";
import { registerGcCommand } from "./commands/gc.js";
import { registerCacheCommands } from "./commands/cache.js";
import { registerWatchCommands, runWatch } from "./commands/watch.js";
import { registerReportCommand } from "./commands/report.js";
import { Store } from "../store/store.js";
import type { Project } from "../project/types.js";
import { projectRoot } from "./shared.js";

interface RootOptions extends BuildCliOptions {
  watch?: string[];
  stack?: string[];
  shell?: boolean;
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

export async function main(argv: string[]): Promise<number> {
  const program = new Command("dbuild");
  program
    .description("Incremental, parallel builds of layered VM images (Demobuilder stacks)")
    .option("-C, --dir <dir>", "project root (default: the current directory)")
    .enablePositionalOptions()
    .exitOverride()
    // A usage error names the fix, like every other bad input.
    .showHelpAfterError("(run `dbuild help` or `dbuild COMMAND --help` for the options)")
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) });
  addBuildOptions(program.argument("[stacks...]", "stacks to build, e.g. micro:web:openstack"))
    .option("--watch <path>", "watch a layer directory and rebuild on change (same as `dbuild watch PATH`; repeatable)", collect)
    .option("--stack <stack>", "with --watch: the stack to rebuild (repeatable; default: every target using the layer)", collect)
    .option("--shell", "with --watch: keep a throwaway VM of the rebuilt stack running")
    .action(async (stacks: string[], o: RootOptions, cmd: Command) => {
      if (o.watch?.length) {
        const paths = [...o.watch, ...stacks.filter((s) => s.includes("/"))];
        process.exitCode = await runWatch(projectRoot(cmd), paths, {
          ...(o.stack ? { stack: o.stack } : {}),
          ...(o.shell ? { shell: true } : {}),
          ...(o.jobs ? { jobs: o.jobs } : {}),
          ...(o.progress ? { progress: o.progress } : {}),
          ...(o.wait === false ? { wait: false } : {}),
        });
        return;
      }
      if (!stacks.length) {
        cmd.help();
        return;
      }
      process.exitCode = await runBuild(projectRoot(cmd), stacks, o);
    });
  registerBuildCommands(program);
  registerPlanCommands(program, (p: Project) => new Store(p.settings.buildDir));
  registerVmCommands(program);
  registerGcCommand(program);
  registerCacheCommands(program);
  registerWatchCommands(program);
  registerReportCommand(program);
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    return renderError(e);
  }
}

function renderError(e: unknown): number {
  if (e instanceof CommanderError) {
    // commander already printed its message (or help/version).
    return e.exitCode === 0 ? 0 : 2;
  }
  if (e instanceof DbuildError) {
    for (const p of e.problems) process.stderr.write(`${pc.red("error")} ${formatProblem(p)}\n`);
    if (e.problems.length > 1) process.stderr.write(`${e.problems.length} problems found\n`);
    return e.exitCode;
  }
  process.stderr.write(`${pc.red("internal error")} ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  return 70;
}
