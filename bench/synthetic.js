// Synthetic projects for benchmarks and tests: the planner's shape (10 bases, intermediates, 10 finalizing
// layers, targets base:mid...:final) and, for the report, a store and a recorded build to go with it.
// Deterministic: the same options give the same project.
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const repo = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

/** Deterministic pseudo-random numbers in [0, 1), so every run makes the same project. */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Writes a project of `layers` layers (10 bases, 10 finalizing, the rest intermediate) and `targets`
 * targets of 1-4 intermediates each; `files` files of 8-12 KiB spread over the target/ dirs (at least one
 * install per layer). Returns the number of targets.
 */
export function generateProject(root, { layers = 200, targets = 500, files = 0 } = {}) {
  const rand = rng(42);
  const pick = (n) => Math.floor(rand() * n);
  const w = (rel, content, mode) => {
    const abs = path.join(root, rel);
    fs.mkdirSync(path.dirname(abs), { recursive: true });
    fs.writeFileSync(abs, content);
    if (mode) fs.chmodSync(abs, mode);
  };
  w("utils/addlayer.sh", "#!/bin/sh\n", 0o755);
  const bases = [];
  const mids = [];
  const finals = [];
  const nBase = 10;
  const nFinal = 10;
  for (let i = 0; i < layers; i++) {
    if (i < nBase) {
      const name = `base${i}`;
      w(`layers/${name}/install`, `#!/bin/sh\necho base ${i}\n`, 0o755);
      bases.push(name);
      continue;
    }
    const final = i >= layers - nFinal;
    const name = final ? `final${i}` : `layer${i}`;
    fs.mkdirSync(path.join(root, "layers", name), { recursive: true });
    fs.symlinkSync("../../utils/addlayer.sh", path.join(root, "layers", name, "install"));
    if (final) {
      w(`layers/${name}/layer.yaml`, "kind: finalizing\nformat: qcow2\n");
      w(`layers/${name}/convert`, "#!/bin/sh\n", 0o755);
      finals.push(name);
    } else mids.push(name);
    w(`layers/${name}/target/install`, `#!/bin/sh\necho ${name}\n`, 0o755);
  }
  // The remaining files spread over target/ dirs, a few subdirectories deep.
  const withTarget = [...mids, ...finals];
  const remaining = files - withTarget.length;
  for (let f = 0; f < remaining; f++) {
    const layer = withTarget[f % withTarget.length];
    const size = 8192 + pick(4096);
    w(`layers/${layer}/target/d${pick(4)}/s${pick(3)}/f${f}.dat`, randomBytes(size));
  }
  const stacks = new Set();
  while (stacks.size < targets) {
    const depth = 1 + pick(4);
    const els = [bases[pick(bases.length)]];
    const used = new Set();
    for (let d = 0; d < depth; d++) {
      const m = mids[pick(mids.length)];
      if (!used.has(m)) els.push(m), used.add(m);
    }
    els.push(finals[pick(finals.length)]);
    stacks.add(els.join(":"));
  }
  for (const s of stacks) w(`targets/${s}`, rand() < 0.5 ? `MEM=${1024 * (1 + pick(4))}\n` : "");
  return stacks.size;
}

const STEPS = { base: ["install-host", "publish"], intermediate: ["cow", "boot", "rsync", "install", "cleanup", "poweroff", "publish"] };

/**
 * Makes the report's inputs for a generated project, with dbuild's own store (dist/): most of the
 * nodes get an image (small object files, records, views), the rest (a share `staleShare` and the nodes
 * below them) stay stale; the recorded last build
 * built `built` of the fresh nodes (2 at a time, every step timed) and failed one node; each built node
 * has an install log and a console log. Returns what a test can check against.
 */
