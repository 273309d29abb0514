// The host-side convert scripts of the finalizing layers, run for real on a small synthetic image
// chain (a qcow2 child with a relative backing file). No VM: booting the results is the e2e test's job.
import { execa } from "execa";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const MiB = 1024 * 1024;

interface ImgInfo {
  format: string;
  "virtual-size": number;
  "backing-filename"?: string;
  "format-specific"?: { data?: { "create-type"?: string } };
}

async function info(file: string): Promise<ImgInfo> {
  const { stdout } = await execa("qemu-img", ["info", "--output=json", file]);
  return JSON.parse(stdout) as ImgInfo;
}

let tmp = "";
let chain = "";

async function convert(layer: string, out: string, env: Record<string, string> = {}) {
  const work = join(tmp, `work-${layer}`);
  await mkdir(work, { recursive: true });
  return execa(join(root, "layers", layer, "convert"), [], {
    cwd: join(root, "layers", layer),
    env: { DBUILD_IMAGE: chain, DBUILD_OUTPUT: out, DBUILD_WORKDIR: work, NAME: "demo", MEM: "768", CPUS: "3", STACK: "micro:demo", LAYER: layer, ...env },
    timeout: 60_000,
    reject: false,
  });
}

async function tarList(file: string): Promise<string[]> {
  return (await execa("tar", ["-tf", file])).stdout.split("\n").filter(Boolean);
}

async function tarCat(file: string, member: string): Promise<string> {
  return (await execa("tar", ["-xOf", file, member])).stdout;
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), "dbuild-convert-"));
  // base: data at 0 and 40 MiB; child (backing by relative name) overwrites 8-10 MiB.
  await execa("qemu-img", ["create", "-q", "-f", "qcow2", join(tmp, "base.qcow2"), "64M"]);
  await execa("qemu-io", ["-c", "write -P 0x41 0 4M", "-c", "write -P 0x42 40M 1M", join(tmp, "base.qcow2")]);
  chain = join(tmp, "child.qcow2");
  await execa("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", chain], { cwd: tmp });
  await execa("qemu-io", ["-c", "write -P 0x43 8M 2M", chain]);
  expect((await info(chain))["backing-filename"]).toBe("base.qcow2");
});

afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true });
});

describe("openstack", () => {
  it("writes a compressed standalone qcow2 with the chain's content", async () => {
    const out = join(tmp, "out.qcow2");
    const r = await convert("openstack", out);
    expect(r.exitCode, r.stderr).toBe(0);
    const i = await info(out);
    expect(i.format).toBe("qcow2");
    expect(i["backing-filename"]).toBeUndefined();
    expect(i["virtual-size"]).toBe(64 * MiB);
    await execa("qemu-img", ["check", out]);
    await execa("qemu-img", ["compare", chain, out]);
    // 7 MiB of one repeated byte compresses to almost nothing; uncompressed it would be 7 MiB.
    expect((await stat(out)).size).toBeLessThan(1 * MiB);
  });

  it("fails with a clear message when the input is missing", async () => {
    const r = await convert("openstack", join(tmp, "x.qcow2"), { DBUILD_IMAGE: join(tmp, "nope.qcow2") });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/openstack: input image .*nope\.qcow2 not readable/);
  });
});

describe("raw", () => {
  it("writes a sparse raw image equal to the chain", async () => {
    const out = join(tmp, "out.raw");
    const r = await convert("raw", out);
    expect(r.exitCode, r.stderr).toBe(0);
    expect((await info(out)).format).toBe("raw");
    const st = await stat(out);
    expect(st.size).toBe(64 * MiB);
    // 7 MiB written in the chain; the rest must be holes.
    expect(st.blocks * 512).toBeLessThan(16 * MiB);
    await execa("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", chain, out]);
  });
});

