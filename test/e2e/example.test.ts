/**
 * The README's main command: `dbuild all` on the repository's own example project (a copy of it), from
 * an empty build dir, with the real micro base layer built from Debian packages, the example's layer
 * tests included (the web page answers on the host, the tools user survives a reboot). Then a no-op run.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { drawnStatuses, drawnSteps, openReport, screenshot, text } from "../helpers/browser.js";
import { dbuild, repoRoot, stacksOf, type CliResult } from "../helpers/cli.js";
import { killQemuOf } from "../helpers/processes.js";

let root: string;
/** The first (full) build's events: the build the report's timeline shows. */
let first: CliResult | undefined;

beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-example-"));
  for (const entry of ["demobuild.yaml", "layers", "targets", "utils", "schema"]) {
    await fs.cp(path.join(repoRoot, entry), path.join(root, entry), { recursive: true, verbatimSymlinks: true });
  }
});

afterAll(async () => {
  killQemuOf(root);
  await fs.rm(root, { recursive: true, force: true });
});

describe("the example project", () => {
  it("builds every target from scratch with `dbuild all`", async () => {
    const targets = (await fs.readdir(path.join(root, "targets"))).sort();
    expect(targets.length).toBeGreaterThanOrEqual(4);
    const r = await dbuild(["all", "--progress", "json"], { cwd: root });
    expect(r.code, r.stderr + r.stdout.slice(-4000)).toBe(0);
    first = r;
    const done = stacksOf(r, "node-done");
    // Shared prefixes are built once.
    expect(done.filter((s) => s === "micro")).toHaveLength(1);
    expect(done.filter((s) => s === "micro:web")).toHaveLength(1);
    for (const t of targets) {
      expect(done).toContain(t);
      const ev = r.events.find((e) => e.type === "node-done" && e.stack === t)!;
      const deliverable = String(ev.deliverable);
      expect(deliverable).toContain(path.join(root, "build"));
      expect((await fs.stat(deliverable)).size).toBeGreaterThan(1_000_000);
      expect(String(ev.next)).not.toMatch(/\{[A-Z]+\}/); // placeholders filled in
    }
    // The example's layer tests ran on a fresh boot of each new image, before it was published: the web
    // layer answers HTTP on the forwarded port from the host, the tools layer's user survived the reboot.
    const tests = r.events.filter((e) => e.type === "test-done").map((e) => `${String(e.stack)} ${String(e.test)} ${String(e.ok)} ${JSON.stringify(e.tap)}`);
    expect(tests.sort()).toEqual([
      `micro:tools guest/user true ${JSON.stringify({ count: 3, pass: 3, fail: 0, skip: 0, todo: 0 })}`,
      `micro:web host/http true ${JSON.stringify({ count: 2, pass: 2, fail: 0, skip: 0, todo: 0 })}`,
    ]);
    // The project key was created on first use, private.
    expect((await fs.stat(path.join(root, "keys", "demobuilder"))).mode & 0o077).toBe(0);
  }, 1_800_000);

  it("a second `dbuild all` builds nothing", async () => {
    const r = await dbuild(["all", "--progress", "json"], { cwd: root });
    expect(r.code).toBe(0);
    expect(stacksOf(r, "node-start")).toEqual([]);
  });

  it("build/report.html shows every node fresh and every step of the last build (a no-op build keeps it)", async () => {
    expect(first, "needs the first build").toBeDefined();
    const plan = JSON.parse((await dbuild(["plan", "--json"], { cwd: root })).stdout) as { nodes: Array<{ stack: string }> };
    const rep = await openReport(path.join(root, "build", "report.html"));
    try {
      expect(rep.errors).toEqual([]);
      expect(rep.requests).toEqual([]);
      console.log(`example report screenshot: ${await screenshot(rep.page, "report-example")}`);
      expect(await drawnStatuses(rep.page)).toEqual(Object.fromEntries(plan.nodes.map((n) => [n.stack, "fresh"])));
      // Every step the first build ran, per node, in order, is a segment of that node's row.
      const steps = new Map<string, string[]>();
      for (const e of first!.events.filter((x) => x.type === "step-done")) steps.set(String(e.stack), [...(steps.get(String(e.stack)) ?? []), String(e.step)]);
      expect(steps.size).toBe(plan.nodes.length);
      expect(await drawnSteps(rep.page)).toEqual(Object.fromEntries(steps));
      expect([...steps.values()].flat()).toEqual(expect.arrayContaining(["install-host", "cow", "boot", "rsync", "install", "cleanup", "poweroff", "publish", "convert"]));
      const card = (k: string): Promise<string> => text(rep.page, `#summary .card[data-k="${k}"] .v`).then((t) => t ?? "");
      expect(await card("built")).toBe(String(plan.nodes.length));
      expect(await card("cpu")).toMatch(/^\d/); // VM CPU time was measured
      expect(await card("cpu")).not.toBe("0.0 s");
      // A node's log opens on click: the install output and the serial console.
      await rep.page.click('.row[data-stack="micro:web"]');
      expect(await text(rep.page, "#panel pre.log-install")).toMatch(/# install\n/);
      expect(await text(rep.page, "#panel pre.log-console")).not.toMatch(/^\(no console/);
      console.log(`example report with a log open: ${await screenshot(rep.page, "report-example-log")}`);
    } finally {
      await rep.close();
    }
  });

});
