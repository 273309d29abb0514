/**
 * Input diffs: what changed between the inputs an image was built from and the inputs of a node now.
 * `dbuild why` prints them; the planner turns them into plain-words staleness reasons.
 */
import type { InputManifest, PlanNode } from "../model/plan.js";
import type { NodeRecord } from "../model/store.js";

export type ChangeKind = "added" | "removed" | "changed";

export interface InputChange {
  /** Manifest name, e.g. "file:target/install", "setting:MEM", "parent". */
  input: string;
  change: ChangeKind;
  old?: string;
  new?: string;
}

export function diffInputs(before: InputManifest, after: InputManifest): InputChange[] {
  const out: InputChange[] = [];
  const names = new Set([...Object.keys(before), ...Object.keys(after)]);
  for (const input of [...names].sort(orderInputs)) {
    const o = before[input];
    const n = after[input];
    if (o === n) continue;
    if (o === undefined) out.push({ input, change: "added", new: n! });
    else if (n === undefined) out.push({ input, change: "removed", old: o });
    else out.push({ input, change: "changed", old: o, new: n });
  }
  return out;
}

/** Scalar inputs first (format, kind, layer, parent), then files, links, dirs, settings; by name. */
function orderInputs(a: string, b: string): number {
  const rank = (s: string): number =>
    s.includes(":") ? ["file", "link", "dir", "input", "setting", "project"].indexOf(s.slice(0, s.indexOf(":"))) + 10 : ["format", "kind", "layer", "epoch", "parent"].indexOf(s);
  return rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0);
}

/** Inputs of `node` that differ from what `record` was built from (everything is "added" without a record). */
export function whyDiff(node: Pick<PlanNode, "inputs">, record?: Pick<NodeRecord, "inputs">): InputChange[] {
  return diffInputs(record?.inputs ?? {}, node.inputs);
}

/** Shorten digests for display: 12 hex digits keep the exec marker. */
export function shortValue(v: string | undefined): string {
  if (v === undefined) return "-";
  const m = /^([0-9a-f]{64})(:x)?$/.exec(v);
  return m ? `${m[1]!.slice(0, 12)}${m[2] ?? ""}` : v;
}

export interface ReasonContext {
  /** targets/ file name if the stack has one, for "MEM changed in targets/STACK". */
  targetFile?: string;
  /** Keys the targets/ file sets. */
  targetKeys?: ReadonlySet<string>;
  parentStack?: string | null;
  parentStale?: boolean;
}

const isDigest = (v: string | undefined): boolean => v !== undefined && /^[0-9a-f]{64}/.test(v);

/** One plain-words reason for one change. */
export function describeChange(c: InputChange, ctx: ReasonContext = {}): string {
  const colon = c.input.indexOf(":");
  const ns = colon < 0 ? c.input : c.input.slice(0, colon);
  const name = colon < 0 ? "" : c.input.slice(colon + 1);
  switch (ns) {
    case "file": {
      if (c.change !== "changed") return `file ${name} ${c.change}`;
      const oldX = c.old!.endsWith(":x");
      const newX = c.new!.endsWith(":x");
      if (oldX !== newX && c.old!.slice(0, 64) === c.new!.slice(0, 64)) {
        return newX ? `${name} became executable` : `${name} is no longer executable`;
      }
      return `${name} changed`;
    }
    case "input":
      return c.change === "changed" ? `input ${name} changed` : `input ${name} ${c.change}`;
    case "epoch":
      return c.change === "changed" ? `epoch changed from ${c.old!} to ${c.new!}` : `epoch ${c.change}`;
    case "link":
      if (c.change === "changed") return `symlink ${name} now points to ${c.new!} (was ${c.old!})`;
      return `symlink ${name} ${c.change}`;
    case "dir":
      return `directory ${name} ${c.change}`;
    case "setting": {
      const inTarget = ctx.targetFile !== undefined && (ctx.targetKeys?.has(name) ?? false);
      const from = inTarget ? `targets/${ctx.targetFile}` : name === "MEM" || name === "CPUS" ? "demobuild.yaml defaults" : undefined;
      if (c.change === "added") return from ? `${name} added in ${from}` : `${name} added`;
      if (c.change === "removed") return ctx.targetFile ? `${name} removed from targets/${ctx.targetFile}` : `${name} removed`;
      return from ? `${name} changed in ${from}` : `${name} changed`;
    }
    case "project":
      return `${name} changed in demobuild.yaml`;
    case "parent":
      if (!ctx.parentStack) return "parent changed";
      return ctx.parentStale ? `parent ${ctx.parentStack} is stale` : `parent ${ctx.parentStack} was rebuilt`;
    case "kind":
      return `layer kind changed from ${c.old ?? "-"} to ${c.new ?? "-"}`;
    case "layer":
      return `layer changed from ${c.old ?? "-"} to ${c.new ?? "-"}`;
    case "format":
      return `dbuild's fingerprint format changed (${c.old ?? "-"} -> ${c.new ?? "-"})`;
    default:
      return isDigest(c.new) ? `${c.input} changed` : `${c.input} ${c.change}`;
  }
}

/** Reasons for a diff, capped so one bulk edit does not drown the plan. */
export function describeChanges(changes: readonly InputChange[], ctx: ReasonContext = {}, max = 8): string[] {
  const all = changes.map((c) => describeChange(c, ctx));
  // The parent reason explains every other node below it: list it first.
  all.sort((a, b) => Number(b.startsWith("parent ")) - Number(a.startsWith("parent ")));
  if (all.length <= max) return all;
  return [...all.slice(0, max - 1), `and ${all.length - max + 1} more changes (see dbuild why)`];
}