export async function populateReportStore(root, { built = Infinity, staleShare = 0.05 } = {}) {
  const { loadProject } = await import(path.join(repo, "dist/project/load.js"));
  const { makePlan } = await import(path.join(repo, "dist/plan/planner.js"));
  const { Store } = await import(path.join(repo, "dist/store/store.js"));
  const { saveTrace, lastBuildPath } = await import(path.join(repo, "dist/report/build-trace.js"));
  const project = await loadProject(root);
  const store = new Store(project.settings.buildDir);
  await store.init();
  const plan = await makePlan(project, "all", store);
  const rand = rng(7);
  const stale = new Set();
  const keyOf = new Map(plan.nodes.map((n) => [n.stack, n.key]));
  // Parents first: a node can only have an image if its parent has one.
  for (const n of plan.nodes) {
    if ((n.parent && stale.has(n.parent)) || rand() < staleShare) {
      stale.add(n.stack);
      continue;
    }
    const tmp = store.tmpPath(n.stack);
    fs.writeFileSync(tmp, randomBytes(4096 + Math.floor(rand() * 8192)));
    const object = await store.publishFile(tmp, n.key, "qcow2");
    await store.commit({
      key: n.key,
      stack: n.stack,
      layer: n.layer,
      parentKey: n.parent ? keyOf.get(n.parent) : null,
      inputs: n.inputs,
      object,
      duration: 5 + rand() * 30,
      builtAt: new Date(Date.UTC(2026, 0, 1)).toISOString(),
    });
  }
  const fresh = plan.nodes.filter((n) => !stale.has(n.stack));
  const failed = plan.nodes.find((n) => stale.has(n.stack) && n.kind !== "base");
  // The last build: the fresh nodes (up to `built`) in plan order on two slots, then the failure.
  const start = Date.UTC(2026, 0, 1, 12);
  const slots = [start, start];
  const ends = new Map();
  const nodes = [];
  const run = (n, fail) => {
    const slot = slots[0] <= slots[1] ? 0 : 1;
    let t = Math.max(slots[slot], ends.get(n.parent) ?? start);
    const steps = [];
    const names = STEPS[n.kind === "base" ? "base" : "intermediate"];
    for (const [i, step] of names.entries()) {
      const d = step === "boot" ? 2500 + rand() * 1000 : step === "install" ? 500 + rand() * 5000 : 50 + rand() * 400;
      steps.push({ step, start: t, end: t + d, ok: !(fail && i === 3) });
      t += d;
      if (fail && i === 3) break;
    }
    slots[slot] = t;
    ends.set(n.stack, t);
    const node = { stack: n.stack, layer: n.layer, kind: n.kind, key: n.key, start: steps[0].start, end: t, outcome: fail ? "failed" : "built", steps };
    if (n.kind !== "base") node.cpuSeconds = (t - node.start) / 1000 * 0.8;
    if (fail) node.failure = { step: "install", message: "target/install exited with code 3", exitCode: 3, logTail: ["about to fail: synthetic-marker"], logPath: store.logPath(n.stack) };
    nodes.push(node);
    const lines = Array.from({ length: 40 }, (_, i) => `${n.stack}: install output line ${i + 1}`);
    if (fail) lines.push("about to fail: synthetic-marker");
    fs.writeFileSync(store.logPath(n.stack), lines.join("\n") + "\n");
    if (n.kind !== "base") fs.writeFileSync(store.logPath(n.stack).replace(/\.log$/, ".console.log"), Array.from({ length: 20 }, (_, i) => `[ ${i}.0] console ${i}`).join("\n") + "\n");
  };
  const toBuild = fresh.slice(0, built);
  for (const n of toBuild) run(n, false);
  if (failed) run(failed, true);
  const trace = {
    version: 1,
    start,
    end: Math.max(...slots),
    jobs: 2,
    stale: [...toBuild.map((n) => n.stack), ...(failed ? [failed.stack] : [])],
    fresh: fresh.slice(toBuild.length).map((n) => n.stack),
    ok: !failed,
    interrupted: false,
    nodes,
    warnings: [],
  };
  saveTrace(lastBuildPath(store.internalDir), trace);
  return { nodes: plan.nodes.length, stale: [...stale], failed: failed?.stack, built: toBuild.map((n) => n.stack), trace };
}
