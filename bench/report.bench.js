// HTML report speed on a synthetic project of 200 layers and 500 targets (~1,700 nodes), with images in
// the store for most nodes, a recorded build of every fresh node (7 steps each, install and console logs)
// and one failure: the time to write build/report.html (the command as a user runs it, and the writing
// alone once the plan is made), and the time headless Chromium takes to draw all of it (graph laid out
// by d3-hierarchy, timeline, summary). Writes docs/bench/report.md.
// Run: npm run bench -- report   (after npm run build; imports ../dist)
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { loadavg, median, writeSection } from "./lib.js";
import { generateProject, populateReportStore } from "./synthetic.js";

const repo = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const LAYERS = Number(process.env.REPORT_BENCH_LAYERS ?? 200);
const TARGETS = Number(process.env.REPORT_BENCH_TARGETS ?? 500);
const ROUNDS = Number(process.env.REPORT_BENCH_ROUNDS ?? 5);
/** CPU ms (user + system) used so far by a process and all its descendants, from /proc. */
function treeCpuMs(pid) {
  const kids = new Map();
  const self = new Map();
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, "latin1");
      const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
      const ppid = Number(f[1]);
      self.set(Number(d), ((Number(f[11]) + Number(f[12])) * 1000) / 100);
      kids.set(ppid, [...(kids.get(ppid) ?? []), Number(d)]);
    } catch {
      // gone meanwhile
    }
  }
  const sum = (p) => (self.get(p) ?? 0) + (kids.get(p) ?? []).reduce((a, k) => a + sum(k), 0);
  return sum(pid);
}
const fmt = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);

// The writing alone: plan once, then collect + render + write, timed in the process.
const WRITER = `
import { loadProject } from ${JSON.stringify(path.join(repo, "dist/project/load.js"))};
import { makePlan } from ${JSON.stringify(path.join(repo, "dist/plan/planner.js"))};
import { Store } from ${JSON.stringify(path.join(repo, "dist/store/store.js"))};
import { collectReport } from ${JSON.stringify(path.join(repo, "dist/report/collect.js"))};
import { lastBuildPath, loadTrace } from ${JSON.stringify(path.join(repo, "dist/report/build-trace.js"))};
import { writeReportFile } from ${JSON.stringify(path.join(repo, "dist/report/writer.js"))};
const root = process.argv[2];
const project = await loadProject(root);
const store = new Store(project.settings.buildDir);
const plan = await makePlan(project, "all", store);
const times = [];
const cpu = [];
for (let i = 0; i < Number(process.argv[3]); i++) {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const s = new Store(project.settings.buildDir); // no record cache carried over from the last round
  const trace = loadTrace(lastBuildPath(s.internalDir));
  const data = await collectReport({ root, plan, store: s, trace });
  await writeReportFile(process.argv[4], data);
  times.push(performance.now() - t0);
  const c = process.cpuUsage(c0);
  cpu.push((c.user + c.system) / 1000);
}
process.stdout.write(JSON.stringify({ times, cpu, nodes: plan.nodes.length }));
`;

