import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, renameSync, rmSync, statSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ensureProjectKey } from "../../src/vm/keys.js";
import { createChild, imageInfo } from "../../src/vm/image.js";
import { DbuildError } from "../../src/util/errors.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), "vm-image-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe("qcow2 children", () => {
  it("records an absolute backing path by default and a child-relative one on request", async () => {
    mkdirSync(path.join(dir, "objects"));
    mkdirSync(path.join(dir, "work"));
    const base = path.join(dir, "objects", "base.qcow2");
    execFileSync("qemu-img", ["create", "-q", "-f", "qcow2", base, "64M"]);
    await createChild(base, path.join(dir, "work", "abs.qcow2"));
    const abs = await imageInfo(path.join(dir, "work", "abs.qcow2"));
    expect(abs.backingFile).toBe(base);
    expect(abs.chain.map((c) => c.filename)).toEqual([path.join(dir, "work", "abs.qcow2"), base]);

    // relative to the child's directory, not to the process cwd
    await createChild(base, path.join(dir, "work", "rel.qcow2"), { relativeBacking: true });
    const rel = await imageInfo(path.join(dir, "work", "rel.qcow2"));
    expect(rel.backingFile).toBe("../objects/base.qcow2");
    expect(rel.backingFileResolved).toBe(base);
    expect(rel.virtualSize).toBe(64 * 1024 * 1024);
    expect(rel.format).toBe("qcow2");

    // moving the whole tree keeps a relative chain valid
    renameSync(dir, `${dir}-moved`);
    dir = `${dir}-moved`;
    const moved = await imageInfo(path.join(dir, "work", "rel.qcow2"));
    expect(moved.chain).toHaveLength(2);
  });

  it("a missing parent is a user error naming the child", async () => {
    const err = await createChild(path.join(dir, "nope.qcow2"), path.join(dir, "c.qcow2")).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbuildError);
    expect((err as DbuildError).problems[0]!.where).toBe(path.join(dir, "c.qcow2"));
  });
});

describe("project key", () => {
  it("is created once, mode 0600, ed25519, and concurrent callers agree on one pair", async () => {
    const results = await Promise.all(Array.from({ length: 4 }, () => ensureProjectKey(dir)));
    const key = path.join(dir, "keys", "demobuilder");
    for (const r of results) expect(r).toEqual({ key, pub: `${key}.pub` });
    expect(statSync(key).mode & 0o777).toBe(0o600);
    const derived = execFileSync("ssh-keygen", ["-y", "-f", key], { encoding: "utf8" }).trim();
    const pub = execFileSync("cat", [`${key}.pub`], { encoding: "utf8" }).trim();
    expect(pub.startsWith("ssh-ed25519 ")).toBe(true);
    expect(pub.split(" ").slice(0, 2).join(" ")).toBe(derived.split(" ").slice(0, 2).join(" "));
    expect(pub.endsWith(" dbuild")).toBe(true);
    const before = statSync(key).mtimeMs;
    await ensureProjectKey(dir);
    expect(statSync(key).mtimeMs).toBe(before);
  });
});
