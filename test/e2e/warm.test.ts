/**
 * Warm starts against the real micro guest: the first child of an image boots and saves a RAM
 * snapshot; later children resume from it (two at once here), with the guest clock set; what a
 * warm-built image holds matches a cold build; stale snapshots are refused; eviction and gc.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dbuild, dbuildBin } from "../helpers/cli.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";
import { killQemuOf, qemuOf } from "../helpers/processes.js";
import type { CliResult } from "../helpers/cli.js";

let p: VmProject;
const run = (...args: string[]) => dbuild(["--progress", "json", ...args], { cwd: p.root });
const warmDir = () => path.join(p.root, "build", ".dbuild", "warm");
/** Installed snapshots: the links in .dbuild/warm (one per image). */
const snapshots = async (): Promise<string[]> => {
  const names = await fs.readdir(warmDir(), { withFileTypes: true }).catch(() => []);
  return names.filter((d) => d.isSymbolicLink()).map((d) => d.name);
};
/** How each node's VM came up: the detail of its second "boot" step. */
const starts = (r: CliResult): Record<string, string> =>
  Object.fromEntries(r.events.filter((e) => e.type === "step" && e.step === "boot" && e.detail).map((e) => [String(e.stack), String(e.detail)]));
const warnings = (r: CliResult): string[] => r.events.filter((e) => e.type === "warning").map((e) => String(e.message));
const ok = (r: CliResult): void => expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
const objectOf = (stack: string): Promise<string> => fs.realpath(path.join(p.root, "build", `${stack}.qcow2`));

/** Read files from an image without booting it: flatten to raw, then debugfs on the ext4 root partition. */
async function readFiles(image: string, files: string[]): Promise<Record<string, Buffer>> {
  const raw = path.join(p.root, `flat-${path.basename(image)}.raw`);
  execFileSync("qemu-img", ["convert", "-U", "-O", "raw", image, raw]);
  try {
    const table = JSON.parse(execFileSync("sfdisk", ["--json", raw], { encoding: "utf8" })) as { partitiontable: { partitions: Array<{ start: number }> } };
    const start = table.partitiontable.partitions[1]!.start * 512;
    const out: Record<string, Buffer> = {};
    for (const f of files) out[f] = execFileSync("debugfs", ["-R", `cat ${f}`, `${raw}?offset=${start}`], { stdio: ["ignore", "pipe", "ignore"] });
    return out;
  } finally {
    await fs.rm(raw, { force: true });
  }
}

/** The image is one delta over its parent's object, passes qemu-img check, and its chain flattens to the same content. */
function checkOneDelta(image: string, parentObject: string): void {
  const info = JSON.parse(execFileSync("qemu-img", ["info", "-U", "--output=json", image], { encoding: "utf8" })) as { "full-backing-filename": string };
  expect(path.basename(info["full-backing-filename"])).toBe(path.basename(parentObject));
  execFileSync("qemu-img", ["check", "-U", image]);
  const flat = path.join(p.root, `flat-${path.basename(image)}`);
  execFileSync("qemu-img", ["convert", "-U", "-O", "qcow2", image, flat]);
  try {
    execFileSync("qemu-img", ["compare", "-U", flat, image]);
  } finally {
    execFileSync("rm", ["-f", flat]);
  }
}

// The guest prints the instant its clock turns to a new second (busybox date has no sub-second
// format): the host sees it at once, so host time minus that second is the clock error plus latency.
const CLOCK_PROBE = 't=$(date +%s); while [ "$(date +%s)" = "$t" ]; do :; done; echo "guest-second $(date +%s)"';
function clockErrors(r: CliResult): number[] {
  return r.events
    .filter((e) => e.type === "output" && /^guest-second \d+/.test(String(e.line)))
    .map((e) => Number(e.time) / 1000 - Number(/guest-second (\d+)/.exec(String(e.line))![1]));
}

beforeAll(async () => {
  p = await makeVmProject("dbuild-warm-");
  await p.layer("a", "echo a > /etc/dbuild-a");
  await p.layer("b", `echo b > /etc/dbuild-b\nhead -c 65536 /dev/urandom > /etc/dbuild-b.bin\nsha256sum /etc/dbuild-b.bin > /etc/dbuild-b.sum\n${CLOCK_PROBE}`);
  await p.layer("c", `echo c > /etc/dbuild-c\n${CLOCK_PROBE}`);
  await p.target("micro:a");
  await p.target("micro:b");
  await p.target("micro:c");
});

afterAll(async () => {
  killQemuOf(p.root);
  await p.cleanup();
});

