/**
 * The remote cache end to end: real micro guest, real docker-registry, the real CLI. Copies of one small
 * project (micro + two layers) share a registry: the first builds and pushes, the others pull.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dbuild, stacksOf, startDbuild, type CliResult } from "../helpers/cli.js";
import { startRegistry, type TestRegistry } from "../helpers/registry.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";
import { killQemuOf, qemuOf } from "../helpers/processes.js";

const BUILD_MS = 900_000;
const STACKS = ["micro", "micro:a", "micro:a:b"];

let reg: TestRegistry;
let reg2: TestRegistry | undefined;
const projects: VmProject[] = [];

async function project(): Promise<VmProject> {
  const p = await makeVmProject("dbuild-cache-");
  await p.layer("a", 'echo "layer a" > /etc/dbuild-a');
  await p.layer("b", "cat /etc/dbuild-a > /etc/dbuild-b");
  await p.target("micro:a:b");
  projects.push(p);
  return p;
}

const run = (p: VmProject, ...args: string[]): Promise<CliResult> => dbuild(["--progress", "json", ...args], { cwd: p.root });

interface JsonPlan {
  nodes: Array<{ stack: string; key: string; status: string; source?: string; remote?: string; pullBytes?: number; lastDuration?: number }>;
}
async function plan(p: VmProject, ...args: string[]): Promise<JsonPlan> {
  const r = await dbuild(["plan", "--json", ...args], { cwd: p.root });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as JsonPlan;
}


/** Stacks that booted a VM in this run (`boot` step events: one as it starts, one saying how it came up). */
const booted = (r: CliResult): string[] => [
  ...new Set(r.events.filter((e) => e.type === "step" && e.step === "boot").map((e) => String(e.stack))),
];
const pulled = (r: CliResult): string[] => r.events.filter((e) => e.type === "node-done" && e.pulled === true).map((e) => String(e.stack));

function checkImages(p: VmProject): void {
  for (const s of STACKS) execFileSync("qemu-img", ["check", "-U", path.join(p.root, "build", `${s}.qcow2`)]);
  // the whole backing chain resolves from the user's view
  const chain = execFileSync("qemu-img", ["info", "-U", "--backing-chain", path.join(p.root, "build", "micro:a:b.qcow2")], { encoding: "utf8" });
  expect(chain.match(/^image:/gm)?.length).toBe(3);
}

let p1: VmProject;
let p2: VmProject;

beforeAll(async () => {
  reg = await startRegistry({ repo: "team/dbuild" });
  p1 = await project();
  p2 = await project();
}, 120_000);

afterAll(async () => {
  for (const p of projects) {
    killQemuOf(p.root);
    await p.cleanup();
  }
  await reg.stop();
  await reg2?.stop();
});

