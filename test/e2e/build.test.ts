/**
 * The build executor against the real micro guest: a three-level tree, incremental rebuilds,
 * failures, --keep-going and interruption.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { attr, drawnStatuses, drawnSteps, hasClass, openReport, screenshot, text } from "../helpers/browser.js";
import { dbuild, stacksOf, startDbuild } from "../helpers/cli.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";
import { killQemuOf, qemuOf } from "../helpers/processes.js";

let p: VmProject;
const run = (...args: string[]) => dbuild(["--progress", "json", ...args], { cwd: p.root });
const built = async (...args: string[]) => {
  const r = await run(...args);
  return { r, done: stacksOf(r, "node-done").sort() };
};

beforeAll(async () => {
  p = await makeVmProject();
  await p.layer("a", 'echo "layer a on $STACK" > /etc/dbuild-a');
  await p.layer("b", "cat /etc/dbuild-a > /etc/dbuild-b-saw-a\necho b > /etc/dbuild-b");
  await p.layer("c", "echo c > /etc/dbuild-c");
  await p.target("micro:a:b", "NAME=b\n");
  await p.target("micro:a:c");
});

afterAll(async () => {
  killQemuOf(p.root);
  await p.cleanup();
});

describe("dbuild all on a three-level tree", () => {
  it("builds every node once, parents first, and the files of every layer are in the leaf image", async () => {
    const { r, done } = await built("all", "-j", "2");
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(done).toEqual(["micro", "micro:a", "micro:a:b", "micro:a:c"]);
    const order = stacksOf(r, "node-start");
    expect(order.indexOf("micro:a")).toBeLessThan(order.indexOf("micro:a:b"));
    // Published views are links to read-only objects with relative backing files.
    const view = path.join(p.root, "build", "micro:a:b.qcow2");
    const info = JSON.parse(execFileSync("qemu-img", ["info", "--output=json", "-U", view], { encoding: "utf8" })) as Record<string, string>;
    expect(info["backing-filename"]).toMatch(/^\.dbuild\/objects\/[0-9a-f]{64}(\.\d+)?\.qcow2$/);
    execFileSync("qemu-img", ["info", "-U", "--backing-chain", view]);
    expect((await fs.stat(view)).mode & 0o222).toBe(0);
    // Read back what each layer wrote, from the leaf image, in a throwaway VM.
    const snap = path.join(p.root, "leaf.qcow2");
    const s = await dbuild(["snap", "micro:a:b", snap], { cwd: p.root });
    expect(s.code, s.stderr).toBe(0);
    const vm = await dbuild(["run", snap], { cwd: p.root });
    expect(vm.code, vm.stderr).toBe(0);
    const pid = Number(/QEMUPID=(\d+)/.exec(vm.stdout)?.[1]);
    try {
      const out = await dbuild(["ssh", snap, "cat /etc/dbuild-a /etc/dbuild-b-saw-a /etc/dbuild-b; ls /tmp/dbuild-layer 2>&1 || true"], { cwd: p.root });
      expect(out.code, out.stderr).toBe(0);
      expect(out.stdout).toContain("layer a on micro:a\nlayer a on micro:a\nb\n");
      expect(out.stdout).toMatch(/No such file/); // step 5 removed the layer directory
    } finally {
      process.kill(pid, "SIGTERM");
    }
  });

  it("a second run builds nothing and starts no VM", async () => {
    const { r, done } = await built("all");
    expect(r.code).toBe(0);
    expect(done).toEqual([]);
    expect(r.events.find((e) => e.type === "build-start")?.stale).toEqual([]);
  });

  it("editing a leaf layer rebuilds exactly that node; editing a shared parent rebuilds it and its descendants", async () => {
    await p.layer("b", "echo b2 > /etc/dbuild-b");
    expect((await built("all")).done).toEqual(["micro:a:b"]);
    await p.layer("a", 'echo "layer a v2" > /etc/dbuild-a');
    expect((await built("all")).done).toEqual(["micro:a", "micro:a:b", "micro:a:c"]);
  });

  it("edit then revert rebuilds nothing", async () => {
    const file = path.join(p.root, "layers/c/target/install");
    const orig = await fs.readFile(file, "utf8");
    await fs.writeFile(file, orig + "echo extra\n");
    expect((await run("plan", "--json")).stdout).toContain('"stale"');
    await fs.writeFile(file, orig);
    const { r, done } = await built("all");
    expect(r.code).toBe(0);
    expect(done).toEqual([]);
  });

  it("deleting build/X.qcow2 re-links it from the store with no VM; build --force rebuilds in a VM, leaving the old image intact", async () => {
    const childObj = await fs.realpath(path.join(p.root, "build", "micro:a:b.qcow2"));
    const aObj = await fs.realpath(path.join(p.root, "build", "micro:a.qcow2"));
    await fs.rm(path.join(p.root, "build", "micro:a.qcow2"));
    const plan = JSON.parse((await run("plan", "--json")).stdout) as { nodes: Array<{ stack: string; status: string; source?: string; reasons: string[] }> };
    const a = plan.nodes.find((n) => n.stack === "micro:a")!;
    expect([a.status, a.source]).toEqual(["cached", "store"]);
    expect(a.reasons.join(" ")).toMatch(/deleted/);
    const { r, done } = await built("all");
    expect(done).toEqual(["micro:a"]);
    expect(r.events.filter((e) => e.type === "node-done").map((e) => e.type === "node-done" && e.restored)).toEqual([true]);
    expect(stacksOf(r, "node-start")).toEqual(["micro:a"]);
    expect(r.events.some((e) => e.type === "step" && e.step === "boot")).toBe(false);
    expect(await fs.realpath(path.join(p.root, "build", "micro:a.qcow2"))).toBe(aObj);

    const forced = await built("build", "--force", "micro:a:b");
    expect(forced.r.code, forced.r.stdout.slice(-2000)).toBe(0);
    expect(forced.done).toEqual(["micro:a:b"]);
    expect(forced.r.events.some((e) => e.type === "step" && e.stack === "micro:a:b" && e.step === "boot")).toBe(true);
    const newObj = await fs.realpath(path.join(p.root, "build", "micro:a:b.qcow2"));
    expect(newObj).not.toBe(childObj);
    execFileSync("qemu-img", ["check", "-U", childObj]);
    execFileSync("qemu-img", ["check", "-U", newObj]);
    expect((await built("all")).done).toEqual([]);
  });

  it("a failing install exits non-zero, publishes nothing, shows the log tail; --keep-going finishes the other branch", async () => {
    await p.layer("bad", 'echo "about to fail: marker-42"\nexit 3');
    await p.layer("d", "echo d > /etc/dbuild-d");
    const trace = path.join(p.root, "trace.json");
    const r = await dbuild(["build", "micro:bad", "micro:a:d", "--keep-going", "--progress", "plain", "--trace", trace], { cwd: p.root });
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/micro:bad: FAILED in step install \(exit code 3\)/);
    expect(r.stdout).toContain("marker-42");
    expect(r.stdout).toContain(path.join("build", "logs", "micro:bad.log"));
    expect(r.stdout).toMatch(/micro:a:d: done/);
    await expect(fs.lstat(path.join(p.root, "build", "micro:bad.qcow2"))).rejects.toThrow();
    expect(await fs.readdir(path.join(p.root, "build", ".dbuild", "tmp"))).toEqual([]);
    // The report shows the failure and opens on its log; the other branch is fresh.
    const rep = await openReport(path.join(p.root, "build", "report.html"));
    try {
      expect(rep.errors).toEqual([]);
      const statuses = await drawnStatuses(rep.page);
      expect(statuses).toMatchObject({ "micro:bad": "failed", "micro:a:d": "fresh", micro: "fresh", "micro:a": "fresh" });
      expect(await text(rep.page, "#banner")).toMatch(/FAILED/);
      const failure = await text(rep.page, '#failures .failure[data-stack="micro:bad"]').then((t) => t ?? "");
      expect(failure).toContain("failed in step install (exit code 3)");
      expect(failure).toContain("marker-42");
      expect(await attr(rep.page, "#panel", "data-stack")).toBe("micro:bad");
      expect(await text(rep.page, "#panel pre.log-install")).toContain("about to fail: marker-42");
      expect(await text(rep.page, "#panel pre.log-console")).not.toMatch(/^\(no console/);
      const steps = await drawnSteps(rep.page);
      expect(steps["micro:bad"]).toEqual(["cow", "boot", "rsync", "install"]);
      expect(await hasClass(rep.page, '.row[data-stack="micro:bad"] .seg[data-step="install"]', "bad")).toBe(true);
      console.log(`failed build report screenshot: ${await screenshot(rep.page, "report-failed")}`);
    } finally {
      await rep.close();
    }
    // --trace: the same build for Perfetto / chrome://tracing.
    const t = JSON.parse(await fs.readFile(trace, "utf8")) as { traceEvents: Array<{ name: string; ph: string; cat?: string; args?: Record<string, unknown> }> };
    // (micro and micro:a too when this test runs alone: then this build makes them first)
    expect(t.traceEvents.filter((e) => e.ph === "X" && e.cat === "node").map((e) => e.name)).toEqual(expect.arrayContaining(["micro:a:d", "micro:bad"]));
    expect(t.traceEvents.find((e) => e.cat === "failure")).toMatchObject({ name: "failed in install" });
    expect(t.traceEvents.find((e) => e.cat === "node" && e.name === "micro:a:d")!.args!.vmCpuSeconds).toBeGreaterThan(0);
  });

  it("SIGINT during an install leaves no QEMU process and no partial image; the next run succeeds", async () => {
    await p.layer("slow", 'echo "slow-started"\nsleep 120\necho done > /etc/slow');
    const { child, done } = startDbuild(["build", "micro:slow", "--progress", "json"], { cwd: p.root });
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error("install never started")), 90_000);
      child.stdout!.on("data", (d: Buffer) => {
        if (d.toString().includes("slow-started")) {
          clearTimeout(t);
          resolve();
        }
      });
    });
    expect(qemuOf(p.root).length).toBe(1);
    child.kill("SIGINT");
    const r = await done;
    expect(r.code).toBe(130);
    expect(qemuOf(p.root)).toEqual([]);
    await expect(fs.lstat(path.join(p.root, "build", "micro:slow.qcow2"))).rejects.toThrow();
    expect(await fs.readdir(path.join(p.root, "build", ".dbuild", "tmp"))).toEqual([]);
    await p.layer("slow", "echo done > /etc/slow");
    const again = await built("build", "micro:slow");
    expect(again.r.code).toBe(0);
    expect(again.done).toEqual(["micro:slow"]);
  });
});
