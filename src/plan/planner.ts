/**
 * The planner: requested stacks -> DAG -> fingerprints -> fresh/stale with plain-words reasons.
 * Reads the project and the store; writes nothing but the stat cache.
 */
import { existsSync } from "node:fs";
import * as path from "node:path";
import { parseStack, prefixes } from "../project/stack.js";
import type { Layer, Project, Target } from "../project/types.js";
import type { StoreView } from "../model/store.js";
import { DbuildError } from "../util/errors.js";
import type { Problem } from "../util/errors.js";
import { layerManifests, nodeKeyFrom, nodeScalars } from "./fingerprint.js";
import { buildGraph, topoOrder } from "./graph.js";
import { StatCache } from "./statcache.js";
import type { InputManifest, NodeStatus, Plan, PlanNode } from "../model/plan.js";
import { describeChanges, diffInputs } from "./why.js";

export interface PlanOptions {
  signal?: AbortSignal;
  /** Use this cache instead of loading `<buildDir>/.dbuild/statcache.json` (tests, watch mode). */
  statCache?: StatCache;
  /** `--force`: these stacks and every node below them are stale whatever the store holds. */
  force?: readonly string[];
}

/** Resolve "all" and validate every requested stack; throws one DbuildError listing every bad one. */
export function resolveStacks(project: Project, requested: "all" | readonly string[]): string[] {
  const all = project.targets.map((t) => t.stack);
  const list = requested === "all" ? all : requested.flatMap((s) => (s === "all" ? all : [s]));
  const targets = new Set(all);
  const problems: Problem[] = [];
  const out = new Set<string>();
  for (const s of list) {
    if (out.has(s)) continue;
    const r = parseStack(s, project.layers, targets.has(s) ? `targets/${s}` : "command line");
    if (Array.isArray(r)) problems.push(...r);
    else out.add(s);
  }
  if (problems.length) throw new DbuildError(problems);
  return [...out];
}

/** Settings that key a node: finalizing nodes get the targets/ values over MEM/CPUS/NAME defaults. */
export function nodeSettings(project: Project, stack: string, layer: Layer, targetByStack?: ReadonlyMap<string, Target>): Record<string, string> {
  if (layer.kind !== "finalizing") return {};
  const t = targetByStack ? targetByStack.get(stack) : project.targets.find((x) => x.stack === stack);
  return {
    MEM: String(project.settings.defaults.mem),
    CPUS: String(project.settings.defaults.cpus),
    NAME: stack,
    ...t?.settings,
  };
}

export function buildSteps(layer: Layer, parent: string | null): string[] {
  switch (layer.kind) {
    case "base":
      return layer.config.import
        ? [`import ${layer.config.import.from} (sha256 ${layer.config.import.sha256.slice(0, 12)})`, "publish"]
        : ["run install on host", "publish"];
    case "intermediate":
    case "finalizing": {
      const steps = [`COW child of ${parent ?? "?"}`, "boot VM", "rsync target/", "run target/install", "cleanup", "poweroff", "publish"];
      if (layer.kind === "finalizing") steps.push(`convert to ${layer.config.format ?? layer.name}`);
      return steps;
    }
  }
}

function userPath(root: string, p: string): string {
  // The usual case (build dir inside the project) without path.relative's resolving, once per node.
  if (p.startsWith(root) && p[root.length] === "/" && !p.includes("/..") && !p.includes("/./")) return p.slice(root.length + 1);
  const rel = path.relative(root, p);
  return rel && !rel.startsWith("..") && !path.isAbsolute(rel) ? rel : p;
}

