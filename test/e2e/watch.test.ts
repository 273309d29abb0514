/**
 * `dbuild watch` against the real micro guest: one rebuild per edit, cancellation of a build whose
 * inputs change under it, nothing for a touch or an edit elsewhere, a clean Ctrl-C, and --shell.
 * One watch process serves the first tests (as a user's session would), to keep VM boots few.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { reportData } from "../helpers/browser.js";
import { dbuild } from "../helpers/cli.js";
import { WatchProc } from "../helpers/watch.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";
import { killQemuOf, qemuOf } from "../helpers/processes.js";

let p: VmProject;


const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  p = await makeVmProject("dbuild-e2e-watch-");
  await p.layer("a", "echo a > /etc/dbuild-a");
  await p.layer("b", "echo b1 > /etc/dbuild-b");
  await p.layer("c", "echo c > /etc/dbuild-c");
  await p.target("micro:a:b");
  await p.target("micro:a:c");
  // Everything built once up front, so the watch cycles below only rebuild what an edit touches.
  const r = await dbuild(["--progress", "json", "all"], { cwd: p.root });
  expect(r.code, r.stderr + r.stdout.slice(-2000)).toBe(0);
});

afterAll(async () => {
  killQemuOf(p.root);
  await p.cleanup();
});

describe("dbuild watch layers/b", () => {
  let w: WatchProc;
  let at = 0;

  beforeAll(async () => {
    w = new WatchProc(["layers/b"], { cwd: p.root });
    // Initial cycle: everything is fresh, nothing to build.
    await w.waitFor((e) => e.type === "watch-start", 0, 30_000, "watch-start");
    at = await w.cycleEnd(0);
    expect(w.events[at - 1]).toMatchObject({ type: "watch-cycle-done", outcome: "up-to-date", built: [] });
  });

  afterAll(async () => {
    if (w.child.exitCode === null) w.child.kill("SIGKILL");
    await w.done;
  });

  it("an edit rebuilds exactly the node of that layer, once", async () => {
    await p.write("layers/b/target/install", "#!/bin/sh\nset -e\necho b2 > /etc/dbuild-b\n", 0o755);
    const end = await w.cycleEnd(at);
    const done = w.events[end - 1]!;
    expect(done, JSON.stringify(w.events.slice(at))).toMatchObject({ type: "watch-cycle-done", outcome: "done", built: ["micro:a:b"] });
    expect(w.since(at, "watch-cycle")).toEqual([expect.objectContaining({ changed: ["layers/b/target/install"], stacks: ["micro:a:b"], rebuilding: ["micro:a:b"] })]);
    expect(w.since(at, "node-start").map((e) => e.stack)).toEqual(["micro:a:b"]);
    // build/report.html is rewritten after the cycle: its last build is this one.
    const cycleAt = Number(w.since(at, "watch-cycle")[0]!.time);
    const report = path.join(p.root, "build", "report.html");
    let data: Awaited<ReturnType<typeof reportData>> | undefined;
    for (const deadline = Date.now() + 30_000; Date.now() < deadline; await sleep(200)) {
      data = await reportData(report).catch(() => undefined);
      if (data && data.generatedAt >= Number(done.time) && (data.build?.start ?? 0) >= cycleAt) break;
    }
    expect(data?.build?.rows.map((r) => r.stack)).toEqual(["micro:a:b"]);
    expect(data!.nodes.find((n) => n.stack === "micro:a:b")).toMatchObject({ status: "fresh", outcome: "built" });
    expect(data!.live).toBe(false);
    // Quiet afterwards: no second cycle for the same save.
    await sleep(1500);
    expect(w.since(end, "watch-cycle")).toEqual([]);
    at = w.events.length;
  });

  it("a touch and a save without change build nothing", async () => {
    const f = path.join(p.root, "layers/b/target/install");
    const now = new Date();
    await fs.utimes(f, now, now);
    const end = await w.cycleEnd(at, 15_000);
    expect(w.events[end - 1]).toMatchObject({ type: "watch-unchanged", changed: ["layers/b/target/install"] });
    await fs.writeFile(f, await fs.readFile(f)); // same bytes
    const end2 = await w.cycleEnd(end, 15_000);
    expect(w.events[end2 - 1]!.type).toBe("watch-unchanged");
    await sleep(1000);
    expect(w.since(at, "build-start")).toEqual([]);
    expect(w.since(at, "watch-cycle")).toEqual([]);
    at = w.events.length;
  });

  it("an edit to another layer, to the build dir or an editor's swap file is not even seen", async () => {
    await p.write("layers/c/target/install", "#!/bin/sh\necho c2 > /etc/dbuild-c\n", 0o755);
    await p.write("build/stray-file", "x");
    const swap = path.join(p.root, "layers/b/target/.install.swp");
    await fs.writeFile(swap, "swap");
    await sleep(1500);
    expect(w.events.slice(at)).toEqual([]);
    // The planner fingerprints every file of the layer, swap files included: gone before the next edit.
    await fs.rm(swap);
    await sleep(500);
    expect(w.events.slice(at)).toEqual([]);
  });

  it("an edit during a build cancels it (no image published) and builds the new content once", async () => {
    await p.write("layers/b/target/install", "#!/bin/sh\nset -e\necho started-slow\nsleep 60\necho b3 > /etc/dbuild-b\n", 0o755);
    const viewBefore = await fs.readlink(path.join(p.root, "build", "micro:a:b.qcow2"));
    // Wait until the slow install is really running in the VM.
    await w.waitFor((e) => e.type === "output" && e.line === "started-slow", at, 90_000, "slow install running");
    await p.write("layers/b/target/install", "#!/bin/sh\nset -e\necho b4 > /etc/dbuild-b\n", 0o755);
    const end1 = await w.cycleEnd(at);
    expect(w.events[end1 - 1]).toMatchObject({ type: "watch-cycle-done", outcome: "cancelled" });
    expect(await fs.readlink(path.join(p.root, "build", "micro:a:b.qcow2"))).toBe(viewBefore);
    const end2 = await w.cycleEnd(end1);
    expect(w.events[end2 - 1]).toMatchObject({ type: "watch-cycle-done", outcome: "done", built: ["micro:a:b"] });
    expect(w.since(at, "watch-cycle")).toHaveLength(2);
    expect(w.since(at, "node-done").map((e) => e.stack)).toEqual(["micro:a:b"]);
    // The cancelled VM is gone: only (at most) nothing of ours is left running.
    expect(qemuOf(p.root)).toEqual([]);
    at = end2;
  });

  it("a failing install is summarised and watching goes on", async () => {
    await p.write("layers/b/target/install", "#!/bin/sh\necho about-to-fail\nexit 7\n", 0o755);
    const end = await w.cycleEnd(at);
    expect(w.events[end - 1]).toMatchObject({ type: "watch-cycle-done", outcome: "failed", failed: ["micro:a:b"] });
    expect(w.since(at, "node-failed")[0]).toMatchObject({ stack: "micro:a:b", step: "install", exitCode: 7 });
    await p.write("layers/b/target/install", "#!/bin/sh\necho b5 > /etc/dbuild-b\n", 0o755);
    const end2 = await w.cycleEnd(end);
    expect(w.events[end2 - 1]).toMatchObject({ type: "watch-cycle-done", outcome: "done", built: ["micro:a:b"] });
    at = end2;
  });

  it("SIGINT during a build: exit 130, no QEMU left, nothing published", async () => {
    await p.write("layers/b/target/install", "#!/bin/sh\nset -e\necho started-slow\nsleep 60\n", 0o755);
    const viewBefore = await fs.readlink(path.join(p.root, "build", "micro:a:b.qcow2"));
    await w.waitFor((e) => e.type === "output" && e.line === "started-slow", at, 90_000, "slow install running");
    w.child.kill("SIGINT");
    const r = await w.done;
    expect(r.code, r.stderr).toBe(130);
    expect(w.events.at(-1)).toMatchObject({ type: "watch-stop" });
    expect(qemuOf(p.root)).toEqual([]);
    expect(await fs.readlink(path.join(p.root, "build", "micro:a:b.qcow2"))).toBe(viewBefore);
    expect(await fs.readdir(path.join(p.root, "build", ".dbuild", "tmp"))).toEqual([]);
    // The lock was released: a build can run at once.
    await p.write("layers/b/target/install", "#!/bin/sh\necho b6 > /etc/dbuild-b\n", 0o755);
  });
});

describe("dbuild watch --shell", () => {
  const handoffDirs = async (): Promise<string[]> => (await fs.readdir(os.tmpdir())).filter((n) => n.startsWith("dbuild-handoff-"));

  it("after a rebuild the shell is the build VM resumed, with the new content; the published image boots on its own; Ctrl-C stops it", async () => {
    const before = await handoffDirs();
    const w = new WatchProc(["layers/b", "--shell"], { cwd: p.root });
    try {
      // The previous describe left layers/b edited and unbuilt: the initial cycle builds it, then opens a shell.
      const i = await w.waitFor((e) => e.type === "watch-shell", 0, 120_000, "shell");
      const sh = w.events[i]!;
      // Resumed from the build VM kept just before its poweroff (exec/handoff.ts), not booted.
      expect(sh).toMatchObject({ stack: "micro:a:b", from: "build VM" });
      expect(w.since(0, "node-done").map((e) => e.stack)).toEqual(["micro:a:b"]);
      const out = await dbuild(["ssh", String(sh.disk), "cat /etc/dbuild-b; ls /tmp/dbuild-layer 2>&1 || true"], { cwd: p.root });
      expect(out.code, out.stderr).toBe(0);
      // The layer's content, and the clean-up (step 5) already done.
      expect(out.stdout).toMatch(/^b6\n.*No such file/s);
      // The snapshot is not in the build dir.
      expect(path.relative(path.join(p.root, "build"), String(sh.disk)).startsWith("..")).toBe(true);

      // A second edit: the old shell goes, the new one is again the build VM, with the new content.
      await p.write("layers/b/target/install", "#!/bin/sh\necho b7 > /etc/dbuild-b\n", 0o755);
      const j = await w.waitFor((e) => e.type === "watch-shell", i + 1, 120_000, "second shell");
      expect(w.events.slice(i, j).some((e) => e.type === "watch-shell-stopped")).toBe(true);
      expect(w.events[j]).toMatchObject({ stack: "micro:a:b", from: "build VM" });
      const out2 = await dbuild(["ssh", String(w.events[j]!.disk), "cat /etc/dbuild-b"], { cwd: p.root });
      expect(out2.stdout.trim()).toBe("b7");

      w.child.kill("SIGINT");
      const r = await w.done;
      expect(r.code).toBe(130);
      expect(qemuOf(p.root)).toEqual([]);
      for (const e of [sh, w.events[j]!]) {
        expect(qemuOf(String(e.disk))).toEqual([]);
        await expect(fs.stat(String(e.disk))).rejects.toThrow();
      }
      // Every kept build VM went with its shell.
      expect(await handoffDirs()).toEqual(before);
    } finally {
      if (w.child.exitCode === null) w.child.kill("SIGKILL");
      await w.done;
    }

    // What was published is the one delta over the parent a plain build makes, and boots on its own.
    const view = path.join(p.root, "build", "micro:a:b.qcow2");
    const info = JSON.parse(execFileSync("qemu-img", ["info", "--output=json", "-U", view], { encoding: "utf8" })) as Record<string, string>;
    const parentObject = await fs.realpath(path.join(p.root, "build", "micro:a.qcow2"));
    expect(path.resolve(path.dirname(view), info["backing-filename"]!)).toBe(parentObject);
    execFileSync("qemu-img", ["check", "-U", view]);
    const snap = path.join(p.root, "after-watch.qcow2");
    expect((await dbuild(["snap", "micro:a:b", snap], { cwd: p.root })).code).toBe(0);
    const vm = await dbuild(["run", snap], { cwd: p.root });
    expect(vm.code, vm.stderr).toBe(0);
    try {
      const out = await dbuild(["ssh", snap, "cat /etc/dbuild-a /etc/dbuild-b"], { cwd: p.root });
      expect(out.stdout).toBe("a\nb7\n");
    } finally {
      killQemuOf(snap);
    }
  });
});
