/**
 * --trace FILE: a recorded build in Chrome's Trace Event Format (the JSON object form), which Perfetto
 * (ui.perfetto.dev) and chrome://tracing open. One thread per node, named after its stack and ordered
 * by start time; a slice for the node with its steps nested inside (a push runs after the node, on the
 * same thread); a counter of nodes running at once; instant events for failures and warnings.
 * Timestamps are microseconds since the build started.
 */
import { writeFileSync } from "node:fs";
import type { BuildTrace } from "./model.js";

interface TraceEvent {
  name: string;
  ph: "X" | "M" | "C" | "i";
  pid: number;
  tid?: number;
  ts?: number;
  dur?: number;
  cat?: string;
  s?: "g" | "p" | "t";
  args?: Record<string, unknown>;
}

const PID = 1;

export function chromeTrace(t: BuildTrace, now = Date.now()): { traceEvents: TraceEvent[]; displayTimeUnit: "ms"; otherData: Record<string, unknown> } {
  const end = t.end ?? now;
  const us = (ms: number): number => Math.round((ms - t.start) * 1000);
  const events: TraceEvent[] = [{ name: "process_name", ph: "M", pid: PID, args: { name: "dbuild build" } }];
  const started = t.nodes.filter((n) => n.start !== undefined).sort((a, b) => a.start! - b.start!);
  const edges: Array<[number, number]> = [];
  started.forEach((n, i) => {
    const tid = i + 1;
    const nEnd = n.end ?? end;
    events.push({ name: "thread_name", ph: "M", pid: PID, tid, args: { name: n.stack } });
    events.push({ name: "thread_sort_index", ph: "M", pid: PID, tid, args: { sort_index: tid } });
    events.push({
      name: n.stack,
      cat: "node",
      ph: "X",
      pid: PID,
      tid,
      ts: us(n.start!),
      dur: Math.max(0, us(nEnd) - us(n.start!)),
      args: {
        outcome: n.outcome,
        ...(n.layer ? { layer: n.layer } : {}),
        ...(n.kind ? { kind: n.kind } : {}),
        ...(n.key ? { key: n.key } : {}),
        ...(n.cpuSeconds !== undefined ? { vmCpuSeconds: n.cpuSeconds } : {}),
        ...(n.skipReason ? { reason: n.skipReason } : {}),
      },
    });
    edges.push([n.start!, 1], [nEnd, -1]);
    for (const s of n.steps) {
      const sEnd = s.end ?? nEnd;
      events.push({
        name: s.step,
        cat: "step",
        ph: "X",
        pid: PID,
        tid,
        ts: us(s.start),
        dur: Math.max(0, us(sEnd) - us(s.start)),
        args: { ...(s.detail ? { detail: s.detail } : {}), ...(s.ok === false ? { ok: false } : {}) },
      });
    }
    if (n.failure) {
      events.push({
        name: `failed in ${n.failure.step}`,
        cat: "failure",
        ph: "i",
        s: "t",
        pid: PID,
        tid,
        ts: us(nEnd),
        args: { message: n.failure.message, ...(n.failure.exitCode !== undefined ? { exitCode: n.failure.exitCode } : {}), log: n.failure.logPath },
      });
    }
  });
  // How many nodes ran at once: where the -j slots went idle shows on this counter.
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let running = 0;
  events.push({ name: "nodes running", ph: "C", pid: PID, ts: 0, args: { nodes: 0 } });
  for (const [time, d] of edges) {
    running += d;
    events.push({ name: "nodes running", ph: "C", pid: PID, ts: us(time), args: { nodes: running } });
  }
  for (const w of t.warnings) {
    const tid = w.stack ? started.findIndex((n) => n.stack === w.stack) + 1 : 0;
    events.push({ name: "warning", cat: "warning", ph: "i", s: tid > 0 ? "t" : "g", pid: PID, ...(tid > 0 ? { tid } : {}), ts: us(w.time), args: { message: w.message } });
  }
  return {
    traceEvents: events,
    displayTimeUnit: "ms",
    otherData: {
      tool: "dbuild",
      startedAt: new Date(t.start).toISOString(),
      wallSeconds: (end - t.start) / 1000,
      jobs: t.jobs,
      ok: t.ok ?? null,
      interrupted: t.interrupted ?? false,
    },
  };
}

export function writeChromeTrace(file: string, t: BuildTrace): void {
  writeFileSync(file, JSON.stringify(chromeTrace(t)) + "\n");
}
