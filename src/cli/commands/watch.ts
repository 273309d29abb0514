/**
 * `dbuild watch PATH...` (and `dbuild --watch PATH`): rebuild the stacks using a layer as you edit it.
 * Wiring and rendering only; the loop is src/watch/.
 *
 * Exit codes: 130 when stopped by Ctrl-C / SIGTERM (the normal end of a session, like an interrupted
 * build); 2 for a bad path, stack or option before watching starts.
 */
import * as path from "node:path";
import type { Command } from "commander";
import pc from "picocolors";
import { loadProject } from "../../project/load.js";
import type { BuildEvent } from "../../report/events.js";
import { failureLines, secs } from "../../report/reporters.js";
import { Store } from "../../store/store.js";
import { DbuildError, formatProblem } from "../../util/errors.js";
import { installVmCleanupHandlers } from "../../vm/registry.js";
import { isWatchEvent, type WatchEvent } from "../../watch/events.js";
import { writeRunState } from "../../vm/run-state.js";
import { interruptController, lockBuildDir, NO_WAIT_FLAG, NO_WAIT_HELP, parseJobs, prepareBuildDir, projectRoot, warnReport } from "../shared.js";

export interface WatchCliOptions {
  /** --stack (repeatable): build these stacks instead of the targets containing the layer. */
  stack?: string[];
  shell?: boolean;
  jobs?: string;
  /** tty | plain | json */
  progress?: string;
  /** Milliseconds of quiet before a cycle starts (default 200). */
  debounce?: string;
  /** Also print the cycles that found nothing changed. */
  verbose?: boolean;
  /** --no-wait: a cycle fails instead of waiting when another dbuild holds the build dir. */
  wait?: boolean;
}

type Write = (s: string) => void;

function hms(t: number): string {
  return new Date(t).toISOString().slice(11, 19);
}

function changedText(paths: readonly string[]): string {
  if (!paths.length) return "initial build";
  const head = paths[0]!;
  return paths.length === 1 ? `${head} changed` : `${head} and ${paths.length - 1} more changed`;
}

/**
 * Text rendering: one status line per cycle (`... changed -> rebuilding A, B ... done in 6.2 s`),
 * failures summarised under it, the shell command when there is one.
 */
export class WatchTextRenderer {
  private open = false;
  private failures: Extract<BuildEvent, { type: "node-failed" }>[] = [];

  constructor(
    private readonly write: Write,
    private readonly verbose: boolean,
    private readonly color: boolean,
  ) {}

  private endLine(): void {
    if (this.open) this.write("\n");
    this.open = false;
  }

  event(e: WatchEvent | BuildEvent): void {
    const c = this.color ? pc : { green: String, red: String, yellow: String, dim: String, bold: String };
    switch (e.type) {
      case "watch-start":
        this.write(`${hms(e.time)} watching ${e.paths.join(", ")} for ${e.stacks.join(", ")} ${c.dim("(Ctrl-C to stop)")}\n`);
        break;
      case "watch-cycle":
        this.endLine();
        this.failures = [];
        this.write(`${hms(e.time)} ${changedText(e.changed)} -> ${e.rebuilding.length ? `rebuilding ${e.rebuilding.join(", ")} ...` : "up to date"}`);
        this.open = true;
        break;
      case "watch-cycle-done":
        if (e.outcome === "done") this.write(` ${c.green(`done in ${secs(e.duration)}`)}`);
        else if (e.outcome === "failed") this.write(` ${c.red(`FAILED after ${secs(e.duration)}`)}`);
        else if (e.outcome === "cancelled") this.write(` ${c.yellow("cancelled")}`);
        this.endLine();
        for (const f of this.failures) for (const l of failureLines(f)) this.write(`  ${l}\n`);
        if (e.outcome === "failed") this.write(`  ${c.dim("still watching: fix the layer and save")}\n`);
        this.failures = [];
        break;
      case "watch-unchanged":
        if (this.verbose) this.write(`${hms(e.time)} ${c.dim(`${changedText(e.changed)}, fingerprints unchanged: nothing to do`)}\n`);
        break;
      case "watch-error":
        this.endLine();
        for (const p of e.problems) this.write(`${hms(e.time)} ${c.red("error")} ${formatProblem(p)}\n`);
        this.write(`  ${c.dim("still watching")}\n`);
        break;
      case "watch-shell":
        this.endLine();
        this.write(`${hms(e.time)} shell on ${c.bold(e.stack)} (up in ${secs(e.bootSeconds)}, ${e.from === "boot" ? "booted" : `resumed from the ${e.from}`}):  dbuild ssh ${e.disk}\n`);
        this.write(`  or: ${e.ssh}\n`);
        break;
      case "warning":
        this.endLine();
        this.write(`${hms(e.time)} ${c.yellow("warning")} ${e.stack ? `${e.stack}: ` : ""}${e.message}\n`);
        break;
      case "watch-shell-failed":
        this.endLine();
        this.write(`${hms(e.time)} ${c.red("shell failed")} ${e.stack}: ${e.message}\n`);
        break;
      case "watch-shell-stopped":
        if (this.verbose) this.write(`${hms(e.time)} ${c.dim(`stopped the shell VM of ${e.stack} (pid ${e.pid})`)}\n`);
        break;
      case "watch-stop":
        this.endLine();
        this.write(`${hms(e.time)} stopped watching\n`);
        break;
      case "node-failed":
        this.failures.push(e);
        break;
      case "build-start":
      case "node-start":
      case "step":
      case "step-done":
      case "vm-usage":
      case "output":
      case "test-start":
      case "test-done":
      case "node-done":
      case "node-skipped":
      case "build-done":
        // The status line (a failed test shows in its node's failure) says enough; the details are in build/logs/ (or use --progress json).
        break;
    }
  }
}

