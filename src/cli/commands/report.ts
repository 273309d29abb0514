/**
 * `dbuild report [STACK...] [-o FILE] [--trace FILE] [--cache URL]`: write build/report.html (and a
 * Chrome trace of the last recorded build) without building. Wiring only: src/report/ does the work.
 */
import * as path from "node:path";
import type { Command } from "commander";
import { makePlan } from "../../plan/planner.js";
import { loadProject } from "../../project/load.js";
import { Store } from "../../store/store.js";
import { DbuildError } from "../../util/errors.js";
import { buildDirLocked } from "../../store/lock.js";
import { markRemote, projectRoot } from "../shared.js";

export interface ReportCliOptions {
  output?: string;
  trace?: string;
  cache?: string;
}

export async function runReport(root: string, stacks: "all" | string[], o: ReportCliOptions): Promise<number> {
  const project = await loadProject(root);
  const [{ lastBuildPath, loadTrace }, { collectReport }, { writeChromeTrace }, { reportPath, writeReportFile }] = await Promise.all([
    import("../../report/build-trace.js"),
    import("../../report/collect.js"),
    import("../../report/trace.js"),
    import("../../report/writer.js"),
  ]);
  const store = new Store(project.settings.buildDir);
  const file = path.resolve(o.output ?? reportPath(store.buildDir));
  const trace = loadTrace(lastBuildPath(store.internalDir));
  if (o.trace && !trace) {
    throw new DbuildError(
      { reason: "no-build", where: store.buildDir, message: "no build has been recorded in this build dir yet", hint: "run a build (e.g. `dbuild all`) first; every build records itself" },
      1,
    );
  }
  // A running build keeps build/report.html up to date itself; a second writer would undo its view.
  if (file === reportPath(store.buildDir) && (await buildDirLocked(store))) {
    process.stdout.write(`a build is running in ${store.buildDir}: it keeps ${file} up to date\n`);
  } else {
    const plan = await makePlan(project, stacks, store);
    // Only when asked: a report is written offline, after every build, and must not wait on a registry.
    if (o.cache) await markRemote(plan, o.cache, store);
    const data = await collectReport({ root, plan, store, ...(trace ? { trace } : {}) });
    await writeReportFile(file, data);
    process.stdout.write(`${file}\n`);
  }
  if (o.trace && trace) {
    writeChromeTrace(o.trace, trace);
    process.stdout.write(`${path.resolve(o.trace)}\n`);
  }
  return 0;
}

export function registerReportCommand(program: Command): void {
  program
    .command("report")
    .description("write build/report.html: the image graph by status, the last build's timeline, logs and sizes (builds nothing)")
    .argument("[stacks...]", "stacks to show, or `all` (default: every file in targets/)")
    .option("-o, --output <file>", "where to write the page (default: build/report.html)")
    .option("--trace <file>", "also write the last recorded build as a Chrome trace (Perfetto, chrome://tracing)")
    .option("--cache <url>", "ask this remote cache which stale nodes it holds (they show as cached)")
    .action(async (stacks: string[], o: ReportCliOptions, cmd: Command) => {
      process.exitCode = await runReport(projectRoot(cmd), stacks.length ? stacks : "all", o);
    });
}
