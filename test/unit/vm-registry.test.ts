import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { accelArgs, kvmUsable } from "../../src/vm/accel.js";
import { randomMac } from "../../src/vm/ports.js";
import { pgrep } from "../helpers/processes.js";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
let dir: string;
let child: ChildProcess | undefined;
afterEach(() => {
  child?.kill("SIGKILL");
  child = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
});


// Runs the compiled registry (dist/, built by `npm test`), as the real CLI does.
describe("VM cleanup registry", () => {
  it.each(["SIGINT", "SIGTERM"] as const)("on %s, registered processes are killed and run dirs removed", async (sig) => {
    dir = mkdtempSync(path.join(os.tmpdir(), "vm-registry-"));
    const marker = `dbuild-registry-test-${process.pid}-${sig}-${Date.now()}`;
    const runDir = path.join(dir, "run");
    // A stand-in for QEMU: a long sleep whose command line carries the marker.
    const script = `
      import { spawn } from "node:child_process";
      import { mkdirSync } from "node:fs";
      import { registerVm, installVmCleanupHandlers } from ${JSON.stringify(path.join(repo, "dist/vm/registry.js"))};
      mkdirSync(${JSON.stringify(runDir)});
      const c = spawn("bash", ["-c", "exec -a ${marker} sleep 300"], { stdio: "ignore" });
      registerVm(c.pid, [${JSON.stringify(runDir)}]);
      installVmCleanupHandlers();
      process.stdout.write("ready\\n");
      setInterval(() => {}, 1000);
    `;
    const file = path.join(dir, "child.mjs");
    writeFileSync(file, script);
    child = spawn(process.execPath, [file], { stdio: ["ignore", "pipe", "inherit"] });
    const c = child;
    await new Promise<void>((resolve, reject) => {
      c.stdout!.on("data", (d: Buffer) => d.toString().includes("ready") && resolve());
      c.once("exit", (code) => reject(new Error(`child exited early: ${code}`)));
    });
    for (let i = 0; i < 50 && pgrep(marker) === ""; i++) await new Promise((r) => setTimeout(r, 20)); // bash exec in progress
    expect(pgrep(marker)).not.toBe("");
    expect(existsSync(runDir)).toBe(true);
    c.kill(sig);
    const exit = await new Promise<{ code: number | null; signal: string | null }>((r) => c.once("exit", (code, signal) => r({ code, signal })));
    // default signal semantics preserved: the process dies by the signal
    expect(exit.signal).toBe(sig);
    // SIGKILL was sent before the child died; the kernel tears the process down asynchronously.
    for (let i = 0; i < 50 && pgrep(marker) !== ""; i++) await new Promise((r) => setTimeout(r, 20));
    expect(pgrep(marker)).toBe("");
    expect(existsSync(runDir)).toBe(false);
  });
});

describe("accelerator", () => {
  it("TCG uses multi-threaded TCG and -cpu max", () => {
    expect(accelArgs("tcg")).toEqual(["-accel", "tcg,thread=multi", "-cpu", "max"]);
  });

  it("honours a cached probe result for this host boot", async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), "vm-accel-"));
    const file = path.join(dir, "accel.json");
    const bootId = execFileSync("cat", ["/proc/sys/kernel/random/boot_id"], { encoding: "utf8" }).trim();
    writeFileSync(file, JSON.stringify({ kvm: true, detail: "cached", bootId, probedAt: "x" }));
    expect(await kvmUsable({ cacheFile: file })).toEqual({ kvm: true, detail: "cached" });
  });

  it("MACs are random in 52:54:00", () => {
    const a = randomMac();
    expect(a).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(new Set(Array.from({ length: 20 }, randomMac)).size).toBeGreaterThan(15);
  });
});
