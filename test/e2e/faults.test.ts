/**
 * Fault injection against the real CLI and the micro guest: random SIGKILLs of dbuild across a three-node
 * build (VM steps and publish), QEMU killed under a running install, SIGINT/SIGTERM at random points, a
 * full disk, two concurrent `dbuild all`, and a bit-flipped object.
 *
 * Kills are cheap: most land on an early step of the next node, and every restart continues the build
 * (published nodes stay published), so 30 kills cost a few builds, not 30. When a run finishes, a layer is
 * edited (or the base view deleted) so there is always work left to interrupt.
 *
 * DBUILD_FAULT_SEED replays a schedule (the seed is printed); DBUILD_FAULT_KILLS sets the kill count
 * (`npm run test:faults` runs more). Figures go to stdout for docs/reliability.md.
 */
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dbuild, dbuildBin, startDbuild } from "../helpers/cli.js";
import { rng } from "../helpers/edit-suite.js";
import { onEvents, qemuGoneWithin, storeProblems, type Ev } from "../helpers/faults.js";
import { killQemuOf, qemuOf } from "../helpers/processes.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";

const SEED = Number(process.env.DBUILD_FAULT_SEED ?? 20261202);
const KILLS = Number(process.env.DBUILD_FAULT_KILLS ?? 30);
// The same mulberry32 as the edit suite: a seed replays the same schedule.
const prng = rng(SEED);
const random = (): number => prng.next();
const pick = <T,>(xs: readonly T[]): T => prng.pick(xs);
const figures: string[] = [];
const figure = (s: string): void => {
  figures.push(s);
  process.stdout.write(`[faults] ${s}\n`);
};

let p: VmProject;
const build = (root: string): string => path.join(root, "build");

beforeAll(async () => {
  process.stdout.write(`[faults] seed=${SEED} kills=${KILLS} (replay: DBUILD_FAULT_SEED=${SEED} DBUILD_FAULT_KILLS=${KILLS})\n`);
  p = await makeVmProject("dbuild-faults-");
  await p.layer("a", 'echo "a rev 0" > /etc/dbuild-a');
  await p.layer("b", "cat /etc/dbuild-a > /etc/dbuild-b");
  await p.target("micro:a:b");
});

afterAll(async () => {
  killQemuOf(p.root);
  await p.cleanup();
  if (figures.length) process.stdout.write(`[faults] figures:\n${figures.map((f) => `  ${f}`).join("\n")}\n`);
});

/** After any fault: no QEMU left (time recorded), every object sound; returns ms until QEMU was gone. */
async function checkAfterFault(root: string, what: string): Promise<number> {
  const gone = await qemuGoneWithin(root, 3000);
  expect(gone, `${what}: QEMU still running 3 s after the fault: ${qemuOf(root).join("; ")}`).toBeGreaterThanOrEqual(0);
  const { problems } = await storeProblems(build(root));
  expect(problems, what).toEqual([]);
  return gone;
}

