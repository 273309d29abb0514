// Shared bench helpers: the micro test image (built by the test helper's cache) and medians.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { createServer } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const cache = process.env.DBUILD_TEST_CACHE ?? path.join(os.tmpdir(), "dbuild-test-cache");

/** The newest cached micro test image and its key; built through the e2e test helper if missing. */
export function microImage() {
  const pick = () =>
    fs.existsSync(cache)
      ? fs
          .readdirSync(cache)
          .filter((f) => /^micro-[0-9a-f]+(-[0-9a-f]+)?\.qcow2$/.test(f))
          .map((f) => path.join(cache, f))
          .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0]
      : undefined;
  let img = pick();
  if (!img) {
    // Build it through the test helper (vitest compiles TypeScript helpers for us).
    execFileSync("npx", ["vitest", "run", "test/e2e/micro-image.test.ts"], { cwd: root, stdio: "inherit" });
    img = pick();
  }
  if (!img) throw new Error(`no micro image in ${cache}`);
  return { image: img, key: path.join(cache, "test-key"), pubkey: path.join(cache, "test-key.pub") };
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export const loadavg = () => os.loadavg().map((x) => x.toFixed(1)).join(" ");

export function writeSection(name, md) {
  fs.mkdirSync(path.join(root, "docs", "bench"), { recursive: true });
  fs.writeFileSync(path.join(root, "docs", "bench", `${name}.md`), md);
  console.log(md);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Debian's docker-registry on 127.0.0.1 with its storage under `dir`; resolves once /v2/ answers. */
export async function startRegistry(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const cfg = path.join(dir, "config.yml");
  fs.writeFileSync(
    cfg,
    `version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: ${path.join(dir, "data")}}, delete: {enabled: true}}
http: {addr: "127.0.0.1:${port}"}
`,
  );
  const child = spawn("/usr/bin/docker-registry", ["serve", cfg], { stdio: "ignore" });
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/v2/`, { signal: AbortSignal.timeout(1000) });
      if (r.status === 200) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error("docker-registry did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    url: `oci://127.0.0.1:${port}/bench`,
    stop: async () => {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
    },
  };
}

const FLOOR_SSH = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"];

/**
 * The honest hand-made floor a benchmark compares dbuild with: the same guest on a hand-written QEMU line
 * (the devices dbuild gives a build VM, minus the agent's serial port), readiness probed with `ssh true`
 * 100 ms apart (a busy loop would starve TCG on 2 cores), ONE SSH connection for everything after that
 * (OpenSSH ControlMaster; rsync rides on it too), and the fastest poweroff (/sbin/poweroff, ~0.3 s).
 * Returns once SSH answers; `ready` is ms from QEMU's spawn.
 */
export async function floorVm({ disk, key, dir, name, mem = 256, port }) {
  const ctl = path.join(dir, `${name}.cm`);
  const ssh = [...FLOOR_SSH, "-i", key, "-p", String(port), "-o", "ControlMaster=auto", "-o", `ControlPath=${ctl}`, "-o", "ControlPersist=120"];
  const t0 = performance.now();
  const q = spawn("qemu-system-x86_64", [
    "-nodefaults", "-no-user-config", "-display", "none", "-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max",
    "-m", String(mem), "-smp", "1",
    "-drive", `file=${disk},if=virtio,format=qcow2,discard=unmap`, "-device", "virtio-rng-pci",
    "-netdev", `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:22`, "-device", "virtio-net-pci,netdev=n0,romfile=",
    "-serial", `file:${path.join(dir, `${name}.console.log`)}`,
  ], { stdio: "ignore" });
  const exited = new Promise((r) => q.once("exit", r));
  for (;;) {
    const r = spawnSync("ssh", [...ssh, "root@127.0.0.1", "true"], { stdio: "ignore" });
    if (r.status === 0) break;
    if (q.exitCode !== null) throw new Error(`floor QEMU exited (${q.exitCode})`);
    await new Promise((res) => setTimeout(res, 100));
  }
  const ready = performance.now() - t0;
  return {
    ready,
    ssh: (cmd) => execFileSync("ssh", [...ssh, "root@127.0.0.1", cmd], { stdio: "pipe" }),
    rsync: (src, dst) => execFileSync("rsync", ["-rL", "-e", `ssh ${ssh.join(" ")}`, src, `root@127.0.0.1:${dst}`]),
    async poweroff() {
      spawnSync("ssh", [...ssh, "root@127.0.0.1", "/sbin/poweroff"], { stdio: "ignore" });
      await exited;
      spawnSync("ssh", [...ssh, "-O", "exit", "root@127.0.0.1"], { stdio: "ignore" });
    },
  };
}

/**
 * Environment for running Packer 1.6.6 against this machine's QEMU (7.2). Packer creates its
 * `use_backing_file` overlay with `qemu-img create -f qcow2 -b BACKING OUT`, without `-F`, which QEMU
 * refuses since 6.1 ("Backing file specified without backing format"). A `qemu-img` first on Packer's
 * PATH adds `-F qcow2` to exactly that call and passes everything else through unchanged.
 */
export function packerEnv(dir) {
  const bin = path.join(dir, "packer-bin");
  fs.mkdirSync(bin, { recursive: true });
  const real = execFileSync("sh", ["-c", "command -v qemu-img"], { encoding: "utf8" }).trim();
  fs.writeFileSync(
    path.join(bin, "qemu-img"),
    `#!/bin/sh
if [ "$1" = create ]; then
  case " $* " in
    *" -F "*) ;;
    *" -b "*) shift; exec ${real} create -F qcow2 "$@" ;;
  esac
fi
exec ${real} "$@"
`,
    { mode: 0o755 },
  );
  return { ...process.env, PATH: `${bin}:${process.env.PATH}`, CHECKPOINT_DISABLE: "1", PACKER_CACHE_DIR: path.join(dir, "packer_cache") };
}

/** The Debian benches' web layer: apt-get install nginx-light and a page (the same script for dbuild and Packer). */
export const DEBIAN_WEB = `#!/bin/sh
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends nginx-light
echo "<h1>web layer</h1>" > /var/www/html/index.html
systemctl enable nginx
`;

/**
 * A project at `p`: layers/debian (this repo's, linked), a `web` layer running DEBIAN_WEB, the given key
 * pair as keys/demobuilder, build VMs of 1024 MiB / 1 vCPU with Debian-sized timeouts. Returns `p`.
 */
export function debianWebProject(p, { key, pubkey }) {
  for (const d of ["layers/web/target", "keys", "utils"]) fs.mkdirSync(path.join(p, d), { recursive: true });
  fs.symlinkSync(path.join(root, "layers", "debian"), path.join(p, "layers", "debian"));
  fs.copyFileSync(key, path.join(p, "keys", "demobuilder"));
  fs.chmodSync(path.join(p, "keys", "demobuilder"), 0o600);
  fs.copyFileSync(pubkey, path.join(p, "keys", "demobuilder.pub"));
  fs.copyFileSync(path.join(root, "utils", "addlayer.sh"), path.join(p, "utils", "addlayer.sh"));
  fs.symlinkSync("../../utils/addlayer.sh", path.join(p, "layers", "web", "install"));
  fs.writeFileSync(path.join(p, "layers", "web", "target", "install"), DEBIAN_WEB, { mode: 0o755 });
  fs.writeFileSync(path.join(p, "demobuild.yaml"), "buildVm: {mem: 1024, cpus: 1}\ntimeouts: {boot: 900, install: 1800}\n");
  return p;
}
