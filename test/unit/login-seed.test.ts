// Logging in to cloud images: who logs in to a stack's image, the NoCloud seed's contents and volume,
// commands run as root through sudo, and the disk: setting.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parse } from "yaml";
import { loginFor } from "../../src/exec/login.js";
import { loadProject, parseDiskSize } from "../../src/project/load.js";
import { DbuildError } from "../../src/util/errors.js";
import { seedMetaData, seedUserData, writeNoCloudSeed } from "../../src/vm/seed.js";
import { buildRemoteCommand } from "../../src/vm/ssh.js";
import { addlayer, demoProject, exe, writeFixture, type Fixture } from "../helpers/fixture.js";

const fixtures: Fixture[] = [];
afterAll(async () => {
  for (const f of fixtures) await f.cleanup();
});

async function project(extra: Parameters<typeof demoProject>[0]) {
  const f = await writeFixture(demoProject(extra));
  fixtures.push(f);
  return loadProject(f.root);
}

describe("loginFor", () => {
  it("root with the key baked in: no seed for a host-built base's stacks", async () => {
    const p = await project({});
    expect(loginFor(p, "micro")).toEqual({ user: "root", seed: false });
    expect(loginFor(p, "micro:web")).toEqual({ user: "root", seed: false });
  });

  it("a finalized image lost the key: seed; an imported base: seed", async () => {
    const p = await project({
      "layers/cloud/layer.yaml": `kind: base\nimport: {from: x.qcow2, sha256: "${"a".repeat(64)}"}\n`,
    });
    expect(loginFor(p, "micro:web:openstack")).toEqual({ user: "root", seed: true });
    expect(loginFor(p, "cloud")).toEqual({ user: "root", seed: true });
    expect(loginFor(p, "cloud:web")).toEqual({ user: "root", seed: true });
  });

  it("the last layer of the stack that sets ssh.user wins, else demobuild.yaml's", async () => {
    const p = await project({
      "demobuild.yaml": "ssh: {user: admin}\n",
      "layers/cloud/layer.yaml": `kind: base\nimport: {from: x.qcow2, sha256: "${"a".repeat(64)}"}\nssh: {user: debian}\n`,
      "layers/users/install": addlayer(),
      "layers/users/layer.yaml": "ssh: {user: alice}\n",
      "layers/users/target/install": exe("#!/bin/sh\nuseradd alice\n"),
    });
    expect(p.settings.ssh.user).toBe("admin");
    expect(loginFor(p, "micro")).toEqual({ user: "admin", seed: true });
    expect(loginFor(p, "cloud")).toEqual({ user: "debian", seed: true });
    expect(loginFor(p, "cloud:web")).toEqual({ user: "debian", seed: true });
    expect(loginFor(p, "cloud:users:web")).toEqual({ user: "alice", seed: true });
  });

  it("rejects a login name that is not one, with file and line", async () => {
    const err = await project({ "layers/web/layer.yaml": "ssh:\n  user: Bad User\n" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbuildError);
    expect((err as DbuildError).message).toMatch(/layers\/web\/layer\.yaml:2:\d+.*login name/s);
  });
});

describe("disk:", () => {
  it("reads sizes with a unit, or a number of GiB, in whole MiB", () => {
    expect(parseDiskSize("4G")).toBe(4 * 2 ** 30);
    expect(parseDiskSize("512M")).toBe(512 * 2 ** 20);
    expect(parseDiskSize("1T")).toBe(2 ** 40);
    expect(parseDiskSize("1.5G")).toBe(1536 * 2 ** 20);
    expect(parseDiskSize(8)).toBe(8 * 2 ** 30);
  });

  it("is loaded from layer.yaml, and a bad size is an error at its line", async () => {
    const p = await project({ "layers/web/layer.yaml": "disk: 6G\n" });
    expect(p.layers.get("web")?.config.disk).toBe(6 * 2 ** 30);
    const err = await project({ "layers/web/layer.yaml": "kind: intermediate\ndisk: 6 GB\n" }).catch((e: unknown) => e);
    expect((err as DbuildError).message).toMatch(/layers\/web\/layer\.yaml:2:\d+.*4G, 512M/s);
  });
});

describe("NoCloud seed", () => {
  const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB dbuild";

  it("gives root the key, and a non-root user the key and passwordless sudo", () => {
    const root = parse(seedUserData({ user: "root", publicKey: `${key}\n`, instanceId: "i-1" })) as Record<string, unknown>;
    expect(root).toEqual({ disable_root: false, ssh_pwauth: false, ssh_authorized_keys: [key] });
    const text = seedUserData({ user: "debian", publicKey: key, instanceId: "i-1" });
    expect(text.startsWith("#cloud-config\n")).toBe(true);
    const deb = parse(text) as { users: unknown[]; ssh_authorized_keys: string[] };
    expect(deb.ssh_authorized_keys).toEqual([key]);
    expect(deb.users).toEqual(["default", { name: "debian", sudo: "ALL=(ALL) NOPASSWD:ALL", ssh_authorized_keys: [key] }]);
    expect(parse(seedMetaData({ user: "root", publicKey: key, instanceId: "i-1" }))).toEqual({ "instance-id": "i-1", "local-hostname": "dbuild" });
  });

  it("is a FAT volume labelled CIDATA holding user-data and meta-data", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-seed-"));
    try {
      const img = path.join(dir, "seed.img");
      await writeNoCloudSeed(img, { user: "debian", publicKey: key, instanceId: "i-2" });
      const env = { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` };
      expect(execFileSync("fatlabel", [img], { encoding: "utf8", env }).trim()).toBe("CIDATA");
      expect(execFileSync("mdir", ["-b", "-i", img, "::/"], { encoding: "utf8" }).split("\n").filter(Boolean).sort()).toEqual(["::/meta-data", "::/user-data"]);
      expect(execFileSync("mtype", ["-i", img, "::/meta-data"], { encoding: "utf8" })).toContain("instance-id: i-2");
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});

describe("commands as root for a non-root login", () => {
  it("wrap the whole script, exports included, in sudo -n sh -c", () => {
    const line = buildRemoteCommand('echo "$A" "$(pwd)"', { env: { A: "it's" }, cwd: "/tmp", sudo: true });
    expect(line.startsWith("exec sudo -n -- sh -c ")).toBe(true);
    // with a sudo that just runs its command, the script inside is intact
    const fakeSudo = line.replace(/^exec sudo -n -- /, "exec ");
    expect(execFileSync("sh", ["-c", fakeSudo], { encoding: "utf8" })).toBe("it's /tmp\n");
  });
});
