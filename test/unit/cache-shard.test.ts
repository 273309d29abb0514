import { describe, expect, it } from "vitest";
import { buildMatrix, parseShard, shardSelect, workLeft, type ShapeNode } from "../../src/cache/shard.js";

/** A tree given as `stack: status[+remote]`, parents derived from the stack names, in topological order. */
function tree(spec: Record<string, string>): ShapeNode[] {
  return Object.entries(spec)
    .sort(([a], [b]) => a.split(":").length - b.split(":").length || (a < b ? -1 : 1))
    .map(([stack, v]) => {
      const [status, remote] = v.split("+") as ["fresh" | "stale", "hit" | "miss" | undefined];
      const i = stack.lastIndexOf(":");
      return { stack, parent: i < 0 ? null : stack.slice(0, i), status, ...(remote ? { remote } : {}) };
    });
}

describe("workLeft", () => {
  it("is the stale misses plus every stale node below one (a cached child of a rebuilt parent is rebuilt)", () => {
    const nodes = tree({
      m: "fresh",
      "m:a": "stale+miss",
      "m:a:x": "stale+hit",
      "m:b": "stale+hit",
      "m:b:y": "stale+miss",
      "m:c": "stale",
    });
    expect([...workLeft(nodes)].sort()).toEqual(["m:a", "m:a:x", "m:b:y", "m:c"]);
  });
});

describe("buildMatrix", () => {
  it("puts a shared parent and all its stale descendants in one entry listing the leaves", () => {
    const nodes = tree({
      m: "fresh",
      "m:web": "stale+miss",
      "m:web:openstack": "stale+miss",
      "m:web:vagrant": "stale+hit",
      "m:db": "stale+hit",
      "m:db:openstack": "stale+miss",
      "m:cache": "fresh",
      "m:cache:raw": "stale+hit",
    });
    expect(buildMatrix(nodes)).toEqual({
      include: [
        { name: "m:db:openstack", stacks: "m:db:openstack" },
        { name: "m:web", stacks: "m:web:openstack m:web:vagrant" },
      ],
    });
  });

  it("is empty when every stale node is in the cache, and one entry when the base itself is stale", () => {
    expect(buildMatrix(tree({ m: "stale+hit", "m:a": "stale+hit" }))).toEqual({ include: [] });
    expect(buildMatrix(tree({ m: "stale+miss", "m:a": "stale+hit", "m:b": "fresh" }))).toEqual({ include: [{ name: "m", stacks: "m:a" }] });
  });

  it("without a cache (no remote field) every stale node is work", () => {
    expect(buildMatrix(tree({ m: "fresh", "m:a": "stale", "m:b": "stale", "m:b:c": "stale" }))).toEqual({
      include: [
        { name: "m:a", stacks: "m:a" },
        { name: "m:b", stacks: "m:b:c" },
      ],
    });
  });
});

describe("shard", () => {
  const nodes = tree({
    m: "stale",
    "m:a": "stale",
    "m:a:1": "stale",
    "m:a:2": "stale",
    "m:b": "stale",
    "m:b:1": "stale",
    "m:c": "stale",
    "m:d": "fresh",
    "m:d:1": "stale",
  });

  it("parses I/N and rejects the rest", () => {
    expect(parseShard("2/3")).toEqual({ index: 2, count: 3 });
    for (const bad of ["0/3", "4/3", "1/0", "x", "1-2", "1/2/3"]) expect(() => parseShard(bad), bad).toThrow(/shard/);
  });

  it("covers every stale node, each unit in exactly one shard, with the shared ancestors in every shard that needs them", () => {
    for (const count of [1, 2, 3, 4, 7]) {
      const shares = Array.from({ length: count }, (_, i) => shardSelect(nodes, { index: i + 1, count }));
      const union = new Set(shares.flatMap((s) => [...s]));
      expect([...union].sort(), `N=${count}`).toEqual(nodes.filter((n) => n.status === "stale").map((n) => n.stack).sort());
      for (const s of shares) {
        // never a node without its stale parent
        for (const stack of s) {
          const parent = nodes.find((n) => n.stack === stack)!.parent;
          if (parent && nodes.find((n) => n.stack === parent)!.status === "stale") expect(s.has(parent), `${stack} in N=${count}`).toBe(true);
        }
      }
      // leaves (the targets) are each built by exactly one shard
      for (const leaf of ["m:a:1", "m:a:2", "m:b:1", "m:c", "m:d:1"]) {
        expect(shares.filter((s) => s.has(leaf)).length, `${leaf} N=${count}`).toBe(1);
      }
    }
  });

  it("splits below shared parents until there is a unit per shard, balanced by size", () => {
    // m (7 of 8 stale nodes) is more than a fair share: split into its children, m built by both shards;
    // m:d:1 is a root of its own (m:d is fresh). Largest first to the least loaded: m:a | m:b, m:c | m:d:1.
    expect([...shardSelect(nodes, { index: 1, count: 2 })].sort()).toEqual(["m", "m:a", "m:a:1", "m:a:2", "m:d:1"]);
    expect([...shardSelect(nodes, { index: 2, count: 2 })].sort()).toEqual(["m", "m:b", "m:b:1", "m:c"]);
    // one shard: no split, everything
    expect(shardSelect(nodes, { index: 1, count: 1 }).size).toBe(8);
  });

  it("is deterministic whatever the order of the input", () => {
    const shuffled = [...nodes].reverse();
    for (let i = 1; i <= 3; i++) {
      expect([...shardSelect(shuffled, { index: i, count: 3 })].sort()).toEqual([...shardSelect(nodes, { index: i, count: 3 })].sort());
    }
  });

  it("a shard with no unit builds nothing", () => {
    expect(shardSelect(tree({ m: "fresh", "m:a": "stale" }), { index: 2, count: 2 }).size).toBe(0);
  });
});
