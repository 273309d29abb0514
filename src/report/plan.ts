/**
 * Plan renderers: a tree for people, JSON for programs, Graphviz for pictures; plus `why` output.
 */
import pc from "picocolors";
import type { Plan, PlanNode } from "../model/plan.js";
import { shortValue } from "../plan/why.js";
import type { InputChange } from "../plan/why.js";

export interface TextOptions {
  color?: boolean;
}

function colors(on: boolean): Pick<typeof pc, "green" | "yellow" | "cyan" | "dim" | "bold"> {
  return on ? pc : { green: String, yellow: String, cyan: String, dim: String, bold: String };
}

/** "fresh", "cached (store)", "cached (remote)", "stale": the words the text plan and `why` use. */
export function statusWords(n: Pick<PlanNode, "status" | "source">): string {
  return n.status === "cached" ? `cached (${n.source ?? "store"})` : n.status;
}

const mib = (bytes: number): string => `${(bytes / 1048576).toFixed(1)} MiB`;

/** What a node not fresh is expected to cost: the last build for a stale node, the transfer for a cached one. */
export function estimateWords(n: PlanNode): string | undefined {
  if (n.status === "cached") {
    if (n.source === "remote") return `transfer of ${mib(n.pullBytes ?? 0)} (no VM)`;
    return n.tests?.run ? "one test VM (boot + tests), no build" : "~0s (re-link, no VM)";
  }
  if (n.status === "stale" && n.lastDuration !== undefined) return `~${formatDuration(n.lastDuration)} (last build)`;
  return undefined;
}

export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m`;
}

function childrenMap(plan: Plan): Map<string | null, PlanNode[]> {
  const m = new Map<string | null, PlanNode[]>();
  for (const n of plan.nodes) m.set(n.parent, [...(m.get(n.parent) ?? []), n]);
  return m;
}

/** The DAG as a tree (it is a forest: each node has one parent), with status, reasons and steps. */
export function renderPlanText(plan: Plan, opts: TextOptions = {}): string {
  const c = colors(opts.color ?? false);
  const kids = childrenMap(plan);
  const targets = new Set(plan.targets);
  const lines: string[] = [];
  const visit = (n: PlanNode, prefix: string, last: boolean, root: boolean): void => {
    const branch = root ? "" : last ? "└─ " : "├─ ";
    const paint = n.status === "fresh" ? c.green : n.status === "cached" ? c.cyan : c.yellow;
    const mark = paint(n.status === "fresh" ? "✓" : n.status === "cached" ? "◆" : "●");
    const tag = targets.has(n.stack) ? c.dim(" (target)") : "";
    const status = paint(statusWords(n));
    lines.push(`${prefix}${branch}${mark} ${c.bold(n.stack)}${tag}  ${status}  ${c.dim(n.image)}`);
    const inner = root ? prefix : prefix + (last ? "   " : "│  ");
    const children = kids.get(n.stack) ?? [];
    const body = inner + (children.length ? "│    " : "     ");
    if (n.status !== "fresh") {
      for (const r of n.reasons) lines.push(`${body}${c.dim("why:")} ${r}`);
      if (n.status === "stale" && n.remote === "miss") lines.push(`${body}${c.dim("cache:")} miss`);
      lines.push(`${body}${c.dim("run:")} ${n.steps.join(" → ")}`);
      if (n.tests && !n.tests.run) lines.push(`${body}${c.dim("tests:")} ${n.tests.passed ? "passed on this image before: not rerun" : "skipped (--no-test)"}`);
      const est = estimateWords(n);
      if (est !== undefined) lines.push(`${body}${c.dim("est:")} ${est}`);
    } else if (n.tests) {
      lines.push(`${body}${c.dim("tests:")} ${n.tests.passed ? `passed (${n.tests.names.join(", ")})` : "not run (--no-test)"}`);
    }
    children.forEach((k, i) => visit(k, inner, i === children.length - 1, false));
  };
  for (const root of kids.get(null) ?? []) visit(root, "", true, true);
  const stale = plan.nodes.filter((n) => n.status === "stale");
  const cached = plan.nodes.filter((n) => n.status === "cached");
  if (!plan.nodes.length) lines.push("nothing to plan: no targets (add files to targets/ or name a stack)");
  else if (!stale.length && !cached.length) lines.push(c.green(`all ${plan.nodes.length} images are fresh: nothing to build`));
  else {
    const parts: string[] = [];
    if (stale.length) {
      const known = stale.filter((n) => n.lastDuration !== undefined);
      const total = known.reduce((s, n) => s + (n.lastDuration ?? 0), 0);
      const est = known.length
        ? `; estimated ${formatDuration(total)} of build time${known.length < stale.length ? ` for ${known.length} of them (the others were never built)` : ""}, before parallelism`
        : "";
      parts.push(`${stale.length} of ${plan.nodes.length} images stale${est}`);
    }
    if (cached.length) {
      const fromStore = cached.filter((n) => n.source !== "remote").length;
      const pulled = cached.filter((n) => n.source === "remote");
      const bytes = pulled.reduce((s, n) => s + (n.pullBytes ?? 0), 0);
      const how = [fromStore ? `${fromStore} re-linked from the store` : "", pulled.length ? `${pulled.length} pulled (${mib(bytes)})` : ""].filter(Boolean).join(", ");
      parts.push(`${cached.length}${stale.length ? "" : ` of ${plan.nodes.length}`} images cached: ${how}, no VM`);
    }
    lines.push(parts.join("; "));
  }
  return lines.join("\n") + "\n";
}

/** The JSON form documented in the README: stable field names; extra fields may be added, never removed. */
export function planToJson(plan: Plan): object {
  return {
    nodes: plan.nodes.map((n) => ({
      stack: n.stack,
      layer: n.layer,
      kind: n.kind,
      parent: n.parent,
      key: n.key,
      status: n.status,
      ...(n.source !== undefined ? { source: n.source } : {}),
      ...(n.forced ? { forced: true } : {}),
      ...(n.pullBytes !== undefined ? { pullBytes: n.pullBytes } : {}),
      reasons: n.reasons,
      image: n.image,
      targets: n.targets,
      settings: n.settings,
      steps: n.steps,
      ...(n.lastDuration !== undefined ? { lastDuration: n.lastDuration } : {}),
      ...(n.remote !== undefined ? { remote: n.remote } : {}),
      ...(n.tests ? { tests: n.tests } : {}),
    })),
    targets: plan.targets,
  };
}

export function renderPlanJson(plan: Plan): string {
  return JSON.stringify(planToJson(plan), null, 2) + "\n";
}

const dotId = (s: string): string => `"${s.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")}"`;

