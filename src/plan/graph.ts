/**
 * The DAG: one node per stack prefix, shared prefixes once (micro:web:openstack and micro:web:vagrant
 * share micro:web and micro). Every node has at most one parent, so the DAG is a forest rooted at bases.
 */
import { Graph } from "@dagrejs/graphlib";
import { parentOf } from "../project/stack.js";

export function buildGraph(stacks: readonly string[]): Graph {
  const g = new Graph({ directed: true });
  for (const s of stacks) {
    // Longest prefix first, stopping at the first one already in the graph with its edges: targets share
    // most of their prefixes. (setEdge adds a missing parent node itself, so look before it does.)
    for (let p: string | null = g.hasNode(s) ? null : s; p !== null; ) {
      const parent = parentOf(p);
      const known = parent === null || g.hasNode(parent);
      g.setNode(p);
      if (parent !== null) g.setEdge(parent, p);
      p = known ? null : parent;
    }
  }
  return g;
}

const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/**
 * Parents before children, in depth-first order with siblings sorted, so the order is deterministic
 * and reads as a tree.
 */
export function topoOrder(g: Graph): string[] {
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (v: string): void => {
    // Reaching a node twice means two parents or a cycle: a bug in prefix handling, so fail loudly.
    if (seen.has(v)) throw new Error("plan graph is not a forest");
    seen.add(v);
    order.push(v);
    for (const c of [...(g.successors(v) ?? [])].sort(byName)) visit(c);
  };
  for (const root of [...g.sources()].sort(byName)) visit(root);
  // A cycle no source leads to leaves nodes unvisited.
  if (order.length !== g.nodeCount()) throw new Error("plan graph is not a forest");
  return order;
}
