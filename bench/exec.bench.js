// Build executor benchmarks (issue 4), all in one run so ratios share the machine's state:
//  1. two independent branches with -j2 vs -j1 (wall-time ratio; goal <= 0.6 on 2 cores)
//  2. one layer's whole `dbuild build` vs the floor: the same cycle by hand (qemu-img create, boot,
//     wait for SSH, rsync, run the script, power off); goal <= 1.1x
//  3. disk: a layer that writes 1 MiB adds at most 2 MiB to the store
//  4. a no-op `dbuild all` (goal < 0.5 s, no VM started)
// Run: npm run bench -- exec     Writes docs/bench/exec.md.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { freeTcpPort, releasePort } from "../dist/vm/ports.js";
import { floorVm, loadavg, median, microImage, root, writeSection } from "./lib.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const { image, key, pubkey } = microImage();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-bench-exec-"));
const proj = path.join(dir, "proj");

function write(rel, content, mode = 0o644) {
  const p = path.join(proj, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
  fs.chmodSync(p, mode);
}
function layer(name, script) {
  write(`layers/${name}/target/install`, `#!/bin/sh\nset -e\n${script}\n`, 0o755);
  if (!fs.existsSync(path.join(proj, `layers/${name}/install`))) fs.symlinkSync("../../utils/addlayer.sh", path.join(proj, `layers/${name}/install`));
}
function dbuild(...args) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [path.join(root, "bin", "dbuild.js"), "--progress", "json", ...args], { cwd: proj, encoding: "utf8" });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`dbuild ${args.join(" ")} failed: ${r.stderr}\n${r.stdout.slice(-2000)}`);
  const events = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  return { ms, events };
}

// The project: micro imported from the cached test image; layers a and b on independent branches.
const sha = createHash("sha256").update(fs.readFileSync(image)).digest("hex");
write("layers/micro/layer.yaml", `kind: base\nimport:\n  from: ${image}\n  sha256: ${sha}\n`);
write("utils/addlayer.sh", fs.readFileSync(path.join(root, "utils", "addlayer.sh"), "utf8"), 0o755);
write("keys/demobuilder", fs.readFileSync(key), 0o600);
write("keys/demobuilder.pub", fs.readFileSync(pubkey));
write("demobuild.yaml", "buildVm: {mem: 256, cpus: 1}\njobs: 2\n");
write("targets/micro:a", "");
write("targets/micro:b", "");
const stamp = (n) => `echo ${n} > /etc/stamp`;
layer("a", stamp("a0"));
layer("b", stamp("b0"));
dbuild("build", "micro");

const rows = { j1: [], j2: [], one: [], floor: [] };

// --- hand-made floor of one layer cycle (bench/lib.js floorVm: one SSH connection, probes 100 ms apart) ---
async function floorCycle(i) {
  const base = fs.realpathSync(path.join(proj, "build", "micro.qcow2"));
  const disk = path.join(dir, `floor-${i}.qcow2`);
  const t0 = performance.now();
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk]);
  const port = await freeTcpPort();
  const vm = await floorVm({ disk, key, dir, name: `floor-${i}`, port });
  vm.rsync(path.join(proj, "layers", "a", "target") + "/", "/tmp/layer/");
  vm.ssh("cd /tmp/layer && ./install && cd / && rm -rf /tmp/layer && sync && fstrim / ; sync");
  await vm.poweroff();
  releasePort(port);
  const ms = performance.now() - t0;
  fs.rmSync(disk, { force: true });
  return ms;
}

let n = 1;
try {
  for (let i = 0; i < RUNS; i++) {
    // Fresh inputs each time so both nodes are stale; -j1 and -j2 interleaved.
    layer("a", stamp(`a${n}`));
    layer("b", stamp(`b${n++}`));
    rows.j1.push(dbuild("build", "micro:a", "micro:b", "-j", "1").ms);
    layer("a", stamp(`a${n}`));
    layer("b", stamp(`b${n++}`));
    rows.j2.push(dbuild("build", "micro:a", "micro:b", "-j", "2").ms);
    layer("a", stamp(`a${n++}`));
    rows.one.push(dbuild("build", "micro:a").ms);
    rows.floor.push(await floorCycle(i));
    console.log(`run ${i + 1}/${RUNS}: -j1 ${rows.j1.at(-1).toFixed(0)} ms, -j2 ${rows.j2.at(-1).toFixed(0)} ms, one layer ${rows.one.at(-1).toFixed(0)} ms, floor ${rows.floor.at(-1).toFixed(0)} ms`);
  }

  // Disk: a layer that writes 1 MiB of incompressible data.
  layer("a", "dd if=/dev/urandom of=/root/blob bs=1024 count=1024 2>/dev/null");
  dbuild("build", "micro:a");
  const obj = fs.realpathSync(path.join(proj, "build", "micro:a.qcow2"));
  const allocated = Number(execFileSync("du", ["-B1", obj], { encoding: "utf8" }).split("\t")[0]);

  // No-op `dbuild all`.
  dbuild("all");
  const noop = [];
  let vmStarted = false;
  for (let i = 0; i < 5; i++) {
    const r = dbuild("all");
    noop.push(r.ms);
    vmStarted ||= r.events.some((e) => e.type === "step" && e.step === "boot");
  }

  const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
  const j1 = median(rows.j1), j2 = median(rows.j2), one = median(rows.one), fl = median(rows.floor);
  writeSection("exec", `## Build executor

\`npm run bench -- exec\` (bench/exec.bench.js; BENCH_RUNS=${RUNS}, medians). Micro guest under TCG, build VMs of
256 MiB / 1 vCPU, ${os.availableParallelism()} cores. Load average at the end: ${loadavg()}.

| measure | dbuild | reference | ratio | goal |
|---|---|---|---|---|
| two independent branches | -j2: ${s(j2)} | -j1: ${s(j1)} | ${(j2 / j1).toFixed(2)} | <= 0.6 |
| one layer, whole \`dbuild build\` (process start to published) | ${s(one)} | by hand: ${s(fl)} | ${(one / fl).toFixed(2)} | <= 1.1 |
| store growth for a layer writing 1 MiB | ${(allocated / 1048576).toFixed(2)} MiB | 1 MiB written | | <= 2 MiB |
| no-op \`dbuild all\` (node start to exit) | ${s(median(noop))} | | | < 0.5 s; VM started: ${vmStarted ? "YES" : "no"} |

The hand-made floor: \`qemu-img create\` of a child, the same QEMU line without the guest agent, \`ssh true\` probes
100 ms apart, then ONE SSH connection (ControlMaster) for \`rsync -rL\` of target/, \`./install\` and the clean-up
(\`sync\` + \`fstrim\`), \`/sbin/poweroff\`, wait for QEMU to exit.
dbuild additionally waits for the guest agent to report the IP, removes MAC references, and publishes the image
(rebase, record, view). Per-run ms: -j1 ${rows.j1.map((x) => x.toFixed(0)).join(", ")}; -j2 ${rows.j2.map((x) => x.toFixed(0)).join(", ")};
one ${rows.one.map((x) => x.toFixed(0)).join(", ")}; floor ${rows.floor.map((x) => x.toFixed(0)).join(", ")}.
`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
