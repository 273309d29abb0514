// Debian bookworm (issue 10), in one run on this machine:
//  1. cold build of layers/debian by dbuild (a fresh project and build dir) with the packages cached;
//  2. boot to SSH of that image: startVm() vs a hand-written qemu line polled with
//     `ssh -o ControlMaster=auto ... true || sleep 1` (one master connection, a second between probes);
//  3. the same web layer (apt-get install nginx-light + a page) applied to the same image by dbuild and by
//     Packer 1.6.6 (QEMU builder: disk_image, use_backing_file, boot_wait 1s, shell provisioner).
//  4. the web layer again after a comment-only change: warm start and package cache (wall and bytes from outside).
// Writes docs/bench/debian.md. Run as root (mmdebstrap): npm run bench -- debian
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { startVm } from "../dist/vm/qemu.js";
import { freeTcpPort, releasePort } from "../dist/vm/ports.js";
import { cache, loadavg, median, microImage, root, writeSection } from "./lib.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 2);
const userCache = path.join(cache, "user-cache");
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-bench-debian-"));
const { key, pubkey } = microImage();

const WEB = `#!/bin/sh
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends nginx-light
echo "<h1>web layer</h1>" > /var/www/html/index.html
systemctl enable nginx
`;

function project(name) {
  const p = path.join(dir, name);
  fs.mkdirSync(path.join(p, "layers", "web", "target"), { recursive: true });
  fs.mkdirSync(path.join(p, "keys"), { recursive: true });
  fs.mkdirSync(path.join(p, "utils"), { recursive: true });
  fs.symlinkSync(path.join(root, "layers", "debian"), path.join(p, "layers", "debian"));
  fs.copyFileSync(key, path.join(p, "keys", "demobuilder"));
  fs.chmodSync(path.join(p, "keys", "demobuilder"), 0o600);
  fs.copyFileSync(pubkey, path.join(p, "keys", "demobuilder.pub"));
  fs.copyFileSync(path.join(root, "utils", "addlayer.sh"), path.join(p, "utils", "addlayer.sh"));
  fs.symlinkSync("../../utils/addlayer.sh", path.join(p, "layers", "web", "install"));
  fs.writeFileSync(path.join(p, "layers", "web", "target", "install"), WEB, { mode: 0o755 });
  fs.writeFileSync(path.join(p, "demobuild.yaml"), "buildVm: {mem: 1024, cpus: 1}\ntimeouts: {boot: 900, install: 1800}\n");
  return p;
}

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
  const disk = child(`floor-${i}.qcow2`);
  const port = await freeTcpPort();
  const cm = path.join(dir, `cm-${i}`);
  const args = [
    "-nodefaults", "-display", "none", "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "1024", "-smp", "1",
    "-drive", `file=${disk},if=virtio,format=qcow2`, "-device", "virtio-rng-pci",
    "-netdev", `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:22`, "-device", "virtio-net-pci,netdev=n0",
    "-serial", `file:${path.join(dir, `floor-${i}.log`)}`,
  ];
  const t0 = performance.now();
  const q = spawn("qemu-system-x86_64", args, { stdio: "ignore" });
  const exited = new Promise((r) => q.once("exit", r));
  const ssh = `ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=5 -o ControlMaster=auto -o ControlPath=${cm} -o ControlPersist=60 -i ${key} -p ${port} root@127.0.0.1`;
  execFileSync("bash", ["-c", `until ${ssh} true 2>/dev/null; do sleep 1; done`]);
  const ready = performance.now() - t0;
  spawnSync("bash", ["-c", `${ssh} poweroff; ${ssh} -O exit 2>/dev/null`], { stdio: "ignore" });
  await exited;
  releasePort(port);
  return ready;
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

// --- 4. the same layer again after a comment-only change: warm start + package cache ---------------------
fs.appendFileSync(path.join(p, "layers", "web", "target", "install"), "# only this comment changed\n");
const web2 = dbuild(p, ["build", "debian:web"]);
const web2Node = web2.events.find((e) => e.type === "node-done" && e.stack === "debian:web");
const up1 = webNode.proxy?.bytesFromUpstream ?? NaN;
const up2 = web2Node.proxy?.bytesFromUpstream ?? NaN;
console.log(`dbuild debian:web again: node ${web2Node.duration.toFixed(1)} s; from outside ${up2} B (first build ${up1} B)`);

const sha = createHash("sha256").update(fs.readFileSync(image)).digest("hex");
const script = path.join(dir, "web.sh");
fs.writeFileSync(script, WEB, { mode: 0o755 });
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
  cwd: dir, encoding: "utf8", env: { ...process.env, CHECKPOINT_DISABLE: "1", PACKER_CACHE_DIR: path.join(dir, "packer_cache") }, maxBuffer: 64 << 20,
});
const packerMs = performance.now() - t0;
if (pk.status !== 0) throw new Error(`packer failed:\n${pk.stdout}\n${pk.stderr}`);
console.log(`packer: ${(packerMs / 1000).toFixed(1)} s`);
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
| boot to SSH (median of ${RUNS}) | ${s(mo)} | ${s(mf)} hand-written qemu + \`ssh -o ControlMaster=auto true \\|\\| sleep 1\` | ${(mo / mf).toFixed(2)} |
| web layer (apt-get install nginx-light + a page) on that image | ${s(webNode.duration * 1000)} (node) | ${s(packerMs)} Packer 1.6.6 | ${((webNode.duration * 1000) / packerMs).toFixed(2)} |
| the web layer again after a comment-only change (warm start, package cache) | ${s(web2Node.duration * 1000)} (node) | ${s(webNode.duration * 1000)} its first build | ${(web2Node.duration / webNode.duration).toFixed(2)} |
| bytes fetched from outside by that second build (proxy counters) | ${up2} B | ${up1} B the first build | ${(up2 / up1 * 100).toFixed(2)} % |
| of which package files (.deb) | ${web2Node.proxy?.packageBytesFromUpstream} B | ${webNode.proxy?.packageBytesFromUpstream} B | |

Cold build: \`dbuild build debian\` in a fresh project whose user cache already holds the packages and lists
(${downloaded ? `${downloaded[2]} of ${downloaded[1]} packages downloaded` : "download count not found"}): mmdebstrap, then the disk (mkfs.ext4 -d,
syslinux) and the qcow2. Boot runs (s, ours/floor): ${boot.ours.map((o, i) => `${(o / 1000).toFixed(1)}/${(boot.floor[i] / 1000).toFixed(1)}`).join(", ")}.
The base boots without cloud-init work (no seed: cloud-init finds no data source). Packer's QEMU builder
(disk_image, use_backing_file, boot_wait 1s, the same script as a shell provisioner, shutdown_command poweroff)
on the same image; dbuild's figure is the debian:web node (COW child, boot, rsync, install, clean-up + fstrim,
power-off, publish). The second web build resumes from the warm snapshot dbuild saved of the base
booted for the first (docs/warm.md), and apt's downloads come from dbuild's package cache (docs/proxy.md):
goals <= 0.2x the first build's wall time and <= 1% of its bytes from outside. Packer has no cache: each
of its builds cold-boots and downloads again.
`,
);
