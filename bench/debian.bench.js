// Debian bookworm (issue 10), in one run on this machine:
//  1. cold build of layers/debian by dbuild (a fresh project and build dir) with the packages cached;
//  2. boot to SSH of that image: startVm() vs the hand-made floor (bench/lib.js floorVm: a hand-written
//     QEMU line, `ssh true` probes 100 ms apart, one ControlMaster connection);
//  3. the same web layer (apt-get install nginx-light + a page) applied to the same image by dbuild and by
//     Packer 1.6.6 (QEMU builder: disk_image, use_backing_file, boot_wait 1s, shell provisioner);
//  4. a small layer (4 MiB payload + a script) on that image: cold (`--cold`), first (boot + save the warm
//     snapshot) and warm (resumed from it) - issue 16's goal: warm <= 0.2x cold.
// The package cache's bytes (second build vs first, from an empty cache) are bench/proxy.bench.js.
// Writes docs/bench/debian.md. Run as root (mmdebstrap): npm run bench -- debian
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { startVm } from "../dist/vm/qemu.js";
import { randomBytes } from "node:crypto";
import { freeTcpPort, releasePort } from "../dist/vm/ports.js";
import { cache, DEBIAN_WEB, debianWebProject, floorVm, loadavg, median, microImage, packerEnv, root, writeSection } from "./lib.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const userCache = path.join(cache, "user-cache");
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-bench-debian-"));
const { key, pubkey } = microImage();

const project = (name) => debianWebProject(path.join(dir, name), { key, pubkey });

function dbuild(cwd, args) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [path.join(root, "bin", "dbuild.js"), ...args, "--progress", "json"], {
    cwd, encoding: "utf8", env: { ...process.env, DBUILD_CACHE_HOME: userCache }, maxBuffer: 64 << 20,
  });
  if (r.status !== 0) throw new Error(`dbuild ${args.join(" ")} failed:\n${r.stderr}`);
  const events = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  return { ms: performance.now() - t0, events };
}

// --- 1. cold build, packages cached -------------------------------------------------------------------
// Warm the package cache first if this machine never built the base (not measured).
if (!fs.existsSync(path.join(userCache, "layers", "debian", "archives"))) dbuild(project("warmup"), ["build", "debian"]);
const p = project("bench");
const cold = dbuild(p, ["build", "debian"]);
const log = fs.readFileSync(path.join(p, "build", "logs", "debian.log"), "utf8");
const downloaded = /packages: (\d+) in the cache, (\d+) downloaded/.exec(log);
const image = fs.realpathSync(path.join(p, "build", "debian.qcow2"));
console.log(`cold build with packages cached: ${(cold.ms / 1000).toFixed(1)} s (${downloaded?.[0]})`);

// --- 2. boot to SSH ----------------------------------------------------------------------------------
function child(name) {
  const c = path.join(dir, name);
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image, c]);
  return c;
}

async function ours(i) {
  const disk = child(`ours-${i}.qcow2`);
  const t0 = performance.now();
  const vm = await startVm({
    disk, mem: 1024, cpus: 1, accelerator: "tcg", network: { mode: "user", bridge: "" }, keyPath: key,
    serialLog: path.join(dir, `ours-${i}.log`), runDir: path.join(dir, `ours-${i}.run`), bootTimeoutMs: 900_000,
  });
  const ready = performance.now() - t0;
  await vm.shutdown({ timeoutMs: 120_000 });
  return ready;
}

async function floor(i) {
  const port = await freeTcpPort();
  const vm = await floorVm({ disk: child(`floor-${i}.qcow2`), key, dir, name: `floor-${i}`, mem: 1024, port });
  await vm.poweroff();
  releasePort(port);
  return vm.ready;
}

const boot = { ours: [], floor: [] };
for (let i = 0; i < RUNS; i++) {
  boot.ours.push(await ours(i));
  boot.floor.push(await floor(i));
  console.log(`boot run ${i + 1}/${RUNS}: startVm ${(boot.ours[i] / 1000).toFixed(1)} s | floor ${(boot.floor[i] / 1000).toFixed(1)} s`);
}

// --- 3. the web layer: dbuild vs Packer, same image, same script ---------------------------------------
const web = dbuild(p, ["build", "debian:web"]);
const webNode = web.events.find((e) => e.type === "node-done" && e.stack === "debian:web");
console.log(`dbuild debian:web: node ${webNode.duration.toFixed(1)} s, command ${(web.ms / 1000).toFixed(1)} s`);

