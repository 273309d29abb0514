// The web layer of bench/debian.bench.js (apt-get install nginx-light + a page) on the same Debian base,
// dbuild and Packer 1.6.6 interleaved in pairs, so each pair sees the same machine load (issue 10's goal:
// dbuild per layer <= 0.9x Packer):
//   pair 1: dbuild's first build on the base (cold boot, saves the base's warm snapshot) | Packer
//   then BENCH_REBUILDS pairs (default 3), each after a comment-only change: dbuild resumes the
//   base's warm snapshot | Packer; the side that goes first alternates; the median ratio is reported
// Packer cold-boots every time (it has no snapshots) and fetches packages from the archive itself.
// Writes docs/bench/debian-packer.md. Run as root: npm run bench -- debian-packer
import { createHash } from "node:crypto";
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { cache, DEBIAN_WEB, debianWebProject, loadavg, microImage, packerEnv, root, writeSection } from "./lib.js";

const userCache = path.join(cache, "user-cache");
/** Rebuild pairs after the first one (BENCH_REBUILDS, default 3). */
const REBUILDS = Number(process.env.BENCH_REBUILDS ?? 3);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-bench-debian-packer-"));
const { key, pubkey } = microImage();
const p = debianWebProject(path.join(dir, "proj"), { key, pubkey });

function dbuild(args) {
  const r = spawnSync(process.execPath, [path.join(root, "bin", "dbuild.js"), ...args, "--progress", "json"], {
    cwd: p, encoding: "utf8", env: { ...process.env, DBUILD_CACHE_HOME: userCache }, maxBuffer: 64 << 20,
  });
  if (r.status !== 0) throw new Error(`dbuild ${args.join(" ")} failed:\n${r.stderr}`);
  const events = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l)).filter((e) => e.stack === "debian:web");
  const steps = [];
  let prev;
  for (const e of events) {
    if (e.type !== "step" && e.type !== "node-done") continue;
    if (prev && prev.step !== e.step) steps.push(`${prev.step} ${((e.time - prev.time) / 1000).toFixed(0)}`);
    if (e.type === "step" && (!prev || prev.step !== e.step)) prev = e;
  }
  const done = events.find((e) => e.type === "node-done");
  if (!done) return undefined; // the base build: not measured
  const start = events.find((e) => e.type === "step" && e.step === "boot" && e.detail)?.detail;
  return { s: done.duration, start, steps: steps.join(", ") };
}

dbuild(["build", "debian"]);
const image = fs.realpathSync(path.join(p, "build", "debian.qcow2"));
const sha = createHash("sha256").update(fs.readFileSync(image)).digest("hex");
fs.writeFileSync(path.join(dir, "web.sh"), DEBIAN_WEB, { mode: 0o755 });

function packer(i) {
  const out = path.join(dir, `packer-out-${i}`);
  const tmpl = path.join(dir, `packer-${i}.json`);
  fs.writeFileSync(tmpl, JSON.stringify({
    builders: [{
      type: "qemu", disk_image: true, use_backing_file: true, iso_url: `file://${image}`, iso_checksum: `sha256:${sha}`,
      format: "qcow2", accelerator: "tcg", headless: true, memory: 1024, cpus: 1, disk_interface: "virtio", net_device: "virtio-net",
      ssh_username: "root", ssh_private_key_file: key, ssh_timeout: "30m", boot_wait: "1s", shutdown_command: "poweroff",
      output_directory: out, vm_name: "web.qcow2", skip_compaction: true, disk_compression: false,
    }],
    provisioners: [{ type: "shell", script: path.join(dir, "web.sh") }],
  }));
  const t0 = performance.now();
  const r = spawnSync("packer", ["build", "-color=false", "-timestamp-ui", tmpl], { cwd: dir, encoding: "utf8", env: packerEnv(dir), maxBuffer: 64 << 20 });
  const s = (performance.now() - t0) / 1000;
  if (r.status !== 0) throw new Error(`packer failed:\n${r.stdout.slice(-3000)}\n${r.stderr}`);
  const at = (re) => Date.parse(r.stdout.split("\n").find((l) => re.test(l))?.slice(0, 20) ?? "");
  const ssh = (at(/Connected to SSH/) - at(/Starting VM/)) / 1000;
  const prov = (at(/Gracefully halting/) - at(/Provisioning with shell/)) / 1000;
  execFileSync("qemu-img", ["check", "-q", path.join(out, "web.qcow2")]);
  fs.rmSync(out, { recursive: true, force: true });
  return { s, steps: `boot to SSH ${ssh.toFixed(0)}, provisioning ${prov.toFixed(0)}` };
}

