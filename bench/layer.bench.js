// One layer, four ways, in one run (issue 16), interleaved so the machine's load hits all alike:
//   dbuild warm    the parent has a warm snapshot: the build VM resumes from it
//   dbuild first   no snapshot yet: boot, save the snapshot, go on (what the first build pays)
//   dbuild cold    `--cold`: boot, nothing saved (the seed's cycle)
//   Packer         Packer 1.6.6's QEMU builder (disk_image, use_backing_file, boot_wait 1s), when installed
//   floor          by hand: child disk, QEMU, ssh probes 100 ms apart, ONE ssh connection (ControlMaster)
//                  for rsync + install + clean-up, /sbin/poweroff
// The layer is a 4 MiB payload plus a script, on the micro guest with the host's /usr/bin/scp added
// (Packer uploads with scp; dropbear has none). Goals: warm <= 0.3x Packer, cold <= 0.75x Packer.
// Also: boot to SSH, dbuild (cold and resumed) vs the floor's.
// Run: npm run bench -- layer     Writes docs/bench/layer.md.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { freeTcpPort, releasePort } from "../dist/vm/ports.js";
import { floorVm, loadavg, median, microImage, packerEnv, root, writeSection } from "./lib.js";

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const { image, key, pubkey } = microImage();
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-bench-layer-"));
const proj = path.join(dir, "proj");
const packer = spawnSync("packer", ["version"], { encoding: "utf8" });
const packerVersion = packer.status === 0 ? packer.stdout.trim() : undefined;

function write(rel, content, mode = 0o644) {
  const p = path.join(proj, rel);
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, content);
  fs.chmodSync(p, mode);
}
function dbuild(...args) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [path.join(root, "bin", "dbuild.js"), "--progress", "json", ...args], { cwd: proj, encoding: "utf8" });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`dbuild ${args.join(" ")} failed: ${r.stderr}\n${r.stdout.slice(-2000)}`);
  const events = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  const at = (pred) => events.find(pred)?.time;
  // Boot to SSH: from the boot step to the first step after it (rsync).
  const boot = at((e) => e.type === "step" && e.step === "rsync") - at((e) => e.type === "step" && e.step === "boot");
  const start = events.find((e) => e.type === "step" && e.step === "boot" && e.detail)?.detail;
  return { ms, boot, start };
}

// The project: micro imported from the cached test image; `scp` adds the host's scp (needs only libc);
// `pay` is the measured layer: a 4 MiB payload and a script.
const sha = createHash("sha256").update(fs.readFileSync(image)).digest("hex");
write("layers/micro/layer.yaml", `kind: base\nimport:\n  from: ${image}\n  sha256: ${sha}\n`);
write("utils/addlayer.sh", fs.readFileSync(path.join(root, "utils", "addlayer.sh"), "utf8"), 0o755);
write("keys/demobuilder", fs.readFileSync(key), 0o600);
write("keys/demobuilder.pub", fs.readFileSync(pubkey));
write("demobuild.yaml", "buildVm: {mem: 256, cpus: 1}\njobs: 1\n");
write("layers/scp/target/scp", fs.readFileSync("/usr/bin/scp"), 0o755);
write("layers/scp/target/install", "#!/bin/sh\nset -e\ncp scp /usr/bin/scp\nchmod 0755 /usr/bin/scp\n", 0o755);
fs.symlinkSync("../../utils/addlayer.sh", path.join(proj, "layers/scp/install"));
write("layers/pay/target/payload.bin", randomBytes(4 * 1048576));
fs.symlinkSync("../../utils/addlayer.sh", path.join(proj, "layers/pay/install"));
write("targets/micro:scp:pay", "");
const script = (n) => `#!/bin/sh\nset -e\nmkdir -p /opt/pay\ncp payload.bin /opt/pay/\necho ${n} > /opt/pay/stamp\nsha256sum /opt/pay/payload.bin > /opt/pay/sum\n`;
write("layers/pay/target/install", script("r0"), 0o755);
dbuild("build", "micro:scp", "--cold");
const parent = fs.realpathSync(path.join(proj, "build", "micro:scp.qcow2"));

// --- hand-made floor of the whole cycle ---
async function floorCycle(i) {
  const disk = path.join(dir, `floor-${i}.qcow2`);
  const t0 = performance.now();
  execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", parent, disk]);
  const port = await freeTcpPort();
  const vm = await floorVm({ disk, key, dir, name: `floor-${i}`, port });
  vm.rsync(path.join(proj, "layers", "pay", "target") + "/", "/tmp/layer/");
  vm.ssh("cd /tmp/layer && ./install && cd / && rm -rf /tmp/layer && sync && fstrim / ; sync");
  await vm.poweroff();
  releasePort(port);
  const ms = performance.now() - t0;
  fs.rmSync(disk, { force: true });
  return { ms, boot: vm.ready };
}

