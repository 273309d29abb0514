import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { accelArgs, kvmUsable, resolveAccelerator } from "../../src/vm/accel.js";

describe("accelerator", () => {
  it("probes once for VMs starting at the same time and caches the answer per build dir", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-accel-"));
    const cacheFile = path.join(dir, ".dbuild", "accel.json");
    try {
      // Several VMs booting at once (-j N) all ask; none may fail on the cache write.
      const answers = await Promise.all([1, 2, 3, 4].map(() => kvmUsable({ cacheFile })));
      expect(new Set(answers.map((a) => a.kvm)).size).toBe(1);
      const cached = JSON.parse(await fs.readFile(cacheFile, "utf8")) as { kvm: boolean };
      expect(cached.kvm).toBe(answers[0]!.kvm);
      expect((await fs.readdir(path.dirname(cacheFile))).filter((f) => f.endsWith(".tmp"))).toEqual([]);
      expect(await resolveAccelerator("auto", { cacheFile })).toBe(cached.kvm ? "kvm" : "tcg");
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it("tcg is taken as said, with a CPU model TCG can emulate", async () => {
    expect(await resolveAccelerator("tcg")).toBe("tcg");
    expect(accelArgs("tcg")).toEqual(["-accel", "tcg,thread=multi", "-cpu", "max"]);
  });
});
