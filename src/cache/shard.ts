/**
 * Splitting the work of a plan between CI jobs: `dbuild plan --matrix` (one job per independent subtree of
 * the work that is really left) and `dbuild all --shard I/N` (a deterministic share computed by every job
 * on its own). Pure functions over the plan's shape; no I/O.
 */
import { DbuildError } from "../util/errors.js";

export interface ShapeNode {
  stack: string;
  parent: string | null;
  status: "fresh" | "cached" | "stale";
  /** Nodes not fresh, when a remote cache was asked. */
  remote?: "hit" | "miss";
}

export interface MatrixEntry {
  /** The top-most stack the job builds: a readable job name. */
  name: string;
  /** Space-separated stacks to pass to `dbuild build` (the leaves of the job's subtree). */
  stacks: string;
}

export interface Matrix {
  include: MatrixEntry[];
}

/**
 * Stacks that really have to be built: stale and missing from the cache, or stale below such a node. A
 * cached child of a parent that is rebuilt is no help: the child's delta only fits the parent image it
 * was pushed over, so it is rebuilt too.
 */
export function workLeft(nodes: readonly ShapeNode[]): Set<string> {
  const work = new Set<string>();
  // Plan nodes are in topological order, so a parent's verdict is known before its children's.
  for (const n of nodes) {
    if (n.status === "fresh") continue;
    // A cached node (re-linked or pulled) is work only below a node that is rebuilt.
    if ((n.parent !== null && work.has(n.parent)) || (n.status === "stale" && n.remote !== "hit")) work.add(n.stack);
  }
  return work;
}

function childrenIn(nodes: readonly ShapeNode[], set: ReadonlySet<string>): Map<string, string[]> {
  const kids = new Map<string, string[]>();
  for (const n of nodes) {
    if (!set.has(n.stack) || n.parent === null || !set.has(n.parent)) continue;
    kids.set(n.parent, [...(kids.get(n.parent) ?? []), n.stack]);
  }
  for (const list of kids.values()) list.sort();
  return kids;
}

function subtree(root: string, kids: ReadonlyMap<string, string[]>): string[] {
  const out: string[] = [];
  const stack = [root];
  while (stack.length) {
    const s = stack.pop()!;
    out.push(s);
    stack.push(...(kids.get(s) ?? []));
  }
  return out;
}

/** Members of `set` whose parent is outside it, sorted. */
function rootsOf(nodes: readonly ShapeNode[], set: ReadonlySet<string>): string[] {
  return nodes.filter((n) => set.has(n.stack) && (n.parent === null || !set.has(n.parent))).map((n) => n.stack).sort();
}

/**
 * A GitHub Actions matrix: one entry per subtree of the work left, rooted at a node whose parent needs
 * no build (fresh, or pulled from the cache). A parent shared by several targets is in one entry only, so
 * it is built once; each entry lists the leaves of its subtree, which `dbuild build` expands to the rest.
 */
export function buildMatrix(nodes: readonly ShapeNode[]): Matrix {
  const work = workLeft(nodes);
  const kids = childrenIn(nodes, work);
  const include = rootsOf(nodes, work).map((root) => {
    const leaves = subtree(root, kids).filter((s) => !(kids.get(s)?.length)).sort();
    return { name: root, stacks: leaves.join(" ") };
  });
  return { include };
}

export interface Shard {
  /** 1-based. */
  index: number;
  count: number;
}

export function parseShard(text: string): Shard {
  const m = /^(\d+)\/(\d+)$/.exec(text.trim());
  const index = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!m || count < 1 || index < 1 || index > count) {
    throw new DbuildError({
      reason: "bad-option",
      where: "--shard",
      message: `"${text}" is not a shard I/N with 1 <= I <= N`,
      hint: "e.g. --shard 1/3 ... --shard 3/3 in three CI jobs",
    });
  }
  return { index, count };
}

/**
 * The stale stacks shard `index` of `count` builds. Units of work are subtrees of the stale forest; while
 * there are fewer units than shards, the largest unit is split into its child subtrees, and its root
 * becomes a shared ancestor. Units go to the least-loaded shard, largest first, ties by name: every job
 * computes the same split from the same plan, whatever the registry holds at that moment.
 *
 * A shard builds its units plus their shared stale ancestors. Those ancestors are needed by several
 * shards: with a shared cache (`--cache-from`/`--cache-to`) a shard pulls one another shard has pushed
 * already, otherwise it builds it too. Shards never leave a node without its parent.
 */
export function shardSelect(nodes: readonly ShapeNode[], shard: Shard): Set<string> {
  // Cached nodes count as work here: each shard re-links or pulls the ones it needs.
  const stale = new Set(nodes.filter((n) => n.status !== "fresh").map((n) => n.stack));
  const parentOf = new Map(nodes.map((n) => [n.stack, n.parent]));
  const kids = childrenIn(nodes, stale);
  const sizeCache = new Map<string, number>();
  const size = (s: string): number => {
    let v = sizeCache.get(s);
    if (v === undefined) {
      v = subtree(s, kids).length;
      sizeCache.set(s, v);
    }
    return v;
  };
  const bigFirst = (a: string, b: string): number => size(b) - size(a) || (a < b ? -1 : a > b ? 1 : 0);
  let units = rootsOf(nodes, stale);
  // Split while there are too few units, or the largest is more than a fair share: one big subtree
  // under a stale base (the usual case on a fresh CI runner) would otherwise land whole in one shard.
  const fair = Math.ceil(stale.size / shard.count);
  for (;;) {
    const split = [...units].sort(bigFirst).find((u) => (kids.get(u)?.length ?? 0) > 0);
    if (split === undefined || (units.length >= shard.count && size(split) <= fair)) break;
    units = [...units.filter((u) => u !== split), ...(kids.get(split) ?? [])];
  }
  const load = new Array<number>(shard.count).fill(0);
  const mine: string[] = [];
  for (const u of [...units].sort(bigFirst)) {
    let best = 0;
    for (let i = 1; i < load.length; i++) if (load[i]! < load[best]!) best = i;
    load[best] = load[best]! + size(u);
    if (best === shard.index - 1) mine.push(u);
  }
  const out = new Set<string>();
  for (const u of mine) {
    for (const s of subtree(u, kids)) out.add(s);
    for (let p = parentOf.get(u) ?? null; p !== null && stale.has(p); p = parentOf.get(p) ?? null) out.add(p);
  }
  return out;
}
