/**
 * The README's main command: `dbuild all` on the repository's own example project (a copy of it), from
 * an empty build dir, with the real micro base layer built from Debian packages. Then a no-op run, and
 * the web layer's page served by the built image.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dbuild, repoRoot, stacksOf } from "../helpers/cli.js";
import { killQemuOf } from "../helpers/processes.js";

let root: string;

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
    // The project key was created on first use, private.
    expect((await fs.stat(path.join(root, "keys", "demobuilder"))).mode & 0o077).toBe(0);
  }, 1_800_000);

  it("a second `dbuild all` builds nothing", async () => {
    const r = await dbuild(["all", "--progress", "json"], { cwd: root });
    expect(r.code).toBe(0);
    expect(stacksOf(r, "node-start")).toEqual([]);
  });

  it("the web layer's image serves its page at boot", async () => {
    const snap = path.join(root, "web.qcow2");
    expect((await dbuild(["snap", "micro:web", snap], { cwd: root })).code).toBe(0);
    const vm = await dbuild(["run", snap], { cwd: root });
    expect(vm.code, vm.stderr).toBe(0);
    const pid = Number(/QEMUPID=(\d+)/.exec(vm.stdout)?.[1]);
    try {
      const r = await dbuild(["ssh", snap, "wget -qO- http://127.0.0.1/ && cat /srv/www/stack.txt"], { cwd: root });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toContain("Hello from a dbuild layer");
      expect(r.stdout).toContain("built by dbuild for micro:web");
    } finally {
      process.kill(pid, "SIGTERM");
    }
  });
});
