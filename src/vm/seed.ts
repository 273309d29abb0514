/**
 * NoCloud seed: a small FAT volume labelled CIDATA holding `user-data` and `meta-data`. cloud-init finds
 * it by label on any block device and gives the login user our public key, which is how a stock cloud
 * image is entered with no change to it. Made with mkfs.fat + mcopy (nothing is mounted).
 */
import { promises as fs } from "node:fs";
import path from "node:path";
import { loadExeca } from "../util/lazy.js";
import { DbuildError } from "../util/errors.js";

export interface SeedOptions {
  /** Login user to give the key to ("root" or a user cloud-init knows or creates). */
  user: string;
  /** OpenSSH public key line(s). */
  publicKey: string;
  /** cloud-init runs its per-instance modules again whenever this changes. */
  instanceId: string;
  hostname?: string;
}

/** `#cloud-config` that gives `user` the key (root too, so `disable_root` never locks dbuild out). */
export function seedUserData(o: SeedOptions): string {
  const keys = o.publicKey
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const keyList = keys.map((k) => `  - ${JSON.stringify(k)}`).join("\n");
  const lines = ["#cloud-config", "disable_root: false", "ssh_pwauth: false", "ssh_authorized_keys:", keyList];
  if (o.user !== "root") {
    // `default` keeps the image's own user (debian, ubuntu, cloud-user...); naming ours as well creates it
    // when it is not the default one (cloud-init merges the two entries when it is), with passwordless sudo as cloud images give their default user.
    lines.push(
      "users:",
      "  - default",
      `  - name: ${o.user}`,
      "    sudo: ALL=(ALL) NOPASSWD:ALL",
      "    ssh_authorized_keys:",
      ...keys.map((k) => `      - ${JSON.stringify(k)}`),
    );
  }
  return lines.join("\n") + "\n";
}

export function seedMetaData(o: SeedOptions): string {
  return `instance-id: ${o.instanceId}\nlocal-hostname: ${o.hostname ?? "dbuild"}\n`;
}

/** Write a NoCloud seed image (raw FAT, 2 MiB) to `file`. */
export async function writeNoCloudSeed(file: string, o: SeedOptions): Promise<void> {
  const dir = await fs.mkdtemp(`${file}.d-`);
  try {
    const ud = path.join(dir, "user-data");
    const md = path.join(dir, "meta-data");
    await fs.writeFile(ud, seedUserData(o));
    await fs.writeFile(md, seedMetaData(o));
    await fs.rm(file, { force: true });
    const execa = await loadExeca();
    // mkfs.fat lives in /usr/sbin, which a user's PATH may lack.
    const env = { PATH: `${process.env.PATH ?? "/usr/bin:/bin"}:/usr/sbin:/sbin` };
    try {
      await execa("mkfs.fat", ["-C", "-n", "CIDATA", file, "2048"], { env });
      await execa("mcopy", ["-o", "-i", file, ud, md, "::/"], { env });
    } catch (e) {
      const err = e as { stderr?: string; message: string; code?: string };
      throw new DbuildError({
        reason: "seed-failed",
        where: file,
        message: `cannot write the NoCloud seed: ${(err.stderr ?? err.message).trim()}`,
        hint: "install dosfstools (mkfs.fat) and mtools (mcopy)",
      });
    }
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}
