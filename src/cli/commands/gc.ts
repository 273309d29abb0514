/** `dbuild gc [--dry-run]`: remove store objects no target needs (never a backing file of a kept image or snapshot). */
import type { Command } from "commander";
import { makePlan } from "../../plan/planner.js";
import { loadProject } from "../../project/load.js";
import { Store } from "../../store/store.js";
import { lockBuildDir, NO_WAIT_FLAG, NO_WAIT_HELP, projectRoot } from "../shared.js";
import { mib } from "../../util/units.js";

export function registerGcCommand(program: Command): void {
  program
    .command("gc")
    .description("remove images no target needs; never one a kept image or a snapshot in the project is backed by")
    .option("-n, --dry-run", "only list what would be removed")
    .option(NO_WAIT_FLAG, NO_WAIT_HELP)
    .action(async (o: { dryRun?: boolean; wait?: boolean }, cmd: Command) => {
      const root = projectRoot(cmd);
      const project = await loadProject(root);
      const store = new Store(project.settings.buildDir);
      const release = await lockBuildDir(store, { wait: o.wait ?? true });
      try {
        const plan = await makePlan(project, "all", store);
        const { collectGarbage } = await import("../../store/gc.js");
        const res = await collectGarbage(store, project.root, plan.nodes.map((n) => n.key), { dryRun: o.dryRun ?? false });
        for (const r of res.removed) process.stdout.write(`${o.dryRun ? "would remove" : "removed"} ${r.file} (${mib(r.bytes)})\n`);
        process.stdout.write(`${o.dryRun ? "would free" : "freed"} ${mib(res.freedBytes)} in ${res.removed.length} file(s); kept ${res.kept}\n`);
      } finally {
        await release();
      }
    });
}
