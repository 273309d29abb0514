/**
 * Build reporters: plain (one line per event, for logs and CI), json (NDJSON), tty (live view).
 */
import pc from "picocolors";
import type { BuildEvent, ProxyCounters, Reporter } from "./events.js";
import { unreachable } from "../util/errors.js";

type Write = (s: string) => void;

function hms(t: number): string {
  return new Date(t).toISOString().slice(11, 19);
}

export function secs(n: number): string {
  return n < 60 ? `${n.toFixed(1)} s` : `${Math.floor(n / 60)} min ${Math.round(n % 60)} s`;
}

/** Lines shown when a node fails: stack, step, exit code, log tail and where the log is. */
export function failureLines(e: Extract<BuildEvent, { type: "node-failed" }>): string[] {
  const code = e.exitCode === undefined ? "" : e.exitCode === null ? " (killed)" : ` (exit code ${e.exitCode})`;
  const out = [`${e.stack}: FAILED in step ${e.step}${code}: ${e.message}`];
  if (e.logTail.length) {
    out.push(`--- last ${e.logTail.length} lines of ${e.logPath} ---`);
    out.push(...e.logTail.map((l) => `  ${l}`));
    out.push("---");
  }
  out.push(`full log: ${e.logPath}`);
  if (e.shell) {
    out.push(`the image stays in the store, not published; open a shell on this exact image:`);
    out.push(`  ${e.shell}`);
  }
  if (e.keptDisk) {
    out.push(`kept the failed VM's disk: ${e.keptDisk}`);
    out.push(`  boot it:  dbuild snap ${e.keptDisk} /tmp/failed.qcow2 && eval "$(dbuild run /tmp/failed.qcow2)" && dbuild ssh /tmp/failed.qcow2`);
  }
  return out;
}

