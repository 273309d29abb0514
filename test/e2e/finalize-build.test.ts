/**
 * The four finalizing layers through `dbuild build` on a temporary project over the micro guest:
 * deliverables under build/<layer>/<stack>.<ext>, the "next" line with its placeholders filled, and
 * incremental rebuilds (nothing when nothing changed; only the target whose settings changed).
 * Booting each deliverable is finalize-formats.test.ts's job.
 */
import { execFileSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, stacksOf, startDbuild, type CliResult } from "../helpers/cli.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";
import { killQemuOf } from "../helpers/processes.js";

const formats = ["openstack", "vagrant", "vsphere", "raw"] as const;
const stacks = formats.map((f) => `micro:${f}`);
let p: VmProject;
// Four VM cycles one after the other: about 4 x 50 s on a loaded 2-core host.
const BUILD_TIMEOUT_MS = 900_000;
const children = new Set<ChildProcess>();
/** `dbuild build --progress json ...`: the option must follow the subcommand to reach it. */
async function build(...args: string[]): Promise<CliResult> {
  const { child, done } = startDbuild(["build", "--progress", "json", ...args], { cwd: p.root });
  children.add(child);
  try {
    return await done;
  } finally {
    children.delete(child);
  }
}


function imgInfo(file: string): Record<string, unknown> {
  return JSON.parse(execFileSync("qemu-img", ["info", "--output=json", "-U", file], { encoding: "utf8" })) as Record<string, unknown>;
}

function tarList(file: string): string[] {
  return execFileSync("tar", ["-tf", file], { encoding: "utf8" }).split("\n").filter(Boolean);
}

function tarCat(file: string, member: string): string {
  return execFileSync("tar", ["-xOf", file, member], { encoding: "utf8" });
}

function doneEvent(r: CliResult, stack: string): Record<string, unknown> {
  const e = r.events.find((x) => x.type === "node-done" && x.stack === stack);
  expect(e, `no node-done for ${stack}`).toBeDefined();
  return e!;
}

beforeAll(async () => {
  p = await makeVmProject("dbuild-finalize-build-");
  // The real layer directories, symlinks and all; their symlinks point into utils/.
  for (const f of formats) await fs.cp(path.join(repoRoot, "layers", f), path.join(p.root, "layers", f), { recursive: true, verbatimSymlinks: true });
  await fs.copyFile(path.join(repoRoot, "utils", "vm-functions"), path.join(p.root, "utils", "vm-functions"));
  await fs.copyFile(path.join(repoRoot, "utils", "finalize"), path.join(p.root, "utils", "finalize"));
  await p.write("demobuild.yaml", "buildVm: {mem: 256, cpus: 1}\ndefaults: {mem: 1024, cpus: 1}\ntimeouts: {boot: 120, install: 300, shutdown: 30}\n");
  await p.target("micro:openstack", "NAME=demo-os\n");
  await p.target("micro:vagrant", "NAME=demo-box\nMEM=640\nCPUS=2\nVAGRANT_SSH_USER=root\n");
  await p.target("micro:vsphere", "NAME=demo-vs\nMEM=768\nCPUS=2\n");
  await p.target("micro:raw", "");
});

afterAll(async () => {
  // A test that timed out leaves its dbuild running: stop it (it stops its VMs) before removing its project.
  for (const c of children) {
    c.kill("SIGTERM");
    await Promise.race([new Promise((r) => c.once("exit", r)), new Promise((r) => setTimeout(r, 10_000))]);
    if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  }
  killQemuOf(p.root);
  await p.cleanup();
});

describe("dbuild build of the four finalizing layers", () => {
  it("publishes every deliverable and prints the next step", async () => {
    const r = await build("-j", "1", ...stacks);
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(stacksOf(r, "node-done").sort()).toEqual(["micro", ...stacks].sort());
    const b = path.join(p.root, "build");

    const os = path.join(b, "openstack", "micro:openstack.qcow2");
    // relative to the build dir or absolute, depending on the reporter's choice
    expect(path.resolve(b, String(doneEvent(r, "micro:openstack").deliverable))).toBe(os);
    expect(doneEvent(r, "micro:openstack").next).toBe(
      `glance image-create --name demo-os --disk-format qcow2 --container-format bare --file ${os}`,
    );
    const osInfo = imgInfo(os);
    expect(osInfo.format).toBe("qcow2");
    expect(osInfo["backing-filename"]).toBeUndefined();
    execFileSync("qemu-img", ["check", "-U", os]);

    const box = path.join(b, "vagrant", "micro:vagrant.box");
    expect(doneEvent(r, "micro:vagrant").next).toBe(`vagrant box add --name demo-box ${box}`);
    expect(tarList(box)).toEqual(["metadata.json", "Vagrantfile", "box.img"]);
    expect(JSON.parse(tarCat(box, "metadata.json"))).toMatchObject({ provider: "libvirt", format: "qcow2" });
    const vf = tarCat(box, "Vagrantfile");
    expect(vf).toContain("libvirt.memory = 640\n");
    expect(vf).toContain("libvirt.cpus = 2\n");
    expect(vf).toContain('config.ssh.username = "root"');

    const ova = path.join(b, "vsphere", "micro:vsphere.ova");
    expect(doneEvent(r, "micro:vsphere").next).toContain(`ovftool --name=demo-vs ${ova} `);
    expect(tarList(ova)).toEqual(["demo-vs.ovf", "demo-vs.mf", "demo-vs-disk1.vmdk"]);
    const ovf = tarCat(ova, "demo-vs.ovf");
    expect(ovf).toContain("<Name>demo-vs</Name>");
    expect(ovf).toMatch(/<rasd:ResourceType>4<\/rasd:ResourceType>\s*<rasd:VirtualQuantity>768</);

    // Defaults: no NAME/MEM/CPUS in targets/micro:raw.
    const raw = path.join(b, "raw", "micro:raw.raw");
    expect(doneEvent(r, "micro:raw").next).toContain(`qemu-system-x86_64 -m 1024 -smp 1 -drive file=${raw},format=raw`);
    expect(imgInfo(raw).format).toBe("raw");
    const st = await fs.stat(raw);
    expect(st.blocks * 512).toBeLessThan(st.size / 2);
  }, BUILD_TIMEOUT_MS);

  it("rebuilds nothing when nothing changed", async () => {
    const r = await build("-j", "1", ...stacks);
    expect(r.code, r.stderr).toBe(0);
    expect(stacksOf(r, "node-start")).toEqual([]);
  });

  it("rebuilds only the deliverable whose settings changed", async () => {
    await p.target("micro:vagrant", "NAME=demo-box\nMEM=896\nCPUS=2\nVAGRANT_SSH_USER=root\n");
    const r = await build("-j", "1", ...stacks);
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(stacksOf(r, "node-start")).toEqual(["micro:vagrant"]);
    expect(tarCat(path.join(p.root, "build", "vagrant", "micro:vagrant.box"), "Vagrantfile")).toContain("libvirt.memory = 896\n");
  }, BUILD_TIMEOUT_MS);
});