export async function makePlan(
  project: Project,
  requested: "all" | string[],
  store: StoreView,
  opts: PlanOptions = {},
): Promise<Plan> {
  const stacks = resolveStacks(project, requested);
  const g = buildGraph(stacks);
  const order = topoOrder(g);
  const layerOf = (stack: string): Layer => project.layers.get(stack.slice(stack.lastIndexOf(":") + 1))!;

  const cache = opts.statCache ?? (await StatCache.load(project.settings.buildDir, project.root));
  const needed = new Map<string, Layer>();
  for (const s of order) needed.set(layerOf(s).name, layerOf(s));
  const manifests = await layerManifests(needed.values(), cache, opts.signal);
  opts.signal?.throwIfAborted();

  const targetsOf = new Map<string, string[]>();
  for (const t of stacks) {
    for (const p of prefixes(t)) {
      const list = targetsOf.get(p);
      if (list) list.push(t);
      else targetsOf.set(p, [t]);
    }
  }
  const targetByStack = new Map<string, Target>(project.targets.map((t) => [t.stack, t]));
  const forced = new Set(opts.force ?? []);

  const nodes = new Map<string, PlanNode>();
  for (const stack of order) {
    const layer = layerOf(stack);
    const parent = (g.predecessors(stack) ?? [])[0] ?? null;
    const parentNode = parent === null ? undefined : nodes.get(parent);
    const settings = nodeSettings(project, stack, layer, targetByStack);
    const files = manifests.get(layer.name)!;
    const scalars = nodeScalars({
      kind: layer.kind,
      layer: layer.name,
      parentKey: parentNode?.key ?? null,
      settings,
      ...(layer.config.epoch !== undefined ? { epoch: layer.config.epoch } : {}),
    });
    const key = nodeKeyFrom(scalars, files.digest);
    // The flat manifest (hundreds of entries per node, shared by every node of a layer) is only needed
    // for diffs and records: build it on first use, not for each of thousands of fresh nodes.
    let flat: InputManifest | undefined;
    const inputs = (): InputManifest => (flat ??= { ...scalars, ...files.manifest });
    const image = userPath(project.root, store.viewPath(stack));
    const force = forced.has(stack) || parentNode?.forced === true;
    const fresh = !force && (await store.viewShows(stack, key));
    const reasons: string[] = [];
    let status: NodeStatus = fresh ? "fresh" : "stale";
    if (force) {
      reasons.push(forced.has(stack) ? "forced (--force)" : `forced (--force ${[...forced].find((f) => stack.startsWith(`${f}:`)) ?? "an ancestor"})`);
    } else if (!fresh) {
      const current = await store.currentRecord(stack);
      // A stored image is only usable over the parent image it was built on: a stale parent is rebuilt
      // (new bytes), so the child is rebuilt too.
      if (parentNode?.status !== "stale" && (await store.record(key))) {
        status = "cached";
        reasons.push(
          existsSync(store.viewPath(stack)) ? `${image} shows another build; the image for these inputs is in the store` : `${image} was deleted; the image for these inputs is in the store`,
        );
      } else if (!current) {
        reasons.push("no image yet");
      } else {
        const t = targetByStack.get(stack);
        const ctx = {
          parentStack: parent,
          parentStale: parentNode?.status === "stale",
          ...(t ? { targetFile: t.stack, targetKeys: new Set(Object.keys(t.settings)) } : {}),
        };
        const changes = diffInputs(current.inputs, inputs());
        reasons.push(...(changes.length ? describeChanges(changes, ctx) : ["inputs changed"]));
      }
    }
    const node: PlanNode = {
      stack,
      layer: layer.name,
      kind: layer.kind,
      parent,
      key,
      inputs: {},
      status,
      ...(status === "cached" ? { source: "store" as const } : {}),
      ...(force ? { forced: true } : {}),
      reasons,
      image,
      settings,
      targets: targetsOf.get(stack) ?? [],
      steps: status === "cached" ? [`re-link ${image} to the stored image (no VM)`] : buildSteps(layer, parent),
    };
    Object.defineProperty(node, "inputs", {
      get: inputs,
      set: (v: InputManifest) => {
        flat = v;
      },
      enumerable: true,
      configurable: true,
    });
    if (status === "stale") {
      const d = await store.lastDuration(stack);
      if (d !== undefined) node.lastDuration = d;
    }
    nodes.set(stack, node);
  }
  await cache.save();
  return { nodes: [...nodes.values()], targets: stacks, hashStats: { ...cache.stats } };
}
