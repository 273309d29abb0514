/**
 * The planner: requested stacks -> DAG -> fingerprints -> fresh/stale with plain-words reasons.
 * Reads the project and the store; writes nothing but the stat cache.
 */
import { existsSync } from "node:fs";
import * as path from "node:path";
import { sha256Hex } from "../util/digest.js";
import { parseStack, prefixes } from "../project/stack.js";
import type { Layer, Project, Target } from "../project/types.js";
import type { StoreView } from "../model/store.js";
import { DbuildError } from "../util/errors.js";
import type { Problem } from "../util/errors.js";
import { canonicalJson, layerKeyer, layerManifests, nodeScalars, testManifests, type NodeKeyer } from "./fingerprint.js";
import { StatCache } from "./statcache.js";
import type { InputManifest, NodeStatus, Plan, PlanNode, PlanTests } from "../model/plan.js";
import { describeChanges, diffInputs } from "./why.js";

export interface PlanOptions {
  signal?: AbortSignal;
  /** Use this cache instead of loading `<buildDir>/.dbuild/statcache.json` (tests, watch mode). */
  statCache?: StatCache;
  /** `--force`: these stacks and every node below them are stale whatever the store holds. */
  force?: readonly string[];
  /** --no-test: layer tests neither run nor make a node stale. */
  noTest?: boolean;
  /** `dbuild test`: run the tests of these stacks even when a pass is recorded ("all": every node's). */
  forceTests?: "all" | readonly string[];
}

/** Format of the test digest: bump when what it covers changes. */
const TEST_DIGEST_FORMAT = "t1";

