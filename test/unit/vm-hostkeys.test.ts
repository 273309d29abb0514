// Host keys read through the guest agent: OpenSSH .pub lines and dropbear key files give the same blob
// SSH presents on the wire, and OpenSSH is told to accept only that key.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { dropbearPublicBlob, knownHostsLine, opensshPublicBlob } from "../../src/vm/hostkeys.js";
import { HOST_ALIAS, sshArgs } from "../../src/vm/rsync.js";

const dir = mkdtempSync(path.join(os.tmpdir(), "dbuild-hostkeys-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function str(b: Buffer): Buffer {
  const n = Buffer.alloc(4);
  n.writeUInt32BE(b.length);
  return Buffer.concat([n, b]);
}

describe("guest host keys", () => {
  it("a dropbear ed25519 key file yields the blob of the matching OpenSSH public key", () => {
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "k")]);
    const pubLine = readFileSync(path.join(dir, "k.pub"), "utf8");
    const blob = opensshPublicBlob(pubLine)!;
    expect(blob.subarray(4, 15).toString()).toBe("ssh-ed25519");
    const pub32 = blob.subarray(blob.length - 32);
    // dropbear's file: string "ssh-ed25519", string (32-byte secret || 32-byte public)
    const file = Buffer.concat([str(Buffer.from("ssh-ed25519")), str(Buffer.concat([randomBytes(32), pub32]))]);
    expect(dropbearPublicBlob(file)!.equals(blob)).toBe(true);
    expect(dropbearPublicBlob(Buffer.from("garbage"))).toBeUndefined();
    expect(knownHostsLine(HOST_ALIAS, blob)).toBe(`${HOST_ALIAS} ssh-ed25519 ${blob.toString("base64")}\n`);
  });

  it("OpenSSH checks the pinned key when a VM's known_hosts is given, and only then", () => {
    const strict = sshArgs({ port: 2222, keyPath: "/k", knownHosts: "/run/kh" }).join(" ");
    expect(strict).toContain("StrictHostKeyChecking=yes");
    expect(strict).toContain("UserKnownHostsFile=/run/kh");
    expect(strict).toContain(`HostKeyAlias=${HOST_ALIAS}`);
    expect(sshArgs({ port: 2222, keyPath: "/k" }).join(" ")).toContain("StrictHostKeyChecking=no");
  });
});