const sha = createHash("sha256").update(fs.readFileSync(image)).digest("hex");
const script = path.join(dir, "web.sh");
fs.writeFileSync(script, DEBIAN_WEB, { mode: 0o755 });
const template = {
  builders: [{
    type: "qemu", disk_image: true, use_backing_file: true, iso_url: `file://${image}`, iso_checksum: `sha256:${sha}`,
    format: "qcow2", accelerator: "tcg", headless: true, memory: 1024, cpus: 1, disk_interface: "virtio", net_device: "virtio-net",
    ssh_username: "root", ssh_private_key_file: key, ssh_timeout: "30m", boot_wait: "1s", shutdown_command: "poweroff",
    output_directory: path.join(dir, "packer-out"), vm_name: "web.qcow2", skip_compaction: true, disk_compression: false,
  }],
  provisioners: [{ type: "shell", script }],
};
fs.writeFileSync(path.join(dir, "packer.json"), JSON.stringify(template, null, 2));
const t0 = performance.now();
const pk = spawnSync("packer", ["build", "-color=false", path.join(dir, "packer.json")], {
  cwd: dir, encoding: "utf8", env: packerEnv(dir), maxBuffer: 64 << 20,
});
const packerMs = performance.now() - t0;
if (pk.status !== 0) throw new Error(`packer failed:\n${pk.stdout}\n${pk.stderr}`);
console.log(`packer: ${(packerMs / 1000).toFixed(1)} s`);

// --- 4. a small layer: cold, first (boot + save the snapshot), warm (resumed) ---------------------------
fs.mkdirSync(path.join(p, "layers", "pay", "target"), { recursive: true });
fs.symlinkSync("../../utils/addlayer.sh", path.join(p, "layers", "pay", "install"));
fs.writeFileSync(path.join(p, "layers", "pay", "target", "payload.bin"), randomBytes(4 * 1048576));
const pay = (n) => {
  fs.writeFileSync(path.join(p, "layers", "pay", "target", "install"), `#!/bin/sh\nset -e\nmkdir -p /opt/pay\ncp payload.bin /opt/pay/\necho ${n} > /opt/pay/stamp\n`, { mode: 0o755 });
  const r = dbuild(p, ["build", "debian:pay", ...(n === "cold" ? ["--cold"] : [])]);
  const done = r.events.find((e) => e.type === "node-done" && e.stack === "debian:pay");
  const start = r.events.find((e) => e.type === "step" && e.step === "boot" && e.stack === "debian:pay" && e.detail)?.detail;
  console.log(`debian:pay ${n}: node ${done.duration.toFixed(1)} s (${start})`);
  return { s: done.duration, start };
};
const small = { cold: pay("cold"), first: pay("first"), warm: pay("warm") };
fs.rmSync(dir, { recursive: true, force: true });

const s = (ms) => `${(ms / 1000).toFixed(1)} s`;
const mo = median(boot.ours);
const mf = median(boot.floor);
writeSection(
  "debian",
  `## Debian bookworm: base build, boot to SSH, a package-installing layer vs Packer

\`npm run bench -- debian\` (bench/debian.bench.js, as root; BENCH_RUNS=${RUNS}). TCG, 1 vCPU, 1024 MiB, user networking.
Load average at the end: ${loadavg()} (machine shared).

| | dbuild | reference | ratio |
|---|---|---|---|
| layers/debian cold build (new build dir, packages cached) | ${s(cold.ms)} | | |
| boot to SSH (median of ${RUNS}) | ${s(mo)} | ${s(mf)} the hand-made floor | ${(mo / mf).toFixed(2)} |
| web layer (apt-get install nginx-light + a page) on that image | ${s(webNode.duration * 1000)} (node) | ${s(packerMs)} Packer 1.6.6 | ${((webNode.duration * 1000) / packerMs).toFixed(2)} |
| small layer (4 MiB + a script), resumed from the warm snapshot vs cold (goal <= 0.2x) | ${s(small.warm.s * 1000)} (${small.warm.start}) | ${s(small.cold.s * 1000)} \`--cold\` | ${(small.warm.s / small.cold.s).toFixed(2)} |
| small layer, first build on the parent (boot + save the snapshot) vs cold | ${s(small.first.s * 1000)} (${small.first.start}) | ${s(small.cold.s * 1000)} | ${(small.first.s / small.cold.s).toFixed(2)} |

Cold build: \`dbuild build debian\` in a fresh project whose user cache already holds the packages and lists
(${downloaded ? `${downloaded[2]} of ${downloaded[1]} packages downloaded` : "download count not found"}): mmdebstrap, then the disk (mkfs.ext4 -d,
syslinux) and the qcow2. Boot runs (s, ours/floor): ${boot.ours.map((o, i) => `${(o / 1000).toFixed(1)}/${(boot.floor[i] / 1000).toFixed(1)}`).join(", ")}.
The base boots without cloud-init work (no seed: cloud-init finds no data source). The floor is
bench/lib.js floorVm (a hand-written QEMU line with dbuild's devices minus the agent port, \`ssh true\` probes
100 ms apart, one ControlMaster connection). Packer's QEMU builder (disk_image, use_backing_file, boot_wait
1s, the same script as a shell provisioner, shutdown_command poweroff; a qemu-img shim adds the \`-F qcow2\`
that QEMU 7.2 requires and Packer 1.6.6 omits) on the same image; dbuild's figure is the debian:web node
(COW child, boot, rsync, install, clean-up + fstrim, power-off, publish). apt's downloads go through
dbuild's package cache (docs/proxy.md), warm from earlier runs; Packer fetches from the archive directly.
Small layer rows are the debian:pay node: \`--cold\` boots the base; the next build boots it and saves
the warm snapshot; the one after resumes from it (docs/warm.md). Bytes from outside of a second build:
see the package cache section (bench/proxy.bench.js).
`,
);
