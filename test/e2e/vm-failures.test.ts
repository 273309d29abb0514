/** The VM runtime when things go wrong: a guest that never answers, an interrupted dbuild. */
import { execFileSync, spawn } from "node:child_process";
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
  it("a guest without an agent is ready once SSH logs in (user networking needs no agent)", async () => {
    const micro = await ensureMicroImage({ noAgent: true });
    const disk = await makeChild(micro.image, dir, "noagent.qcow2");
    const runDir = path.join(dir, "noagent-run");
    const vm = await startVm({
      disk,
      mem: 256,
      cpus: 1,
      accelerator: "tcg",
      network: { mode: "user", bridge: "virbr0" },
      keyPath: micro.key,
      serialLog: path.join(dir, "noagent-serial.log"),
      runDir,
      bootTimeoutMs: 120_000,
    });
    try {
      expect(vm.timings.agent).toBeUndefined();
      // the address comes from the guest over SSH when there is no agent to ask
      expect(vm.ip).toMatch(/^10\.0\.2\.\d+$/);
      let out = "";
      const r = await vm.exec("id -u", { onStdout: (d) => (out += d.toString()) });
      expect(r.code).toBe(0);
      expect(out.trim()).toBe("0");
    } finally {
      await vm.shutdown({ timeoutMs: 30_000 });
    }
    expect(pgrep(runDir)).toBe("");
  });

  it("a guest that never accepts the key times out with the serial console in the error, and QEMU is gone", async () => {
    const micro = await ensureMicroImage({ noAgent: true });
    const disk = await makeChild(micro.image, dir, "wrongkey.qcow2");
    const runDir = path.join(dir, "wrongkey-run");
    const serialLog = path.join(dir, "wrongkey-serial.log");
    const wrongKey = path.join(dir, "wrong-key");
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", wrongKey]);
    const t0 = Date.now();
    const err = await startVm({
      disk,
      mem: 256,
      cpus: 1,
      accelerator: "tcg",
      network: { mode: "user", bridge: "virbr0" },
      keyPath: wrongKey,
      serialLog,
      runDir,
      bootTimeoutMs: 20_000,
    }).catch((e: unknown) => e);
    const took = Date.now() - t0;
    expect(err).toBeInstanceOf(DbuildError);
    const p = (err as DbuildError).problems[0]!;
    expect(p.reason).toBe("boot-timeout");
    expect(p.message).toMatch(/within 20 s \(stuck at: SSH/);
    // the tail of the console is quoted: kernel lines, or (SSH being retried until the deadline) dropbear
    // refusing the key, which is the more telling line here
    expect(p.message).toMatch(/last lines of the serial console/);
    expect(p.message).toMatch(/\[ *\d+\.\d+\]|SYSLINUX|Loading|Exit before auth/);
    expect(p.hint).toMatch(/accepting keys\/demobuilder\.pub for root/);
    expect(took).toBeLessThan(30_000);
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
