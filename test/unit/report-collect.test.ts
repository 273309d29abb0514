/**
 * What the HTML report shows, from a real store on a fixture project: statuses (and the one place they
 * are decided), sizes with backing chains, log tails, the build summary and critical path; and the page
 * itself being self-contained.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makePlan } from "../../src/plan/planner.js";
import type { Plan, PlanNode } from "../../src/model/plan.js";
import { loadProject } from "../../src/project/load.js";
import { collectReport, markCriticalPath, reportStatus } from "../../src/report/collect.js";
import { renderReportHtml } from "../../src/report/html.js";
import type { BuildTrace, TimelineRow, TraceNode } from "../../src/report/model.js";
import { Store } from "../../src/store/store.js";
import { demoProject, writeFixture, type Fixture } from "../helpers/fixture.js";

let fx: Fixture;
let store: Store;
let plan: Plan;
const T0 = 2_000_000;

async function publish(n: PlanNode, bytes: number, parentKey: string | null): Promise<void> {
  const tmp = store.tmpPath(n.stack);
  await fs.writeFile(tmp, Buffer.alloc(bytes, 1));
  const object = await store.publishFile(tmp, n.key, "qcow2");
  await store.commit({ key: n.key, stack: n.stack, layer: n.layer, parentKey: parentKey as never, inputs: n.inputs, object, duration: 12.5, builtAt: new Date(T0).toISOString() });
}

const node = (stack: string): PlanNode => plan.nodes.find((n) => n.stack === stack)!;

beforeAll(async () => {
  fx = await writeFixture(demoProject(), "dbuild-report-");
  const project = await loadProject(fx.root);
  store = new Store(project.settings.buildDir);
  await store.init();
  plan = await makePlan(project, "all", store);
  await publish(node("micro"), 64 * 1024, null);
  await publish(node("micro:web"), 128 * 1024, node("micro").key);
  plan = await makePlan(project, "all", new Store(project.settings.buildDir));
  const lines = Array.from({ length: 500 }, (_, i) => `line ${i + 1}`);
  await fs.writeFile(store.logPath("micro:db"), `${lines.join("\n")}\n</script><b>not markup</b>\n`);
  await fs.writeFile(store.logPath("micro:db").replace(/\.log$/, ".console.log"), "\x1b[1mSYSLINUX\x1b[0m\r\nbooting\r\n");
});

afterAll(async () => {
  await fx.cleanup();
});

function trace(nodes: TraceNode[], end?: number): BuildTrace {
  return { version: 1, start: T0, ...(end ? { end, ok: false, interrupted: false } : {}), jobs: 2, stale: nodes.map((n) => n.stack), fresh: ["micro"], nodes, warnings: [] };
}

describe("report status", () => {
  const o = { live: false, planBeforeBuild: false };
  it("maps plan statuses, shows a failure only for the inputs that failed, building only while live", () => {
    const n = { ...node("micro:db") };
    expect(reportStatus(n, undefined, o)).toEqual({ status: "stale" });
    expect(reportStatus({ ...n, status: "cached", source: "store" }, undefined, o)).toEqual({ status: "cached", cachedIn: "store" });
    expect(reportStatus({ ...n, status: "cached", source: "remote", remote: "hit" }, undefined, o)).toEqual({ status: "cached", cachedIn: "remote" });
    // A remote hit that does not fit the parent image stays a build.
    expect(reportStatus({ ...n, remote: "hit" }, undefined, o)).toEqual({ status: "stale" });
    const failed: TraceNode = { stack: n.stack, key: n.key, outcome: "failed", steps: [] };
    expect(reportStatus(n, failed, o).status).toBe("failed");
    expect(reportStatus(n, { ...failed, key: "another" }, o).status).toBe("stale");
    const running: TraceNode = { stack: n.stack, key: n.key, outcome: "building", steps: [] };
    expect(reportStatus(n, running, { ...o, live: true }).status).toBe("building");
    expect(reportStatus(n, running, o).status).toBe("stale");
    // A report written by the build itself: its plan predates the build, so what it built is fresh.
    const built: TraceNode = { stack: n.stack, key: n.key, outcome: "built", steps: [] };
    expect(reportStatus(n, built, { live: false, planBeforeBuild: true }).status).toBe("fresh");
    expect(reportStatus(n, built, o).status).toBe("stale");
  });
});

describe("collectReport", () => {
  it("has every plan node with its status, sizes, durations, failure and log tails", async () => {
    const data = await collectReport({
      root: fx.root,
      plan,
      store,
      live: true,
      now: T0 + 6000,
      trace: trace([
        { stack: "micro:db", key: node("micro:db").key, start: T0 + 100, end: T0 + 3000, outcome: "failed", steps: [{ step: "install", start: T0 + 100, end: T0 + 3000, ok: false }], cpuSeconds: 2, failure: { step: "install", message: "exit 3", exitCode: 3, logTail: ["x"], logPath: "l" } },
        { stack: "micro:web:openstack", key: node("micro:web:openstack").key, start: T0 + 200, outcome: "building", steps: [{ step: "boot", start: T0 + 200 }] },
      ]),
    });
    const by = new Map(data.nodes.map((n) => [n.stack, n]));
    expect(data.nodes.map((n) => n.stack)).toEqual(plan.nodes.map((n) => n.stack));
    expect(Object.fromEntries(data.nodes.map((n) => [n.stack, n.status]))).toEqual({
      micro: "fresh",
      "micro:web": "fresh",
      "micro:db": "failed",
      "micro:web:openstack": "building",
      "micro:web:vagrant": "stale",
      "micro:db:openstack": "stale",
    });
    const micro = by.get("micro")!;
    const web = by.get("micro:web")!;
    expect(web.bytes!.delta).toBeGreaterThanOrEqual(128 * 1024);
    expect(web.bytes!.image).toBe(web.bytes!.delta + micro.bytes!.delta);
    expect(web.lastDuration).toBe(12.5);
    expect(web.reasons).toEqual([]);
    expect(by.get("micro:web:vagrant")!.reasons.join(" ")).toMatch(/no image/);
    const db = by.get("micro:db")!;
    expect(db.failure).toMatchObject({ step: "install", exitCode: 3 });
    expect(db.log!.installPath).toBe("logs/micro:db.log");
    expect(db.log!.truncated).toBe(true);
    const tailLines = db.log!.install!.split("\n");
    expect(tailLines).toHaveLength(300);
    expect(tailLines.at(-1)).toBe("</script><b>not markup</b>");
    expect(db.log!.console).toBe("SYSLINUX\nbooting");
    expect(data.store.objects).toBe(2);
    expect(data.store.bytes).toBe(web.bytes!.image);
    const b = data.build!;
    expect(b.counts).toMatchObject({ failed: 1, building: 1, reused: 1 });
    expect(b.cpuSeconds).toBe(2);
    expect(b.wall).toBe(6);
    // The running node's open step runs until "now".
    expect(b.rows.find((r) => r.stack === "micro:web:openstack")!.steps[0]).toMatchObject({ step: "boot", start: 200, end: 6000 });
  });

  it("marks the critical path: the chain of parents each node waited for, ending with the last to finish", () => {
    const row = (stack: string, start: number, end: number): TimelineRow => ({ stack, outcome: "built", start, end, steps: [{ step: "install", start, end }], critical: false });
    const rows = [row("micro", 0, 1000), row("micro:web", 1200, 5000), row("micro:db", 1100, 3000), row("micro:web:vagrant", 5100, 9000), row("micro:db:openstack", 3100, 4000)];
    markCriticalPath(rows);
    expect(rows.filter((r) => r.critical).map((r) => r.stack)).toEqual(["micro", "micro:web", "micro:web:vagrant"]);
  });
});

describe("the report page", () => {
  it("is one self-contained file: data, d3-hierarchy (with its licence) and the viewer inline, nothing fetched", async () => {
    const data = await collectReport({ root: fx.root, plan, store });
    const html = renderReportHtml(data);
    expect(html).not.toMatch(/<(script|link|img|iframe)\b[^>]*\b(src|href)=/i);
    expect(html).not.toMatch(/@import|url\(/);
    expect(html).toMatch(/Copyright [0-9-]+ Mike Bostock\s+Permission to use, copy, modify/); // d3-hierarchy's ISC licence travels with it
    expect(html).toContain("https://d3js.org/d3-hierarchy/");
    expect(html).toMatch(/d3\s*\.tree\(\)/); // the viewer lays the trees out with it
    // Log text that looks like markup stays data: one </script> only per script element.
    expect(html.match(/<\/script>/g)).toHaveLength(3);
    const json = /<script id="dbuild-data" type="application\/json">(.*?)<\/script>/s.exec(html)![1]!;
    const back = JSON.parse(json) as typeof data;
    expect(back.nodes.find((n) => n.stack === "micro:db")!.log!.install).toContain("</script><b>not markup</b>");
    await fs.writeFile(path.join(fx.root, "report.html"), html);
  });
});
