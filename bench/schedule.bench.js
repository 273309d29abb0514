// Critical-path scheduling: wall time of the same tree built in the old order (the plan's topological list)
// and longest-remaining-chain first, with -j 2. The scheduler is the real one (dist/exec/scheduler.js);
// each node's work is a sleep of its recorded duration, scaled down (SCHED_BENCH_SCALE, default 1/20), so
// the rows measure the order alone, not VM noise. Writes docs/bench/schedule.md.
// Run: npm run bench -- schedule   (after npm run build; this file imports ../dist)
import { runGraph } from "../dist/exec/scheduler.js";
import { loadavg, median, writeSection } from "./lib.js";

const SCALE = Number(process.env.SCHED_BENCH_SCALE ?? 1 / 20);
const RUNS = Number(process.env.BENCH_RUNS ?? 5);

// A tree where the order matters: one base, a long branch (three 40 s layers, e.g. a desktop stack) and
// four short leaves (12 s layers, about one VM cycle of the micro guest), listed leaves first as a plan
// lists them when their names sort first. Seconds as the store records them; VMs of 1 GiB, budget 4 GiB.
const tree = [
  { id: "base", parent: null, mem: 0, seconds: 20 },
  { id: "base:a", parent: "base", mem: 1024, seconds: 12 },
  { id: "base:b", parent: "base", mem: 1024, seconds: 12 },
  { id: "base:c", parent: "base", mem: 1024, seconds: 12 },
  { id: "base:d", parent: "base", mem: 1024, seconds: 12 },
  { id: "base:x", parent: "base", mem: 1024, seconds: 40 },
  { id: "base:x:y", parent: "base:x", mem: 1024, seconds: 40 },
  { id: "base:x:y:z", parent: "base:x:y", mem: 1024, seconds: 40 },
];
const byId = new Map(tree.map((n) => [n.id, n]));

async function wall(order) {
  const t0 = performance.now();
  await runGraph(tree, { jobs: 2, memoryBudget: 4096, keepGoing: false, order }, (id) => new Promise((r) => setTimeout(r, byId.get(id).seconds * 1000 * SCALE)));
  return (performance.now() - t0) / 1000 / SCALE;
}

const given = [];
const cp = [];
for (let i = 0; i < RUNS; i++) {
  given.push(await wall("given"));
  cp.push(await wall("critical-path"));
}
// Lower bound: the longest chain (base + the x branch) or all work spread over two jobs, whichever is more.
const work = tree.reduce((s, n) => s + n.seconds, 0);
const floor = Math.max(20 + 3 * 40, 20 + (work - 20) / 2);
const g = median(given);
const c = median(cp);
const f = (x) => `${x.toFixed(1)} s`;
writeSection(
  "schedule",
  `## Critical-path scheduling

\`npm run bench -- schedule\` (bench/schedule.bench.js; BENCH_RUNS=${RUNS}, medians). The real scheduler with -j 2 and a 4 GiB
memory budget; each node's work is a sleep of its recorded duration scaled by ${SCALE.toFixed(3)}, reported back in
unscaled seconds, so the rows compare the order alone. Tree: a 20 s base, four 12 s leaves listed first, and a branch
of three 40 s layers. Load average at the end: ${loadavg()}.

| order | wall time | vs floor |
|---|---|---|
| plan order (topological list, the old scheduler) | ${f(g)} | ${(g / floor).toFixed(2)} |
| longest remaining chain first (default) | ${f(c)} | ${(c / floor).toFixed(2)} |
| floor: max(longest chain, all work / 2 jobs) | ${f(floor)} | 1.00 |

Critical path first saves ${f(g - c)} (${(((g - c) / g) * 100).toFixed(0)} %) here: the leaves run beside the long branch
instead of before it. Per-run seconds: plan order ${given.map((x) => x.toFixed(1)).join(", ")}; critical path ${cp.map((x) => x.toFixed(1)).join(", ")}.
`,
);
console.log(`plan order ${f(g)}, critical path ${f(c)}, floor ${f(floor)}`);