describe("faults", () => {
  it(`survives ${KILLS} random SIGKILLs of dbuild across a three-node build; the next run always finishes`, async () => {
    // Steps a kill can be aimed at (the next step event of any node), or a plain random delay.
    const steps = ["import", "cow", "boot", "rsync", "install", "cleanup", "poweroff", "publish"] as const;
    const hit = new Map<string, number>();
    let kills = 0;
    let runs = 0;
    let completed = 0;
    let rev = 0;
    let worstGoneMs = 0;
    const t0 = Date.now();
    while (kills < KILLS) {
      runs++;
      expect(runs, "too many runs without reaching the kill count").toBeLessThan(KILLS * 4);
      const aim = random() < 0.25 ? { delayMs: Math.floor(random() * 8000) } : { step: pick(steps), afterMs: Math.floor(random() * 150) };
      const { child, done } = startDbuild(["all", "--progress", "json"], { cwd: p.root });
      let where = "";
      let killedAt = 0;
      const kill = (label: string): void => {
        if (killedAt || child.exitCode !== null) return;
        where = label;
        killedAt = Date.now();
        child.kill("SIGKILL");
      };
      let timer: NodeJS.Timeout | undefined;
      if ("delayMs" in aim) timer = setTimeout(() => kill(`after ${aim.delayMs} ms`), aim.delayMs);
      onEvents(child, (e: Ev) => {
        if ("step" in aim && e.type === "step" && e.step === aim.step) {
          const label = `${String(e.stack)} ${aim.step}`;
          if (aim.afterMs) setTimeout(() => kill(label), aim.afterMs);
          else kill(label);
        }
      });
      const r = await done;
      clearTimeout(timer);
      if (killedAt && r.code === null) {
        kills++;
        const step = aim.step ?? "random delay";
        hit.set(step, (hit.get(step) ?? 0) + 1);
        worstGoneMs = Math.max(worstGoneMs, await checkAfterFault(p.root, `kill ${kills} (${where}, seed ${SEED})`));
        continue;
      }
      // Not killed: this run went to its end, and it must have succeeded with no manual step.
      expect(r.code, `run ${runs} after ${kills} kills (seed ${SEED}):\n${r.stderr}\n${r.stdout.slice(-3000)}`).toBe(0);
      completed++;
      await checkAfterFault(p.root, `completed run ${runs}`);
      // Leave work for the next kill: edit layer a (a and b rebuild) or delete the base view (re-import).
      if (random() < 0.7) await p.layer("a", `echo "a rev ${++rev}" > /etc/dbuild-a`);
      else await fs.rm(path.join(build(p.root), "micro.qcow2"));
    }
    // The last word: `dbuild all` finishes, then finds everything fresh.
    const last = await dbuild(["all", "--progress", "json"], { cwd: p.root });
    expect(last.code, last.stderr).toBe(0);
    const again = await dbuild(["all", "--progress", "json"], { cwd: p.root });
    expect(again.events.filter((e) => e.type === "node-done")).toEqual([]);
    expect(execFileSync("qemu-img", ["check", "-q", path.join(build(p.root), "micro:a:b.qcow2")]).toString()).toBe("");
    expect(await fs.readdir(path.join(build(p.root), ".dbuild", "tmp"))).toEqual([]);
    expect(await fs.readdir(path.join(build(p.root), ".dbuild", "vms"))).toEqual([]);
    figure(
      `(a) SIGKILL of dbuild: ${kills} kills survived in ${runs} runs (${completed} ran to the end) in ${Math.round((Date.now() - t0) / 1000)} s; ` +
        `kills by step: ${[...hit].map(([k, v]) => `${k} ${v}`).join(", ")}; images lost 0; orphan QEMU 0 (gone within ${worstGoneMs} ms)`,
    );
  }, 900_000);

  it("SIGKILL of QEMU during an install fails that node at once with a clear message; the other node is built", async () => {
    const q = await makeVmProject("dbuild-faults-qemu-");
    try {
      await q.layer("x", 'echo "x-install-started"\nsleep 60');
      await q.layer("y", "sleep 2; echo y > /etc/y");
      await q.target("micro:x");
      await q.target("micro:y");
      const { child, done } = startDbuild(["all", "-k", "-j", "2", "--progress", "json"], { cwd: q.root });
      let killedAt = 0;
      let failed: Ev | undefined;
      onEvents(child, (e) => {
        if (e.type === "output" && String(e.line).includes("x-install-started") && !killedAt) {
          const line = qemuOf(q.root).find((l) => l.includes("micro_x."));
          if (line) {
            killedAt = Date.now();
            process.kill(Number(line.split(" ")[0]), "SIGKILL");
          }
        }
        if (e.type === "node-failed") failed = e;
      });
      const r = await done;
      expect(killedAt, "the install of micro:x never started").toBeGreaterThan(0);
      expect(r.code).toBe(1);
      expect(failed?.stack).toBe("micro:x");
      expect(String(failed?.message)).toMatch(/QEMU \(pid \d+\) was killed by SIGKILL while the VM was in use/);
      const ms = failed!.time - killedAt;
      expect(ms).toBeLessThan(3000);
      expect(r.events.filter((e) => e.type === "node-done").map((e) => e.stack).sort()).toEqual(["micro", "micro:y"]);
      await expect(fs.lstat(path.join(build(q.root), "micro:x.qcow2"))).rejects.toThrow();
      await checkAfterFault(q.root, "QEMU killed");
      figure(`(b) QEMU SIGKILLed during install: node failed ${ms} ms later, the other branch built`);
    } finally {
      killQemuOf(q.root);
      await q.cleanup();
    }
  });

  it("SIGINT and SIGTERM at random points exit 130, leave no QEMU, no temporary file, a sound store", async () => {
    let signals = 0;
    let worst = 0;
    for (let i = 0; i < 6; i++) {
      await p.layer("a", `echo "a sig ${i}" > /etc/dbuild-a`);
      const sig = i % 2 ? "SIGTERM" : "SIGINT";
      const step = pick(["boot", "rsync", "install", "cleanup", "publish"] as const);
      const { child, done } = startDbuild(["all", "--progress", "json"], { cwd: p.root });
      let sentAt = 0;
      onEvents(child, (e) => {
        if (e.type === "step" && e.step === step && !sentAt) {
          sentAt = Date.now();
          child.kill(sig);
        }
      });
      const r = await done;
      if (!sentAt) {
        expect(r.code).toBe(0);
        continue;
      }
      signals++;
      const exitMs = Date.now() - sentAt;
      worst = Math.max(worst, exitMs);
      // 130: interrupted; 0: the signal came after the last step had already finished its work.
      expect([0, 130], `${sig} at ${step}: ${r.stderr}`).toContain(r.code);
      await checkAfterFault(p.root, `${sig} at ${step}`);
      expect(await fs.readdir(path.join(build(p.root), ".dbuild", "tmp"))).toEqual([]);
    }
    expect(signals).toBeGreaterThanOrEqual(4);
    const r = await dbuild(["all", "--progress", "json"], { cwd: p.root });
    expect(r.code).toBe(0);
    figure(`(c) SIGINT/SIGTERM: ${signals} signals at random steps, dbuild exited within ${worst} ms each, next run succeeded`);
  }, 600_000);

  it("two `dbuild all` at once: one builds, the other waits, says so, then finds everything fresh", async () => {
    await p.layer("b", 'echo "b concurrent" > /etc/dbuild-b');
    const first = startDbuild(["all", "--progress", "json"], { cwd: p.root });
    await new Promise<void>((resolve) => onEvents(first.child, (e) => e.type === "build-start" && resolve()));
    const second = startDbuild(["all", "--progress", "json"], { cwd: p.root });
    const [a, b] = await Promise.all([first.done, second.done]);
    expect(a.code).toBe(0);
    expect(b.code).toBe(0);
    // (Run alone with -t, the project is fresh and the first run builds micro and micro:a too.)
    expect(a.events.filter((e) => e.type === "node-done").map((e) => e.stack)).toContain("micro:a:b");
    expect(b.stderr).toMatch(/Blocking waiting for file lock on build directory .* \(held by pid \d+: dbuild all --progress json/);
    expect(b.events.filter((e) => e.type === "node-done")).toEqual([]);
    expect((b.events.find((e) => e.type === "build-start") as { stale?: string[] } | undefined)?.stale).toEqual([]);
    // --no-wait fails at once instead, naming the holder.
    // A slow install, so the holder surely still holds the lock while the refused run starts.
    await p.layer("b", 'sleep 20; echo "b no-wait" > /etc/dbuild-b');
    const holder = startDbuild(["all", "--progress", "json"], { cwd: p.root });
    await new Promise<void>((resolve) => onEvents(holder.child, (e) => e.type === "build-start" && resolve()));
    const t = Date.now();
    const refused = await dbuild(["all", "--no-wait"], { cwd: p.root });
    const refusedMs = Date.now() - t;
    expect(refused.code).toBe(75);
    expect(refused.stderr).toMatch(/the build dir is locked by pid \d+: dbuild all/);
    expect((await holder.done).code).toBe(0);
    figure(`(e) concurrent runs: the second waited and built nothing; --no-wait refused in ${refusedMs} ms with exit 75`);
  });

  it("a bit-flipped object is detected and rebuilt, never used", async () => {
    const r0 = await dbuild(["all", "--progress", "json"], { cwd: p.root });
    expect(r0.code).toBe(0);
    const view = path.join(build(p.root), "micro:a.qcow2");
    const object = await fs.realpath(view);
    const size = (await fs.stat(object)).size;
    await fs.chmod(object, 0o644);
    const fh = await fs.open(object, "r+");
    const byte = Buffer.alloc(1);
    const off = Math.floor(size * 0.6);
    await fh.read(byte, 0, 1, off);
    byte[0] = byte[0]! ^ 0x01;
    await fh.write(byte, 0, 1, off);
    await fh.close();
    await fs.chmod(object, 0o444);
    const t = Date.now();
    const r = await dbuild(["all", "--progress", "json"], { cwd: p.root });
    expect(r.code).toBe(0);
    // micro:a is rebuilt, and micro:a:b too: its delta was made over the corrupt bytes.
    expect(r.events.filter((e) => e.type === "node-done").map((e) => e.stack)).toEqual(["micro:a", "micro:a:b"]);
    const newA = await fs.realpath(view);
    expect(newA).not.toBe(object);
    const chain = execFileSync("qemu-img", ["info", "--backing-chain", "-U", path.join(build(p.root), "micro:a:b.qcow2")], { encoding: "utf8" });
    expect(chain).toContain(path.basename(newA));
    expect(chain).not.toContain(path.basename(object) + "\n");
    figure(`(f) bit flip in a published object: detected at the next plan, 2 nodes rebuilt in ${((Date.now() - t) / 1000).toFixed(1)} s, corrupt object never used`);
  });

  const canMount = spawnSync("unshare", ["--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", "/mnt"]).status === 0;
  it.skipIf(!canMount)("a full disk: the build dir on a small tmpfs; QEMU's I/O error fails the node within seconds, names the build dir, publishes nothing", async () => {
    const d = await makeVmProject("dbuild-faults-disk-");
    try {
      await d.layer("fill", 'echo "filling-now"\ndd if=/dev/urandom of=/root/fill bs=1M count=150 conv=fsync 2>&1 | tail -n 2\necho "fill finished"');
      await d.target("micro:fill");
      await fs.mkdir(build(d.root), { recursive: true });
      // The build dir is a 64 MiB tmpfs in a private mount namespace (nothing mounted for anyone else).
      // After dbuild exits, still inside the namespace, list what is left in the build dir.
      const b = build(d.root);
      const script =
        `mount -t tmpfs -o size=64m tmpfs ${b} || exit 99; ${process.execPath} ${dbuildBin} all --progress json; rc=$?; ` +
        `echo "LEFT tmp=[$(ls -A ${b}/.dbuild/tmp)] views=[$(cd ${b} && ls -d *.qcow2 2>/dev/null | tr '\\n' ' ')]" >&2; exit $rc`;
      const { spawn } = await import("node:child_process");
      const child = spawn("unshare", ["--mount", "--propagation", "private", "sh", "-c", script], { cwd: d.root, stdio: ["ignore", "pipe", "pipe"] });
      let fillAt = 0;
      let failed: Ev | undefined;
      let fillDone = false;
      let stderr = "";
      child.stderr.on("data", (x: Buffer) => (stderr += x.toString()));
      onEvents(child, (e) => {
        if (e.type === "output" && String(e.line).includes("filling-now")) fillAt = e.time;
        if (e.type === "node-failed") failed = e;
        if (e.type === "node-done" && e.stack === "micro:fill") fillDone = true;
      });
      const code = await new Promise<number | null>((res) => child.on("close", res));
      expect(code, stderr).toBe(1);
      expect(failed?.stack).toBe("micro:fill");
      const msg = String(failed?.message);
      expect(msg).toContain(`no space left on the file system holding the build dir ${build(d.root)}`);
      expect(msg).toMatch(/had written [\d.]+ MiB when it stopped/);
      expect(msg).toContain("Nothing was published");
      // The disk filled during the install's writes, not before (a failed warm-snapshot save frees its space).
      expect(fillAt, "the install never started writing: the disk was full before").toBeGreaterThan(0);
      const ms = failed!.time - fillAt;
      expect(ms).toBeLessThan(30_000);
      expect(qemuOf(d.root)).toEqual([]);
      // Seen inside the namespace before the tmpfs went away: no temporary file, only the base's view.
      expect(stderr).toContain("LEFT tmp=[] views=[micro.qcow2 ]");
      expect(fillDone).toBe(false);
      figure(`(d) full disk (64 MiB tmpfs): clear error ${(ms / 1000).toFixed(1)} s after the guest started writing; nothing published; no QEMU left`);
    } finally {
      killQemuOf(d.root);
      await d.cleanup();
    }
  });
});
