/**
 * A warm snapshot is keyed by deviceSet(): the QEMU command line with every per-run value blanked. A value
 * that differs per run and is not blanked makes every snapshot unusable (each lookup a "device set" miss).
 */
import { describe, expect, it } from "vitest";
import { deviceSet } from "../../src/vm/qemu.js";
import type { VmOptions } from "../../src/vm/types.js";

function opts(run: string, extra: Partial<VmOptions> = {}): VmOptions {
  return {
    disk: `/tmp/${run}/disk.qcow2`,
    mem: 256,
    cpus: 1,
    accelerator: "tcg",
    network: { mode: "user", bridge: "virbr0" },
    keyPath: `/tmp/${run}/key`,
    serialLog: `/tmp/${run}/serial.log`,
    runDir: `/tmp/${run}/run`,
    pidFile: `/tmp/${run}/vms/qemu.pid`,
    bootTimeoutMs: 60_000,
    ...extra,
  };
}

describe("deviceSet", () => {
  it("is the same for two runs of one VM (disk, files, pidfile, resume differ)", async () => {
    const a = await deviceSet(opts("a"));
    const b = await deviceSet(opts("b", { resume: { stateFile: "/tmp/b/state" } } as Partial<VmOptions>));
    expect(a).toBe(b);
    expect(a).not.toMatch(/\/tmp\/[ab]\//);
  });

  it("differs when the VM does (memory, CPUs)", async () => {
    const a = await deviceSet(opts("a"));
    expect(await deviceSet(opts("a", { mem: 512 }))).not.toBe(a);
    expect(await deviceSet(opts("a", { cpus: 2 }))).not.toBe(a);
  });
});
