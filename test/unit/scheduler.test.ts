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

describe("critical-path order", () => {
  // One long chain (l1 -> l2 -> l3) and three short leaves under one root: with -j 2, starting the chain
  // first overlaps the leaves with it; the list order (leaves first) leaves the chain to run alone.
  const wide: SchedNode[] = [
    { id: "r", parent: null, mem: 0, seconds: 1 },
    { id: "s1", parent: "r", mem: 256, seconds: 1 },
    { id: "s2", parent: "r", mem: 256, seconds: 1 },
    { id: "s3", parent: "r", mem: 256, seconds: 1 },
    { id: "l1", parent: "r", mem: 256, seconds: 1 },
    { id: "l2", parent: "l1", mem: 256, seconds: 1 },
    { id: "l3", parent: "l2", mem: 256, seconds: 1 },
  ];

  it("ranks by the longest remaining chain, then by memory, then by the given order", async () => {
    const { criticalPathOrder } = await import("../../src/exec/scheduler.js");
    expect(criticalPathOrder(wide).map((n) => n.id)).toEqual(["r", "l1", "l2", "s1", "s2", "s3", "l3"]);
    const ties: SchedNode[] = [
      { id: "small", parent: null, mem: 256, seconds: 2 },
      { id: "big", parent: null, mem: 2048, seconds: 2 },
    ];
    expect(criticalPathOrder(ties).map((n) => n.id)).toEqual(["big", "small"]);
    // Unknown durations count as the mean of the known ones (here 3 s), so a chain of two unknowns wins.
    const unknown: SchedNode[] = [
      { id: "k", parent: null, mem: 0, seconds: 3 },
      { id: "u1", parent: null, mem: 0 },
      { id: "u2", parent: "u1", mem: 0 },
    ];
    expect(criticalPathOrder(unknown).map((n) => n.id)).toEqual(["u1", "k", "u2"]);
  });

  it("starts the long chain before the leaves; the given order starts the leaves first", async () => {
    const started = async (order: "critical-path" | "given") => {
      const r = rig(new Set(), 30);
      await runGraph(wide, { jobs: 2, memoryBudget: 4096, keepGoing: false, order }, r.run);
      return r.started;
    };
    const cp = await started("critical-path");
    const given = await started("given");
    expect(cp.slice(0, 3)).toEqual(["r", "l1", "s1"]);
    // The chain never waits for a leaf: its next link starts as soon as its parent is done.
    expect(cp.indexOf("l2")).toBeLessThan(cp.indexOf("s2"));
    expect(given.slice(0, 3)).toEqual(["r", "s1", "s2"]);
    expect(given.indexOf("l1")).toBe(4);
  });
});
