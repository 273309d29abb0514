/**
 * The warm-snapshot store on plain files (no QEMU): what is refused and why, LRU eviction within a
 * cap, orphans, and gc's prune. The end-to-end proof with real snapshots is test/e2e/warm.test.ts.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { WarmStore, type WarmMeta } from "../../src/store/warm.js";

let root: string;
let warm: WarmStore;
const id = { object: "k1.qcow2", mem: 256, cpus: 1, qemu: "QEMU emulator version 7.2", devices: "-m 256 -device x" };

/** A snapshot of `object` with `stateBytes` of state, installed; returns its folder. */
async function put(object: string, stateBytes = 1000, usedAt?: Date): Promise<string> {
  const dir = await warm.create(object);
  await fs.writeFile(path.join(dir, "boot.qcow2"), Buffer.alloc(4096));
  await fs.writeFile(path.join(dir, "state"), Buffer.alloc(stateBytes, 1));
  const meta: WarmMeta = { ...id, object, mac: "52:54:00:00:00:01", ip: "10.0.2.15", stateBytes, createdAt: new Date().toISOString() };
  expect(await warm.install(dir, meta)).toBe(true);
  if (usedAt) await fs.utimes(path.join(dir, "meta.json"), usedAt, usedAt);
  return dir;
}

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-warm-unit-"));
  warm = new WarmStore(root);
});
afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe("WarmStore", () => {
  it("finds a matching snapshot, read-only, and marks it used", async () => {
    const dir = await put("k1.qcow2", 1000, new Date(2020, 0, 1));
    const r = await warm.find(id);
    expect(r.discarded).toBeUndefined();
    expect(r.snap?.dir).toBe(dir);
    expect(r.snap?.meta.mac).toBe("52:54:00:00:00:01");
    expect((await fs.stat(r.snap!.state)).mode & 0o222).toBe(0);
    expect((await fs.stat(path.join(dir, "meta.json"))).mtime.getFullYear()).toBeGreaterThan(2020);
  });

  it("refuses and discards a snapshot of other memory, CPUs, QEMU or devices, saying which", async () => {
    const cases: Array<[Partial<typeof id>, RegExp]> = [
      [{ mem: 512 }, /taken with 256 MiB of memory, this VM has 512 MiB/],
      [{ cpus: 2 }, /taken with 1 CPUs, this VM has 2/],
      [{ qemu: "QEMU emulator version 8.0" }, /taken with QEMU emulator version 7.2, this is QEMU emulator version 8.0/],
      [{ devices: "-m 256 -device y" }, /another QEMU device set/],
    ];
    for (const [change, why] of cases) {
      const dir = await put("k1.qcow2");
      const r = await warm.find({ ...id, ...change });
      expect(r.snap).toBeUndefined();
      expect(r.discarded).toMatch(why);
      await expect(fs.access(dir)).rejects.toThrow();
      expect(await warm.find(id)).toEqual({});
    }
  });

  it("refuses a truncated or missing state file and a missing boot overlay", async () => {
    let dir = await put("k1.qcow2", 1000);
    await fs.chmod(path.join(dir, "state"), 0o644);
    await fs.truncate(path.join(dir, "state"), 10);
    expect((await warm.find(id)).discarded).toMatch(/state file is damaged \(10 bytes, 1000 expected\)/);
    dir = await put("k1.qcow2");
    await fs.rm(path.join(dir, "state"));
    expect((await warm.find(id)).discarded).toMatch(/state file is missing/);
    dir = await put("k1.qcow2");
    await fs.rm(path.join(dir, "boot.qcow2"));
    expect((await warm.find(id)).discarded).toMatch(/boot overlay is missing/);
  });

  it("install loses to a snapshot already there; the loser's folder is removed, the winner's kept", async () => {
    const winner = await put("k1.qcow2");
    const loser = await warm.create("k1.qcow2");
    await fs.writeFile(path.join(loser, "boot.qcow2"), "x");
    await fs.writeFile(path.join(loser, "state"), "x");
    expect(await warm.install(loser, { ...id, mac: "m", ip: "i", stateBytes: 1, createdAt: "" })).toBe(false);
    await warm.removeUnlessInstalled(loser, "k1.qcow2");
    await warm.removeUnlessInstalled(winner, "k1.qcow2");
    await expect(fs.access(loser)).rejects.toThrow();
    expect((await warm.find(id)).snap?.dir).toBe(winner);
  });

  it("evicts least recently used snapshots beyond the cap, and orphan folders", async () => {
    await put("old.qcow2", 100_000, new Date(2020, 0, 1));
    await put("mid.qcow2", 100_000, new Date(2021, 0, 1));
    await put("new.qcow2", 100_000, new Date(2022, 0, 1));
    const orphan = await warm.create("gone.qcow2");
    const each = (await warm.list())[0]!.bytes;
    const removed = await warm.evict(each * 2 + 1);
    expect(removed.map((e) => e.object)).toEqual(["old.qcow2"]);
    expect((await warm.list()).map((e) => e.object).sort()).toEqual(["mid.qcow2", "new.qcow2"]);
    await expect(fs.access(orphan)).rejects.toThrow();
    expect((await warm.evict(0)).length).toBe(2);
    expect(await fs.readdir(warm.dir)).toEqual([]);
  });

  it("prune (gc) removes the snapshots of images not kept; --dry-run only lists them", async () => {
    await put("keep.qcow2");
    await put("drop.qcow2");
    expect((await warm.prune((o) => o === "keep.qcow2", true)).map((e) => e.object)).toEqual(["drop.qcow2"]);
    expect((await warm.list()).length).toBe(2);
    expect((await warm.prune((o) => o === "keep.qcow2", false)).map((e) => e.object)).toEqual(["drop.qcow2"]);
    expect((await warm.list()).map((e) => e.object)).toEqual(["keep.qcow2"]);
  });
});
