/**
 * The build recorder (events -> per-node steps, outcomes, VM CPU), its file, and the Chrome trace made
 * from it.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { BuildRecorder, loadTrace, ranAnything, saveTrace } from "../../src/report/build-trace.js";
import type { BuildEvent } from "../../src/report/events.js";
import { chromeTrace } from "../../src/report/trace.js";

const T0 = 1_000_000;

/** A build of micro (host import), micro:a (VM cycle, pushed afterwards), micro:bad (fails) and a skip. */
function events(): BuildEvent[] {
  const at = (s: number): number => T0 + s * 1000;
  return [
    { type: "build-start", time: at(0), stale: ["micro", "micro:a", "micro:bad", "micro:bad:x"], fresh: ["micro:z"], jobs: 2 },
    { type: "node-start", time: at(0), stack: "micro", layer: "micro", kind: "base", key: "k-micro" },
    { type: "step", time: at(0), stack: "micro", step: "import", detail: "1 MiB" },
    { type: "step", time: at(0.5), stack: "micro", step: "import", detail: "2 MiB" },
    { type: "step-done", time: at(1), stack: "micro", step: "import", duration: 1, ok: true },
    { type: "step", time: at(1), stack: "micro", step: "publish" },
    { type: "step-done", time: at(1.2), stack: "micro", step: "publish", duration: 0.2, ok: true },
    { type: "node-done", time: at(1.2), stack: "micro", duration: 1.2, image: "build/micro.qcow2" },
    { type: "node-start", time: at(1.3), stack: "micro:a", layer: "a", kind: "intermediate", key: "k-a" },
    { type: "node-start", time: at(1.3), stack: "micro:bad", layer: "bad", kind: "intermediate", key: "k-bad" },
    ...(["cow", "boot", "rsync", "install", "cleanup", "poweroff"] as const).map(
      (step, i): BuildEvent => ({ type: "step", time: at(1.3 + i), stack: "micro:a", step }),
    ),
    { type: "step", time: at(1.3), stack: "micro:bad", step: "cow" },
    { type: "step", time: at(1.5), stack: "micro:bad", step: "boot" },
    { type: "output", time: at(2), stack: "micro:bad", stream: "stdout", line: "about to fail" },
    { type: "vm-usage", time: at(3), stack: "micro:bad", pid: 42, cpuSeconds: 1.25, wallSeconds: 1.4 },
    { type: "node-failed", time: at(3), stack: "micro:bad", step: "boot", duration: 1.7, message: "no answer", logTail: ["about to fail"], logPath: "build/logs/micro:bad.log" },
    { type: "vm-usage", time: at(7.3), stack: "micro:a", pid: 43, cpuSeconds: 4.5, wallSeconds: 5 },
    { type: "step", time: at(7.3), stack: "micro:a", step: "publish" },
    { type: "node-done", time: at(7.5), stack: "micro:a", duration: 6.2, image: "build/micro:a.qcow2" },
    { type: "step", time: at(7.6), stack: "micro:a", step: "push", detail: "to oci://127.0.0.1:1/r" },
    { type: "step-done", time: at(9), stack: "micro:a", step: "push", duration: 1.4, ok: true, detail: "pushed 3 MiB" },
    { type: "node-skipped", time: at(9), stack: "micro:bad:x", reason: "parent micro:bad failed" },
    { type: "warning", time: at(9), stack: "micro:a", message: "slow registry" },
    { type: "build-done", time: at(9), ok: false, built: ["micro", "micro:a"], failed: ["micro:bad"], skipped: ["micro:bad:x"], duration: 9, interrupted: false },
  ];
}

function record(evs: BuildEvent[]): ReturnType<BuildRecorder["trace"]> {
  const r = new BuildRecorder();
  for (const e of evs) r.event(e);
  return r.trace();
}

