/**
 * build/report.html in headless Chromium, without VMs: a large synthetic project (200 layers, ~1,700
 * nodes, a recorded build of every fresh node and one failure, made with dbuild's own store) renders
 * completely, and a project never built shows what a build would do. `dbuild report --trace` writes the
 * recorded build as a Chrome trace. (Reports of real builds: example, build and watch tests.)
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateProject, populateReportStore } from "../../bench/synthetic.js";
import { attr, drawnStatuses, drawnSteps, isHidden, openReport, screenshot, text } from "../helpers/browser.js";
import { dbuild } from "../helpers/cli.js";
import { demoProject, writeFixture } from "../helpers/fixture.js";

let root: string;
let made: Awaited<ReturnType<typeof populateReportStore>>;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-report-large-"));
  generateProject(root, { layers: 200, targets: 500 });
  made = await populateReportStore(root);
}, 600_000);

afterAll(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe("the report of a large project", () => {
  it("shows every node with its status and every step of the recorded build", async () => {
    expect(made.nodes).toBeGreaterThan(1600);
    const r = await dbuild(["report", "--trace", path.join(root, "trace.json")], { cwd: root });
    expect(r.code, r.stderr).toBe(0);
    const file = path.join(root, "build", "report.html");
    expect(r.stdout).toContain(file);
    const rep = await openReport(file);
    try {
      expect(rep.errors).toEqual([]);
      expect(rep.requests).toEqual([]);
      const statuses = drawnStatuses(rep.page);
      const drawn = await statuses;
      expect(Object.keys(drawn)).toHaveLength(made.nodes);
      const stale = new Set(made.stale);
      for (const [stack, status] of Object.entries(drawn)) {
        expect(status, stack).toBe(stack === made.failed ? "failed" : stale.has(stack) ? "stale" : "fresh");
      }
      const steps = await drawnSteps(rep.page);
      expect(Object.keys(steps)).toHaveLength(made.trace.nodes.length);
      for (const n of made.trace.nodes) expect(steps[n.stack], n.stack).toEqual(n.steps.map((s) => s.step));
      // The failure is on top, with its log.
      const failure = await text(rep.page, `#failures .failure[data-stack="${made.failed!}"]`).then((t) => t ?? "");
      expect(failure).toContain("failed in step install (exit code 3)");
      expect(failure).toContain("synthetic-marker");
      console.log(`large report screenshot: ${await screenshot(rep.page, "report-large")}`);
    } finally {
      await rep.close();
    }
    const trace = JSON.parse(await fs.readFile(path.join(root, "trace.json"), "utf8")) as { traceEvents: Array<{ ph: string; cat?: string }> };
    expect(trace.traceEvents.filter((e) => e.ph === "X" && e.cat === "node")).toHaveLength(made.trace.nodes.length);
  });
});

describe("the report of a project never built", () => {
  it("shows the graph of what a build would do and says no build is recorded; --trace has nothing to write", async () => {
    const fx = await writeFixture(demoProject(), "dbuild-report-new-");
    try {
      const r = await dbuild(["report"], { cwd: fx.root });
      expect(r.code, r.stderr).toBe(0);
      const rep = await openReport(path.join(fx.root, "build", "report.html"));
      try {
        expect(rep.errors).toEqual([]);
        const drawn = await drawnStatuses(rep.page);
        expect(drawn).toEqual({
          micro: "stale",
          "micro:web": "stale",
          "micro:db": "stale",
          "micro:web:openstack": "stale",
          "micro:web:vagrant": "stale",
          "micro:db:openstack": "stale",
        });
        expect(await text(rep.page, "#banner")).toMatch(/No build recorded yet/);
        expect(await isHidden(rep.page, "#timeline-empty")).toBe(false);
        // A click opens the node's details: why it is stale, no log yet.
        await rep.page.click('g.node[data-stack="micro:web"]');
        expect(await attr(rep.page, "#panel", "data-stack")).toBe("micro:web");
        expect(await text(rep.page, "#panel-body")).toMatch(/no image yet/);
      } finally {
        await rep.close();
      }
      const t = await dbuild(["report", "--trace", "t.json"], { cwd: fx.root });
      expect(t.code).toBe(1);
      expect(t.stderr).toMatch(/no build has been recorded .*\n.*hint: run a build/);
    } finally {
      await fx.cleanup();
    }
  });
});
