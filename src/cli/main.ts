/**
 * The CLI: parses flags, wires stages, renders errors, sets exit codes. No logic of its own.
 *
 * Exit codes: 0 success; 1 a build step failed; 2 bad project, stack name or option;
 * 130 interrupted (SIGINT/SIGTERM).
 */
import { Command, CommanderError } from "commander";
import pc from "picocolors";
import { DbuildError, formatProblem } from "../util/errors.js";
import { addBuildOptions, projectRoot, registerBuildCommands, runBuild, type BuildCliOptions } from "./commands/build.js";
import { registerPlanCommands } from "./commands/plan.js";
import { registerVmCommands } from "./commands/vm.js";
import { registerGcCommand } from "./commands/gc.js";
import { Store } from "../store/store.js";
import type { Project } from "../project/types.js";

export async function main(argv: string[]): Promise<number> {
  const program = new Command("dbuild");
  program
    .description("Incremental, parallel builds of layered VM images (Demobuilder stacks)")
    .option("-C, --dir <dir>", "project root (default: the current directory)")
    .enablePositionalOptions()
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s), writeOut: (s) => process.stdout.write(s) });
  addBuildOptions(program.argument("[stacks...]", "stacks to build, e.g. micro:web:openstack"))
    .action(async (stacks: string[], o: BuildCliOptions, cmd: Command) => {
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
