/**
 * Real Debian bookworm under TCG (issue 10). Every Debian boot costs a minute or more here, so the file
 * is lean: the base is built once (test/helpers/debian.ts, shared), and each test boots what it checks once.
 *
 * 1. layers/debian built by dbuild: snap + run + ssh on it; the root filesystem fills a disk grown
 *    after the build; agent, sudo, cloud-init present.
 * 2. A genericcloud-like image (cloud-init, no agent, no key, no root login, default user debian),
 *    imported by file + sha256 with `ssh: {user: debian}` and `disk:`; a layer installing nginx with
 *    apt-get runs as root through sudo; the openstack and vagrant deliverables boot on their own and
 *    accept a fresh key given through a fresh NoCloud seed (and refuse the build key).
 * Needs root (mmdebstrap) and deb.debian.org; part of the suite when run as root (as CI does).
 * DBUILD_TEST_DEBIAN=0 leaves it out (e.g. offline).
 */
import { execFileSync, spawnSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SshSession } from "../../src/vm/ssh.js";
import { startVm, type QemuVm } from "../../src/vm/qemu.js";
import { dbuild, dbuildBin, repoRoot } from "../helpers/cli.js";
import { baseProjectDir, ensureDebianBase, ensureGenericCloud, userCacheHome } from "../helpers/debian.js";
import { sha256File } from "../../src/util/digest.js";
import { startRegistry } from "../helpers/registry.js";
import { WatchProc } from "../helpers/watch.js";

