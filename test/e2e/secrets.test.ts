/**
 * Secrets against the real micro guest and a real registry: a missing secret is an error before any VM
 * boots; the install reads its secret (and prints it, masked); afterwards the secret's raw bytes are in no
 * object of the image's chain, no log, no record, no NDJSON event and no blob of the pushed cache artifact.
 *
 * VM boots: 1 (the layer using the secret).
 */
import { randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dbuild, stacksOf } from "../helpers/cli.js";
import { killQemuOf, qemuOf } from "../helpers/processes.js";
import { startRegistry, type TestRegistry } from "../helpers/registry.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";

let p: VmProject;
let reg: TestRegistry;
// Random per run, so a hit can only come from this run; hex, so it cannot be split by an encoding.
const token = `tok-${randomBytes(16).toString("hex")}`;
const fileSecret = `line one of the file secret ${randomBytes(8).toString("hex")}\nsecond line ${randomBytes(8).toString("hex")}\n`;

beforeAll(async () => {
  p = await makeVmProject("dbuild-e2e-secrets-");
  reg = await startRegistry();
  await p.write("demobuild.yaml", `buildVm: {mem: 256, cpus: 1}\ntimeouts: {boot: 90, install: 300, shutdown: 30}\nsecrets:\n  token: {env: DBUILD_E2E_TOKEN}\n  conf: {file: secret.conf}\n`);
  await p.write("secret.conf", fileSecret, 0o600);
  await p.layer(
    "sec",
    [
      // The install reads both: their digests go to the image (not the values), to prove it could.
      'sha256sum < "$DBUILD_SECRETS/token" | cut -d" " -f1 > /etc/token.sha256',
      'sha256sum < "$DBUILD_SECRETS/conf" | cut -d" " -f1 > /etc/conf.sha256',
      // ... and it prints them, as careless scripts do: the logs must show them masked.
      'echo "the token is $(cat $DBUILD_SECRETS/token)"',
      'cat "$DBUILD_SECRETS/conf"',
      // nothing of the value on the command line of any process in the guest (grep -f: not in grep's either)
      // (a process may exit between the glob and the read: the shell's own "can't open" is not a failure)
      "for f in /proc/[0-9]*/cmdline; do { tr '\\0' ' ' < $f; } 2>/dev/null || true; echo; done > /tmp/cmdlines",
      'grep -c -F -f "$DBUILD_SECRETS/token" /tmp/cmdlines > /etc/token-in-ps || true',
      "grep -q ' /run/dbuild/secrets tmpfs ' /proc/mounts && echo tmpfs > /etc/secrets-fs",
    ].join("\n"),
    { files: { "layer.yaml": "secrets: [token, conf]\n" } },
  );
  await p.target("micro:sec");
});

afterAll(async () => {
  killQemuOf(p.root);
  await reg.stop();
  await p.cleanup();
});

/** Every file under `dir` (recursively) whose raw bytes contain `needle`. */
async function filesContaining(dir: string, needle: Buffer): Promise<string[]> {
  const hits: string[] = [];
  for (const e of await fs.readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const f = path.join(e.parentPath, e.name);
    if ((await fs.readFile(f)).includes(needle)) hits.push(f);
  }
  return hits;
}

describe("secrets", () => {
  it("a missing secret is a clear error before any VM boots", async () => {
    const r = await dbuild(["all", "--progress", "json"], { cwd: p.root, env: { DBUILD_E2E_TOKEN: "" } });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/demobuild\.yaml:4:\d+: secret "token" \(needed by layers\/sec\): environment variable DBUILD_E2E_TOKEN is empty/);
    expect(r.stderr).toContain("hint: export DBUILD_E2E_TOKEN=");
    expect(stacksOf(r, "node-start")).toEqual([]);
    expect(qemuOf(p.root)).toEqual([]);
  });

  it("reach the install as files on a tmpfs, and are nowhere after the build: image chain, logs, records, events, pushed artifact", async () => {
    const r = await dbuild(["all", "--progress", "json", "--cache-to", reg.url], { cwd: p.root, env: { DBUILD_E2E_TOKEN: token } });
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(stacksOf(r, "node-done")).toEqual(["micro", "micro:sec"]);
    // Pushed behind the build.
    expect(r.events.some((e) => e.type === "step-done" && e.step === "push" && e.stack === "micro:sec" && e.ok === true && String(e.detail).startsWith("pushed"))).toBe(true);

    // The install could read them: read back what it wrote, from the published image.
    const snap = path.join(p.root, "sec.qcow2");
    expect((await dbuild(["snap", "micro:sec", snap], { cwd: p.root })).code).toBe(0);
    const vm = await dbuild(["run", snap], { cwd: p.root });
    expect(vm.code, vm.stderr).toBe(0);
    const pid = Number(/QEMUPID=(\d+)/.exec(vm.stdout)?.[1]);
    let seen: string;
    try {
      const out = await dbuild(["ssh", snap, "cat /etc/token.sha256 /etc/conf.sha256 /etc/token-in-ps /etc/secrets-fs; ls /run/dbuild 2>&1; true"], { cwd: p.root });
      expect(out.code, out.stderr).toBe(0);
      seen = out.stdout;
    } finally {
      process.kill(pid, "SIGKILL");
      await fs.rm(snap, { force: true });
    }
    const { createHash } = await import("node:crypto");
    const sha = (s: string): string => createHash("sha256").update(s).digest("hex");
    // No process in the guest had the value in its arguments while the install ran.
    expect(seen.split("\n").slice(0, 4)).toEqual([sha(token), sha(fileSecret), "0", "tmpfs"]);
    expect(seen).toMatch(/No such file/); // the mount point is gone too

    // Printed by the install: masked in the log and in the events.
    const log = await fs.readFile(path.join(p.root, "build", "logs", "micro:sec.log"), "utf8");
    expect(log).toContain("the token is ********");

    const needles = [token, ...fileSecret.split("\n").filter((l) => l.length > 0)].map((s) => Buffer.from(s));
    const build = path.join(p.root, "build");
    for (const n of needles) {
      // every object of the chain (and the rest of the build dir: logs, records, test results, stat cache)
      expect(await filesContaining(build, n)).toEqual([]);
      expect(Buffer.from(r.stdout).includes(n)).toBe(false);
      expect(Buffer.from(r.stderr).includes(n)).toBe(false);
      // every blob and manifest the registry stored for the pushed artifact
      expect(await filesContaining(reg.dataDir, n)).toEqual([]);
    }
    // The search is not vacuous: the image chain and the artifact are there to search.
    const objects = await fs.readdir(path.join(build, ".dbuild", "objects"));
    expect(objects.filter((o) => o.endsWith(".qcow2")).length).toBe(2);
    expect((await filesContaining(reg.dataDir, Buffer.from("micro:sec"))).length).toBeGreaterThan(0);
    // ... and it would find a value written to the disk: the digest the install wrote is in the image.
    expect((await filesContaining(path.join(build, ".dbuild", "objects"), Buffer.from(sha(token)))).length).toBe(1);
  }, 300_000);
});
