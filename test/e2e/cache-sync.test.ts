/**
 * RemoteCache (push / pull between a store and a real docker-registry) without VMs: images are made with
 * qemu-img and qemu-io, so every branch (deliverables, another parent image, re-linked backing files, a
 * corrupt blob) runs in seconds.
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RemoteCache } from "../../src/cache/sync.js";
import type { NodeKey, PlanNode } from "../../src/model/plan.js";
import { Store } from "../../src/store/store.js";
import type { NodeRecord } from "../../src/model/store.js";
import { dbuild, stacksOf } from "../helpers/cli.js";
import { startRegistry, type TestRegistry } from "../helpers/registry.js";

const key = (s: string): NodeKey => createHash("sha256").update(s).digest("hex") as NodeKey;
const M = key("m");
const C = key("c");

function node(stack: string, k: NodeKey, parent: string | null, kind: PlanNode["kind"]): PlanNode {
  return { stack, layer: stack.split(":").pop()!, kind, parent, key: k, inputs: { layer: stack }, status: "stale", reasons: [], image: "", settings: {}, targets: [], steps: [] };
}
const nodeM = node("m", M, null, "base");
const nodeC = node("m:final", C, "m", "finalizing");

let reg: TestRegistry;
let tmp: string;

async function newStore(name: string): Promise<Store> {
  const s = new Store(path.join(tmp, name));
  await s.init();
  return s;
}

/** A base image whose first MiB is `pattern`. */
async function publishBase(s: Store, pattern: number): Promise<NodeRecord> {
  const f = `${s.tmpPath("m")}.qcow2`;
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", f, "8M"]);
  execFileSync("qemu-io", ["-f", "qcow2", "-c", `write -P ${pattern} 0 1M`, f], { stdio: "ignore" });
  const object = await s.publishImage(f, M, null);
  const rec: NodeRecord = { key: M, stack: "m", layer: "m", parentKey: null, inputs: {}, object, duration: 1, builtAt: new Date().toISOString() };
  await s.commit(rec);
  return rec;
}

async function publishChild(s: Store, parent: NodeRecord): Promise<NodeRecord> {
  const f = `${s.tmpPath("c")}.qcow2`;
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", s.objectPath(parent.object), f]);
  execFileSync("qemu-io", ["-f", "qcow2", "-c", "write -P 0xcd 2M 1M", f], { stdio: "ignore" });
  const object = await s.publishImage(f, C, parent.object);
  const d = s.tmpPath("deliv");
  await fs.writeFile(d, "the deliverable\n");
  const dobj = await s.publishFile(d, C, "tar.gz");
  const rec: NodeRecord = {
    key: C,
    stack: "m:final",
    layer: "final",
    parentKey: M,
    inputs: {},
    object,
    duration: 42,
    builtAt: new Date().toISOString(),
    deliverable: { path: "final/m:final.tar.gz", object: dobj },
  };
  await s.commit(rec);
  return rec;
}

/** Reads `len` bytes at `off` of an image through its backing chain and checks the pattern. */
function hasPattern(file: string, off: string, pattern: number): boolean {
  try {
    const out = execFileSync("qemu-io", ["-r", "-f", "qcow2", "-c", `read -P ${pattern} ${off} 1M`, file], { encoding: "utf8" });
    return !/Pattern verification failed/.test(out);
  } catch {
    return false;
  }
}

let a: Store;
let recM: NodeRecord;
let recC: NodeRecord;

beforeAll(async () => {
  reg = await startRegistry({ repo: "sync" });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-cache-sync-"));
  a = await newStore("a");
  recM = await publishBase(a, 0xab);
  recC = await publishChild(a, recM);
});