const isRoot = process.getuid?.() === 0;
// About 10 minutes on a quiet 2-core machine with nothing cached (two mmdebstrap runs, six Debian boots).
const wanted = process.env.DBUILD_TEST_DEBIAN !== "0";
if (!isRoot && wanted) console.warn("test/e2e/debian.test.ts skipped: mmdebstrap builds the Debian base as root (run the suite as root)");
const GiB = 1024 ** 3;
let tmp = "";
const pids: number[] = [];

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-debian-"));
});
afterAll(async () => {
  for (const pid of pids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

type Counters = { requests: number; bytesFromCache: number; bytesFromUpstream: number; packageBytesFromUpstream: number };
const nodeDone = (r: { events: Array<Record<string, unknown>> }, stack: string): { proxy?: Counters } | undefined =>
  r.events.find((e) => e.type === "node-done" && e.stack === stack);

function virtualSize(file: string): number {
  return (JSON.parse(execFileSync("qemu-img", ["info", "-U", "--output=json", file], { encoding: "utf8" })) as { "virtual-size": number })["virtual-size"];
}

async function run(vm: QemuVm, cmd: string): Promise<{ code: number | null; out: string }> {
  let out = "";
  const r = await vm.exec(cmd, { onStdout: (d) => (out += d.toString()), onStderr: (d) => (out += d.toString()), timeoutMs: 120_000 });
  return { code: r.code, out };
}

describe.skipIf(!isRoot || !wanted)("Debian bookworm", () => {
  it("layers/debian: built by dbuild; snap, run, ssh; root fills a grown disk; agent, sudo, cloud-init", async () => {
    const base = await ensureDebianBase();
    if (base.buildLog) {
      console.log(`debian base built by dbuild in ${base.seconds?.toFixed(0)} s`);
      expect(base.buildLog).toMatch(/debian: done/);
    }
    expect(virtualSize(base.image)).toBe(4 * GiB);
    const cwd = baseProjectDir();
    const snapFile = path.join(tmp, "base-snap.qcow2");
    const snap = await dbuild(["snap", "debian", snapFile], { cwd });
    expect(snap.code, snap.stderr).toBe(0);
    execFileSync("qemu-img", ["resize", "-q", snapFile, "6G"]);
    const t0 = Date.now();
    const r = await dbuild(["run", snapFile], { cwd });
    expect(r.code, r.stderr).toBe(0);
    const pid = Number(/^QEMUPID=(\d+)$/m.exec(r.stdout)?.[1]);
    pids.push(pid);
    expect(r.stdout).toMatch(/^SSH=127\.0\.0\.1:\d+$/m);
    console.log(`debian base: dbuild run to SSH in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    const s = await dbuild(
      ["ssh", snapFile, "--", "id -un; df -B1 --output=size / | tail -n1; systemctl is-active qemu-guest-agent ssh; dpkg-query -W -f '${Package} ${Status}\\n' systemd openssh-server qemu-guest-agent sudo cloud-init; sudo -n true && echo sudo-ok"],
      { cwd },
    );
    expect(s.code, s.stderr).toBe(0);
    const lines = s.stdout.trim().split("\n");
    expect(lines[0]).toBe("root");
    // the root filesystem grew with the disk (6 GiB minus the 96 MiB boot partition and ext4's overhead)
    expect(Number(lines[1])).toBeGreaterThan(5.5 * GiB);
    expect(lines.slice(2, 4)).toEqual(["active", "active"]);
    for (const p of ["systemd", "openssh-server", "qemu-guest-agent", "sudo", "cloud-init"]) expect(s.stdout).toContain(`${p} install ok installed`);
    expect(s.stdout).toContain("sudo-ok");
    const bad = await dbuild(["ssh", snapFile, "--", "exit 7"], { cwd });
    expect(bad.code).toBe(7);
    process.kill(pid, "SIGKILL");
  }, 1_800_000);

  describe("a genericcloud-like image, imported", () => {
    let root = "";
    let cloudImage = "";
    beforeAll(async () => {
      const cloud = await ensureGenericCloud();
      if (cloud.buildLog) {
        console.log(`genericcloud-like image built in ${cloud.seconds?.toFixed(0)} s`);
        // built after the base from the same cache: nothing downloaded
        expect(cloud.buildLog).toMatch(/package lists and packages from the cache/);
        expect(cloud.buildLog).toMatch(/, 0 downloaded/);
      }
      cloudImage = cloud.image;
      root = path.join(tmp, "cloud-project");
      const w = async (rel: string, text: string, mode = 0o644): Promise<void> => {
        await fs.mkdir(path.dirname(path.join(root, rel)), { recursive: true });
        await fs.writeFile(path.join(root, rel), text, { mode });
      };
      await w("keys/demobuilder", await fs.readFile(cloud.key, "utf8"), 0o600);
      await w("keys/demobuilder.pub", await fs.readFile(cloud.pubkey, "utf8"));
      await w("demobuild.yaml", "buildVm: {mem: 1024, cpus: 1}\ndefaults: {mem: 1024, cpus: 1}\ntimeouts: {boot: 900, install: 1200, shutdown: 120}\n");
      await w("layers/cloud/layer.yaml", `kind: base\nimport:\n  from: ${cloudImage}\n  sha256: "${await sha256File(cloudImage)}"\nssh: {user: debian}\ndisk: 5G\n`);
      await w(
        "layers/web/target/install",
        [
          "#!/bin/sh",
          "set -eu",
          'echo "install runs as $(id -un) for ${DBUILD_SSH_USER}"',
          "export DEBIAN_FRONTEND=noninteractive",
          "apt-get update -q",
          "apt-get install -y -q --no-install-recommends nginx-light",
          'echo "<h1>dbuild web on $STACK</h1>" > /var/www/html/index.html',
          "systemctl enable nginx",
          "",
        ].join("\n"),
        0o755,
      );
      for (const d of ["layers/web", "layers/openstack", "layers/vagrant", "utils"]) await fs.mkdir(path.join(root, d), { recursive: true });
      await fs.copyFile(path.join(repoRoot, "utils/addlayer.sh"), path.join(root, "utils/addlayer.sh"));
      for (const f of ["finalize", "vm-functions"]) await fs.copyFile(path.join(repoRoot, "utils", f), path.join(root, "utils", f));
      await fs.symlink("../../utils/addlayer.sh", path.join(root, "layers/web/install"));
      for (const f of ["openstack", "vagrant"]) {
        await fs.rm(path.join(root, "layers", f), { recursive: true, force: true });
        await fs.cp(path.join(repoRoot, "layers", f), path.join(root, "layers", f), { recursive: true, verbatimSymlinks: true });
      }
      await w("targets/cloud:web:openstack", "NAME=web-os\n");
      await w("targets/cloud:web:vagrant", "NAME=web-box\n");
    }, 1_800_000);

    it("builds a package-installing layer over it as debian with sudo; both deliverables boot alone with a fresh seed", async () => {
      const t0 = Date.now();
      const b = await dbuild(["all", "-j", "2", "--progress", "json"], { cwd: root, env: { DBUILD_CACHE_HOME: userCacheHome() } });
      const logs = path.join(root, "build/logs");
      const webLog = await fs.readFile(path.join(logs, "cloud:web.log"), "utf8").catch(() => "");
      expect(b.code, `${b.stderr}\n${webLog.slice(-3000)}`).toBe(0);
      console.log(`import + web layer + openstack/vagrant (-j 2): ${((Date.now() - t0) / 1000).toFixed(0)} s`);
      // entered as debian with the key from the NoCloud seed; install ran as root through sudo
      expect(webLog).toMatch(/ssh debian@127\.0\.0\.1:\d+ \(key from the NoCloud seed\)/);
      expect(webLog).toContain("install runs as root for debian");
      expect(webLog).toMatch(/Setting up nginx-light/);
      // disk: 5G grew the imported image
      expect(virtualSize(path.join(root, "build/cloud.qcow2"))).toBe(5 * GiB);
      const finalLog = await fs.readFile(path.join(logs, "cloud:web:openstack.log"), "utf8");
      expect(finalLog).toContain("openstack: reset cloud-init");
      expect(finalLog).toMatch(/openstack: removed the build key from \/home\/debian\/\.ssh\/authorized_keys/);

      // `dbuild shell` on a Debian stack: resumed from the warm snapshot that the finalizers' boot of
      // cloud:web saved, entered as the image's login user (commands on stdin: no terminal here).
      const sh = spawnSync(process.execPath, [dbuildBin, "shell", "cloud:web"], {
        cwd: root,
        input: "echo login=$(id -un); cat /var/www/html/index.html; exit\n",
        encoding: "utf8",
        timeout: 600_000,
      });
      expect(sh.status, sh.stderr).toBe(0);
      expect(sh.stderr).toContain("resumed from the image's warm snapshot");
      expect(sh.stdout).toContain("login=debian");
      expect(sh.stdout).toContain("dbuild web on cloud:web");

      // The OCI cache on a Debian stack: push to a real registry, pull into a copy of the project with
      // no build dir: both nodes fresh, nothing built.
      const reg = await startRegistry();
      try {
        const push = await dbuild(["push", "cloud:web", "--cache", reg.url], { cwd: root });
        expect(push.code, push.stderr).toBe(0);
        const copy = path.join(tmp, "cloud-copy");
        const buildDir = path.join(root, "build");
        await fs.cp(root, copy, { recursive: true, verbatimSymlinks: true, filter: (src) => src !== buildDir });
        const pl = await dbuild(["pull", "cloud:web", "--cache", reg.url], { cwd: copy });
        expect(pl.code, pl.stderr).toBe(0);
        expect(pl.stdout).toMatch(/pulled 2 /);
        const plan = await dbuild(["plan", "--json", "cloud:web"], { cwd: copy });
        expect(plan.code, plan.stderr).toBe(0);
        const nodes = (JSON.parse(plan.stdout) as { nodes: Array<{ stack: string; status: string }> }).nodes;
        expect(nodes.map((n) => [n.stack, n.status])).toEqual([
          ["cloud", "fresh"],
          ["cloud:web", "fresh"],
        ]);
        await fs.rm(copy, { recursive: true, force: true });
      } finally {
        await reg.stop();
      }

      // The package cache: every byte apt fetched went through it, and a rebuild after a comment-only change
      // fetches (almost) nothing from outside: packages from the cache, index files revalidated.
      // (The first build may itself be served from the cache: the test's user cache outlives a run.)
      const first = nodeDone(b, "cloud:web")?.proxy;
      const served = (c: Counters | undefined): number => (c ? c.bytesFromCache + c.bytesFromUpstream : 0);
      expect(served(first)).toBeGreaterThan(1_000_000);
      const install = path.join(root, "layers/web/target/install");
      await fs.appendFile(install, "# only this comment changed\n");
      const plan = await dbuild(["plan"], { cwd: root });
      expect(plan.code, plan.stderr).toBe(0);
      expect(plan.stdout).toMatch(/cloud:web\b.*stale/);
      const why = await dbuild(["why", "cloud:web:openstack"], { cwd: root });
      expect(why.code, why.stderr).toBe(0);
      expect(why.stdout).toMatch(/web/);
      // The rebuild runs under `dbuild watch` (its first cycle builds what is stale), as a user iterating
      // on the layer would; the build VM resumes from the warm snapshot of the imported base.
      const t1 = Date.now();
      const w = new WatchProc(["layers/web", "--stack", "cloud:web"], { cwd: root, env: { DBUILD_CACHE_HOME: userCacheHome() } });
      let second: Counters | undefined;
      try {
        const end = await w.cycleEnd(0, 1_800_000);
        expect(w.events[end - 1], JSON.stringify(w.events).slice(-3000)).toMatchObject({ type: "watch-cycle-done", outcome: "done", built: ["cloud:web"] });
        expect(w.events.find((e) => e.type === "step" && e.step === "boot" && e.stack === "cloud:web" && e.detail)).toMatchObject({ detail: "resumed" });
        second = (w.events.find((e) => e.type === "node-done" && e.stack === "cloud:web") as { proxy?: Counters } | undefined)?.proxy;
        w.child.kill("SIGINT");
        expect((await w.done).code).toBe(130);
      } finally {
        if (w.child.exitCode === null) w.child.kill("SIGKILL");
        await w.done;
      }
      console.log(
        `cloud:web second build (comment-only change, under watch): ${((Date.now() - t1) / 1000).toFixed(0)} s; from outside ${second?.bytesFromUpstream} B of ${served(second)} B served (first build: ${first?.bytesFromUpstream} B of ${served(first)} B)`,
      );
      expect(second?.requests ?? 0).toBeGreaterThan(0);
      // Not one package byte from outside; index files are revalidated (304, no body) unless the archive
      // published new ones in between (bookworm-updates and the security suite change several times a day).
      expect(served(second)).toBeGreaterThan(1_000_000);
      expect(second?.packageBytesFromUpstream).toBe(0);
      expect(second?.bytesFromUpstream ?? Infinity).toBeLessThan(0.05 * served(second));

      for (const file of [path.join(root, "build/openstack/cloud:web:openstack.qcow2"), path.join(root, "build/vagrant/cloud:web:vagrant.box")]) {
        expect((await fs.stat(file)).size).toBeGreaterThan(50_000_000);
      }
    }, 2_400_000);

    it("both deliverables boot alone and accept a fresh key through a fresh seed", async () => {
      // The deliverables on their own: a fresh key, a fresh seed (new instance), nothing else from dbuild.
      const fresh = path.join(tmp, "fresh-key");
      execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "fresh", "-f", fresh]);
      const box = path.join(tmp, "box.img");
      execFileSync("sh", ["-c", `tar -xOf "${path.join(root, "build/vagrant/cloud:web:vagrant.box")}" box.img > "${box}"`]);
      const disks = { openstack: path.join(root, "build/openstack/cloud:web:openstack.qcow2"), vagrant: box };
      await Promise.all(
        Object.entries(disks).map(async ([fmt, file]) => {
          expect(JSON.parse(execFileSync("qemu-img", ["info", "--output=json", file], { encoding: "utf8" }))["backing-filename"]).toBeUndefined();
          const child = path.join(tmp, `${fmt}-boot.qcow2`);
          execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", file, child]);
          const tb = Date.now();
          const vm = await startVm({
            disk: child,
            mem: 1024,
            cpus: 1,
            accelerator: "auto",
            network: { mode: "user", bridge: "virbr0" },
            keyPath: fresh,
            user: "debian",
            seed: { instanceId: `deliverable-${fmt}-${Date.now()}` },
            serialLog: path.join(tmp, `${fmt}-serial.log`),
            runDir: path.join(tmp, `${fmt}-run`),
            bootTimeoutMs: 900_000,
          });
          try {
            console.log(`${fmt} deliverable: SSH as debian with the fresh key after ${((Date.now() - tb) / 1000).toFixed(0)} s`);
            const page = await run(vm, `python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1/').read().decode())"`);
            expect(page.out).toContain("dbuild web on cloud:web");
            const st = await run(vm, "sudo -n cloud-init status --wait >/dev/null 2>&1; sudo -n cloud-init status; df -B1 --output=size / | tail -n1; sudo -n cat /root/.ssh/authorized_keys 2>/dev/null | wc -l");
            expect(st.out).toMatch(/status: done/);
            expect(Number(st.out.trim().split("\n")[1])).toBeGreaterThan(4.5 * GiB);
            // the build key was removed: it no longer logs in
            const buildKey = await fs.readFile(path.join(root, "keys/demobuilder"));
            const refused = await SshSession.connect({ host: vm.sshHost, port: vm.sshPort, username: "debian", privateKey: buildKey }, { timeoutMs: 30_000 }).then(
              (s) => {
                s.close();
                return false;
              },
              () => true,
            );
            expect(refused).toBe(true);
          } finally {
            await vm.shutdown({ timeoutMs: 120_000 });
          }
        }),
      );
    }, 2_400_000);
  });
});