describe("a registry shared by two copies of a project", () => {
  it("the first copy builds and pushes every node", async () => {
    const r = await run(p1, "all", "--cache-to", reg.url);
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(stacksOf(r, "node-done").sort()).toEqual(STACKS);
    const pushes = r.events.filter((e) => e.type === "step-done" && e.step === "push" && e.ok === true && String(e.detail).startsWith("pushed"));
    expect(pushes.map((e) => e.stack).sort()).toEqual(STACKS);
    expect(r.events.filter((e) => e.type === "warning")).toEqual([]);
    // the other copy has the same keys: everything is cached there, from the remote, estimated by its transfer
    const [a, b] = [await plan(p1), await plan(p2, "--cache", reg.url)];
    expect(b.nodes.map((n) => n.key)).toEqual(a.nodes.map((n) => n.key));
    expect(b.nodes.map((n) => [n.status, n.source, n.remote])).toEqual(STACKS.map(() => ["cached", "remote", "hit"]));
    expect(b.nodes.every((n) => (n.pullBytes ?? 0) > 0 && n.lastDuration === undefined)).toBe(true);
    const text = (await dbuild(["plan", "--cache", reg.url], { cwd: p2.root })).stdout;
    expect(text).toContain("micro:a:b (target)  cached (remote)");
    expect(text).toMatch(/est: transfer of [\d.]+ MiB \(no VM\)/);
    expect(text).toMatch(/3 of 3 images cached: 3 pulled \([\d.]+ MiB\), no VM/);
    const m = await dbuild(["plan", "--matrix", "--cache", reg.url], { cwd: p2.root });
    expect(JSON.parse(m.stdout)).toEqual({ include: [] });
  }, BUILD_MS);

  it("the second copy, with an empty build dir, pulls everything: all fresh, no VM", async () => {
    const r = await dbuild(["pull", "all", "--cache", reg.url], { cwd: p2.root });
    expect(r.code, r.stderr + r.stdout).toBe(0);
    expect(r.stdout).toMatch(/pulled 3 /);
    expect((await plan(p2)).nodes.map((n) => n.status)).toEqual(["fresh", "fresh", "fresh"]);
    expect(qemuOf(p2.root)).toEqual([]);
    // no VM ever ran for this copy: no serial console log was written
    const logs = await fs.readdir(path.join(p2.root, "build", "logs")).catch(() => []);
    expect(logs.filter((f) => f.endsWith(".console.log"))).toEqual([]);
    checkImages(p2);
    // a build now has nothing to do
    const again = await run(p2, "all");
    expect(again.events.find((e) => e.type === "build-start")?.stale).toEqual([]);
  }, BUILD_MS);

  it("dbuild all --cache-from pulls instead of building (third copy), with no boot step", async () => {
    const p3 = await project();
    const r = await run(p3, "all", "--cache-from", reg.url);
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(pulled(r).sort()).toEqual(STACKS);
    expect(booted(r)).toEqual([]);
    expect(qemuOf(p3.root)).toEqual([]);
    checkImages(p3);
    // --force never takes the image from --cache-from (nor from the store): a VM runs
    const forced = await run(p3, "build", "--force", "micro:a:b", "--cache-from", reg.url);
    expect(forced.code, forced.stderr + forced.stdout.slice(-3000)).toBe(0);
    expect(booted(forced)).toEqual(["micro:a:b"]);
    expect(pulled(forced)).toEqual([]);
    checkImages(p3);
    // an epoch: bump gives the layer's images new keys: the remote cache has none of them
    await p3.write("layers/a/layer.yaml", "kind: intermediate\nepoch: 2\n");
    const bumped = await plan(p3, "--cache", reg.url);
    expect(bumped.nodes.map((n) => [n.stack, n.status, n.remote ?? ""])).toEqual([
      ["micro", "fresh", ""],
      ["micro:a", "stale", "miss"],
      ["micro:a:b", "stale", "miss"],
    ]);
  }, BUILD_MS);

  it("a registry killed mid-push leaves the local store intact and says so", async () => {
    reg2 = await startRegistry({ repo: "other" });
    const uploads = path.join(reg2.dataDir, "docker/registry/v2/repositories/other/_uploads");
    const push = startDbuild(["push", "all", "--cache", reg2.url], { cwd: p1.root });
    // Kill as soon as the first upload session exists: the micro image (~37 MiB) is still streaming.
    for (let i = 0; i < 6000; i++) {
      if ((await fs.readdir(uploads).catch(() => [])).length) break;
      await new Promise((res) => setTimeout(res, 5));
    }
    await reg2.kill();
    const r = await push.done;
    expect(r.code, r.stdout + r.stderr).toBe(1);
    expect(r.stderr).toMatch(/push failed/);
    expect(r.stderr).toMatch(/cannot reach|unreachable|no answer/);
    expect(r.stderr).toMatch(/nothing local was changed/);
    expect((await plan(p1)).nodes.map((n) => n.status)).toEqual(["fresh", "fresh", "fresh"]);
    checkImages(p1);
    expect(await fs.readdir(path.join(p1.root, "build", ".dbuild", "tmp"))).toEqual([]);
  }, BUILD_MS);

  it("the second copy edits one layer: only that node is rebuilt; a dead --cache-to is a warning, not a failure", async () => {
    await p2.layer("b", "cat /etc/dbuild-a > /etc/dbuild-b\necho edited >> /etc/dbuild-b");
    const m = await dbuild(["plan", "--matrix", "--cache", reg.url], { cwd: p2.root });
    expect(JSON.parse(m.stdout)).toEqual({ include: [{ name: "micro:a:b", stacks: "micro:a:b" }] });
    const r = await run(p2, "all", "--cache-from", reg.url, "--cache-to", reg2!.url);
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(stacksOf(r, "node-start")).toEqual(["micro:a:b"]);
    expect(booted(r)).toEqual(["micro:a:b"]);
    const warnings = r.events.filter((e) => e.type === "warning");
    expect(warnings.map((e) => e.stack)).toContain("micro:a:b");
    expect(String(warnings[0]?.message)).toMatch(/push to .* failed \(the local build is unaffected\)/);
    expect((await plan(p2)).nodes.map((n) => n.status)).toEqual(["fresh", "fresh", "fresh"]);
    checkImages(p2);
  }, BUILD_MS);

  it("a corrupted blob in the registry is detected and the node rebuilt", async () => {
    const rec = JSON.parse(await fs.readFile(path.join(p1.root, "build", ".dbuild", "records", `${(await plan(p1)).nodes[2]!.key}.json`), "utf8")) as { digest: string };
    expect(rec.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    await reg.corruptBlob(rec.digest, 4096);
    const p4 = await project();
    const r = await run(p4, "all", "--cache-from", reg.url);
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(pulled(r).sort()).toEqual(["micro", "micro:a"]);
    expect(booted(r)).toEqual(["micro:a:b"]);
    const warning = r.events.find((e) => e.type === "warning" && e.stack === "micro:a:b");
    expect(String(warning?.message)).toMatch(/pull from .* failed, building it instead/);
    expect(String(warning?.message)).toMatch(/corrupt/);
    expect((await plan(p4)).nodes.map((n) => n.status)).toEqual(["fresh", "fresh", "fresh"]);
    checkImages(p4);
    // the explicit command fails clearly on the same blob
    const p5 = await project();
    const pl = await dbuild(["pull", "--cache", reg.url], { cwd: p5.root });
    expect(pl.code).toBe(1);
    expect(pl.stderr).toMatch(/micro:a:b: pull failed: .*corrupt/s);
    expect((await plan(p5)).nodes.map((n) => n.status)).toEqual(["fresh", "fresh", "stale"]);
  }, BUILD_MS);
});