const first = dbuild(["build", "debian:web"]);
console.log(`dbuild first: ${first.s.toFixed(1)} s (${first.start}; ${first.steps})`);
const pk1 = packer(1);
console.log(`packer: ${pk1.s.toFixed(1)} s (${pk1.steps})`);
// Rebuild pairs, the side that goes first alternating, so a load change during a pair favours neither.
const rebuilds = [];
for (let i = 0; i < REBUILDS; i++) {
  fs.appendFileSync(path.join(p, "layers", "web", "target", "install"), `# only this comment changed (${i + 1})\n`);
  const pair = {};
  for (const side of i % 2 ? ["packer", "dbuild"] : ["dbuild", "packer"]) {
    if (side === "dbuild") pair.d = dbuild(["build", "debian:web"]);
    else pair.p = packer(i + 2);
  }
  console.log(`rebuild ${i + 1}: dbuild ${pair.d.s.toFixed(1)} s (${pair.d.start}; ${pair.d.steps}) | packer ${pair.p.s.toFixed(1)} s (${pair.p.steps})`);
  rebuilds.push(pair);
}
fs.rmSync(dir, { recursive: true, force: true });
const ratios = rebuilds.map((r) => r.d.s / r.p.s);
const med = (xs) => {
  const v = [...xs].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
};
const f = (x) => `${x.toFixed(1)} s`;
writeSection(
  "debian-packer",
  `## Debian: a package-installing layer, dbuild vs Packer in pairs

\`npm run bench -- debian-packer\` (bench/debian-packer.bench.js, as root). The web layer of the Debian section
(\`apt-get update\`, \`apt-get install nginx-light\`, a page, \`systemctl enable nginx\`) on the same
layers/debian image, 1 vCPU, 1024 MiB, TCG. Each pair runs back to back, so both sides see the same load.
Load average at the end: ${loadavg()}.

| pair | dbuild (debian:web node) | Packer 1.6.6 | ratio | goal |
|---|---|---|---|---|
| first build on the base (dbuild boots it and saves its warm snapshot) | ${f(first.s)} | ${f(pk1.s)} | ${(first.s / pk1.s).toFixed(2)} | <= 0.9 |
| the layer rebuilt after a comment-only change (dbuild resumes the snapshot), median of ${REBUILDS} pairs | ${f(med(rebuilds.map((r) => r.d.s)))} | ${f(med(rebuilds.map((r) => r.p.s)))} | ${med(ratios).toFixed(2)} (pairs: ${ratios.map((x) => x.toFixed(2)).join(", ")}) | <= 0.9 |

Steps, seconds: dbuild first: ${first.steps}; Packer first: ${pk1.steps}.
${rebuilds.map((r, i) => `Rebuild ${i + 1} (${i % 2 ? "Packer" : "dbuild"} first): dbuild ${f(r.d.s)} (${r.d.start}; ${r.d.steps}); Packer ${f(r.p.s)} (${r.p.steps}).`).join("\n")}
Packer: QEMU builder with disk_image, use_backing_file, boot_wait 1s, the same script as a shell provisioner,
shutdown_command poweroff (a qemu-img shim adds the \`-F qcow2\` QEMU 7.2 requires, bench/lib.js packerEnv);
it cold-boots every build and fetches packages from the archive directly. dbuild's apt goes through its
package cache (docs/proxy.md), already holding these packages.
`,
);
