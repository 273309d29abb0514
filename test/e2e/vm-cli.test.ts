/** `dbuild snap / run / ssh` as a user types them, on the real micro guest. */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dbuild, repoRoot } from "../helpers/cli.js";
import { ensureMicroImage } from "../helpers/micro.js";
import { imageInfo } from "../../src/vm/image.js";
import { alive } from "../helpers/processes.js";

let root: string;
let object: string;
const pids: number[] = [];


beforeAll(async () => {
  const micro = await ensureMicroImage();
  root = await fs.mkdtemp(path.join(os.tmpdir(), "vm-cli-"));
  await fs.writeFile(path.join(root, "demobuild.yaml"), "defaults: {mem: 256, cpus: 1}\ntimeouts: {boot: 90, install: 300, shutdown: 30}\n");
  await fs.mkdir(path.join(root, "keys"));
  await fs.copyFile(micro.key, path.join(root, "keys", "demobuilder"));
  await fs.chmod(path.join(root, "keys", "demobuilder"), 0o600);
  await fs.copyFile(micro.pubkey, path.join(root, "keys", "demobuilder.pub"));
  // What the store leaves: an immutable object and a view symlink to it.
  const objects = path.join(root, "build", ".dbuild", "objects");
  await fs.mkdir(objects, { recursive: true });
  object = path.join(objects, "0123abcd.qcow2");
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", micro.image, object]);
  await fs.symlink(path.join(".dbuild", "objects", "0123abcd.qcow2"), path.join(root, "build", "micro.qcow2"));
});

afterAll(async () => {
  for (const p of pids) if (alive(p)) process.kill(p, "SIGKILL");
  await fs.rm(root, { recursive: true, force: true });
});

describe("throwaway VM commands", () => {
  it("refuse to run an image of the build dir, directly or through a symlink", async () => {
    for (const arg of ["build/micro.qcow2", object]) {
      const r = await dbuild(["run", arg], { cwd: root });
      expect(r.code).toBe(2);
      expect(r.stderr).toContain("other images may be backed by it and would be corrupted; create a snapshot with `dbuild snap`");
    }
    await fs.symlink(object, path.join(root, "sneaky.qcow2"));
    const r = await dbuild(["run", "sneaky.qcow2"], { cwd: root });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("create a snapshot with `dbuild snap`");
  });

  it("snap backs the snapshot by the resolved object, by path or by stack name", async () => {
    for (const [arg, name] of [["build/micro.qcow2", "a.qcow2"], ["micro", "b.qcow2"]] as const) {
      const r = await dbuild(["snap", arg, name], { cwd: root });
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const info = await imageInfo(path.join(root, name));
      expect(info.backingFile).toBe(object);
    }
    const again = await dbuild(["snap", "micro", "a.qcow2"], { cwd: root });
    expect(again.code).toBe(2);
    const unknown = await dbuild(["snap", "nope", "c.qcow2"], { cwd: root });
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("dbuild nope");
  });

  it("run prints shell lines, ssh passes commands and exit codes, kill ends it", async () => {
    await dbuild(["snap", "micro", "vm.qcow2"], { cwd: root });
    const r = await dbuild(["run", "vm.qcow2"], { cwd: root });
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const vars = Object.fromEntries(r.stdout.trim().split("\n").map((l) => l.split("=") as [string, string]));
    expect(Object.keys(vars)).toEqual(["QEMUPID", "IP", "SSH"]);
    const pid = Number(vars.QEMUPID);
    pids.push(pid);
    expect(alive(pid)).toBe(true);
    expect(vars.SSH).toMatch(/^127\.0\.0\.1:\d+$/);
    // the dbuild process has exited: QEMU outlives it
    const s = await dbuild(["ssh", "vm.qcow2", "echo", "hi;", "ls", "-d", "/etc;", "exit", "7"], { cwd: root });
    expect(s.stdout).toBe("hi\n/etc\n");
    expect(s.code).toBe(7);
    // the Demobuilder shim
    const shim = execFileSync(path.join(repoRoot, "utils", "ssh.sh"), ["vm.qcow2", "uname", "-s"], { cwd: root, encoding: "utf8" });
    expect(shim).toBe("Linux\n");
    const twice = await dbuild(["run", "vm.qcow2"], { cwd: root });
    expect(twice.code).toBe(2);
    expect(twice.stderr).toContain(`QEMUPID=${pid}`);
    process.kill(pid, "SIGTERM");
    for (let i = 0; i < 100 && alive(pid); i++) await new Promise((res) => setTimeout(res, 50));
    expect(alive(pid)).toBe(false);
    const gone = await dbuild(["ssh", "vm.qcow2", "true"], { cwd: root });
    expect(gone.code).toBe(2);
    expect(gone.stderr).toContain("no longer running");
  });
});
