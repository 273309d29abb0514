// VM runtime overhead: time from QEMU start to SSH-ready, and from "power off" to QEMU exit, for
// startVm()/shutdown() vs. the floor: the same guest booted by a hand-written qemu command line, polled
// by `until ssh ... true; do :; done`, powered off with `ssh ... poweroff`. Median of 5, interleaved so
// load changes on this shared machine hit both sides alike. Writes docs/bench/vm.md.
// Run: npm run bench -- vm   (needs the micro test image: built on first use by the e2e helpers' cache)
import { execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { startVm } from "../dist/vm/qemu.js";
import { freeTcpPort, releasePort } from "../dist/vm/ports.js";
import { median, microImage, writeSection } from "./lib.js";

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

const SSH_OPTS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=5";

async function floor(dir, image, key, i) {
  const disk = child(dir, image, `floor-${i}.qcow2`);
  const port = await freeTcpPort();
  const args = [
    "-nodefaults", "-display", "none", "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "256", "-smp", "1",
    "-drive", `file=${disk},if=virtio,format=qcow2`, "-device", "virtio-rng-pci",
    "-netdev", `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:22`, "-device", "virtio-net-pci,netdev=n0",
    "-serial", `file:${path.join(dir, `floor-${i}.log`)}`,
  ];
  const t0 = performance.now();
  const q = spawn("qemu-system-x86_64", args, { stdio: "ignore" });
  const exited = new Promise((r) => q.once("exit", r));
  const ssh = `ssh ${SSH_OPTS} -i ${key} -p ${port} root@127.0.0.1`;
  execFileSync("bash", ["-c", `until ${ssh} true 2>/dev/null; do :; done`]);
  const ready = performance.now() - t0;
  const t1 = performance.now();
  try {
    execFileSync("bash", ["-c", `${ssh} poweroff`], { stdio: "ignore" });
  } catch {
    // the connection may drop as the guest goes down
  }
  await exited;
  releasePort(port);
  return { ready, exit: performance.now() - t1 };
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
Floor: the same guest from a hand-written \`qemu-system-x86_64\` line polled with \`until ssh ... true; do :; done\`,
then \`ssh ... poweroff\`. Runs interleaved; medians of ${RUNS}. Load average at the end: ${load} (machine shared).

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