/** So that `dbuild ssh DISK` reaches the shell VM, as it does a VM started by `dbuild run`. */
function shellRunState(e: Extract<WatchEvent, { type: "watch-shell" }>): void {
  writeRunState({
    pid: e.pid,
    disk: e.disk,
    ip: e.sshHost,
    sshHost: e.sshHost,
    sshPort: e.sshPort,
    user: e.user,
    keyPath: e.keyPath,
    runDir: path.dirname(e.disk),
    startedAt: new Date(e.time).toISOString(),
  });
}

function parseDebounce(v: string | undefined): number {
  if (v === undefined) return 200;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 60_000) {
    throw new DbuildError({ reason: "bad-option", where: "--debounce", message: `"${v}" is not a number of milliseconds (0-60000)`, hint: "e.g. --debounce 200" });
  }
  return n;
}

export async function runWatch(root: string, paths: string[], o: WatchCliOptions): Promise<number> {
  const absRoot = path.resolve(root);
  const project = await loadProject(absRoot);
  const jobs = parseJobs(o.jobs, project);
  const debounceMs = parseDebounce(o.debounce);
  const mode = o.progress ?? (process.stdout.isTTY ? "tty" : "plain");
  if (!["tty", "plain", "json"].includes(mode)) {
    throw new DbuildError({ reason: "bad-option", where: "--progress", message: `unknown mode "${mode}"`, hint: "use tty, plain or json" });
  }
  // The watch loop (chokidar, the executor) is loaded when a session starts, not for every dbuild command.
  const [{ WatchSession }, { resolveWatchPaths }, { ReportWriter }] = await Promise.all([
    import("../../watch/session.js"),
    import("../../watch/watcher.js"),
    import("../../report/writer.js"),
  ]);
  const specs = await resolveWatchPaths(absRoot, paths);
  const write: Write = (s) => {
    process.stdout.write(s);
  };
  const text = new WatchTextRenderer(write, o.verbose ?? false, mode === "tty");
  const store = new Store(project.settings.buildDir);
  const report = new ReportWriter({ root: absRoot, store, onError: warnReport });
  const emit = (e: WatchEvent | BuildEvent): void => {
    if (e.type === "watch-shell") shellRunState(e);
    if (mode === "json") write(JSON.stringify(e) + "\n");
    else text.event(e);
    if (!isWatchEvent(e)) report.event(e);
    // After each cycle, build/report.html shows it (a cancelled one is superseded by the next cycle).
    else if (e.type === "watch-cycle-done" && e.outcome !== "cancelled") void report.finish();
  };
  installVmCleanupHandlers();
  const intr = interruptController();
  try {
    await new WatchSession({
      root: absRoot,
      specs,
      ...(o.stack?.length ? { stacks: o.stack } : {}),
      shell: o.shell ?? false,
      jobs,
      debounceMs,
      emit,
      onPlan: (plan) => report.setPlan(plan),
      signal: intr.signal,
      // Held only while a cycle builds: `dbuild build`, `gc` or `pull` in another terminal run in between.
      lock: async (signal) => {
        const release = await lockBuildDir(store, { wait: o.wait ?? true, signal });
        try {
          await prepareBuildDir(store);
        } catch (e) {
          await release();
          throw e;
        }
        return release;
      },
    }).run();
    return 130;
  } finally {
    intr.dispose();
    report.close();
    await report.settled();
  }
}

function collect(v: string, prev: string[] | undefined): string[] {
  return [...(prev ?? []), v];
}

export function addWatchOptions(cmd: Command): Command {
  return cmd
    .option("--stack <stack>", "build this stack on each change (repeatable; default: every target containing the layer)", collect)
    .option("--shell", "after each successful rebuild, boot a throwaway VM of the rebuilt stack and print how to reach it")
    .option("-j, --jobs <n>", "nodes built at once (default: demobuild.yaml jobs, else the number of cores)")
    .option("--progress <mode>", "tty | plain | json (NDJSON build and watch-* events)")
    .option("--debounce <ms>", "quiet time before a rebuild starts (default 200)")
    .option("-v, --verbose", "also report changes that left every fingerprint unchanged")
    .option(NO_WAIT_FLAG, NO_WAIT_HELP);
}

export function registerWatchCommands(program: Command): void {
  addWatchOptions(
    program
      .command("watch")
      .description("rebuild the stacks using a layer whenever its files change (Ctrl-C to stop)")
      .argument("<paths...>", "layer directories or files to watch, e.g. layers/web"),
  ).action(async (paths: string[], o: WatchCliOptions, cmd: Command) => {
    process.exitCode = await runWatch(projectRoot(cmd), paths, o);
  });
}
