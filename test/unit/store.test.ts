/**
 * The store with real qemu-img but no VM: atomic publish, read-only objects, relative backing files,
 * views, never replacing an object, and gc that keeps backing chains and snapshot files.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { NodeKey } from "../../src/model/plan.js";
import { collectGarbage } from "../../src/store/gc.js";
import { qcow2Backing } from "../../src/store/qcow2.js";
import { registeredSnapshots, registerSnapshot } from "../../src/store/snapshots.js";
import { readRecord, recordJson, Store } from "../../src/store/store.js";
import type { NodeRecord } from "../../src/model/store.js";

let root: string;
let store: Store;
const k = (c: string) => c.repeat(64) as NodeKey;

function img(file: string, backing?: string): void {
  const args = ["create", "-q", "-f", "qcow2"];
  if (backing) args.push("-F", "qcow2", "-b", backing);
  args.push(file, "16M");
  execFileSync("qemu-img", args);
}

async function publish(stack: string, key: NodeKey, parent: NodeRecord | null): Promise<NodeRecord> {
  const tmp = store.tmpPath(stack) + ".qcow2";
  img(tmp, parent ? path.relative(path.dirname(tmp), store.objectPath(parent.object)) : undefined);
  const object = await store.publishImage(tmp, key, parent?.object ?? null);
  const rec: NodeRecord = { key, stack, layer: stack.split(":").pop()!, parentKey: parent?.key ?? null, inputs: {}, object, duration: 1, builtAt: new Date().toISOString() };
  await store.commit(rec);
  return rec;
}

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-store-"));
  store = new Store(path.join(root, "build"));
  await store.init();
});
afterEach(async () => {
  await fs.rm(root, { recursive: true, force: true });
});

describe("store", () => {
  it("a plan reads it from listings taken when the plan starts, plus what this process writes meanwhile", async () => {
    const a = await publish("micro", k("a"), null);
    const other = new Store(store.buildDir);
    await other.planning(async () => {
      expect(await other.viewShows("micro", k("a"))).toBe(true);
      expect(await other.record(k("b"))).toBeUndefined();
      expect(await other.currentRecord("micro:web")).toBeUndefined();
      // Another process publishes micro:web now: this plan goes on seeing the store as it started.
      const b = await publish("micro:web", k("b"), a);
      expect(await other.viewShows("micro:web", k("b"))).toBe(false);
      // What this process writes during the plan is seen.
      const tmp = other.tmpPath("micro:db") + ".qcow2";
      img(tmp, path.relative(path.dirname(tmp), other.objectPath(a.object)));
      const object = await other.publishImage(tmp, k("c"), a.object);
      await other.commit({ key: k("c"), stack: "micro:db", layer: "db", parentKey: a.key, inputs: {}, object, duration: 1, builtAt: new Date().toISOString() });
      expect(await other.viewShows("micro:db", k("c"))).toBe(true);
      expect(b.object).toBe(`${k("b")}.qcow2`);
    });
    // Outside a plan every question goes to the file system again.
    expect(await other.viewShows("micro:web", k("b"))).toBe(true);
  });

  it("records are written inputs last and read head first, inputs when asked for; older layouts whole", async () => {
    const inputs = Object.fromEntries(Array.from({ length: 400 }, (_, i) => [`file:target/f${i}`, "a".repeat(64)]));
    const rec: NodeRecord = { key: k("a"), stack: "micro", layer: "micro", parentKey: null, inputs: { ...inputs, "setting:NAME": 'x\n  "inputs": {}' }, object: `${k("a")}.qcow2`, duration: 1, builtAt: "2026-01-01T00:00:00.000Z", held: 'tests failed:\n  "inputs": ' };
    const file = path.join(root, "rec.json");
    await fs.writeFile(file, recordJson(rec));
    expect(Object.keys(JSON.parse(await fs.readFile(file, "utf8")) as object).at(-1)).toBe("inputs");
    const head = readRecord(file);
    expect(head.object).toBe(rec.object);
    expect(head.held).toBe(rec.held);
    // Rewritten meanwhile (a digest added): a key's inputs are the same in every version of its record.
    await fs.writeFile(file, recordJson({ ...rec, digest: "sha256:x" }));
    expect(head.inputs).toEqual(rec.inputs);
    expect(JSON.parse(recordJson(head)) as unknown).toEqual(JSON.parse(recordJson(rec)) as unknown);
    // The layout of earlier versions (inputs before object), long or short, and compact JSON: read whole.
    for (const text of [JSON.stringify(rec, null, 2), JSON.stringify({ ...rec, inputs: { a: "b" } }, null, 2), JSON.stringify(rec)]) {
      await fs.writeFile(file, text);
      expect(readRecord(file)).toEqual(JSON.parse(text) as unknown);
    }
  });

  it("a never-built store answers a plan from empty listings", async () => {
    const fresh = new Store(path.join(root, "never-built"));
    await fresh.planning(async () => {
      expect(await fresh.viewShows("micro", k("a"))).toBe(false);
      expect(await fresh.record(k("a"))).toBeUndefined();
      expect(await fresh.currentRecord("micro")).toBeUndefined();
      expect(await fresh.lastDuration("micro")).toBeUndefined();
      expect(await fresh.testsPassed(k("a"), "d".repeat(64))).toBe(false);
    });
  });

  it("publishes read-only objects with relative backing files and a view per stack", async () => {
    const a = await publish("micro", k("a"), null);
    const b = await publish("micro:web", k("b"), a);
    expect(await store.viewShows("micro:web", k("b"))).toBe(true);
    expect(await fs.readlink(store.viewPath("micro:web"))).toBe(`.dbuild/objects/${b.object}`);
    const info = JSON.parse(execFileSync("qemu-img", ["info", "--output=json", store.viewPath("micro:web")], { encoding: "utf8" })) as Record<string, string>;
    expect(info["backing-filename"]).toBe(`.dbuild/objects/${a.object}`);
    // The chain opens through the view (a symlink in build/) and through the object path alike.
    execFileSync("qemu-img", ["info", "--backing-chain", store.viewPath("micro:web")]);
    execFileSync("qemu-img", ["info", "--backing-chain", store.objectPath(b.object)]);
    expect((await fs.stat(store.objectPath(b.object))).mode & 0o222).toBe(0);
    expect(await fs.readdir(store.tmpDir)).toEqual([]);
    // The whole build dir can move: backing files still resolve.
    const moved = path.join(root, "moved");
    await fs.rename(store.buildDir, moved);
    execFileSync("qemu-img", ["info", "--backing-chain", path.join(moved, "micro:web.qcow2")]);
  });

  it("deleting a view makes the node not fresh; a rebuild never replaces an object", async () => {
    const a = await publish("micro", k("a"), null);
    const before = await fs.stat(store.objectPath(a.object));
    await fs.rm(store.viewPath("micro"));
    expect(await store.viewShows("micro", k("a"))).toBe(false);
    expect((await store.currentRecord("micro"))?.key).toBe(k("a"));
    const again = await publish("micro", k("a"), null);
    expect(again.object).toBe(`${k("a")}.1.qcow2`);
    expect((await fs.stat(store.objectPath(a.object))).ino).toBe(before.ino);
    expect(await store.viewShows("micro", k("a"))).toBe(true);
  });

  it("gc removes what no target needs, keeps backing chains and snapshot files' bases", async () => {
    const a = await publish("micro", k("a"), null);
    const b = await publish("micro:web", k("b"), a);
    const c = await publish("micro:old", k("c"), a);
    const d = await publish("micro:snapbase", k("d"), a);
    // A user's snapshot in the project, backed by d.
    img(path.join(root, "mysnap"), store.objectPath(d.object));
    expect(await qcow2Backing(path.join(root, "mysnap"))).toBe(store.objectPath(d.object));
    const dry = await collectGarbage(store, root, [k("b")], { dryRun: true });
    expect(dry.removed.map((r) => path.basename(r.file))).toEqual([c.object]);
    expect(await fs.readdir(store.objectsDir)).toContain(c.object);
    const res = await collectGarbage(store, root, [k("b")], { dryRun: false });
    expect(res.removed.map((r) => path.basename(r.file))).toEqual([c.object]);
    const left = await fs.readdir(store.objectsDir);
    expect(left.filter((n) => n !== ".dbuild").sort()).toEqual([a.object, b.object, d.object].sort());
    await expect(fs.lstat(store.viewPath("micro:old"))).rejects.toThrow();
    expect(await store.record(k("c"))).toBeUndefined();
  });
  it("a recorded test pass holds for the image it ran on; a held image keeps its view where it was", async () => {
    const a = await publish("micro", k("a"), null);
    const digest = "d".repeat(64);
    await store.recordTestPass({ key: a.key, stack: "micro", object: a.object, digest, passedAt: new Date().toISOString(), results: [] });
    expect(await store.testsPassed(a.key, digest)).toBe(true);
    expect(await store.testsPassed(a.key, "e".repeat(64))).toBe(false);
    // Rebuilt under the same key (--force, or --no-test): a new object, untested.
    const again = await publish("micro", k("a"), null);
    expect(again.object).not.toBe(a.object);
    expect(await store.testsPassed(a.key, digest)).toBe(false);
    await store.recordTestPass({ key: a.key, stack: "micro", object: again.object, digest, passedAt: new Date().toISOString(), results: [] });
    expect(await store.testsPassed(a.key, digest)).toBe(true);
    await store.forgetTestPass(a.key, digest);
    expect(await store.testsPassed(a.key, digest)).toBe(false);
    // Tests failed on a new image of micro:web: its record is held, the view not touched.
    const tmp = store.tmpPath("micro:web") + ".qcow2";
    img(tmp, path.relative(path.dirname(tmp), store.objectPath(again.object)));
    const object = await store.publishImage(tmp, k("b"), again.object);
    await store.hold({ key: k("b"), stack: "micro:web", layer: "web", parentKey: again.key, inputs: {}, object, duration: 1, builtAt: new Date().toISOString() }, "its tests failed");
    expect((await store.record(k("b")))?.held).toBe("its tests failed");
    await expect(fs.lstat(store.viewPath("micro:web"))).rejects.toThrow();
    // Once its tests pass, commit shows it and the record is no longer held.
    await store.commit((await store.record(k("b")))!);
    expect(await store.viewShows("micro:web", k("b"))).toBe(true);
    expect((await store.record(k("b")))?.held).toBeUndefined();
  });
});

describe("registered snapshots", () => {
  it("gc keeps the object a registered snapshot outside the project is backed by, and forgets deleted ones", async () => {
    const a = await publish("micro", k("a"), null);
    const e = await publish("micro:gone", k("e"), a);
    const outside = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-outside-"));
    try {
      const snapFile = path.join(outside, "snap.qcow2");
      img(snapFile, store.objectPath(e.object));
      // Not in the project: without registration gc would remove e.
      expect((await collectGarbage(store, path.join(root, "project"), [k("a")], { dryRun: true })).removed.map((r) => path.basename(r.file))).toEqual([e.object]);
      await registerSnapshot(store, snapFile);
      expect(await registeredSnapshots(store, { prune: false })).toEqual([snapFile]);
      const res = await collectGarbage(store, path.join(root, "project"), [k("a")], { dryRun: false });
      expect(res.removed).toEqual([]);
      expect(await fs.readdir(store.objectsDir)).toContain(e.object);
      // The snapshot is deleted by its owner: its registration goes, and so can the object.
      await fs.rm(snapFile);
      const res2 = await collectGarbage(store, path.join(root, "project"), [k("a")], { dryRun: false });
      expect(res2.removed.map((r) => path.basename(r.file))).toEqual([e.object]);
      expect(await registeredSnapshots(store, { prune: false })).toEqual([]);
      expect(await fs.readdir(path.join(store.internalDir, "snapshots"))).toEqual([]);
    } finally {
      await fs.rm(outside, { recursive: true, force: true });
    }
  });
});

describe("durable, verified publish", () => {
  it("a record is trusted only while its object and the objects it is backed by match their publish-time sums", async () => {
    const a = await publish("micro", k("a"), null);
    const b = await publish("micro:web", k("b"), a);
    const sum = JSON.parse(await fs.readFile(path.join(store.sumsDir, `${a.object}.json`), "utf8")) as { size: number; digest: string };
    expect(sum.size).toBe((await fs.stat(store.objectPath(a.object))).size);
    expect(sum.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    // A copy of the build dir changes ctime: the digest is re-checked once and still matches.
    const copy = path.join(root, "copy");
    execFileSync("cp", ["-a", store.buildDir, copy]);
    const copied = new Store(copy);
    expect((await copied.record(k("b")))?.object).toBe(b.object);
    // Flip one bit in the middle of the parent object, as a write through a chmod would.
    const file = store.objectPath(a.object);
    await fs.chmod(file, 0o644);
    const fh = await fs.open(file, "r+");
    const off = Math.floor(sum.size / 2);
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, off);
    byte[0] = byte[0]! ^ 0x10;
    await fh.write(byte, 0, 1, off);
    await fh.close();
    await fs.chmod(file, 0o444);
    const fresh = new Store(store.buildDir);
    expect(await fresh.record(k("a"))).toBeUndefined();
    // The child's own bytes are intact, but its delta sits on corrupt bytes: not trusted either.
    expect(await fresh.record(k("b"))).toBeUndefined();
    expect(await fresh.viewShows("micro:web", k("b"))).toBe(false);
    // A truncated object (a torn copy) is caught by its size alone.
    await fs.chmod(store.objectPath(b.object), 0o644);
    await fs.truncate(store.objectPath(b.object), 1024);
    expect(await new Store(copy).record(k("b"))).toBeDefined();
    expect(await new Store(store.buildDir).objectOk(b.object)).toBe(false);
  });

  it("a plan checks the same sums, through its listings, up the whole backing chain", async () => {
    const a = await publish("micro", k("a"), null);
    await publish("micro:web", k("b"), a);
    const c = await publish("micro:web:app", k("c"), (await store.record(k("b")))!);
    // A child whose header names its parent by an absolute path (not the store's own relative form).
    const tmp = store.tmpPath("micro:abs") + ".qcow2";
    img(tmp, store.objectPath(a.object));
    const absObject = await store.publishFile(tmp, k("d"), "qcow2");
    await store.commit({ key: k("d"), stack: "micro:abs", layer: "abs", parentKey: a.key, inputs: {}, object: absObject, duration: 1, builtAt: new Date().toISOString() });
    const planned = async (dir: string, fn: (s: Store) => Promise<void>): Promise<void> => {
      const s = new Store(dir);
      await s.planning(() => fn(s));
    };
    await planned(store.buildDir, async (s) => {
      expect((await s.record(k("c")))?.object).toBe(c.object);
      expect(await s.viewShows("micro:abs", k("d"))).toBe(true);
    });
    // A copy changes every ctime: each object is hashed again (once), and all still match.
    const copy = path.join(root, "copy");
    execFileSync("cp", ["-a", store.buildDir, copy]);
    await planned(copy, async (s) => {
      expect(await s.viewShows("micro:web:app", k("c"))).toBe(true);
      expect((await s.currentRecord("micro:abs"))?.key).toBe(k("d"));
    });
    // An object published before sums existed is trusted as it is.
    await fs.rm(path.join(copy, ".dbuild", "sums", `${a.object}.json`));
    await fs.chmod(path.join(copy, ".dbuild", "objects", a.object), 0o644);
    await fs.appendFile(path.join(copy, ".dbuild", "objects", a.object), "x");
    await planned(copy, async (s) => {
      expect(await s.viewShows("micro:web:app", k("c"))).toBe(true);
    });
    // The base grows by a byte: nothing built over it is trusted, whatever form its backing name takes.
    await fs.chmod(store.objectPath(a.object), 0o644);
    await fs.appendFile(store.objectPath(a.object), "x");
    await planned(store.buildDir, async (s) => {
      expect(await s.viewShows("micro:web:app", k("c"))).toBe(false);
      expect(await s.record(k("b"))).toBeUndefined();
      expect(await s.viewShows("micro:abs", k("d"))).toBe(false);
      // `why` and the stale reasons find no trusted record for the stack either.
      expect(await s.currentRecord("micro:web:app")).toBeUndefined();
      expect(await s.testsPassed(k("c"), "d".repeat(64))).toBe(false);
    });
  });
});
