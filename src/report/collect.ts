/**
 * Gathers what the HTML report shows: the plan's nodes with a report status, sizes and durations from
 * the store's records, log tails from build/logs/, and the recorded build (timeline and summary).
 * Reads files only (records, stats, log tails); renders nothing.
 */
import * as fs from "node:fs/promises";
import { closeSync, fstatSync, lstatSync, openSync, readdirSync, readSync } from "node:fs";
import * as path from "node:path";
import type { NodeKey, Plan, PlanNode } from "../model/plan.js";
import type { NodeRecord } from "../model/store.js";
import type { BuildTrace, NodeOutcome, ReportBuild, ReportData, ReportNode, ReportStatus, TimelineRow, TraceNode } from "./model.js";

/** What the report reads from the store (src/store/store.ts implements it). */
export interface ReportStore {
  readonly buildDir: string;
  readonly objectsDir: string;
  readonly logsDir: string;
  record(key: NodeKey): Promise<NodeRecord | undefined>;
  currentRecord(stack: string): Promise<NodeRecord | undefined>;
  objectPath(name: string): string;
}

export interface CollectOptions {
  /** Project root (its name titles the report). */
  root: string;
  plan: Plan;
  store: ReportStore;
  /** The recorded build (the running one while `live`). */
  trace?: BuildTrace;
  /** A build is running: started nodes that have not finished are "building". */
  live?: boolean;
  /**
   * The plan was made before `trace` ran (a report written by the build itself): nodes the build
   * finished count as fresh. Otherwise (dbuild report) the plan already says what is fresh now.
   */
  planBeforeBuild?: boolean;
  now?: number;
}

/** Install-output tail kept per node, and serial-console tail: enough to see what happened, bounded. */
const INSTALL_TAIL = { bytes: 32 * 1024, lines: 300 };
const CONSOLE_TAIL = { bytes: 8 * 1024, lines: 60 };

/**
 * The one place a node's report status is decided. A failure shows only while the inputs are the ones
 * that failed; "building" only while a build runs. Plan statuses map one to one.
 */
export function reportStatus(node: PlanNode, last: TraceNode | undefined, o: { live: boolean; planBeforeBuild: boolean }): { status: ReportStatus; cachedIn?: "store" | "remote" } {
  if (last && (last.key === undefined || last.key === node.key)) {
    if (last.outcome === "building" && o.live) return { status: "building" };
    if (last.outcome === "failed") return { status: "failed" };
    if (o.planBeforeBuild && (last.outcome === "built" || last.outcome === "pulled" || last.outcome === "restored")) return { status: "fresh" };
  }
  switch (node.status) {
    case "fresh":
      return { status: "fresh" };
    case "cached":
      // The image for these inputs is in the store (a re-link) or, once the remote cache was asked, there (a pull).
      return { status: "cached", cachedIn: node.source ?? "store" };
    case "stale":
      return { status: "stale" };
  }
}

export async function collectReport(o: CollectOptions): Promise<ReportData> {
  const now = o.now ?? Date.now();
  const live = o.live ?? false;
  const planBeforeBuild = o.planBeforeBuild ?? false;
  const last = new Map((o.trace?.nodes ?? []).map((n) => [n.stack, n]));
  const objects = objectSizes(o.store.objectsDir);
  const sizes = new SizeCache(o.store, objects);
  const logNames = new Set(await fs.readdir(o.store.logsDir).catch(() => [] as string[]));
  const targets = new Set(o.plan.targets);

  const nodes = await Promise.all(
    o.plan.nodes.map(async (n): Promise<ReportNode> => {
      const t = last.get(n.stack);
      const { status, cachedIn } = reportStatus(n, t, { live, planBeforeBuild });
      // The image the view shows: the one for these inputs, else the (outdated) current one.
      const rec = (await o.store.record(n.key)) ?? (await o.store.currentRecord(n.stack));
      const bytes = rec ? await sizes.ofRecord(rec) : undefined;
      const out: ReportNode = {
        stack: n.stack,
        layer: n.layer,
        kind: n.kind,
        parent: n.parent,
        key: n.key,
        status,
        ...(cachedIn ? { cachedIn } : {}),
        reasons: status === "fresh" ? [] : n.reasons,
        target: targets.has(n.stack) || n.targets.includes(n.stack),
      };
      if (bytes) out.bytes = bytes;
      if (rec) {
        out.lastDuration = rec.duration;
        out.builtAt = rec.builtAt;
        if (rec.deliverable) out.deliverable = rec.deliverable.path;
      } else if (n.lastDuration !== undefined) {
        out.lastDuration = n.lastDuration;
      }
      if (t) {
        out.outcome = t.outcome;
        if (t.failure && status === "failed") out.failure = t.failure;
      }
      const log = readLogs(o.store, n.stack, logNames);
      if (log) out.log = log;
      return out;
    }),
  );

  const data: ReportData = {
    version: 1,
    generatedAt: now,
    project: path.basename(path.resolve(o.root)),
    buildDir: o.store.buildDir,
    live,
    nodes,
    store: { bytes: [...objects.values()].reduce((a, b) => a + b, 0), objects: objects.size },
  };
  if (o.trace) data.build = await buildSummary(o.trace, o.store, sizes, now);
  return data;
}

