// Planner speed on a synthetic project (200 layers, 500 targets, 20,000 files of ~10 KB in target/ dirs):
// `dbuild plan --json all` as a user runs it (a whole process: node startup, module loading, the real
// store), warm (a no-op: the stat cache vouches for every file) on a project that was never built and on
// one whose every node is built, and cold (no stat cache). The floors, on the same tree: `node -e 0`,
// `git status` (one stat per file) and `sha256sum` over the same files (hashing). Writes docs/bench/plan.md.
// Run: npm run bench -- plan   (after npm run build; this file runs ../bin/dbuild.js)
//
// Every measurement is the median of several runs, interleaved; the page cache is warm for all of them.
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { generateProject, populateReportStore } from "./synthetic.js";

const repo = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const LAYERS = Number(process.env.PLAN_BENCH_LAYERS ?? 200);
const TARGETS = Number(process.env.PLAN_BENCH_TARGETS ?? 500);
const FILES = Number(process.env.PLAN_BENCH_FILES ?? 20000);
const ROUNDS = Number(process.env.PLAN_BENCH_ROUNDS ?? 7);
const DBUILD = path.join(repo, "bin", "dbuild.js");
// PLAN_BENCH_BEFORE=DIR: also time the dbuild of another checkout (built, e.g. the commit before a change)
// in the same rounds, on the same trees, as rows "before"; PLAN_BENCH_BEFORE_LABEL names it.
const BEFORE = process.env.PLAN_BENCH_BEFORE ? path.join(path.resolve(process.env.PLAN_BENCH_BEFORE), "bin", "dbuild.js") : undefined;
const BEFORE_LABEL = process.env.PLAN_BENCH_BEFORE_LABEL ?? "before";

// Inside one process, where a warm plan's time goes (the same modules the CLI uses).
const RUNNER = `
const t0 = performance.now();
const { loadProject } = await import(${JSON.stringify(path.join(repo, "dist/project/load.js"))});
const { makePlan } = await import(${JSON.stringify(path.join(repo, "dist/plan/planner.js"))});
const { Store } = await import(${JSON.stringify(path.join(repo, "dist/store/store.js"))});
const { renderPlanJson } = await import(${JSON.stringify(path.join(repo, "dist/report/plan.js"))});
const t1 = performance.now();
const project = await loadProject(process.argv[2]);
const t2 = performance.now();
const plan = await makePlan(project, "all", new Store(project.settings.buildDir));
const t3 = performance.now();
const json = renderPlanJson(plan);
const t4 = performance.now();
process.stdout.write(JSON.stringify({ imports: t1 - t0, load: t2 - t1, plan: t3 - t2, render: t4 - t3, bytes: json.length, stats: plan.hashStats }));
`;

// The floor for any Node planner: start node, walk the tree, lstat every file; nothing else.
const FLOOR = `
import * as fs from "node:fs";
const walk = (d) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) { const p = d + "/" + e.name; if (e.isDirectory()) walk(p); else fs.lstatSync(p); } };
walk(process.argv[2] + "/layers");
`;

// Wall time and CPU time (user + sys, from the shell's `times`) of one process. CPU time barely moves
// when other work shares the machine; wall time does.
function timeProcess(cmd, args, opts = {}) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync("sh", ["-c", '"$0" "$@"; s=$?; times >&2; exit $s', cmd, ...args], { encoding: "utf8", maxBuffer: 1 << 28, ...opts });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  const secs = (t) => {
    const m = /^(\d+)m([\d.]+)s$/.exec(t);
    return m ? (Number(m[1]) * 60 + Number(m[2])) * 1000 : NaN;
  };
  const [u, sy] = (lines.at(-1) ?? "").split(/\s+/);
  return { ms, cpu: secs(u) + secs(sy), out: r.stdout };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const fmt = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);

