/**
 * Shared by the fault-injection suite (its seeded random source is the edit suite's rng): a live NDJSON
 * reader for a running dbuild, and the store invariants checked after each fault.
 */
import { execFileSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { sha256File } from "../../src/util/digest.js";
import { sleep } from "../../src/util/sleep.js";
import { qemuOf } from "./processes.js";

export type Ev = Record<string, unknown> & { type: string; time: number };

/** Calls `on` for each NDJSON event a running dbuild prints, as it prints it. */
export function onEvents(child: ChildProcess, on: (e: Ev) => void): void {
  let buf = "";
  child.stdout!.on("data", (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line.startsWith("{")) continue;
      try {
        on(JSON.parse(line) as Ev);
      } catch {
        // not an event
      }
    }
  });
}

/** Milliseconds until no QEMU of `root` is left (the kernel tears processes down asynchronously), or -1. */
export async function qemuGoneWithin(root: string, ms: number): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 <= ms) {
    if (qemuOf(root).length === 0) return Date.now() - t0;
    await sleep(20);
  }
  return -1;
}

/**
 * Every published object passes `qemu-img check` and matches its record and its publish-time sum; every
 * view points at an existing object. Returns the problems found (empty = fine) and how many objects were checked.
 */
export async function storeProblems(buildDir: string): Promise<{ problems: string[]; objects: number }> {
  const problems: string[] = [];
  const internal = path.join(buildDir, ".dbuild");
  const objectsDir = path.join(internal, "objects");
  let objects = 0;
  const records = await fs.readdir(path.join(internal, "records")).catch(() => [] as string[]);
  for (const n of records) {
    if (!n.endsWith(".json")) continue;
    const rec = JSON.parse(await fs.readFile(path.join(internal, "records", n), "utf8")) as { object: string; digest?: string; stack: string };
    const obj = path.join(objectsDir, rec.object);
    const st = await fs.stat(obj).catch(() => undefined);
    if (!st) {
      problems.push(`${n}: its object ${rec.object} is missing`);
      continue;
    }
    objects++;
    try {
      execFileSync("qemu-img", ["check", "-q", obj], { stdio: "pipe" });
    } catch (e) {
      problems.push(`${rec.object}: qemu-img check failed: ${String((e as { stderr?: Buffer }).stderr ?? e)}`);
    }
    const digest = `sha256:${await sha256File(obj)}`;
    if (rec.digest && rec.digest !== digest) problems.push(`${rec.object}: sha256 ${digest} differs from its record's ${rec.digest}`);
    const sum = JSON.parse(await fs.readFile(path.join(internal, "sums", `${rec.object}.json`), "utf8").catch(() => "null")) as { size: number; digest: string } | null;
    if (!sum) problems.push(`${rec.object}: no publish-time sum`);
    else if (sum.size !== st.size || sum.digest !== digest) problems.push(`${rec.object}: differs from its publish-time sum`);
  }
  for (const n of await fs.readdir(buildDir)) {
    if (!n.endsWith(".qcow2")) continue;
    const p = path.join(buildDir, n);
    const l = await fs.lstat(p);
    if (!l.isSymbolicLink()) problems.push(`${n}: a view that is not a link`);
    else if (!(await fs.stat(p).catch(() => undefined))) problems.push(`${n}: a view pointing at nothing`);
  }
  return { problems, objects };
}