// Each test boots one to three VMs: on a loaded 2-core TCG machine a cold boot can take a minute.
describe("warm starts", { timeout: 300_000 }, () => {
  it("the first child boots and saves a snapshot; two children then resume from it at once, clock set", async () => {
    const first = await run("build", "micro:a");
    ok(first);
    expect(starts(first)).toEqual({ "micro:a": "booted, snapshot saved" });
    const micro = await objectOf("micro");
    expect(await snapshots()).toEqual([path.basename(micro)]);
    // Make the snapshot old enough that an unset guest clock would be off by more than 2 s.
    await new Promise((r) => setTimeout(r, 5000));
    const two = await run("build", "micro:b", "micro:c", "-j", "2");
    ok(two);
    expect(starts(two)).toEqual({ "micro:b": "resumed", "micro:c": "resumed" });
    // Both ran at once: c started before b finished.
    const t = (type: string, stack: string) => Number(two.events.find((e) => e.type === type && e.stack === stack)!.time);
    expect(t("node-start", "micro:c")).toBeLessThan(t("node-done", "micro:b"));
    const errs = clockErrors(two);
    expect(errs.length).toBe(2);
    for (const e of errs) expect(Math.abs(e)).toBeLessThan(2);
    for (const s of ["micro:b", "micro:c"]) checkOneDelta(await objectOf(s), micro);
    expect(qemuOf(p.root)).toEqual([]);
    // `dbuild shell` of the image resumes from its snapshot too (commands on stdin: no terminal here).
    const sh = spawnSync(process.execPath, [dbuildBin, "shell", "micro"], { cwd: p.root, input: "echo shell-says-$((6*7)); exit\n", encoding: "utf8", timeout: 120_000 });
    expect(sh.status, sh.stderr).toBe(0);
    expect(sh.stderr).toContain("resumed from the image's warm snapshot");
    expect(sh.stdout).toContain("shell-says-42");
    expect(qemuOf(p.root)).toEqual([]);
  });

  it("a warm-built image holds what a cold build of the same layer writes (--cold boots and discards the snapshot)", async () => {
    const warm = await objectOf("micro:b");
    // --force: the store already holds an image for these inputs (the warm build's), which would be re-linked.
    const r = await run("build", "micro:b", "--force", "--cold");
    ok(r);
    expect(starts(r)).toEqual({ "micro:b": "booted" });
    expect(warnings(r).join("\n")).toMatch(/discarded \(--cold\)/);
    expect(await snapshots()).toEqual([]);
    const cold = await objectOf("micro:b");
    expect(cold).not.toBe(warm);
    checkOneDelta(cold, await objectOf("micro"));
    const files = ["/etc/dbuild-b", "/etc/dbuild-b.bin", "/etc/dbuild-b.sum"];
    const w = await readFiles(warm, files);
    const c = await readFiles(cold, files);
    expect(w["/etc/dbuild-b"]!.toString()).toBe("b\n");
    expect(c["/etc/dbuild-b"]!.toString()).toBe("b\n");
    // Each build wrote its own random bytes; each image's checksum file matches its own bytes.
    for (const img of [w, c]) {
      expect(img["/etc/dbuild-b.bin"]!.length).toBe(65536);
      const sum = createHash("sha256").update(img["/etc/dbuild-b.bin"]!).digest("hex");
      expect(img["/etc/dbuild-b.sum"]!.toString().split(" ")[0]).toBe(sum);
    }
  });

  it("a truncated state file is refused with a note, and the VM boots (saving a good snapshot)", async () => {
    expect(await snapshots()).toEqual([]); // --cold above discarded micro's
    await p.layer("c", `echo c2 > /etc/dbuild-c`);
    const r1 = await run("build", "micro:c");
    ok(r1);
    expect(starts(r1)).toEqual({ "micro:c": "booted, snapshot saved" });
    const [name] = await snapshots();
    const state = path.join(warmDir(), name!, "state");
    const size = (await fs.stat(state)).size;
    await fs.chmod(state, 0o644);
    await fs.truncate(state, Math.floor(size / 2));
    await p.layer("c", `echo c3 > /etc/dbuild-c`);
    const r2 = await run("build", "micro:c");
    ok(r2);
    expect(warnings(r2).join("\n")).toMatch(/discarded: its state file is damaged/);
    expect(starts(r2)).toEqual({ "micro:c": "booted, snapshot saved" });
    expect((await readFiles(await objectOf("micro:c"), ["/etc/dbuild-c"]))["/etc/dbuild-c"]!.toString()).toBe("c3\n");
  });

  it("a snapshot taken with other VM memory is refused with a note", async () => {
    await p.write("demobuild.yaml", "buildVm: {mem: 320, cpus: 1}\ntimeouts: {boot: 90, install: 300, shutdown: 30}\n");
    await p.layer("c", `echo c4 > /etc/dbuild-c`);
    const r = await run("build", "micro:c");
    ok(r);
    expect(warnings(r).join("\n")).toMatch(/discarded: it was taken with 256 MiB of memory, this VM has 320 MiB/);
    expect(starts(r)).toEqual({ "micro:c": "booted, snapshot saved" });
    const meta = JSON.parse(await fs.readFile(path.join(warmDir(), (await snapshots())[0]!, "meta.json"), "utf8")) as { mem: number };
    expect(meta.mem).toBe(320);
  });

  it("gc removes the snapshots of images it removes; snapshots beyond warm.maxMiB are evicted", async () => {
    // A snapshot of micro:a (made by building its child), then micro:a changes: its old object goes.
    await p.layer("e", "echo e > /etc/dbuild-e");
    await p.target("micro:a:e");
    ok(await run("build", "micro:a:e"));
    const oldA = path.basename(await objectOf("micro:a"));
    expect(await snapshots()).toContain(oldA);
    await p.layer("a", "echo a2 > /etc/dbuild-a");
    const dry = await dbuild(["gc", "--dry-run"], { cwd: p.root });
    expect(dry.code, dry.stderr).toBe(0);
    expect(await snapshots()).toContain(oldA);
    const gc = await dbuild(["gc"], { cwd: p.root });
    expect(gc.code, gc.stderr).toBe(0);
    expect(gc.stdout).toContain(path.join(".dbuild", "warm", oldA));
    expect(await snapshots()).not.toContain(oldA);
    expect((await snapshots()).length).toBe(1); // micro's stays: micro is still needed
    // A cap below one snapshot: after the build nothing is left (the build itself still resumed).
    await p.write("demobuild.yaml", "buildVm: {mem: 320, cpus: 1}\ntimeouts: {boot: 90, install: 300, shutdown: 30}\nwarm: {maxMiB: 1}\n");
    const r = await run("build", "micro:a");
    ok(r);
    expect(starts(r)).toEqual({ "micro:a": "resumed" });
    expect(await snapshots()).toEqual([]);
    expect((await fs.readdir(warmDir())).length).toBe(0);
  });
});
