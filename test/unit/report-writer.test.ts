/**
 * How a build reaches build/report.html and build/.dbuild/last-build.json: step events with exact
 * durations (StepTimer), the writer that follows a build (a first page when it starts, the final one
 * after the pushes behind it), and the VM CPU time read from /proc.
 */
import * as fs from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { StepTimer } from "../../src/exec/step-timer.js";
import type { Plan } from "../../src/model/plan.js";
import { makePlan } from "../../src/plan/planner.js";
import { loadProject } from "../../src/project/load.js";
import { lastBuildPath, loadTrace } from "../../src/report/build-trace.js";
import type { BuildEvent } from "../../src/report/events.js";
import type { ReportData } from "../../src/report/model.js";
import { reportPath, ReportWriter } from "../../src/report/writer.js";
import { Store } from "../../src/store/store.js";
import { procCpuSeconds } from "../../src/vm/qemu.js";
import { demoProject, writeFixture, type Fixture } from "../helpers/fixture.js";

describe("step timer", () => {
  it("emits step when a step begins, step-done when the next begins or the node ends; progress is no new step", () => {
    const out: BuildEvent[] = [];
    const t = new StepTimer("micro:web", (e) => out.push(e));
    t.begin("cow");
    t.begin("boot");
    t.begin("boot", "resumed");
    t.end(false);
    t.end(true); // nothing open: nothing emitted
    expect(out.map((e) => [e.type, "step" in e ? e.step : undefined])).toEqual([
      ["step", "cow"],
      ["step-done", "cow"],
      ["step", "boot"],
      ["step", "boot"],
      ["step-done", "boot"],
    ]);
    const done = out.filter((e) => e.type === "step-done");
    expect(done.map((e) => e.ok)).toEqual([true, false]);
    for (const e of done) expect(e.duration).toBeGreaterThanOrEqual(0);
    expect(out[3]).toMatchObject({ detail: "resumed" });
  });
});

let fx: Fixture;
let store: Store;
let plan: Plan;

beforeAll(async () => {
  fx = await writeFixture(demoProject(), "dbuild-report-writer-");
  const project = await loadProject(fx.root);
  store = new Store(project.settings.buildDir);
  await store.init();
  plan = await makePlan(project, "all", store);
});

afterAll(async () => {
  await fx.cleanup();
});

async function pageData(file: string): Promise<ReportData> {
  const html = await fs.readFile(file, "utf8");
  return JSON.parse(/<script id="dbuild-data" type="application\/json">(.*?)<\/script>/s.exec(html)![1]!) as ReportData;
}

describe("report writer", () => {
  it("writes the page as the build starts and at the end, and records the build with the pushes behind it", async () => {
    const errors: string[] = [];
    const w = new ReportWriter({ root: fx.root, store, onError: (m) => errors.push(m), intervalMs: 60_000 });
    w.setPlan(plan);
    const t0 = Date.now();
    const emit = (e: BuildEvent): void => w.event(e);
    emit({ type: "build-start", time: t0, stale: ["micro"], fresh: [], jobs: 1 });
    emit({ type: "node-start", time: t0, stack: "micro", layer: "micro", kind: "base", key: plan.nodes[0]!.key });
    const steps = new StepTimer("micro", emit);
    steps.begin("install-host");
    // The first page is written at once (a build with work to do): it shows the build running.
    for (let i = 0; i < 100 && !(await fs.stat(reportPath(store.buildDir)).catch(() => undefined)); i++) await new Promise((r) => setTimeout(r, 20));
    await w.settled();
    const live = await pageData(reportPath(store.buildDir));
    expect(live.live).toBe(true);
    expect(live.nodes.find((n) => n.stack === "micro")!.status).toBe("building");
    steps.begin("publish");
    steps.end(true);
    emit({ type: "node-done", time: Date.now(), stack: "micro", duration: 0.1, image: "build/micro.qcow2" });
    emit({ type: "build-done", time: Date.now(), ok: true, built: ["micro"], failed: [], skipped: [], duration: 0.1, interrupted: false });
    // A push finishing after build-done (they run behind the build) still makes the record.
    emit({ type: "step", time: Date.now(), stack: "micro", step: "push", detail: "to oci://127.0.0.1:1/c" });
    emit({ type: "step-done", time: Date.now(), stack: "micro", step: "push", duration: 0, ok: true, detail: "pushed 1.0 MiB" });
    await w.finish();
    expect(errors).toEqual([]);
    const saved = loadTrace(lastBuildPath(store.internalDir))!;
    expect(saved.nodes.map((n) => [n.stack, n.outcome, n.steps.map((s) => s.step)])).toEqual([["micro", "built", ["install-host", "publish", "push"]]]);
    const final = await pageData(reportPath(store.buildDir));
    expect(final.live).toBe(false);
    expect(final.build!.rows.map((r) => r.steps.map((s) => s.step))).toEqual([["install-host", "publish", "push"]]);
    expect(final.nodes.find((n) => n.stack === "micro")).toMatchObject({ status: "fresh", outcome: "built" });
    expect(final.build!.counts.built).toBe(1);

    // A build with nothing to do keeps that build as the last one, and its page still shows it.
    const idle = new ReportWriter({ root: fx.root, store, onError: (m) => errors.push(m) });
    idle.setPlan(plan);
    idle.event({ type: "build-start", time: Date.now(), stale: [], fresh: ["micro"], jobs: 1 });
    idle.event({ type: "build-done", time: Date.now(), ok: true, built: [], failed: [], skipped: [], duration: 0, interrupted: false });
    await idle.finish();
    expect(errors).toEqual([]);
    expect(loadTrace(lastBuildPath(store.internalDir))!.start).toBe(saved.start);
    expect((await pageData(reportPath(store.buildDir))).build!.start).toBe(saved.start);
  });

  it("says so when the page cannot be written, without throwing", async () => {
    const errors: string[] = [];
    const w = new ReportWriter({ root: fx.root, store, file: `${fx.root}/no/such/dir/\0/report.html`, onError: (m) => errors.push(m) });
    w.setPlan(plan);
    await w.finish();
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(/could not write/);
  });
});

describe("VM CPU time", () => {
  it("reads a process's user + system time from /proc; a process that is gone has none", () => {
    // Burn some CPU so the kernel's tick counters move.
    const until = Date.now() + 300;
    let x = 0;
    while (Date.now() < until) x += Math.sqrt(x + 1);
    expect(x).toBeGreaterThan(0);
    const used = process.cpuUsage();
    const ours = procCpuSeconds(process.pid)!;
    expect(ours).toBeGreaterThan(0.2);
    // Ticks of 10 ms against microseconds: the same figure, give or take a few ticks.
    expect(Math.abs(ours - (used.user + used.system) / 1e6)).toBeLessThan(0.2);
    expect(procCpuSeconds(2 ** 22 + 1)).toBeUndefined();
  });
});