/** Graphviz digraph: one box per node, stale ones filled amber and bold, targets double-bordered. */
export function renderPlanDot(plan: Plan): string {
  const targets = new Set(plan.targets);
  const out = [
    "digraph dbuild {",
    "  rankdir=LR;",
    '  node [shape=box, style="rounded,filled", fontname="Helvetica", fillcolor="#d9f2d9"];',
  ];
  for (const n of plan.nodes) {
    const attrs = [`label=${dotId(`${n.layer}\n${n.kind} · ${statusWords(n)}`)}`, `tooltip=${dotId(n.stack)}`];
    if (n.status === "stale") attrs.push('fillcolor="#ffe0a3"', 'style="rounded,filled,bold"', 'color="#b36b00"');
    else if (n.status === "cached") attrs.push('fillcolor="#d6e9f8"', 'color="#2f6f9f"');
    if (targets.has(n.stack)) attrs.push("peripheries=2");
    out.push(`  ${dotId(n.stack)} [${attrs.join(", ")}];`);
  }
  for (const n of plan.nodes) if (n.parent !== null) out.push(`  ${dotId(n.parent)} -> ${dotId(n.stack)};`);
  out.push("}");
  return out.join("\n") + "\n";
}

/** `dbuild why`: the inputs that differ from what the current image was built from. */
export function renderWhy(node: PlanNode, changes: readonly InputChange[], hasRecord: boolean, opts: TextOptions = {}): string {
  const c = colors(opts.color ?? false);
  const paint = node.status === "fresh" ? c.green : node.status === "cached" ? c.cyan : c.yellow;
  const head = `${c.bold(node.stack)}  ${paint(statusWords(node))}  key ${node.key.slice(0, 12)}`;
  const lines = [head];
  if (node.status === "cached") {
    lines.push(
      node.source === "remote"
        ? `the image for these inputs is in the remote cache: the build pulls it (${estimateWords(node) ?? ""}), no VM runs`
        : `the image for these inputs is in the store: the build re-links ${node.image} to it, no VM runs`,
    );
  } else if (node.forced) lines.push(`${node.reasons[0] ?? "forced"}: a VM rebuilds it whatever the store or a cache holds`);
  if (!hasRecord) {
    lines.push(`${node.image} was never built by dbuild (or was deleted): every input is new`);
    if (node.reasons.length) lines.push(...node.reasons.map((r) => `  ${r}`));
    return lines.join("\n") + "\n";
  }
  if (!changes.length) {
    lines.push(node.status === "fresh" ? `inputs are identical to what ${node.image} was built from` : `inputs are identical, but: ${node.reasons.join("; ")}`);
    return lines.join("\n") + "\n";
  }
  const w = Math.max(...changes.map((x) => x.input.length));
  for (const ch of changes) {
    const sign = ch.change === "added" ? c.green("+") : ch.change === "removed" ? c.yellow("-") : c.yellow("~");
    const detail =
      ch.change === "added" ? shortValue(ch.new) : ch.change === "removed" ? shortValue(ch.old) : `${shortValue(ch.old)} -> ${shortValue(ch.new)}`;
    lines.push(`${sign} ${ch.input.padEnd(w)}  ${detail}`);
  }
  lines.push(`${changes.length} input${changes.length === 1 ? "" : "s"} differ from what ${node.image} was built from`);
  return lines.join("\n") + "\n";
}