// PLAN_BENCH_KEEP=1 keeps the generated projects (printed) for profiling.
const loadAtStart = os.loadavg()[0].toFixed(1);
const root = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-plan-bench-"));
const built = `${root}-built`;
const coldRoot = `${root}-cold`;
try {
  console.log(`generating ${LAYERS} layers, ${TARGETS} targets, ${FILES} files in ${root}`);
  const tg = Date.now();
  generateProject(root, { layers: LAYERS, targets: TARGETS, files: FILES });
  const git = (...a) => execFileSync("git", ["-C", root, ...a], { stdio: ["ignore", "ignore", "inherit"] });
  git("init", "-q");
  git("add", "-A");
  git("-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "gc.auto=0", "commit", "-qm", "bench");
  // The same project, every node built (an object, a record and a view each), in ${built}.
  execFileSync("cp", ["-a", root, built]);
  // And a copy for the cold plans, which start from no .dbuild at all, as the first plan of a checkout.
  execFileSync("cp", ["-a", root, coldRoot]);
  const pop = await populateReportStore(built, { built: 0, staleShare: 0 });
  console.log(`  generated in ${fmt(Date.now() - tg)} (built copy: ${pop.nodes - pop.stale.length} of ${pop.nodes} nodes fresh, in ${built})`);
  const listFile = path.join(os.tmpdir(), `dbuild-plan-bench-files-${process.pid}`);
  execFileSync("sh", ["-c", `cd '${root}' && find layers -type f -print0 > '${listFile}'`]);

  const runner = path.join(os.tmpdir(), `dbuild-plan-bench-${process.pid}.mjs`);
  fs.writeFileSync(runner, RUNNER);
  const floorScript = path.join(os.tmpdir(), `dbuild-plan-bench-floor-${process.pid}.mjs`);
  fs.writeFileSync(floorScript, FLOOR);
  const internal = (dir) => path.join(dir, "build", ".dbuild");
  const statcache = (dir) => path.join(internal(dir), "statcache.json");
  const dbuild = (dir, bin = DBUILD) => {
    const r = timeProcess(process.execPath, [bin, "-C", dir, "plan", "--json", "all"]);
    const p = JSON.parse(r.out);
    return { ...r, nodes: p.nodes.length, fresh: p.nodes.filter((n) => n.status === "fresh").length };
  };

  const rows = { node: [], git: [], warm: [], warmBuilt: [], cold: [], sha: [], floor: [], help: [], inside: [], warmBefore: [], warmBuiltBefore: [], coldBefore: [] };
  let nodes = 0;
  let fresh = 0;
  // Two plans of each project first, so that the first round is warm too (the first plan of a checkout
  // writes the stat cache, the second the config cache).
  for (const d of [root, built, root, built]) dbuild(d);
  for (let i = 0; i < ROUNDS; i++) {
    rows.node.push(timeProcess(process.execPath, ["-e", "0"]));
    rows.git.push(timeProcess("git", ["-C", root, "status", "--porcelain"]));
    const w = dbuild(root);
    nodes = w.nodes;
    rows.warm.push(w);
    const wb = dbuild(built);
    fresh = wb.fresh;
    rows.warmBuilt.push(wb);
    if (BEFORE) {
      rows.warmBefore.push(dbuild(root, BEFORE));
      rows.warmBuiltBefore.push(dbuild(built, BEFORE));
    }
    rows.help.push(timeProcess(process.execPath, [DBUILD, "--help"]));
    rows.floor.push(timeProcess(process.execPath, [floorScript, root]));
    const inside = timeProcess(process.execPath, [runner, root]);
    const d = JSON.parse(inside.out);
    if (d.stats.hashed !== 0) throw new Error(`warm plan re-read ${d.stats.hashed} files`);
    rows.inside.push(d);
    rows.sha.push(timeProcess("sh", ["-c", `cd '${root}' && xargs -0 sha256sum < '${listFile}' > /dev/null`]));
    // Cold: no stat cache and no config cache, as the first plan of a checkout.
    fs.rmSync(internal(coldRoot), { recursive: true, force: true });
    rows.cold.push(dbuild(coldRoot));
    if (!fs.existsSync(statcache(coldRoot))) throw new Error("the cold plan wrote no stat cache");
    if (BEFORE) {
      fs.rmSync(internal(coldRoot), { recursive: true, force: true });
      rows.coldBefore.push(dbuild(coldRoot, BEFORE));
    }
  }
  fs.rmSync(runner);
  fs.rmSync(floorScript);
  fs.rmSync(listFile);

  const wall = (k) => median(rows[k].map((x) => x.ms));
  const cpu = (k) => median(rows[k].map((x) => x.cpu));
  const inside = (k) => median(rows.inside.map((x) => x[k]));
  const r = {
    node: wall("node"), nodeCpu: cpu("node"),
    git: wall("git"), gitCpu: cpu("git"),
    warm: wall("warm"), warmCpu: cpu("warm"),
    warmBuilt: wall("warmBuilt"), warmBuiltCpu: cpu("warmBuilt"),
    cold: wall("cold"), coldCpu: cpu("cold"),
    sha: wall("sha"), shaCpu: cpu("sha"),
    floor: wall("floor"), floorCpu: cpu("floor"),
    help: wall("help"), helpCpu: cpu("help"),
  };
  const load = os.loadavg()[0].toFixed(1);
  const statSize = fs.statSync(statcache(root)).size;
  // The goal's measure: what dbuild adds to starting node, against git status.
  const beyond = (ms) => ms - r.node;
  const warmRatio = beyond(r.warm) / r.git;
  const warmRatioCpu = (r.warmCpu - r.nodeCpu) / r.gitCpu;
  const builtRatio = beyond(r.warmBuilt) / r.git;
  const coldRatio = r.cold / r.sha;
  const ok = (x, goal) => (x <= goal ? "met" : "NOT met");
  const x = (v) => `${v.toFixed(2)}x`;
  const beforeRow = (label, k) =>
    `| ${label}, ${BEFORE_LABEL} | ${fmt(wall(k))} | ${fmt(beyond(wall(k)))} | ${x(beyond(wall(k)) / r.git)} | ${fmt(cpu(k))} | ${x((cpu(k) - r.nodeCpu) / r.gitCpu)} | |\n`;
  const coldBeforeRow = BEFORE
    ? `| cold plan, ${BEFORE_LABEL} | ${fmt(wall("coldBefore"))} | ${x(wall("coldBefore") / r.sha)} | ${fmt(cpu("coldBefore"))} | ${x(cpu("coldBefore") / r.shaCpu)} | |\n`
    : "";
  const beforeRows = BEFORE ? beforeRow("warm no-op plan, never built", "warmBefore") + beforeRow("warm no-op plan, every node built", "warmBuiltBefore") : "";
  const md = `## Planner (\`dbuild plan\`)

Synthetic project: ${LAYERS} layers (10 bases, ${LAYERS - 20} intermediate, 10 finalizing), ${TARGETS} targets
(${nodes} plan nodes), ${FILES} files of 8-12 KiB in \`target/\` dirs (${(FILES * 10 / 1024).toFixed(0)} MiB), in a git work tree.
Each row is \`node bin/dbuild.js -C DIR plan --json all\` as a user runs it (a whole process: node startup,
module loading, the real store, the JSON written out), or the command named; median of ${ROUNDS} interleaved
runs, page cache warm. "Beyond node" is the time minus \`node -e 0\`'s, which the goal compares with
\`git status\`.

| what | wall | beyond node | ratio (beyond node, wall) | CPU | ratio (beyond node, CPU) | goal |
|---|---|---|---|---|---|---|
| warm no-op plan, project never built (stat cache hit for every file) | ${fmt(r.warm)} | ${fmt(beyond(r.warm))} | ${x(warmRatio)} \`git status\` | ${fmt(r.warmCpu)} | ${x(warmRatioCpu)} | <= 2x: ${ok(warmRatio, 2)} |
| warm no-op plan, every node built (${fresh} of ${nodes} fresh: a record and a view each) | ${fmt(r.warmBuilt)} | ${fmt(beyond(r.warmBuilt))} | ${x(builtRatio)} | ${fmt(r.warmBuiltCpu)} | ${x((r.warmBuiltCpu - r.nodeCpu) / r.gitCpu)} | never built as fast (<= 1.05x built, the noise): ${x(r.warm / r.warmBuilt)}, ${ok(r.warm / r.warmBuilt, 1.05)} |
${beforeRows}| \`git status --porcelain\` on the same tree | ${fmt(r.git)} | | 1x | ${fmt(r.gitCpu)} | 1x | |
| \`node -e 0\` | ${fmt(r.node)} | 0 | | ${fmt(r.nodeCpu)} | | |
| start node and load the CLI (\`dbuild --help\`) | ${fmt(r.help)} | ${fmt(beyond(r.help))} | ${x(beyond(r.help) / r.git)} | ${fmt(r.helpCpu)} | ${x((r.helpCpu - r.nodeCpu) / r.gitCpu)} | |
| floor for Node: readdir + lstatSync every file, nothing else | ${fmt(r.floor)} | ${fmt(beyond(r.floor))} | ${x(beyond(r.floor) / r.git)} | ${fmt(r.floorCpu)} | ${x((r.floorCpu - r.nodeCpu) / r.gitCpu)} | |

| what | wall | ratio (wall) | CPU | ratio (CPU) | goal (wall) |
|---|---|---|---|---|---|
| cold plan (no stat cache: every file hashed), whole process | ${fmt(r.cold)} | ${x(coldRatio)} \`sha256sum\` | ${fmt(r.coldCpu)} | ${x(r.coldCpu / r.shaCpu)} | <= 1.5x: ${ok(coldRatio, 1.5)} |
${coldBeforeRow}| \`find layers -type f -print0 \\| xargs -0 sha256sum\` | ${fmt(r.sha)} | 1x | ${fmt(r.shaCpu)} | 1x | |

Load average (1 min) when the run started: ${loadAtStart}, when it ended: ${load} (on ${os.availableParallelism()} cores; other work shares this machine, so
wall times carry noise; CPU times are user + sys of the measured process and its children).

Inside one process (warm, never built; medians): loading modules ${fmt(inside("imports"))}, the project ${fmt(inside("load"))},
the plan ${fmt(inside("plan"))} (stat cache, walk, keys, store), the JSON ${fmt(inside("render"))}.

What a warm no-op plan does: it loads only what a plan needs (yaml and zod only for a config file the
config cache does not know, fast-glob only for \`inputs:\`, the build, VM and registry code never);
takes demobuild.yaml and layer.yaml values from the config cache by their bytes; lstat's every file once,
reusing each layer's files digest and directory listings from the stat cache; and answers every node
from one listing each of the views, records, objects, sums and test passes (a node the store holds nothing for
costs no system call). A built project also reads each fresh node's record, up to its inputs (records are
written with their inputs last: a fresh node needs only the object they name), and checks each object
once against its publish-time sum (the sum file, and one open of the object for its size, stamps and
backing name).

Why the 2x goal is out of reach here: Node alone, walking the tree and lstat'ing every file and nothing
else (the floor row), already takes ${x(beyond(r.floor) / r.git)} \`git status\` beyond starting node, and starting
the CLI (\`--help\`) ${x(beyond(r.help) / r.git)}. On Node ${process.versions.node} each lstatSync builds a Stats object with four Dates; git
lstat's from C, over several threads (core.preloadIndex). A warm plan adds the stat cache (a parse of
${(statSize / 1048576).toFixed(1)} MiB of JSON), the keys of ${nodes} nodes and the JSON it prints.

Reproduce: \`npm run bench -- plan\` (sizes: PLAN_BENCH_LAYERS, PLAN_BENCH_TARGETS, PLAN_BENCH_FILES,
PLAN_BENCH_ROUNDS; PLAN_BENCH_BEFORE=DIR adds rows for the dbuild of another built checkout).
`;
  fs.mkdirSync(path.join(repo, "docs", "bench"), { recursive: true });
  fs.writeFileSync(path.join(repo, "docs", "bench", "plan.md"), md);
  console.log(md);
} finally {
  if (!process.env.PLAN_BENCH_KEEP) {
    for (const d of [root, built, coldRoot]) fs.rmSync(d, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  }
}
