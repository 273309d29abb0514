/** The VM runtime when things go wrong: a guest that never answers, an interrupted dbuild. */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureMicroImage, makeChild } from "../helpers/micro.js";
import { repoRoot } from "../helpers/cli.js";
import { startVm } from "../../src/vm/qemu.js";
import { DbuildError } from "../../src/util/errors.js";
import { pgrep } from "../helpers/processes.js";

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "vm-fail-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));


describe("VM failures", () => {
  it("a guest without an agent times out with the serial console in the error, and QEMU is gone", async () => {
    const micro = await ensureMicroImage({ noAgent: true });
    const disk = await makeChild(micro.image, dir, "noagent.qcow2");
    const runDir = path.join(dir, "noagent-run");
    const serialLog = path.join(dir, "noagent-serial.log");
    const t0 = Date.now();
    const err = await startVm({
      disk,
      mem: 256,
      cpus: 1,
      accelerator: "tcg",
      network: { mode: "user", bridge: "virbr0" },
      keyPath: micro.key,
      serialLog,
      runDir,
      bootTimeoutMs: 15_000,
    }).catch((e: unknown) => e);
    const took = Date.now() - t0;
    expect(err).toBeInstanceOf(DbuildError);
    const p = (err as DbuildError).problems[0]!;
    expect(p.reason).toBe("boot-timeout");
    expect(p.message).toMatch(/within 15 s \(stuck at: guest agent/);
    // the tail of the console is quoted: it contains kernel lines
    expect(p.message).toMatch(/last lines of the serial console/);
    expect(p.message).toMatch(/\[ *\d+\.\d+\]|SYSLINUX|Loading/);
    expect(p.hint).toMatch(/qemu-guest-agent/);
    expect(took).toBeLessThan(25_000);
    expect(pgrep(runDir)).toBe("");
    expect(existsSync(runDir)).toBe(false);
  });

  it("a QEMU that cannot start reports its stderr at once", async () => {
    const err = await startVm({
      disk: path.join(dir, "missing.qcow2"),
      mem: 128,
      cpus: 1,
      accelerator: "tcg",
      network: { mode: "user", bridge: "virbr0" },
      keyPath: "/nonexistent",
      serialLog: path.join(dir, "missing-serial.log"),
      runDir: path.join(dir, "missing-run"),
      bootTimeoutMs: 30_000,
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbuildError);
    expect((err as DbuildError).problems[0]!.reason).toBe("qemu-failed");
    expect((err as DbuildError).message).toMatch(/missing\.qcow2/);
  });

  it("SIGINT to a process booting a VM leaves no QEMU behind", async () => {
    const micro = await ensureMicroImage();
    const disk = await makeChild(micro.image, dir, "sigint.qcow2");
    const marker = `dbuild-sigint-${process.pid}-${Date.now()}`;
    const runDir = path.join(dir, marker);
    const script = path.join(dir, "boot.mjs");
    writeFileSync(
      script,
      `import { startVm } from ${JSON.stringify(path.join(repoRoot, "dist/vm/qemu.js"))};
       await startVm(${JSON.stringify({
         disk,
         mem: 256,
         cpus: 1,
         accelerator: "tcg",
         network: { mode: "user", bridge: "virbr0" },
         keyPath: micro.key,
         serialLog: path.join(dir, "sigint-serial.log"),
         runDir,
         bootTimeoutMs: 120_000,
       })});
       setInterval(() => {}, 1000);`,
    );
    const child = spawn(process.execPath, [script], { stdio: "inherit" });
    try {
      // wait until QEMU (its command line carries the run dir) is up
      for (let i = 0; i < 200 && pgrep(runDir) === ""; i++) await new Promise((r) => setTimeout(r, 50));
      expect(pgrep(runDir)).not.toBe("");
      child.kill("SIGINT");
      const exit = await new Promise<{ signal: string | null }>((r) => child.once("exit", (_c, signal) => r({ signal })));
      expect(exit.signal).toBe("SIGINT");
      for (let i = 0; i < 50 && pgrep(runDir) !== ""; i++) await new Promise((r) => setTimeout(r, 20));
      expect(pgrep(runDir)).toBe("");
      expect(existsSync(runDir)).toBe(false);
    } finally {
      child.kill("SIGKILL");
    }
  });
});
