/**
 * Records a build from its events: per node, the steps with their start and end, the outcome, VM CPU
 * time and the failure. The HTML report's timeline, the Chrome trace (--trace) and `dbuild report` all
 * read this record; it is kept as build/.dbuild/last-build.json between runs.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import { unreachable } from "../util/errors.js";
import type { BuildEvent, Reporter } from "./events.js";
import type { BuildTrace, TraceNode, TraceStep } from "./model.js";

export class BuildRecorder implements Reporter {
  private current: BuildTrace | undefined;
  private readonly byStack = new Map<string, TraceNode>();

  /** Called after every event that changed the record (the live report listens). */
  constructor(private readonly onChange?: (e: BuildEvent, trace: BuildTrace) => void) {}

  /** The build being recorded (or the last one), undefined before the first build-start. */
  trace(): BuildTrace | undefined {
    return this.current;
  }

  private node(stack: string): TraceNode {
    let n = this.byStack.get(stack);
    if (!n) {
      n = { stack, outcome: "building", steps: [] };
      this.byStack.set(stack, n);
      this.current?.nodes.push(n);
    }
    return n;
  }

  event(e: BuildEvent): void {
    if (e.type === "build-start") {
      this.byStack.clear();
      this.current = { version: 1, start: e.time, jobs: e.jobs, stale: e.stale, fresh: e.fresh, nodes: [], warnings: [] };
      this.onChange?.(e, this.current);
      return;
    }
    const t = this.current;
    if (!t) return;
    switch (e.type) {
      case "node-start": {
        const n = this.node(e.stack);
        Object.assign(n, { layer: e.layer, kind: e.kind, key: e.key, start: e.time, outcome: "building" });
        break;
      }
      case "step": {
        const n = this.node(e.stack);
        const last = n.steps.at(-1);
        // The same step again is progress (pull: "12 MiB of 40 MiB"): keep one segment.
        if (last && last.end === undefined && last.step === e.step) {
          if (e.detail) last.detail = e.detail;
          break;
        }
        closeOpen(n, e.time, true);
        n.steps.push({ step: e.step, start: e.time, ...(e.detail ? { detail: e.detail } : {}) });
        break;
      }
      case "step-done": {
        const n = this.node(e.stack);
        const open = [...n.steps].reverse().find((s) => s.step === e.step && s.end === undefined);
        if (open) {
          open.end = e.time;
          open.ok = e.ok;
          if (e.detail) open.detail = e.detail;
        } else {
          n.steps.push({ step: e.step, start: e.time - e.duration * 1000, end: e.time, ok: e.ok, ...(e.detail ? { detail: e.detail } : {}) });
        }
        break;
      }
      case "vm-usage": {
        const n = this.node(e.stack);
        if (e.cpuSeconds !== undefined) n.cpuSeconds = (n.cpuSeconds ?? 0) + e.cpuSeconds;
        n.vmSeconds = (n.vmSeconds ?? 0) + e.wallSeconds;
        break;
      }
      case "output":
      case "test-start":
      case "test-done":
        return; // logs (test output in STACK.test.log) are read from build/logs/ when a report is written; the tests' time is the step "test"
      case "node-done": {
        const n = this.node(e.stack);
        closeOpen(n, e.time, true);
        n.end = e.time;
        // Only its tests ran (testsOnly): the image was in the store, as for a restore.
        n.outcome = e.pulled ? "pulled" : e.restored || e.testsOnly ? "restored" : "built";
        break;
      }
      case "node-failed": {
        const n = this.node(e.stack);
        closeOpen(n, e.time, false);
        n.end = e.time;
        n.outcome = "failed";
        n.failure = {
          step: e.step,
          message: e.message,
          ...(e.exitCode !== undefined ? { exitCode: e.exitCode } : {}),
          logTail: e.logTail,
          logPath: e.logPath,
          ...(e.keptDisk ? { keptDisk: e.keptDisk } : {}),
        };
        break;
      }
      case "node-skipped": {
        const n = this.node(e.stack);
        // A node that had started and was stopped (Ctrl-C) is reported as skipped by the scheduler.
        if (n.start !== undefined) {
          closeOpen(n, e.time, false);
          n.end = e.time;
          n.outcome = "interrupted";
        } else {
          n.outcome = "skipped";
        }
        n.skipReason = e.reason;
        break;
      }
      case "warning":
        t.warnings.push({ time: e.time, ...(e.stack ? { stack: e.stack } : {}), message: e.message });
        break;
      case "build-done":
        t.end = e.time;
        t.ok = e.ok;
        t.interrupted = e.interrupted;
        for (const n of t.nodes) {
          if (n.outcome !== "building") continue;
          closeOpen(n, e.time, false);
          n.end ??= e.time;
          n.outcome = "interrupted";
        }
        break;
      default:
        unreachable(e);
    }
    this.onChange?.(e, t);
  }

  close(): void {}
}

function closeOpen(n: TraceNode, time: number, ok: boolean): void {
  for (const s of n.steps) {
    if (s.end !== undefined) continue;
    s.end = time;
    s.ok ??= ok;
  }
}

/** Did the build run any node? A build with nothing to do does not replace the recorded one. */
export function ranAnything(t: BuildTrace): boolean {
  return t.nodes.some((n) => n.start !== undefined || n.outcome === "failed");
}

export function lastBuildPath(internalDir: string): string {
  return path.join(internalDir, "last-build.json");
}

/** Written whole or not at all (a report or a trace read during the write sees the old one). */
export function saveTrace(file: string, t: BuildTrace): void {
  const tmp = `${file}.tmp-${randomBytes(4).toString("hex")}`;
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(tmp, JSON.stringify(t));
  fs.renameSync(tmp, file);
}

/** The recorded build, or undefined when there is none (or it is unreadable: a report without a timeline). */
export function loadTrace(file: string): BuildTrace | undefined {
  try {
    const t = JSON.parse(fs.readFileSync(file, "utf8")) as Partial<BuildTrace>;
    if (t.version !== 1 || !Array.isArray(t.nodes) || typeof t.start !== "number") return undefined;
    return t as BuildTrace;
  } catch {
    return undefined;
  }
}

/** Steps in start order with open ones closed at `now` (a live build). */
export function closedSteps(n: TraceNode, now: number): Array<Required<Pick<TraceStep, "step" | "start" | "end">> & TraceStep> {
  return n.steps.map((s) => ({ ...s, end: s.end ?? now }));
}
