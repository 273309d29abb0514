// Fault injection, part (g): malformed input. Each case is a small project (or a flag) fed to the real CLI;
// each must exit 2 (bad input), name where the problem is (file:line, the option, the stack or the tool)
// and say what to do (a hint). No VM is booted: bad input is refused before anything runs.
import { spawn } from "node:child_process";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { dbuildBin } from "../helpers/cli.js";

const SHA = "a".repeat(64);
const BASE = `kind: base\nimport: {from: ./base.qcow2, sha256: ${SHA}}\n`;

interface Case {
  name: string;
  /** Files written over the valid baseline project (null deletes). */
  files?: Record<string, string | null>;
  args: string[];
  /** Where the problem is, as the error must name it. */
  where: RegExp;
  env?: Record<string, string>;
}

const cases: Case[] = [
  // demobuild.yaml
  { name: "yaml syntax", files: { "demobuild.yaml": "jobs: [1\n" }, args: ["plan"], where: /demobuild\.yaml:\d+:\d+/ },
  { name: "unknown key", files: { "demobuild.yaml": "jobs: 1\nbogus: 1\n" }, args: ["plan"], where: /demobuild\.yaml:2:\d+: unknown key "bogus"/ },
  { name: "jobs 0", files: { "demobuild.yaml": "jobs: 0\n" }, args: ["plan"], where: /demobuild\.yaml:1:\d+: jobs/ },
  { name: "jobs not a number", files: { "demobuild.yaml": "jobs: many\n" }, args: ["plan"], where: /demobuild\.yaml:1:\d+: jobs/ },
  { name: "negative build VM memory", files: { "demobuild.yaml": "buildVm: {mem: -5}\n" }, args: ["plan"], where: /demobuild\.yaml:1:\d+: buildVm\.mem/ },
  { name: "boot timeout not a number", files: { "demobuild.yaml": "timeouts:\n  boot: soon\n" }, args: ["plan"], where: /demobuild\.yaml:2:\d+: timeouts\.boot/ },
  { name: "unknown network mode", files: { "demobuild.yaml": "network: {mode: wifi}\n" }, args: ["plan"], where: /demobuild\.yaml:1:\d+: network\.mode/ },
  { name: "unknown accelerator", files: { "demobuild.yaml": "accelerator: hvf\n" }, args: ["plan"], where: /demobuild\.yaml:1:\d+: accelerator/ },
  { name: "demobuild.yaml a list", files: { "demobuild.yaml": "- jobs: 1\n" }, args: ["plan"], where: /demobuild\.yaml/ },
  { name: "memory budget 0", files: { "demobuild.yaml": "memoryBudget: 0\n" }, args: ["plan"], where: /demobuild\.yaml:1:\d+: memoryBudget/ },
  { name: "fractional cpus", files: { "demobuild.yaml": "defaults: {cpus: 1.5}\n" }, args: ["plan"], where: /demobuild\.yaml:1:\d+: defaults\.cpus/ },
  { name: "duplicate key", files: { "demobuild.yaml": "jobs: 1\njobs: 2\n" }, args: ["plan"], where: /demobuild\.yaml:2:\d+/ },
  { name: "cache URL of another scheme", files: { "demobuild.yaml": "cache: {from: http://127.0.0.1:1/x}\n" }, args: ["all", "--dry-run", "--cache-from", "http://127.0.0.1:1/x"], where: /http:\/\/127\.0\.0\.1:1\/x|cache/ },
  // layer.yaml
  { name: "layer.yaml syntax", files: { "layers/a/layer.yaml": "mem: [\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml:\d+:\d+/ },
  { name: "layer.yaml unknown key", files: { "layers/a/layer.yaml": "memory: 512\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml:1:\d+: unknown key "memory"/ },
  { name: "layer kind unknown", files: { "layers/a/layer.yaml": "kind: sideways\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml:1:\d+: kind/ },
  { name: "layer mem not a number", files: { "layers/a/layer.yaml": "mem: lots\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml:1:\d+: mem/ },
  { name: "layer timeout negative", files: { "layers/a/layer.yaml": "timeout: -1\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml:1:\d+: timeout/ },
  { name: "import without sha256", files: { "layers/micro/layer.yaml": "kind: base\nimport: {from: ./base.qcow2}\n" }, args: ["plan"], where: /layers\/micro\/layer\.yaml:2:\d+/ },
  { name: "import sha256 malformed", files: { "layers/micro/layer.yaml": "kind: base\nimport: {from: ./base.qcow2, sha256: xyz}\n" }, args: ["plan"], where: /layers\/micro\/layer\.yaml:2:\d+/ },
  { name: "env value not a string", files: { "layers/a/layer.yaml": "env: {A: [1, 2]}\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml:1:\d+: env/ },
  { name: "env name invalid", files: { "layers/a/layer.yaml": "env: {\"BAD NAME\": x}\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml:1:\d+/ },
  { name: "layer.yaml a scalar", files: { "layers/a/layer.yaml": "just text\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml/ },
  { name: "layer.yaml cpus 0", files: { "layers/a/layer.yaml": "cpus: 0\n" }, args: ["plan"], where: /layers\/a\/layer\.yaml:1:\d+: cpus/ },
  { name: "why of an unknown stack", args: ["why", "micro:zz"], where: /micro:zz/ },
  // targets/
  { name: "target names an unknown layer", files: { "targets/micro:nope": "" }, args: ["plan"], where: /targets\/micro:nope.*nope|nope/ },
  { name: "target with an empty component", files: { "targets/micro::a": "" }, args: ["plan"], where: /targets\/micro::a/ },
  { name: "target not starting with a base layer", files: { "targets/a:micro": "" }, args: ["plan"], where: /targets\/a:micro/ },
  { name: "target line without =", files: { "targets/micro:a": "FOO\n" }, args: ["plan"], where: /targets\/micro:a:1/ },
  { name: "target key lower case", files: { "targets/micro:a": "mem=2048\n" }, args: ["plan"], where: /targets\/micro:a:1/ },
  { name: "target MEM not a number", files: { "targets/micro:a": "MEM=lots\n" }, args: ["plan"], where: /targets\/micro:a:1/ },
  { name: "target CPUS zero", files: { "targets/micro:a": "CPUS=0\n" }, args: ["plan"], where: /targets\/micro:a:1/ },
  { name: "snap of a stack never built", args: ["snap", "micro:a", "s.qcow2"], where: /micro:a/ },
  { name: "target name with a space", files: { "targets/micro a": "" }, args: ["plan"], where: /targets\/micro a/ },
  { name: "finalizing layer not last", files: { "layers/f/layer.yaml": "kind: finalizing\n", "layers/f/target/install": "#!/bin/sh\n", "layers/f/convert": "#!/bin/sh\n", "targets/micro:f:a": "" }, args: ["plan"], where: /targets\/micro:f:a/ },
  // flags and command-line stacks
  { name: "-j 0", args: ["all", "-j", "0"], where: /-j: "0"/ },
  { name: "-j not a number", args: ["all", "-j", "x"], where: /-j: "x"/ },
  { name: "--progress unknown", args: ["all", "--progress", "fancy"], where: /--progress: unknown mode "fancy"/ },
  { name: "--shard out of range", args: ["all", "--shard", "3/2"], where: /--shard/ },
  { name: "--shard malformed", args: ["all", "--shard", "x"], where: /--shard/ },
  { name: "unknown option", args: ["all", "--frobnicate"], where: /unknown option '--frobnicate'/ },
  { name: "unknown command-line stack", args: ["build", "micro:zzz"], where: /micro:zzz/ },
  { name: "--cache-from of another scheme", args: ["all", "--cache-from", "ftp://127.0.0.1/x"], where: /ftp:\/\/127\.0\.0\.1\/x/ },
  { name: "--cache-from without a repository", args: ["all", "--cache-from", "oci://127.0.0.1:1"], where: /oci:\/\/127\.0\.0\.1:1/ },
  { name: "--cache-to with a bad port", args: ["all", "--cache-to", "oci://127.0.0.1:99999/r"], where: /oci:\/\/127\.0\.0\.1:99999\/r/ },
  { name: "watch --debounce negative", args: ["watch", "layers/a", "--debounce", "-5"], where: /--debounce/ },
  { name: "run --mem 0", args: ["run", "x.qcow2", "--mem", "0"], where: /--mem/ },
  // host tools
  { name: "missing qemu-img / qemu-system", args: ["all"], where: /qemu-img|qemu-system-x86_64/, env: { PATH: "/nonexistent" } },
];

let tmp = "";
afterAll(async () => {
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

async function project(c: Case): Promise<string> {
  const root = path.join(tmp, c.name.replace(/[^a-z0-9]+/gi, "-"));
  const files: Record<string, string | null> = {
    "layers/micro/layer.yaml": BASE,
    "layers/a/layer.yaml": "kind: intermediate\n",
    "layers/a/target/install": "#!/bin/sh\necho a\n",
    "targets/micro:a": "",
    ...c.files,
  };
  await fs.mkdir(root, { recursive: true });
  for (const [rel, content] of Object.entries(files)) {
    const p = path.join(root, rel);
    if (content === null) {
      await fs.rm(p, { force: true });
      continue;
    }
    await fs.mkdir(path.dirname(p), { recursive: true });
    await fs.writeFile(p, content, { mode: rel.endsWith("install") || rel.endsWith("convert") ? 0o755 : 0o644 });
  }
  await fs.writeFile(path.join(root, "base.qcow2"), "not really an image");
  return root;
}

function run(root: string, args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [dbuildBin, ...args], { cwd: root, env: { ...process.env, ...env, FORCE_COLOR: "0" }, stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code) => resolve({ code, stderr }));
  });
}

describe("(g) malformed input", () => {
  it(`${cases.length} malformed inputs each exit 2, naming where and what to do`, async () => {
    expect(cases.length).toBeGreaterThanOrEqual(40);
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-badinput-"));
    const results: { c: Case; code: number | null; stderr: string }[] = [];
    // Eight CLIs at a time: each is a separate node process, mostly waiting on module loading.
    for (let i = 0; i < cases.length; i += 8) {
      const batch = cases.slice(i, i + 8);
      results.push(...(await Promise.all(batch.map(async (c) => ({ c, ...(await run(await project(c), c.args, c.env)) })))));
    }
    const bad = results
      .filter(({ c, code, stderr }) => code !== 2 || !c.where.test(stderr) || !/hint:|run `dbuild help`/.test(stderr))
      .map(({ c, code, stderr }) => `${c.name}: exit ${code}\n${stderr.trim()}`);
    expect(bad, bad.join("\n\n")).toEqual([]);
    process.stdout.write(`[faults] (g) malformed inputs: ${cases.length} tried, ${cases.length - bad.length} exit 2 with where + hint\n`);
  }, 300_000);
});