function timeProcess(cmd, args) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync("sh", ["-c", '"$0" "$@"; s=$?; times >&2; exit $s', cmd, ...args], { encoding: "utf8", maxBuffer: 1 << 28 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr}`);
  const secs = (t) => {
    const m = /^(\d+)m([\d.]+)s$/.exec(t);
    return m ? (Number(m[1]) * 60 + Number(m[2])) * 1000 : NaN;
  };
  const [u, sy] = (r.stderr.trim().split("\n").at(-1) ?? "").split(/\s+/);
  return { ms, cpu: secs(u) + secs(sy), out: r.stdout };
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-report-bench-"));
try {
  generateProject(root, { layers: LAYERS, targets: TARGETS });
  const made = await populateReportStore(root);
  console.log(`${made.nodes} nodes, ${made.stale.length} stale, ${made.built.length} in the recorded build`);
  const file = path.join(root, "build", "report.html");

  const cmd = [];
  for (let i = 0; i < ROUNDS; i++) cmd.push(timeProcess(process.execPath, [path.join(repo, "bin", "dbuild.js"), "-C", root, "report"]));
  const runner = path.join(os.tmpdir(), `dbuild-report-bench-${process.pid}.mjs`);
  fs.writeFileSync(runner, WRITER);
  const inner = JSON.parse(timeProcess(process.execPath, [runner, root, String(ROUNDS), file]).out);
  fs.rmSync(runner);
  const size = fs.statSync(file).size;

  const browser = await puppeteer.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
  const render = [];
  const firstPaint = [];
  const busy = [];
  const browserCpu = [];
  const script = [];
  let drawn = { nodes: 0, rows: 0, segs: 0 };
  try {
    for (let i = 0; i < ROUNDS; i++) {
      const page = await browser.newPage();
      await page.setViewport({ width: 1400, height: 1000 });
      const cpu0 = treeCpuMs(browser.process().pid);
      await page.goto(`file://${file}`);
      await page.waitForFunction(() => document.documentElement.dataset.rendered === "1", { timeout: 120_000 });
      browserCpu.push(treeCpuMs(browser.process().pid) - cpu0);
      // Main-thread busy time (script, style, layout): what the page cost, whatever else loads the machine.
      const m = await page.metrics();
      busy.push((m.TaskDuration ?? NaN) * 1000);
      script.push((m.ScriptDuration ?? NaN) * 1000);
      const t = await page.evaluate(() => ({
        all: window.dbuildRenderMs,
        paint: performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? NaN,
        nodes: document.querySelectorAll("g.node").length,
        rows: document.querySelectorAll(".row").length,
        segs: document.querySelectorAll(".seg[data-step]").length,
      }));
      render.push(t.all);
      firstPaint.push(t.paint);
      drawn = t;
      await page.close();
    }
  } finally {
    await browser.close();
  }
  if (drawn.nodes !== made.nodes) throw new Error(`the page drew ${drawn.nodes} of ${made.nodes} nodes`);
  const r = {
    cmd: median(cmd.map((x) => x.ms)),
    cmdCpu: median(cmd.map((x) => x.cpu)),
    write: median(inner.times),
    render: median(render),
    paint: median(firstPaint),
    busy: median(busy),
    browserCpu: median(browserCpu),
    script: median(script),
    writeCpu: median(inner.cpu),
  };
  const ok = (x, goal) => (x <= goal ? "met" : "NOT met");
  writeSection(
    "report",
    `## HTML report (\`build/report.html\`, \`dbuild report\`)

Synthetic project: ${LAYERS} layers, ${TARGETS} targets, ${made.nodes} nodes; ${made.nodes - made.stale.length} with an image
in the store, ${made.stale.length} stale; a recorded build of ${made.built.length} nodes (7 timed steps each, an install log
and a console log each) plus one failure. The page is ${(size / 1024 / 1024).toFixed(1)} MiB (data, d3-hierarchy and the viewer inline).
Median of ${ROUNDS} runs.

| what | wall | CPU | goal |
|---|---|---|---|
| writing the report once the plan is made (read records, sizes, log tails; render; write) | ${fmt(r.write)} | ${fmt(r.writeCpu)} | < 1 s: ${ok(r.write, 1000)} |
| \`dbuild report\`, the whole command (node startup, load, plan, write) | ${fmt(r.cmd)} | ${fmt(r.cmdCpu)} | |
| headless Chromium: navigation start to everything drawn (${drawn.nodes} graph nodes laid out by d3-hierarchy, ${drawn.rows} timeline rows, ${drawn.segs} step segments) | ${fmt(r.render)} | ${fmt(r.browserCpu)} all Chromium processes; main thread busy ${fmt(r.busy)} (${fmt(r.script)} script) | < 2 s: ${ok(r.render, 2000)} |
| headless Chromium: first contentful paint (summary, failures, timeline) | ${fmt(r.paint)} | | |

Load average when the run ended: ${loadavg()} (on ${os.availableParallelism()} cores). Wall times grow with the load
(other work shares this machine); CPU times (user + system, from /proc, of the process and its children) much
less: compare those with the goals on a busy machine.

Reproduce: \`npm run bench -- report\` (sizes: REPORT_BENCH_LAYERS, REPORT_BENCH_TARGETS, REPORT_BENCH_ROUNDS; CHROMIUM
names the browser binary, default /usr/bin/chromium).
`,
  );
} finally {
  fs.rmSync(root, { recursive: true, force: true });
}