function bytes(n: number): string {
  return n < 1024 ? `${n} B` : n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** One line of package-cache traffic: what came from the cache and what from outside. */
export function proxyLine(c: ProxyCounters): string {
  const parts = [`${bytes(c.bytesFromCache)} from cache (${c.hits + c.revalidated + c.stale} files)`, `${bytes(c.bytesFromUpstream)} fetched upstream (${c.fetched} files)`];
  if (c.bytesTunneled) parts.push(`${bytes(c.bytesTunneled)} HTTPS passed through`);
  if (c.failures) parts.push(`${c.failures} upstream failure(s)`);
  return `package cache: ${parts.join(", ")}`;
}

/** One line per finished layer test, shown under its node: mark, name, time, TAP counts, why it failed. */
export function testLine(e: Extract<BuildEvent, { type: "test-done" }>): string {
  const tap = e.tap ? `, TAP ${e.tap.pass}/${e.tap.count} ok${e.tap.skip ? `, ${e.tap.skip} skipped` : ""}` : "";
  return `${e.ok ? "✓" : "✗"} test ${e.test} (${secs(e.duration)}${tap})${e.ok ? "" : `: ${e.message ?? "failed"}`}`;
}

function summaryLines(e: Extract<BuildEvent, { type: "build-done" }>): string[] {
  const parts = [`${e.built.length} built`];
  if (e.failed.length) parts.push(`${e.failed.length} failed (${e.failed.join(", ")})`);
  if (e.skipped.length) parts.push(`${e.skipped.length} not built`);
  const head = e.interrupted ? "interrupted" : e.ok ? "done" : "FAILED";
  const out = [`${head}: ${parts.join(", ")} in ${secs(e.duration)}`];
  if (e.proxy && e.proxy.requests > 0) out.push(proxyLine(e.proxy));
  return out;
}

export class PlainReporter implements Reporter {
  constructor(private readonly write: Write, private readonly showOutput = true) {}
  event(e: BuildEvent): void {
    const line = (stack: string, msg: string): void => this.write(`${hms(e.time)} ${stack}: ${msg}\n`);
    switch (e.type) {
      case "build-start":
        this.write(`${hms(e.time)} ${e.stale.length ? `building ${e.stale.length} node(s): ${e.stale.join(", ")}` : "nothing to build: every node is fresh"}${e.fresh.length ? ` (${e.fresh.length} fresh)` : ""}\n`);
        break;
      case "node-start":
        line(e.stack, `started (${e.kind} layer ${e.layer})`);
        break;
      case "step":
        line(e.stack, e.detail ? `${e.step}: ${e.detail}` : e.step);
        break;
      case "output":
        if (this.showOutput) line(e.stack, `${e.test ? `[${e.test}] ` : ""}${e.stream === "stderr" ? "! " : "| "}${e.line}`);
        break;
      case "test-start":
        line(e.stack, `test ${e.test}: running`);
        break;
      case "test-done":
        line(e.stack, `  ${testLine(e)}`);
        // Output already streamed line by line when shown; otherwise a failure brings its tail along.
        if (!e.ok && !this.showOutput) for (const l of e.output ?? []) line(e.stack, `    ${l}`);
        break;
      case "node-done":
        line(e.stack, `${e.pulled ? "pulled from cache" : e.restored ? "restored from the store" : e.testsOnly ? "tests passed" : "done"} in ${secs(e.duration)} -> ${e.deliverable ?? e.image}`);
        if (e.next) line(e.stack, `next: ${e.next}`);
        if (e.proxy) line(e.stack, proxyLine(e.proxy));
        break;
      case "node-failed":
        for (const l of failureLines(e)) this.write(`${hms(e.time)} ${l}\n`);
        break;
      case "node-skipped":
        line(e.stack, `not built: ${e.reason}`);
        break;
      case "warning":
        this.write(`${hms(e.time)} ${e.stack ? `${e.stack}: ` : ""}warning: ${e.message}\n`);
        break;
      case "step-done":
      case "vm-usage":
        // Timings for the report, the trace and NDJSON; a line each would only repeat the step lines.
        break;
      case "build-done":
        for (const l of summaryLines(e)) this.write(`${hms(e.time)} ${l}\n`);
        break;
      default:
        unreachable(e);
    }
  }
  close(): void {}
}

export class JsonReporter implements Reporter {
  constructor(private readonly write: Write) {}
  event(e: BuildEvent): void {
    this.write(JSON.stringify(e) + "\n");
  }
  close(): void {}
}

/**
 * Live terminal view: finished nodes scroll above; below them one line per running node
 * (stack, step, elapsed), redrawn in place every second.
 */
export class TtyReporter implements Reporter {
  private readonly running = new Map<string, { start: number; step: string; stepStart: number }>();
  /** Finished tests per running node: printed under the node's own line when it finishes. */
  private readonly tests = new Map<string, Extract<BuildEvent, { type: "test-done" }>[]>();
  private drawn = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly write: Write) {
    this.timer = setInterval(() => this.redraw(), 1000);
    this.timer.unref();
  }

  private clear(): void {
    if (this.drawn) this.write(`\x1b[${this.drawn}F\x1b[J`);
    this.drawn = 0;
  }

  private redraw(): void {
    this.clear();
    const now = Date.now();
    const lines = [...this.running].map(
      ([stack, r]) => `${pc.cyan("●")} ${pc.bold(stack)}  ${r.step}  ${pc.dim(secs((now - r.start) / 1000))}`,
    );
    for (const l of lines) this.write(l + "\n");
    this.drawn = lines.length;
  }

  /** The node's finished tests as children of its line (a failed one with its output tail). */
  private testLines(stack: string): string {
    const done = this.tests.get(stack) ?? [];
    this.tests.delete(stack);
    return done
      .map((t, i) => {
        const branch = i === done.length - 1 ? "└─ " : "├─ ";
        const l = testLine(t);
        return `  ${branch}${t.ok ? pc.green(l) : pc.red(l)}`;
      })
      .join("\n");
  }

  private above(text: string): void {
    this.clear();
    this.write(text + "\n");
    this.redraw();
  }

  event(e: BuildEvent): void {
    switch (e.type) {
      case "build-start":
        this.above(e.stale.length ? `building ${e.stale.length} node(s) with -j ${e.jobs}` : pc.green("nothing to build: every node is fresh"));
        break;
      case "node-start":
        this.running.set(e.stack, { start: e.time, step: "starting", stepStart: e.time });
        this.redraw();
        break;
      case "step": {
        const r = this.running.get(e.stack);
        if (r) {
          r.step = e.detail ? `${e.step} (${e.detail})` : e.step;
          r.stepStart = e.time;
        }
        this.redraw();
        break;
      }
      case "output":
      case "step-done":
      case "vm-usage":
        break;
      case "test-start": {
        const r = this.running.get(e.stack);
        if (r) r.step = `test ${e.test}`;
        this.redraw();
        break;
      }
      case "test-done":
        this.tests.set(e.stack, [...(this.tests.get(e.stack) ?? []), e]);
        break;
      case "node-done": {
        this.running.delete(e.stack);
        const tests = this.testLines(e.stack);
        this.above(`${pc.green("✓")} ${pc.bold(e.stack)} ${pc.dim(e.pulled ? "pulled" : e.restored ? "restored" : e.testsOnly ? `tests passed in ${secs(e.duration)}` : secs(e.duration))}  ${e.deliverable ?? e.image}${tests ? `\n${tests}` : ""}${e.next ? `\n  next: ${e.next}` : ""}`);
        break;
      }
      case "node-failed": {
        this.running.delete(e.stack);
        const tests = this.testLines(e.stack);
        const lines = failureLines(e).map((l, i) => (i === 0 ? pc.red(`✗ ${l}`) : l));
        if (tests) lines.splice(1, 0, tests);
        this.above(lines.join("\n"));
        break;
      }
      case "node-skipped":
        this.above(`${pc.yellow("-")} ${e.stack} ${pc.dim(`not built: ${e.reason}`)}`);
        break;
      case "warning":
        this.above(`${pc.yellow("warning")} ${e.stack ? `${e.stack}: ` : ""}${e.message}`);
        break;
      case "build-done":
        this.running.clear();
        this.above(summaryLines(e).map((l) => (e.ok ? pc.green(l) : pc.red(l))).join("\n"));
        break;
      default:
        unreachable(e);
    }
  }

  close(): void {
    clearInterval(this.timer);
    this.clear();
  }
}