async function buildSummary(t: BuildTrace, store: ReportStore, sizes: SizeCache, now: number): Promise<ReportBuild> {
  const end = t.end ?? now;
  const count = (o: NodeOutcome): number => t.nodes.filter((n) => n.outcome === o).length;
  let cpu = 0;
  let added = 0;
  for (const n of t.nodes) {
    cpu += n.cpuSeconds ?? 0;
    if ((n.outcome === "built" || n.outcome === "pulled") && n.key) {
      const rec = await store.record(n.key as NodeKey);
      const b = rec ? await sizes.ofRecord(rec) : undefined;
      if (b) added += b.delta + (b.deliverable ?? 0);
    }
  }
  const rows: TimelineRow[] = t.nodes
    .filter((n) => n.start !== undefined)
    .sort((a, b) => a.start! - b.start! || a.stack.localeCompare(b.stack))
    .map((n) => {
      const nEnd = n.end ?? end;
      // A push runs after the node is done: the row spans it too.
      const rowEnd = Math.max(nEnd, ...n.steps.map((s) => s.end ?? nEnd));
      return {
        stack: n.stack,
        outcome: n.outcome,
        start: n.start! - t.start,
        end: rowEnd - t.start,
        steps: n.steps.map((s) => ({
          step: s.step,
          start: s.start - t.start,
          end: (s.end ?? nEnd) - t.start,
          ...(s.ok !== undefined ? { ok: s.ok } : {}),
          ...(s.detail ? { detail: s.detail } : {}),
        })),
        critical: false,
        ...(n.cpuSeconds !== undefined ? { cpuSeconds: n.cpuSeconds } : {}),
      };
    });
  markCriticalPath(rows);
  return {
    start: t.start,
    ...(t.end !== undefined ? { end: t.end } : {}),
    wall: (end - t.start) / 1000,
    ...(t.ok !== undefined ? { ok: t.ok } : {}),
    ...(t.interrupted !== undefined ? { interrupted: t.interrupted } : {}),
    jobs: t.jobs,
    counts: {
      built: count("built"),
      reused: t.fresh.length,
      restored: count("restored"),
      pulled: count("pulled"),
      failed: count("failed"),
      skipped: count("skipped"),
      interrupted: count("interrupted"),
      building: count("building"),
    },
    cpuSeconds: cpu,
    bytesAdded: added,
    rows,
    warnings: t.warnings,
  };
}

/**
 * The chain that decided when the build ended: from the node that finished last, back through each
 * parent the node waited for (it started when its parent ended). Nodes form a tree, so the chain is
 * the stack's prefixes that ran in this build back to back.
 */
export function markCriticalPath(rows: TimelineRow[]): void {
  if (!rows.length) return;
  const byStack = new Map(rows.map((r) => [r.stack, r]));
  let cur: TimelineRow | undefined = rows.reduce((a, b) => (b.end > a.end ? b : a));
  while (cur) {
    cur.critical = true;
    const i = cur.stack.lastIndexOf(":");
    const parent: TimelineRow | undefined = i > 0 ? byStack.get(cur.stack.slice(0, i)) : undefined;
    // Waited for the parent only if it started after the parent's node work ended (1 s of scheduling slack).
    cur = parent && parent.start <= cur.start && cur.start - nodeEnd(parent) < 1000 ? parent : undefined;
  }
}