// --- Packer, same guest, same layer ---
function packerCycle(i) {
  const out = path.join(dir, `packer-out-${i}`);
  const tmpl = path.join(dir, `packer-${i}.json`);
  const target = path.join(proj, "layers", "pay", "target");
  fs.writeFileSync(tmpl, JSON.stringify({
    builders: [{
      type: "qemu",
      iso_url: parent,
      iso_checksum: "none",
      disk_image: true,
      use_backing_file: true,
      format: "qcow2",
      output_directory: out,
      vm_name: "pay.qcow2",
      accelerator: "tcg",
      machine_type: "pc",
      memory: 256,
      cpus: 1,
      headless: true,
      disk_interface: "virtio",
      disk_cache: "writeback",
      disk_discard: "unmap",
      net_device: "virtio-net",
      // A -device here replaces ALL of Packer's default -device arguments: name its NIC (netdev user.0) too.
      qemuargs: [["-device", "virtio-net,netdev=user.0,romfile="], ["-device", "virtio-rng-pci"], ["-cpu", "max"]],
      vnc_bind_address: "127.0.0.1",
      host_port_min: 40000,
      host_port_max: 49000,
      communicator: "ssh",
      ssh_username: "root",
      ssh_private_key_file: key,
      ssh_timeout: "5m",
      boot_wait: "1s",
      shutdown_command: "/sbin/poweroff",
    }],
    provisioners: [
      { type: "file", source: target + "/", destination: "/tmp/layer" },
      { type: "shell", inline: ["cd /tmp/layer && sh ./install && cd / && rm -rf /tmp/layer && sync && fstrim / ; sync"] },
    ],
  }));
  const t0 = performance.now();
  const r = spawnSync("packer", ["build", "-color=false", tmpl], {
    cwd: dir,
    encoding: "utf8",
    env: { ...packerEnv(dir), PACKER_LOG: "" },
  });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`packer build failed:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-2000)}`);
  const img = path.join(out, "pay.qcow2");
  execFileSync("qemu-img", ["check", "-q", img]);
  fs.rmSync(out, { recursive: true, force: true });
  return { ms };
}

const rows = { warm: [], first: [], cold: [], packer: [], floor: [] };
let n = 1;
try {
  for (let i = 0; i < RUNS; i++) {
    write("layers/pay/target/install", script(`r${n++}`), 0o755);
    rows.cold.push(dbuild("build", "micro:scp:pay", "--cold")); // also discards any snapshot of micro:scp
    write("layers/pay/target/install", script(`r${n++}`), 0o755);
    rows.first.push(dbuild("build", "micro:scp:pay"));
    write("layers/pay/target/install", script(`r${n++}`), 0o755);
    rows.warm.push(dbuild("build", "micro:scp:pay"));
    if (packerVersion) rows.packer.push(packerCycle(i));
    rows.floor.push(await floorCycle(i));
    const last = (k) => (rows[k].length ? `${(rows[k].at(-1).ms / 1000).toFixed(1)} s` : "-");
    console.log(`run ${i + 1}/${RUNS}: warm ${last("warm")} (${rows.warm.at(-1).start}), first ${last("first")}, cold ${last("cold")}, packer ${last("packer")}, floor ${last("floor")}`);
  }
  const m = (k, f = "ms") => median(rows[k].map((r) => r[f]));
  const s = (ms) => `${(ms / 1000).toFixed(2)} s`;
  const r2 = (x) => x.toFixed(2);
  const pk = packerVersion ? m("packer") : undefined;
  const vsPacker = (k, goal) => (pk ? `| ${k === "warm" ? "warm layer (parent has a snapshot)" : "cold layer (`--cold`)"} vs Packer | ${s(m(k))} | ${s(pk)} | ${r2(m(k) / pk)} | <= ${goal} |` : `| ${k} vs Packer | ${s(m(k))} | skipped: packer not installed | | <= ${goal} |`);
  writeSection("layer", `## One layer: warm, cold, Packer and the hand-made floor

\`npm run bench -- layer\` (bench/layer.bench.js; BENCH_RUNS=${RUNS}, medians, the five ways interleaved in each run).
Micro guest plus the host's scp, a layer of a 4 MiB payload and a script, build VMs of 256 MiB / 1 vCPU under TCG,
${os.availableParallelism()} cores${packerVersion ? `, ${packerVersion.split("\n")[0]}` : ""}. Load average at the end: ${loadavg()}.

| measure | dbuild | reference | ratio | goal |
|---|---|---|---|---|
${vsPacker("warm", 0.3)}
${vsPacker("cold", 0.75)}
| cold layer vs the hand-made floor (whole cycle) | ${s(m("cold"))} | ${s(m("floor"))} | ${r2(m("cold") / m("floor"))} | |
| warm layer vs the hand-made floor | ${s(m("warm"))} | ${s(m("floor"))} | ${r2(m("warm") / m("floor"))} | |
| first build on a parent (boot + save the snapshot) vs cold | ${s(m("first"))} | ${s(m("cold"))} | ${r2(m("first") / m("cold"))} | |
| cold boot to SSH vs the floor's | ${s(m("cold", "boot"))} | ${s(m("floor", "boot"))} | ${r2(m("cold", "boot") / m("floor", "boot"))} | |
| resume to SSH (warm) vs the floor's cold boot | ${s(m("warm", "boot"))} | ${s(m("floor", "boot"))} | ${r2(m("warm", "boot") / m("floor", "boot"))} | |

dbuild rows are whole \`dbuild build\` runs (node start to published image, guest clock set after a resume).
The floor: \`qemu-img create\` of a child, a hand-written QEMU line with dbuild's devices minus the agent port,
\`ssh true\` probes 100 ms apart, then ONE SSH connection (ControlMaster) for \`rsync -rL\`, the install and
\`sync; fstrim\`, then \`/sbin/poweroff\` and QEMU's exit. Packer: \`packer build\` of a qemu builder with
\`disk_image\`, \`use_backing_file\`, \`boot_wait\` 1s, the same devices, a file provisioner for target/ and an
inline shell provisioner running the same commands; \`shutdown_command\` /sbin/poweroff.
Per-run seconds: warm ${rows.warm.map((r) => (r.ms / 1000).toFixed(1)).join(", ")}; first ${rows.first.map((r) => (r.ms / 1000).toFixed(1)).join(", ")};
cold ${rows.cold.map((r) => (r.ms / 1000).toFixed(1)).join(", ")}; Packer ${rows.packer.map((r) => (r.ms / 1000).toFixed(1)).join(", ") || "-"}; floor ${rows.floor.map((r) => (r.ms / 1000).toFixed(1)).join(", ")}.
`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
