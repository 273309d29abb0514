import { describe, expect, it } from "vitest";
import { runGraph, type SchedNode } from "../../src/exec/scheduler.js";

/** Fake runner: each node takes `ms` and may fail; records concurrency. */
function rig(fail: Set<string> = new Set(), ms = 20) {
  const started: string[] = [];
  let running = 0;
  let maxRunning = 0;
  const run = async (id: string, signal: AbortSignal): Promise<void> => {
    started.push(id);
    running++;
    maxRunning = Math.max(maxRunning, running);
    try {
      await new Promise<void>((resolve, reject) => {
        const t = setTimeout(resolve, ms);
        signal.addEventListener("abort", () => { clearTimeout(t); reject(new Error("aborted")); }, { once: true });
      });
      if (fail.has(id)) throw new Error(`${id} failed`);
    } finally {
      running--;
    }
  };
  return { run, started, max: () => maxRunning };
}

const tree: SchedNode[] = [
  { id: "a", parent: null, mem: 0 },
  { id: "a:b", parent: "a", mem: 512 },
  { id: "a:c", parent: "a", mem: 512 },
  { id: "a:b:d", parent: "a:b", mem: 512 },
  { id: "a:c:e", parent: "a:c", mem: 512 },
];

describe("scheduler", () => {
  it("runs parents before children and independent branches concurrently", async () => {
    const r = rig();
    const res = await runGraph(tree, { jobs: 2, memoryBudget: 4096, keepGoing: false }, r.run);
    expect([...res.outcome.values()].every((o) => o === "done")).toBe(true);
    expect(r.started[0]).toBe("a");
    expect(r.started.indexOf("a:b")).toBeLessThan(r.started.indexOf("a:b:d"));
    expect(r.started.indexOf("a:c")).toBeLessThan(r.started.indexOf("a:c:e"));
    expect(r.max()).toBe(2);
  });

  it("respects -j 1", async () => {
    const r = rig();
    await runGraph(tree, { jobs: 1, memoryBudget: 4096, keepGoing: false }, r.run);
    expect(r.max()).toBe(1);
  });

  it("never exceeds the memory budget, but runs an oversized node alone", async () => {
    const r = rig();
    await runGraph(tree, { jobs: 4, memoryBudget: 600, keepGoing: false }, r.run);
    expect(r.max()).toBe(1);
    const big = rig();
    const res = await runGraph([{ id: "x", parent: null, mem: 9999 }], { jobs: 2, memoryBudget: 100, keepGoing: false }, big.run);
    expect(res.outcome.get("x")).toBe("done");
  });

  it("stops new work after a failure by default, letting running nodes finish", async () => {
    const r = rig(new Set(["a:b"]));
    const res = await runGraph(tree, { jobs: 2, memoryBudget: 4096, keepGoing: false }, r.run);
    expect(res.outcome.get("a:b")).toBe("failed");
    expect(res.outcome.get("a:c")).toBe("done"); // was running alongside
    expect(res.outcome.get("a:b:d")).toBe("skipped");
    expect(res.outcome.get("a:c:e")).toBe("skipped");
    expect(r.started).not.toContain("a:c:e");
  });

  it("with keepGoing builds everything a failure does not block", async () => {
    const r = rig(new Set(["a:b"]));
    const res = await runGraph(tree, { jobs: 2, memoryBudget: 4096, keepGoing: true }, r.run);
    expect(res.outcome.get("a:b:d")).toBe("skipped");
    expect(res.skipReason.get("a:b:d")).toBe("parent a:b failed");
    expect(res.outcome.get("a:c:e")).toBe("done");
  });

  it("treats a parent outside the list as built", async () => {
    const r = rig();
    const res = await runGraph([{ id: "a:b", parent: "a", mem: 1 }], { jobs: 1, memoryBudget: 10, keepGoing: false }, r.run);
    expect(res.outcome.get("a:b")).toBe("done");
  });

  it("aborts running nodes and starts nothing new on abort", async () => {
    const r = rig(new Set(), 200);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const res = await runGraph(tree, { jobs: 2, memoryBudget: 4096, keepGoing: false, signal: ac.signal }, r.run);
    expect(res.outcome.get("a")).toBe("aborted");
    expect(r.started).toEqual(["a"]);
    expect([...res.outcome.values()].every((o) => o === "aborted")).toBe(true);
  });
});