describe("build recorder", () => {
  it("keeps each node's steps with start and end, its outcome, VM CPU time and failure", () => {
    const t = record(events())!;
    expect(t.start).toBe(T0);
    expect(t.end).toBe(T0 + 9000);
    expect(t.ok).toBe(false);
    const by = new Map(t.nodes.map((n) => [n.stack, n]));
    // Progress of the same step is one segment, its last detail kept.
    expect(by.get("micro")!.steps).toEqual([
      { step: "import", start: T0, end: T0 + 1000, ok: true, detail: "2 MiB" },
      { step: "publish", start: T0 + 1000, end: T0 + 1200, ok: true },
    ]);
    const a = by.get("micro:a")!;
    expect(a.outcome).toBe("built");
    expect(a.key).toBe("k-a");
    expect(a.steps.map((s) => s.step)).toEqual(["cow", "boot", "rsync", "install", "cleanup", "poweroff", "publish", "push"]);
    // A step ends where the next begins; the last one at node-done; the push after the node.
    expect(a.steps[1]).toMatchObject({ start: T0 + 2300, end: T0 + 3300 });
    expect(a.steps[6]).toMatchObject({ step: "publish", end: T0 + 7500 });
    expect(a.steps[7]).toMatchObject({ step: "push", start: T0 + 7600, end: T0 + 9000, detail: "pushed 3 MiB" });
    expect(a.cpuSeconds).toBe(4.5);
    const bad = by.get("micro:bad")!;
    expect(bad.outcome).toBe("failed");
    expect(bad.steps.at(-1)).toMatchObject({ step: "boot", end: T0 + 3000, ok: false });
    expect(bad.failure).toMatchObject({ step: "boot", message: "no answer", logTail: ["about to fail"] });
    expect(bad.cpuSeconds).toBe(1.25);
    expect(by.get("micro:bad:x")).toMatchObject({ outcome: "skipped", skipReason: "parent micro:bad failed" });
    expect(t.warnings).toEqual([{ time: T0 + 9000, stack: "micro:a", message: "slow registry" }]);
    expect(ranAnything(t)).toBe(true);
  });

  it("an interrupted build closes what ran; a build with nothing to do ran nothing", () => {
    const t = record([
      { type: "build-start", time: T0, stale: ["micro:a"], fresh: [], jobs: 1 },
      { type: "node-start", time: T0, stack: "micro:a", layer: "a", kind: "intermediate", key: "k" },
      { type: "step", time: T0 + 10, stack: "micro:a", step: "install" },
      { type: "node-skipped", time: T0 + 50, stack: "micro:a", reason: "interrupted" },
      { type: "build-done", time: T0 + 60, ok: false, built: [], failed: [], skipped: ["micro:a"], duration: 0.06, interrupted: true },
    ])!;
    expect(t.nodes[0]).toMatchObject({ outcome: "interrupted", end: T0 + 50, steps: [{ step: "install", end: T0 + 50, ok: false }] });
    expect(t.interrupted).toBe(true);
    const idle = record([
      { type: "build-start", time: T0, stale: [], fresh: ["micro"], jobs: 1 },
      { type: "build-done", time: T0, ok: true, built: [], failed: [], skipped: [], duration: 0, interrupted: false },
    ])!;
    expect(ranAnything(idle)).toBe(false);
  });

  it("saves and loads the record; a missing or foreign file is no record", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-trace-"));
    const t = record(events())!;
    saveTrace(path.join(dir, "x", "last-build.json"), t);
    expect(loadTrace(path.join(dir, "x", "last-build.json"))).toEqual(t);
    expect(loadTrace(path.join(dir, "none.json"))).toBeUndefined();
    await fs.writeFile(path.join(dir, "other.json"), '{"version":7}');
    expect(loadTrace(path.join(dir, "other.json"))).toBeUndefined();
    await fs.rm(dir, { recursive: true });
  });
});

describe("Chrome trace", () => {
  it("has a thread per node, nested step slices, failures and the running-nodes counter", () => {
    const tr = chromeTrace(record(events())!);
    const ev = tr.traceEvents;
    const threads = ev.filter((e) => e.name === "thread_name").map((e) => (e.args as { name: string }).name);
    expect(threads).toEqual(["micro", "micro:a", "micro:bad"]); // skipped nodes never ran: no thread
    const tidOf = (s: string): number => ev.find((e) => e.name === "thread_name" && (e.args as { name: string }).name === s)!.tid!;
    const a = ev.filter((e) => e.ph === "X" && e.tid === tidOf("micro:a"));
    const node = a.find((e) => e.cat === "node")!;
    expect(node).toMatchObject({ name: "micro:a", ts: 1_300_000, dur: 6_200_000 });
    expect((node.args as Record<string, unknown>).vmCpuSeconds).toBe(4.5);
    // Every VM step lies inside the node's slice (so the viewer nests them); the push comes after it.
    for (const s of a.filter((e) => e.cat === "step" && e.name !== "push")) {
      expect(s.ts!).toBeGreaterThanOrEqual(node.ts!);
      expect(s.ts! + s.dur!).toBeLessThanOrEqual(node.ts! + node.dur!);
    }
    expect(a.find((e) => e.name === "push")!.ts).toBeGreaterThanOrEqual(node.ts! + node.dur!);
    expect(ev.find((e) => e.cat === "failure")).toMatchObject({ name: "failed in boot", tid: tidOf("micro:bad"), ph: "i" });
    const counter = ev.filter((e) => e.ph === "C").map((e) => (e.args as { nodes: number }).nodes);
    expect(Math.max(...counter)).toBe(2);
    expect(counter.at(-1)).toBe(0);
    expect(JSON.parse(JSON.stringify(tr))).toEqual(tr); // plain JSON
  });
});
