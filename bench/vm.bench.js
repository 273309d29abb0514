// VM runtime overhead: time from QEMU start to SSH-ready, and from "power off" to QEMU exit, for
// startVm()/shutdown() vs. the floor (bench/lib.js floorVm): the same guest booted by a hand-written qemu
// command line, probed with `ssh true` 100 ms apart, powered off with /sbin/poweroff over that one connection. Median of 5, interleaved so
// load changes on this shared machine hit both sides alike. Writes docs/bench/vm.md.
// Run: npm run bench -- vm   (needs the micro test image: built on first use by the e2e helpers' cache)
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { startVm } from "../dist/vm/qemu.js";
import { freeTcpPort, releasePort } from "../dist/vm/ports.js";
import { floorVm, median, microImage, writeSection } from "./lib.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 5);

function child(dir, image, name) {
  const p = path.join(dir, name);
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image, p]);
  return p;
}

async function ours(dir, image, key, i) {
  const disk = child(dir, image, `ours-${i}.qcow2`);
  const t0 = performance.now();
  const vm = await startVm({
    disk, mem: 256, cpus: 1, accelerator: "tcg", network: { mode: "user", bridge: "" }, keyPath: key,
    serialLog: path.join(dir, `ours-${i}.log`), runDir: path.join(dir, `ours-${i}.run`), bootTimeoutMs: 180_000,
  });
  const ready = performance.now() - t0;
  const t1 = performance.now();
  await vm.shutdown({ timeoutMs: 30_000 });
  return { ready, exit: performance.now() - t1, timings: vm.timings };
}

async function floor(dir, image, key, i) {
  const disk = child(dir, image, `floor-${i}.qcow2`);
  const port = await freeTcpPort();
  const vm = await floorVm({ disk, key, dir, name: `floor-${i}`, port });
  const t1 = performance.now();
  await vm.poweroff();
  releasePort(port);
  return { ready: vm.ready, exit: performance.now() - t1 };
}

const { image, key } = microImage();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-bench-vm-"));
const rows = { ours: [], floor: [] };
try {
  for (let i = 0; i < RUNS; i++) {
    const a = await ours(dir, image, key, i);
    rows.ours.push(a);
    const b = await floor(dir, image, key, i);
    rows.floor.push(b);
    console.log(`run ${i + 1}/${RUNS}: startVm ready ${a.ready.toFixed(0)} ms, exit ${a.exit.toFixed(0)} ms | floor ready ${b.ready.toFixed(0)} ms, exit ${b.exit.toFixed(0)} ms  ${JSON.stringify(a.timings)}`);
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}

const m = (side, k) => median(rows[side].map((r) => r[k]));
const f = (x) => `${(x / 1000).toFixed(2)} s`;
const ratio = (k) => (m("ours", k) / m("floor", k)).toFixed(2);
const load = os.loadavg().map((x) => x.toFixed(1)).join(" ");
const md = `## VM runtime: boot to SSH-ready, poweroff to exit

\`npm run bench -- vm\` (bench/vm.bench.js; BENCH_RUNS=${RUNS}). Micro guest, TCG, 256 MiB, 1 vCPU, user networking.
Floor: the same guest from a hand-written \`qemu-system-x86_64\` line probed with \`ssh true\` 100 ms apart (OpenSSH
ControlMaster: the connection that answers is reused), then \`/sbin/poweroff\` over it. Runs interleaved; medians of ${RUNS}. Load average at the end: ${load} (machine shared).

| | startVm() / shutdown() | floor | ratio |
|---|---|---|---|
| start to SSH-ready | ${f(m("ours", "ready"))} | ${f(m("floor", "ready"))} | ${ratio("ready")} |
| power off to QEMU exit | ${f(m("ours", "exit"))} | ${f(m("floor", "exit"))} | ${ratio("exit")} |

Per run (ms): ${rows.ours.map((r, i) => `${r.ready.toFixed(0)}/${rows.floor[i].ready.toFixed(0)}`).join(", ")} (ready, ours/floor);
${rows.ours.map((r, i) => `${r.exit.toFixed(0)}/${rows.floor[i].exit.toFixed(0)}`).join(", ")} (exit, ours/floor).

startVm() also waits for the guest agent and the guest's IP before SSH (the floor does not), and its shutdown
uses QMP system_powerdown rather than an SSH round trip.
`;
writeSection("vm", md);
