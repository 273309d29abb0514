/**
 * Runs a DAG of work bounded by a job count and a memory budget. Knows nothing of VMs: a node is an
 * id, a parent, the memory it will hold while running and how long it took last time, and `run` does
 * the work.
 *
 * Critical path first: of the nodes ready to start, the one with the longest chain of work still below
 * it (its own expected seconds plus its longest child chain) starts first, so the long branch of a tree
 * is not left to run alone at the end. Equal chains: the bigger VM first, so that smaller ones fill the
 * memory budget around it rather than the reverse.
 *
 * A node becomes ready when its parent has finished (or needs no work). On failure, by default no new
 * node starts and running ones finish; with keepGoing, everything not below a failure still runs.
 */

export interface SchedNode {
  id: string;
  /** Parent id, or null. A parent not in the node list is taken as already built. */
  parent: string | null;
  /** MiB held while running (0 for host-only work). */
  mem: number;
  /** Seconds the last build of this node took, when known (else the mean of the known ones is assumed). */
  seconds?: number;
}

export interface SchedOptions {
  jobs: number;
  memoryBudget: number;
  keepGoing: boolean;
  signal?: AbortSignal;
  /** "critical-path" (default): longest remaining chain first. "given": the order of the node list (topological). */
  order?: "critical-path" | "given";
}

export type NodeOutcome = "done" | "failed" | "skipped" | "aborted";

export interface SchedResult {
  outcome: Map<string, NodeOutcome>;
  /** Why a node was skipped: "parent X failed" or "stopped after a failure". */
  skipReason: Map<string, string>;
}

/**
 * The nodes, longest remaining chain first (ties: more memory first, then the given order). The chain of
 * a node is its expected seconds plus the longest chain among its children.
 */
export function criticalPathOrder(nodes: readonly SchedNode[]): SchedNode[] {
  const known = nodes.map((n) => n.seconds).filter((s): s is number => s !== undefined);
  const guess = known.length ? known.reduce((a, b) => a + b, 0) / known.length : 1;
  const children = new Map<string, SchedNode[]>();
  for (const n of nodes) if (n.parent !== null) children.set(n.parent, [...(children.get(n.parent) ?? []), n]);
  const chain = new Map<string, number>();
  const chainOf = (n: SchedNode): number => {
    let c = chain.get(n.id);
    if (c === undefined) {
      c = (n.seconds ?? guess) + Math.max(0, ...(children.get(n.id) ?? []).map(chainOf));
      chain.set(n.id, c);
    }
    return c;
  };
  const index = new Map(nodes.map((n, i) => [n.id, i]));
  return [...nodes].sort((a, b) => chainOf(b) - chainOf(a) || b.mem - a.mem || index.get(a.id)! - index.get(b.id)!);
}

export async function runGraph(
  nodes: readonly SchedNode[],
  opts: SchedOptions,
  run: (id: string, signal: AbortSignal) => Promise<void>,
): Promise<SchedResult> {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const startOrder = (opts.order ?? "critical-path") === "critical-path" ? criticalPathOrder(nodes) : nodes;
  const outcome = new Map<string, NodeOutcome>();
  const skipReason = new Map<string, string>();
  const pending = new Set(nodes.map((n) => n.id));
  const running = new Map<string, Promise<void>>();
  const controller = new AbortController();
  const onAbort = (): void => controller.abort(opts.signal?.reason);
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  if (opts.signal?.aborted) controller.abort(opts.signal.reason);
  let memInUse = 0;
  let stopNew = false;
  let wake: (() => void) | undefined;

  const parentState = (n: SchedNode): "ready" | "wait" | "blocked" => {
    if (n.parent === null || !byId.has(n.parent)) return "ready";
    const o = outcome.get(n.parent);
    if (o === "done") return "ready";
    if (o === undefined) return "wait";
    return "blocked";
  };

  const settle = (id: string, o: NodeOutcome, reason?: string): void => {
    outcome.set(id, o);
    pending.delete(id);
    if (reason) skipReason.set(id, reason);
  };

  for (;;) {
    if (controller.signal.aborted) {
      for (const id of pending) if (!running.has(id)) settle(id, "aborted");
    }
    // Propagate blocks: a child of a failed/skipped/aborted node is skipped.
    let changed = true;
    while (changed) {
      changed = false;
      for (const id of pending) {
        if (running.has(id)) continue;
        const n = byId.get(id)!;
        if (parentState(n) === "blocked") {
          const po = outcome.get(n.parent!);
          settle(id, po === "aborted" ? "aborted" : "skipped", `parent ${n.parent} ${po === "failed" ? "failed" : "was not built"}`);
          changed = true;
        }
      }
    }
    if (stopNew) {
      for (const id of pending) if (!running.has(id)) settle(id, "skipped", "stopped after a failure (use --keep-going to build the rest)");
    }
    // Start what fits, most urgent first (a parent is never started after its child: it must be done first).
    if (!controller.signal.aborted && !stopNew) {
      for (const n of startOrder) {
        if (!pending.has(n.id) || running.has(n.id)) continue;
        if (running.size >= Math.max(1, opts.jobs)) break;
        if (parentState(n) !== "ready") continue;
        // A node bigger than the whole budget may still run alone, or nothing would ever build it.
        if (running.size > 0 && memInUse + n.mem > opts.memoryBudget) continue;
        memInUse += n.mem;
        const p = run(n.id, controller.signal).then(
          () => settle(n.id, "done"),
          () => {
            settle(n.id, controller.signal.aborted ? "aborted" : "failed");
            if (!opts.keepGoing) stopNew = true;
          },
        ).finally(() => {
          memInUse -= n.mem;
          running.delete(n.id);
          wake?.();
        });
        running.set(n.id, p);
      }
    }
    if (running.size === 0) {
      if (pending.size === 0) break;
      // Nothing running and nothing startable: everything left is blocked (handled next loop) or aborted.
      const before = pending.size;
      for (const id of pending) {
        const n = byId.get(id)!;
        if (parentState(n) === "wait" && !byId.has(n.parent!)) settle(id, "skipped", "parent missing");
      }
      if (pending.size === before && !controller.signal.aborted && !stopNew) {
        // Cannot happen for a well-formed DAG; avoid spinning forever if it does.
        for (const id of pending) settle(id, "skipped", "unreachable (cycle?)");
      }
      continue;
    }
    await new Promise<void>((resolve) => {
      wake = resolve;
      // Wake on abort too, once: after that only finishing nodes wake us (no busy loop).
      if (!controller.signal.aborted) controller.signal.addEventListener("abort", () => resolve(), { once: true });
    });
    wake = undefined;
  }
  opts.signal?.removeEventListener("abort", onAbort);
  return { outcome, skipReason };
}