/** When the node's own work ended (a push after it does not hold back its children). */
function nodeEnd(r: TimelineRow): number {
  const own = r.steps.filter((s) => s.step !== "push");
  return own.length ? Math.max(...own.map((s) => s.end)) : r.end;
}

/** On-disk (allocated) sizes of objects, from one listing of the objects dir; images sum their backing chain. */
class SizeCache {
  private readonly images = new Map<string, Promise<number | undefined>>();
  constructor(
    private readonly store: ReportStore,
    private readonly objects: ReadonlyMap<string, number>,
  ) {}

  file(name: string): Promise<number | undefined> {
    return Promise.resolve(this.objects.get(name));
  }

  private image(rec: NodeRecord): Promise<number | undefined> {
    let p = this.images.get(rec.key);
    if (!p) {
      p = (async () => {
        const own = await this.file(rec.object);
        if (own === undefined) return undefined;
        if (!rec.parentKey) return own;
        const parent = await this.store.record(rec.parentKey);
        const up = parent ? await this.image(parent) : undefined;
        return own + (up ?? 0);
      })();
      this.images.set(rec.key, p);
    }
    return p;
  }

  async ofRecord(rec: NodeRecord): Promise<{ image: number; delta: number; deliverable?: number } | undefined> {
    const delta = await this.file(rec.object);
    if (delta === undefined) return undefined;
    const image = (await this.image(rec)) ?? delta;
    const deliverable = rec.deliverable ? await this.file(rec.deliverable.object) : undefined;
    return { image, delta, ...(deliverable !== undefined ? { deliverable } : {}) };
  }
}

/**
 * Object file name -> bytes allocated on disk, for every file in the objects dir (the store's size, and
 * each image's). One synchronous pass: a thousand small stat calls cost far less that way than as
 * promises, and the report is written at most every few seconds.
 */
function objectSizes(objectsDir: string): Map<string, number> {
  const out = new Map<string, number>();
  let names: string[];
  try {
    names = readdirSync(objectsDir);
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      const st = lstatSync(path.join(objectsDir, n));
      if (st.isFile()) out.set(n, st.blocks * 512);
    } catch {
      // removed meanwhile (gc)
    }
  }
  return out;
}

function readLogs(store: ReportStore, stack: string, names: Set<string>): ReportNode["log"] {
  const install = `${stack}.log`;
  const consoleLog = `${stack}.console.log`;
  const out: NonNullable<ReportNode["log"]> = {};
  const rel = (n: string): string => path.relative(store.buildDir, path.join(store.logsDir, n));
  const t = names.has(install) ? tail(path.join(store.logsDir, install), INSTALL_TAIL) : undefined;
  if (t) {
    out.install = t.text;
    out.installPath = rel(install);
    if (t.truncated) out.truncated = true;
  }
  const c = names.has(consoleLog) ? tail(path.join(store.logsDir, consoleLog), CONSOLE_TAIL) : undefined;
  if (c) {
    out.console = c.text;
    out.consolePath = rel(consoleLog);
  }
  return out.installPath || out.consolePath ? out : undefined;
}

// eslint-disable-next-line no-control-regex -- terminal escapes and control characters are the point
const NOISE = /\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/g;

/**
 * The last lines of a file (reads at most `bytes` from its end), without terminal control noise; undefined
 * if it cannot be read. Synchronous, like objectSizes(): a report reads a few thousand small logs.
 */
export function tail(file: string, lim: { bytes: number; lines: number }): { text: string; truncated: boolean } | undefined {
  let fd: number;
  try {
    fd = openSync(file, "r");
  } catch {
    return undefined;
  }
  try {
    const size = fstatSync(fd).size;
    const len = Math.min(size, lim.bytes);
    const buf = Buffer.alloc(len);
    readSync(fd, buf, 0, len, size - len);
    let lines = buf.toString("utf8").replace(/\r\n?/g, "\n").replace(NOISE, "").split("\n");
    if (size > len) lines = lines.slice(1); // the first line is cut
    if (lines.at(-1) === "") lines.pop();
    const truncated = size > len || lines.length > lim.lines;
    return { text: lines.slice(-lim.lines).join("\n"), truncated };
  } finally {
    closeSync(fd);
  }
}