afterAll(async () => {
  await reg.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

describe("RemoteCache", () => {
  it("records the image digest at publish time (what a push sends)", async () => {
    const file = createHash("sha256").update(await fs.readFile(a.objectPath(recC.object))).digest("hex");
    expect(recC.digest).toBe(`sha256:${file}`);
    const onDisk = JSON.parse(await fs.readFile(path.join(a.recordsDir, `${C}.json`), "utf8")) as NodeRecord;
    expect(onDisk.digest).toBe(recC.digest);
  });

  it("pushes parents and children, with the deliverable; a second push is a no-op", async () => {
    const cache = new RemoteCache(reg.url, a);
    expect((await cache.push(recM, undefined)).uploaded).toBe(true);
    const r = await cache.push(recC, recM);
    expect(r).toMatchObject({ uploaded: true, existed: false });
    expect((await cache.push(recC, recM)).existed).toBe(true);
    expect([...(await cache.status([M, C, key("nope")])).entries()]).toEqual([
      [M, true],
      [C, true],
      [key("nope"), false],
    ]);
    // readable by a standard tool
    const raw = execFileSync("skopeo", ["inspect", "--raw", "--tls-verify=false", `docker://127.0.0.1:${reg.port}/sync:${C}`], { encoding: "utf8" });
    const manifest = JSON.parse(raw) as { layers: Array<{ mediaType: string }>; annotations: Record<string, string> };
    expect(manifest.layers.map((l) => l.mediaType)).toEqual(["application/vnd.dbuild.layer.v1.qcow2", "application/vnd.dbuild.deliverable.v1"]);
    expect(manifest.annotations["dev.dbuild.parent-digest"]).toBe(recM.digest);
  });

  it("pulls into an empty store: same bytes, backing file re-linked, deliverable in place, record from the plan's inputs", async () => {
    const b = await newStore("b");
    const cache = new RemoteCache(reg.url, b);
    const rm = await cache.pull(nodeM, undefined);
    expect(rm.status).toBe("pulled");
    const mRec = await b.record(M);
    const rc = await cache.pull(nodeC, mRec);
    expect(rc.status).toBe("pulled");
    const cRec = (await b.record(C))!;
    expect(cRec).toMatchObject({ inputs: { layer: "m:final" }, duration: 42, digest: recC.digest, pulled: { from: reg.url, relinked: false } });
    expect(await fs.readFile(path.join(b.buildDir, "final", "m:final.tar.gz"), "utf8")).toBe("the deliverable\n");
    expect(await b.viewShows("m:final", C)).toBe(true);
    const view = b.viewPath("m:final");
    expect(hasPattern(view, "0", 0xab)).toBe(true);
    expect(hasPattern(view, "2M", 0xcd)).toBe(true);
    expect(hasPattern(view, "2M", 0xab)).toBe(false);
    execFileSync("qemu-img", ["check", "-U", view]);
    expect(await fs.readdir(b.tmpDir)).toEqual([]);
  });

  it("refuses a child pushed over another image of its parent (same key, other bytes): the node is built instead", async () => {
    const c = await newStore("c");
    const other = await publishBase(c, 0x11);
    const r = await new RemoteCache(reg.url, c).pull(nodeC, other);
    expect(r.status).toBe("mismatch");
    expect(r.status === "mismatch" && r.message).toMatch(/another image of m/);
    expect(await c.record(C)).toBeUndefined();
    expect(await fs.readdir(c.tmpDir)).toEqual([]);
  });

  it("re-links a backing file whose parent object has another name here, and can push that image on", async () => {
    const d = await newStore("d");
    // an object named like the key is in the way: the pulled base lands as <key>.1.qcow2
    await fs.writeFile(d.objectPath(`${M}.qcow2`), "in the way");
    const cache = new RemoteCache(reg.url, d);
    expect((await cache.pull(nodeM, undefined)).status).toBe("pulled");
    const mRec = (await d.record(M))!;
    expect(mRec.object).toBe(`${M}.1.qcow2`);
    expect((await cache.pull(nodeC, mRec)).status).toBe("pulled");
    const cRec = (await d.record(C))!;
    expect(cRec.pulled?.relinked).toBe(true);
    const info = JSON.parse(execFileSync("qemu-img", ["info", "--output=json", "-U", d.viewPath("m:final")], { encoding: "utf8" })) as Record<string, string>;
    expect(info["backing-filename"]).toBe(`.dbuild/objects/${M}.1.qcow2`);
    expect(hasPattern(d.viewPath("m:final"), "0", 0xab)).toBe(true);
    const reg2 = await startRegistry({ repo: "again" });
    try {
      const to = new RemoteCache(reg2.url, d);
      await to.push(mRec, undefined);
      expect((await to.push(cRec, mRec)).uploaded).toBe(true);
      const e = await newStore("e");
      const from = new RemoteCache(reg2.url, e);
      expect((await from.pull(nodeM, undefined)).status).toBe("pulled");
      expect((await from.pull(nodeC, await e.record(M))).status).toBe("pulled");
      expect(hasPattern(e.viewPath("m:final"), "2M", 0xcd)).toBe(true);
    } finally {
      await reg2.stop();
    }
  });

  it("a corrupt blob fails the pull and publishes nothing", async () => {
    await reg.corruptBlob(recC.digest!, 100);
    const f = await newStore("f");
    const cache = new RemoteCache(reg.url, f);
    expect((await cache.pull(nodeM, undefined)).status).toBe("pulled");
    await expect(cache.pull(nodeC, await f.record(M))).rejects.toThrow(/corrupt/);
    expect(await f.record(C)).toBeUndefined();
    await expect(fs.lstat(f.viewPath("m:final"))).rejects.toThrow();
    expect(await fs.readdir(f.tmpDir)).toEqual([]);
  });

  it("a miss is a miss", async () => {
    const g = await newStore("g");
    expect(await new RemoteCache(reg.url, g).pull(node("x", key("x"), null, "base"), undefined)).toEqual({ status: "miss" });
  });
});

describe("the CLI with the cache in demobuild.yaml (base layers only, no VM)", () => {
  /** Three independent host-built bases: b1, b2, b3. */
  async function baseProject(name: string, url: string): Promise<string> {
    const dir = path.join(tmp, name);
    for (const b of ["b1", "b2", "b3"]) {
      await fs.mkdir(path.join(dir, "layers", b), { recursive: true });
      await fs.writeFile(path.join(dir, "layers", b, "layer.yaml"), "kind: base\n");
      await fs.writeFile(path.join(dir, "layers", b, "install"), `#!/bin/sh\nset -e\nqemu-img create -q -f qcow2 "$DBUILD_OUTPUT" 8M\nqemu-io -f qcow2 -c "write -P 0x${b.slice(1)}1 0 64k" "$DBUILD_OUTPUT" >/dev/null\n`, { mode: 0o755 });
      await fs.mkdir(path.join(dir, "targets"), { recursive: true });
      await fs.writeFile(path.join(dir, "targets", b), "");
    }
    await fs.writeFile(path.join(dir, "demobuild.yaml"), `cache: {from: "${url}", to: "${url}"}\n`);
    return dir;
  }
  const cli = (cwd: string, ...args: string[]) => dbuild(["--progress", "json", ...args], { cwd });

  it("pushes behind the build, shards split the work, another copy's plan sees hits and its build pulls", async () => {
    const url = reg.url.replace(/\/sync$/, "/yaml");
    const one = await baseProject("yaml1", url);
    const first = await cli(one, "all");
    expect(first.code, first.stderr).toBe(0);
    expect(first.events.filter((e) => e.type === "step-done" && e.step === "push" && String(e.detail).startsWith("pushed")).length).toBe(3);
    // CI runs each shard on its own runner, from the same plan: one fresh copy per shard.
    const a = await baseProject("yaml-shard-a", reg.url.replace(/\/sync$/, "/shards"));
    const b = await baseProject("yaml-shard-b", reg.url.replace(/\/sync$/, "/shards"));
    const [ra, rb] = [await cli(a, "all", "--shard", "1/2"), await cli(b, "all", "--shard", "2/2")];
    const doneA = stacksOf(ra, "node-done");
    const doneB = stacksOf(rb, "node-done");
    expect([...doneA, ...doneB].sort()).toEqual(["b1", "b2", "b3"]);
    expect(doneA.filter((s) => doneB.includes(s))).toEqual([]);
    // the yaml cache got every node pushed by the first project
    const two = await baseProject("yaml2", url);
    const plan = JSON.parse((await dbuild(["plan", "--json"], { cwd: two })).stdout) as { nodes: Array<{ remote?: string }> };
    expect(plan.nodes.map((n) => n.remote)).toEqual(["hit", "hit", "hit"]);
    expect((await dbuild(["plan", "--matrix"], { cwd: two })).stdout).toBe('{"include":[]}\n');
    const r = await cli(two, "all");
    expect(r.code, r.stderr).toBe(0);
    expect(r.events.filter((e) => e.type === "node-done" && e.pulled === true).length).toBe(3);
    expect(r.events.some((e) => e.type === "step" && e.step === "install-host")).toBe(false);
  });
});