describe("vagrant", () => {
  it("packs metadata.json, Vagrantfile and a standalone box.img", async () => {
    const out = join(tmp, "out.box");
    const r = await convert("vagrant", out, { VAGRANT_SSH_USER: "root" });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(await tarList(out)).toEqual(["metadata.json", "Vagrantfile", "box.img"]);
    expect(JSON.parse(await tarCat(out, "metadata.json"))).toEqual({ provider: "libvirt", format: "qcow2", virtual_size: 1 });
    const vf = await tarCat(out, "Vagrantfile");
    expect(vf).toMatch(/libvirt\.memory = 768\n/);
    expect(vf).toMatch(/libvirt\.cpus = 3\n/);
    expect(vf).toContain('libvirt.driver = "kvm"');
    expect(vf).toContain('libvirt.disk_bus = "virtio"');
    expect(vf).toContain('config.ssh.username = "root"');
    const x = join(tmp, "box-x");
    await mkdir(x);
    await execa("tar", ["-xf", out, "-C", x]);
    const i = await info(join(x, "box.img"));
    expect(i.format).toBe("qcow2");
    expect(i["backing-filename"]).toBeUndefined();
    await execa("qemu-img", ["compare", chain, join(x, "box.img")]);
  });

  it("rejects a MEM that is not a number", async () => {
    const r = await convert("vagrant", join(tmp, "bad.box"), { MEM: "1G" });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toContain("vagrant: MEM must be a number of MiB, got '1G'");
  });
});

describe("vsphere", () => {
  const out = () => join(tmp, "out.ova");
  let ovf = "";

  it("writes a ustar OVA with the descriptor first, then manifest and VMDK", async () => {
    const r = await convert("vsphere", out(), { NAME: "micro:web & <db>" });
    expect(r.exitCode, r.stderr).toBe(0);
    const list = await tarList(out());
    expect(list).toEqual(["micro_web____db_.ovf", "micro_web____db_.mf", "micro_web____db_-disk1.vmdk"]);
    const head = (await readFile(out())).subarray(257, 263);
    expect(head.toString("latin1")).toBe("ustar\0");
    ovf = await tarCat(out(), list[0]!);
  });

  it("has a well-formed OVF with NAME, MEM, CPUS, PVSCSI, VMXNET3 and the real sizes", async () => {
    const f = join(tmp, "d.ovf");
    await writeFile(f, ovf);
    await execa("xmllint", ["--noout", f]);
    expect(ovf).toContain('<VirtualSystem ovf:id="micro:web &amp; &lt;db&gt;">');
    expect(ovf).toContain("<Name>micro:web &amp; &lt;db&gt;</Name>");
    expect(ovf).toMatch(/<rasd:AllocationUnits>byte \* 2\^20<\/rasd:AllocationUnits>[\s\S]*?<rasd:ResourceType>4<\/rasd:ResourceType>\s*<rasd:VirtualQuantity>768</);
    expect(ovf).toMatch(/<rasd:ResourceType>3<\/rasd:ResourceType>\s*<rasd:VirtualQuantity>3</);
    expect(ovf).toContain("<rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>");
    expect(ovf).toContain("<rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>");
    expect(ovf).toContain('ovf:capacity="67108864"');
    expect(ovf).toContain("vmdk.html#streamOptimized");

    const x = join(tmp, "ova-x");
    await mkdir(x);
    await execa("tar", ["-xf", out(), "-C", x]);
    const vmdk = join(x, "micro_web____db_-disk1.vmdk");
    const size = (await stat(vmdk)).size;
    expect(ovf).toContain(`<File ovf:href="micro_web____db_-disk1.vmdk" ovf:id="file1" ovf:size="${size}"/>`);
    const i = await info(vmdk);
    expect(i.format).toBe("vmdk");
    expect(i["format-specific"]?.data?.["create-type"]).toBe("streamOptimized");
    await execa("qemu-img", ["compare", chain, vmdk]);
    // the manifest matches the files
    const mf = await readFile(join(x, "micro_web____db_.mf"), "utf8");
    const sums = await execa("sha256sum", ["micro_web____db_.ovf", "micro_web____db_-disk1.vmdk"], { cwd: x });
    const expected = sums.stdout.split("\n").map((l) => {
      const [hash, file] = l.split(/\s+/);
      return `SHA256(${file})= ${hash}`;
    });
    expect(mf.trimEnd().split("\n")).toEqual(expected);
  });

  it("keeps file names in the archive safe for tar and importers", async () => {
    const o = join(tmp, "dash.ova");
    const r = await convert("vsphere", o, { NAME: "-rf ../x" });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(await tarList(o)).toEqual(["vm-rf_.._x.ovf", "vm-rf_.._x.mf", "vm-rf_.._x-disk1.vmdk"]);
    expect(await tarCat(o, "vm-rf_.._x.ovf")).toContain("<Name>-rf ../x</Name>");
  });
});
