// The finalizing layers as files: the contract the executor relies on (layer.yaml keys, the
// Demobuilder symlinks, executable scripts) and the guest clean-up run under busybox sh.
import { execa, execaSync } from "execa";
import { afterAll, describe, expect, it } from "vitest";
import { lstat, mkdir, mkdtemp, readFile, readlink, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parse } from "yaml";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const layers = { openstack: "qcow2", vagrant: "box", vsphere: "ova", raw: "raw" } as const;
const names = Object.keys(layers) as (keyof typeof layers)[];
const allowedKeys = new Set(["kind", "description", "format", "extension", "next", "mem", "cpus", "timeout", "env"]);
const placeholders = new Set(["OUTPUT", "NAME", "STACK", "MEM", "CPUS"]);

describe.each(names)("layers/%s", (name) => {
  const dir = join(root, "layers", name);

  it("declares a finalizing layer with format, extension and a next step", async () => {
    const cfg = parse(await readFile(join(dir, "layer.yaml"), "utf8")) as Record<string, unknown>;
    for (const k of Object.keys(cfg)) expect(allowedKeys, `unknown key ${k}`).toContain(k);
    expect(cfg.kind).toBe("finalizing");
    expect(cfg.format).toBe(name);
    expect(cfg.extension).toBe(layers[name]);
    expect(typeof cfg.description).toBe("string");
    expect((cfg.description as string).length).toBeGreaterThan(10);
    const next = cfg.next as string;
    expect(next).toContain("{OUTPUT}");
    for (const m of next.matchAll(/\{([A-Z]+)\}/g)) expect(placeholders).toContain(m[1]);
  });

  it("has Demobuilder's layout: install -> addlayer.sh, target/vm-functions, a README", async () => {
    expect(await readlink(join(dir, "install"))).toBe("../../utils/addlayer.sh");
    expect(await readlink(join(dir, "target/vm-functions"))).toBe("../../../utils/vm-functions");
    expect((await readFile(join(dir, "README"), "utf8")).length).toBeGreaterThan(200);
  });

  it("has target/install -> the shared utils/finalize, an executable POSIX-sh script busybox sh parses", async () => {
    const f = join(dir, "target/install");
    expect((await lstat(f)).isSymbolicLink()).toBe(true);
    expect(await readlink(f)).toBe("../../../utils/finalize");
    expect((await stat(f)).mode & 0o111).toBe(0o111);
    const text = await readFile(f, "utf8");
    expect(text.startsWith("#!/bin/sh\n")).toBe(true);
    // bashisms busybox ash would choke on at run time rather than parse time
    expect(text).not.toMatch(/\[\[|\bfunction\b|<<<|\$\{[A-Za-z_]+\/\/|\bdeclare\b|\blocal -a\b/);
    await execa("busybox", ["sh", "-n", f]);
  });

  it("has an executable bash convert script that parses", async () => {
    const f = join(dir, "convert");
    expect((await stat(f)).mode & 0o111).toBe(0o111);
    expect((await readFile(f, "utf8")).startsWith("#!/bin/bash\n")).toBe(true);
    await execa("bash", ["-n", f]);
  });
});

it("all finalizing layers share one clean-up script (one file, linked: no copies to drift)", async () => {
  const targets = await Promise.all(names.map(async (n) => resolve(join(root, "layers", n, "target"), await readlink(join(root, "layers", n, "target/install")))));
  for (const t of targets) expect(t).toBe(join(root, "utils/finalize"));
});

// Runs the real clean-up under busybox sh in a chroot on a private tmpfs: tmpfs makes fstrim fail
// harmlessly (it would otherwise trim the host filesystem holding the temp dir). Needs root and mount
// namespaces (not granted in unprivileged containers); test/e2e/finalize-formats runs it in a real VM.
function canChroot(): boolean {
  if (process.getuid?.() !== 0) return false;
  try {
    execaSync("unshare", ["--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], { timeout: 10_000 });
    return true;
  } catch {
    return false;
  }
}

describe.skipIf(!canChroot())("target/install clean-up under busybox sh (chroot)", () => {
  let tmp = "";
  afterAll(async () => {
    if (tmp) await rm(tmp, { recursive: true, force: true });
  });

  it("removes host keys, history, MAC references; empties logs and machine-id; keeps the rest", async () => {
    tmp = await mkdtemp(join(tmpdir(), "dbuild-finalize-"));
    const fs = join(tmp, "root");
    await mkdir(fs);
    const script = `
      set -e
      mount -t tmpfs tmpfs ${fs}
      mkdir -p ${fs}/bin ${fs}/etc/dropbear ${fs}/etc/ssh ${fs}/var/log/sub ${fs}/root/.ssh ${fs}/home/u \
        ${fs}/etc/udev/rules.d ${fs}/etc/sysconfig/network-scripts ${fs}/var/lib/dhcp ${fs}/tmp/layer ${fs}/dev
      cp /bin/busybox ${fs}/bin/busybox
      chroot ${fs} /bin/busybox --install -s /bin
      # a cloud-init whose clean removes /etc/machine-id (22.4 does with --machine-id): finalize must leave it empty, not missing
      printf '#!/bin/sh\necho "$*" >> /tmp/cloud-init-calls\nrm -f /etc/machine-id\n' > ${fs}/bin/cloud-init && chmod +x ${fs}/bin/cloud-init
      cp -L ${join(root, "layers/openstack/target/install")} ${fs}/tmp/layer/install
      for t in ed25519 rsa; do echo key > ${fs}/etc/dropbear/dropbear_\${t}_host_key; done
      echo key > ${fs}/etc/ssh/ssh_host_rsa_key; echo pub > ${fs}/etc/ssh/ssh_host_rsa_key.pub
      echo keep > ${fs}/etc/ssh/sshd_config
      printf 'ssh-ed25519 AAAAkeep test\nno-port-forwarding,command="echo no" ssh-ed25519 AAAAbuild dbuild\n' > ${fs}/root/.ssh/authorized_keys
      mkdir -p ${fs}/home/u/.ssh && echo 'ssh-ed25519 AAAAbuild dbuild' > ${fs}/home/u/.ssh/authorized_keys
      printf 'root:x:0:0::/root:/bin/sh\nu:x:1000:1000::/home/u:/bin/sh\n' > ${fs}/etc/passwd
      echo 'ls /' > ${fs}/root/.ash_history; echo 'ls' > ${fs}/home/u/.bash_history
      echo line > ${fs}/var/log/messages; echo line > ${fs}/var/log/sub/x.log; echo old > ${fs}/var/log/messages.1
      echo rule > ${fs}/etc/udev/rules.d/70-persistent-net.rules
      printf 'DEVICE=eth0\\nHWADDR=52:54:00:12:34:56\\nUUID=abc\\nONBOOT=yes\\n' > ${fs}/etc/sysconfig/network-scripts/ifcfg-eth0
      echo lease > ${fs}/var/lib/dhcp/dhclient.eth0.leases
      echo 0123456789abcdef > ${fs}/etc/machine-id
      touch ${fs}/dev/null
      cd ${fs}/tmp/layer
      chroot ${fs} /bin/sh -c 'cd /tmp/layer && LAYER=openstack DBUILD_SSH_KEY="ssh-ed25519 AAAAbuild dbuild" /bin/sh ./install' > ${tmp}/out.txt 2>&1
      echo $? > ${tmp}/rc
      find ${fs} \\( -type f -o -type l \\) ! -path '${fs}/bin/*' | sed 's|^${fs}||' | sort > ${tmp}/files.txt
      cp ${fs}/etc/sysconfig/network-scripts/ifcfg-eth0 ${tmp}/ifcfg
      wc -c < ${fs}/var/log/messages > ${tmp}/msgsize
      { wc -c < ${fs}/etc/machine-id || echo missing; } > ${tmp}/midsize 2>/dev/null
      cat ${fs}/tmp/cloud-init-calls > ${tmp}/cicalls; cat ${fs}/root/.ssh/authorized_keys > ${tmp}/rootkeys; cat ${fs}/home/u/.ssh/authorized_keys > ${tmp}/ukeys
    `;
    await execa("unshare", ["--mount", "--propagation", "private", "sh", "-c", script], { timeout: 30_000 });
    const out = await readFile(join(tmp, "out.txt"), "utf8");
    expect((await readFile(join(tmp, "rc"), "utf8")).trim(), out).toBe("0");
    expect(out).toContain("openstack: removed ssh host keys");
    expect(out).toContain("openstack: clean-up done");
    expect(out).toContain("fstrim not supported");
    const files = (await readFile(join(tmp, "files.txt"), "utf8")).split("\n").filter(Boolean);
    expect(files.filter((f) => /host_key|ssh_host_/.test(f))).toEqual([]);
    // cloud-init forgets this instance and its logs; not --machine-id (cloud-init 22.4 deletes the file, and systemd
    // cannot recreate it on a read-only root: no DHCP from systemd-networkd); the machine-id is emptied after it
    expect(await readFile(join(tmp, "cicalls"), "utf8")).toBe("clean --logs\n");
    expect(out).toContain("openstack: emptied /etc/machine-id");
    expect(out).toContain("openstack: reset cloud-init");
    expect(files.filter((f) => /_history$|persistent-net|dhcp\/.+lease|messages\.1$/.test(f))).toEqual([]);
    expect(files).toEqual(expect.arrayContaining(["/etc/ssh/sshd_config", "/root/.ssh/authorized_keys", "/var/log/messages", "/var/log/sub/x.log", "/etc/machine-id", "/tmp/layer/install"]));
    expect((await readFile(join(tmp, "msgsize"), "utf8")).trim()).toBe("0");
    expect((await readFile(join(tmp, "midsize"), "utf8")).trim()).toBe("0");
    expect(await readFile(join(tmp, "ifcfg"), "utf8")).toBe("DEVICE=eth0\nONBOOT=yes\n");
    // the build key leaves every user it was given to (cloud-init's prefixed root line too); other keys stay
    expect(await readFile(join(tmp, "rootkeys"), "utf8")).toBe("ssh-ed25519 AAAAkeep test\n");
    expect(await readFile(join(tmp, "ukeys"), "utf8")).toBe("");
    expect(out).toContain("removed the build key from /home/u/.ssh/authorized_keys");
  });
});