/** The test digest: the test files' digest plus the layer's test: settings (ports, timeout). */
export function testDigest(layer: Layer, filesDigest: string): string {
  const cfg = layer.config.test ?? {};
  return sha256Hex(canonicalJson({ format: TEST_DIGEST_FORMAT, files: filesDigest, ports: (cfg.ports ?? []).join(","), timeout: String(cfg.timeout ?? "") }));
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

/** The test step in plain words: `test in a fresh VM: guest/a, host/b (ports 80)`. */
export function testStep(t: Pick<PlanTests, "names" | "ports">): string {
  return `test in a fresh VM: ${t.names.join(", ")}${t.ports.length ? ` (ports ${t.ports.join(", ")})` : ""}`;
}

export function buildSteps(layer: Layer, parent: string | null, tests?: Pick<PlanTests, "names" | "ports">): string[] {
  const test = tests ? [testStep(tests)] : [];
  switch (layer.kind) {
    case "base":
      return layer.config.import
        ? [`import ${layer.config.import.from} (sha256 ${layer.config.import.sha256.slice(0, 12)})`, ...test, "publish"]
        : ["run install on host", ...test, "publish"];
    case "intermediate":
    case "finalizing": {
      const steps = [`COW child of ${parent ?? "?"}`, "boot VM", "rsync target/", "run target/install", "cleanup", "poweroff"];
      // A finalizing image is stored, then converted; its tests gate the views of both.
      if (layer.kind === "finalizing") steps.push("publish", `convert to ${layer.config.format ?? layer.name}`, ...test);
      else steps.push(...test, "publish");
      return steps;
    }
  }
}

/** A cached node: its tests (when they run), then the view re-linked unless it already shows the image. */
function cachedSteps(image: string, shows: boolean, tests: Pick<PlanTests, "names" | "ports"> | undefined): string[] {
  const test = tests ? [testStep(tests)] : [];
  return shows ? test : [...test, `re-link ${image} to the stored image${tests ? "" : " (no VM)"}`];
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
  return store.planning ? store.planning(() => plan(project, requested, store, opts)) : plan(project, requested, store, opts);
}

async function plan(project: Project, requested: "all" | string[], store: StoreView, opts: PlanOptions): Promise<Plan> {
  const stacks = resolveStacks(project, requested);
  // The DAG (graphlib) is loaded by the first plan, not by every command that can plan (--help, ssh, run).
  const { buildGraph, topoOrder } = await import("./graph.js");
  const g = buildGraph(stacks);
  const order = topoOrder(g);
  const layerOf = (stack: string): Layer => project.layers.get(stack.slice(stack.lastIndexOf(":") + 1))!;

  const cache = opts.statCache ?? (await StatCache.load(project.settings.buildDir, project.root));
  const needed = new Map<string, Layer>();
  for (const s of order) needed.set(layerOf(s).name, layerOf(s));
  const manifests = await layerManifests(needed.values(), cache, opts.signal);
  const testFiles = await testManifests(needed.values(), cache, opts.signal);
  opts.signal?.throwIfAborted();
  const testsForced = opts.forceTests === "all" ? undefined : new Set(opts.forceTests ?? []);

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

  const keyers = new Map<string, NodeKeyer>();
  const nodes = new Map<string, PlanNode>();
  for (const stack of order) {
    const layer = layerOf(stack);
    const parent = (g.predecessors(stack) ?? [])[0] ?? null;
    const parentNode = parent === null ? undefined : nodes.get(parent);
    const settings = nodeSettings(project, stack, layer, targetByStack);
    const files = manifests.get(layer.name)!;
    const epoch = layer.config.epoch !== undefined ? { epoch: layer.config.epoch } : {};
    let keyer = keyers.get(layer.name);
    if (!keyer) keyers.set(layer.name, (keyer = layerKeyer({ kind: layer.kind, layer: layer.name, ...epoch }, files.digest)));
    const parentKey = parentNode?.key ?? null;
    const key = keyer(parentKey, settings);
    // The flat manifest (hundreds of entries per node, shared by every node of a layer) is only needed
    // for diffs and records: build it on first use, not for each of thousands of fresh nodes.
    let flat: InputManifest | undefined;
    const inputs = (): InputManifest => (flat ??= { ...nodeScalars({ kind: layer.kind, layer: layer.name, parentKey, settings, ...epoch }), ...files.manifest });
    const image = userPath(project.root, store.viewPath(stack));
    const force = forced.has(stack) || parentNode?.forced === true;
    const shows = !force && (await store.viewShows(stack, key));
    const reasons: string[] = [];
    let status: NodeStatus = shows ? "fresh" : "stale";
    // A stored image is only usable over the parent image it was built on: a stale parent is rebuilt
    // (new bytes), so the child is rebuilt too.
    const stored = !shows && !force && parentNode?.status !== "stale" ? await store.record(key) : undefined;
    if (stored) status = "cached";
    // Tests run on every image a build makes, and on a stored or shown one whose pass is not recorded.
    let tests: PlanTests | undefined;
    const tf = testFiles.get(layer.name);
    if (layer.tests && tf) {
      const digest = testDigest(layer, tf.digest);
      const passed = status !== "stale" && ((await store.testsPassed?.(key, digest)) ?? false);
      const onDemand = opts.forceTests === "all" || (testsForced?.has(stack) ?? false);
      tests = { names: [...layer.tests.guest, ...layer.tests.host], ports: layer.config.test?.ports ?? [], digest, passed, run: !opts.noTest && (status === "stale" || onDemand || !passed) };
    }
    if (force) {
      reasons.push(forced.has(stack) ? "forced (--force)" : `forced (--force ${[...forced].find((f) => stack.startsWith(`${f}:`)) ?? "an ancestor"})`);
    } else if (shows) {
      // The view shows the image for these inputs; only its tests are left to run (if any): no VM builds.
      if (tests?.run) {
        status = "cached";
        reasons.push(tests.passed ? "`dbuild test`: its tests run again on demand" : "its tests have not passed on this image (new or changed tests, or built with --no-test): only the tests run");
      }
    } else {
      const current = await store.currentRecord(stack);
      if (stored?.held !== undefined) {
        reasons.push(`its image is in the store but ${stored.held}: ${tests?.run ? "only the tests run again" : "it is published as is (--no-test)"}`);
      } else if (stored) {
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
      // Built on first read; assignable (a literal's accessors cost less than defineProperty per node).
      get inputs(): InputManifest {
        return inputs();
      },
      set inputs(v: InputManifest) {
        flat = v;
      },
      status,
      ...(status === "cached" ? { source: "store" as const } : {}),
      ...(force ? { forced: true } : {}),
      reasons,
      image,
      settings,
      targets: targetsOf.get(stack) ?? [],
      steps: status === "cached" ? cachedSteps(image, shows, tests?.run ? tests : undefined) : buildSteps(layer, parent, tests?.run ? tests : undefined),
    };
    if (tests) node.tests = tests;
    if (status === "stale") {
      const d = await store.lastDuration(stack);
      if (d !== undefined) node.lastDuration = d;
    }
    nodes.set(stack, node);
  }
  await cache.save();
  return { nodes: [...nodes.values()], targets: stacks, hashStats: { ...cache.stats } };
}

/**
 * `dbuild test X` where X's layer has no tests: the warning to show rather than appear to have tested it
 * (for "all": only when no node of the plan has tests). Undefined when there is nothing to say.
 */
export function untestedWarning(plan: Plan, forced: "all" | readonly string[]): string | undefined {
  const named = forced === "all" ? plan.nodes.map((n) => n.stack) : forced;
  const without = named.filter((s) => !plan.nodes.find((n) => n.stack === s)?.tests);
  if (forced === "all" ? without.length < named.length : !without.length) return undefined;
  const list = forced === "all" ? "no layer of these stacks" : without.join(", ");
  return `${list} ${forced === "all" || without.length > 1 ? "have" : "has"} no tests (add executables to layers/NAME/test/guest/ or test/host/)`;
}
