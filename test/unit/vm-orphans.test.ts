// QEMU never outlives dbuild: the kernel kills it when its parent dies (setpriv --pdeathsig), and the next
// run reaps leftovers by pidfile, only after checking that the pid really is that QEMU.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { isQemuWithPidfile, reapOrphanVms } from "../../src/vm/orphans.js";
import { alive, pgrep } from "../helpers/processes.js";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
let dir = "";
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill("SIGKILL");
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function until(cond: () => boolean, ms = 5000): Promise<boolean> {
  for (let t = 0; t < ms && !cond(); t += 20) await sleep(20);
  return cond();
}

describe("orphan QEMU processes", () => {
  it("a process spawned through withParentDeathSignal dies with its parent, even by SIGKILL", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "vm-orphans-"));
    const marker = `dbuild-pdeathsig-test-${process.pid}-${Date.now()}`;
    // Runs the compiled module (dist/, built by `npm test`), as the real CLI does.
    const script = `
      import { spawn } from "node:child_process";
      import { withParentDeathSignal } from ${JSON.stringify(path.join(repo, "dist/util/parent-death.js"))};
      const [f, a] = withParentDeathSignal("bash", ["-c", "exec -a ${marker} sleep 300"]);
      spawn(f, a, { stdio: "ignore" });
      process.stdout.write("ready\\n");
      setInterval(() => {}, 1000);
    `;
    writeFileSync(path.join(dir, "parent.mjs"), script);
    const parent = spawn(process.execPath, [path.join(dir, "parent.mjs")], { stdio: ["ignore", "pipe", "inherit"] });
    children.push(parent);
    await new Promise<void>((resolve) => parent.stdout.on("data", (d: Buffer) => d.toString().includes("ready") && resolve()));
    expect(await until(() => pgrep(marker) !== "")).toBe(true);
    parent.kill("SIGKILL"); // no exit handler can run: only the kernel can clean up
    expect(await until(() => pgrep(marker) === "")).toBe(true);
  });

  it("reaps a QEMU left by its pidfile, and never a process whose command line does not match", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "vm-orphans-"));
    const qemuPid = path.join(dir, "a.pid");
    // A stand-in whose command line looks like QEMU started with -pidfile (argv[0] via exec -a).
    const fake = spawn("bash", ["-c", `exec -a qemu-system-x86_64 ${process.execPath} -e "setInterval(()=>{},1000)" -- -pidfile ${qemuPid}`], { stdio: "ignore" });
    children.push(fake);
    expect(await until(() => isQemuWithPidfile(fake.pid!, qemuPid))).toBe(true);
    writeFileSync(qemuPid, `${fake.pid}\n`);
    // A recycled pid: a live process that is not that QEMU.
    const other = spawn("sleep", ["300"], { stdio: "ignore" });
    children.push(other);
    writeFileSync(path.join(dir, "b.pid"), `${other.pid}\n`);
    expect(isQemuWithPidfile(other.pid!, path.join(dir, "b.pid"))).toBe(false);
    // A pidfile naming a pid that no longer exists, and one with garbage.
    writeFileSync(path.join(dir, "c.pid"), "999999999\n");
    writeFileSync(path.join(dir, "d.pid"), "not a pid\n");
    // The right QEMU but another pidfile: not ours to kill.
    expect(isQemuWithPidfile(fake.pid!, path.join(dir, "b.pid"))).toBe(false);

    expect(await reapOrphanVms(dir)).toEqual([fake.pid]);
    expect(await until(() => !alive(fake.pid!) || fake.exitCode !== null || fake.signalCode !== null)).toBe(true);
    expect(fake.signalCode ?? "SIGKILL").toBe("SIGKILL");
    expect(alive(other.pid!)).toBe(true);
    expect(readdirSync(dir)).toEqual([]);
    expect(existsSync(qemuPid)).toBe(false);
    expect(await reapOrphanVms(path.join(dir, "missing"))).toEqual([]);
  });
});
