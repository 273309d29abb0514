/**
 * The VM runtime against the real micro guest: boot, agent IP, SSH exec, env, rsync, timeouts,
 * shutdown. One VM for the whole file keeps it to a few seconds of TCG.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ensureMicroImage, makeChild, type MicroImage } from "../helpers/micro.js";
import { startVm, type QemuVm } from "../../src/vm/qemu.js";
import { DbuildError } from "../../src/util/errors.js";
import { alive } from "../helpers/processes.js";

let micro: MicroImage;
let dir: string;
let vm: QemuVm | undefined;


async function run(cmd: string, env?: Record<string, string>) {
  let out = "";
  let err = "";
  const r = await vm!.exec(cmd, { env, onStdout: (d) => (out += d.toString()), onStderr: (d) => (err += d.toString()), timeoutMs: 30_000 });
  return { ...r, out, err };
}

beforeAll(async () => {
  micro = await ensureMicroImage();
  dir = mkdtempSync(path.join(os.tmpdir(), "vm-e2e-"));
  const disk = await makeChild(micro.image, dir);
  vm = await startVm({
    disk,
    mem: 256,
    cpus: 1,
    accelerator: "auto",
    accelCacheFile: path.join(dir, "accel.json"),
    network: { mode: "user", bridge: "virbr0" },
    keyPath: micro.key,
    serialLog: path.join(dir, "serial.log"),
    runDir: path.join(dir, "run"),
    bootTimeoutMs: 90_000,
  });
});

afterAll(async () => {
  await vm?.kill();
  rmSync(dir, { recursive: true, force: true });
});

describe("a booted micro guest", () => {
  it("is reachable: SSH on a loopback port, then the agent's IP; timings recorded, KVM probe cached", () => {
    expect(vm!.ip).toMatch(/^10\.0\.2\.\d+$/);
    expect(vm!.sshHost).toBe("127.0.0.1");
    expect(vm!.sshPort).toBeGreaterThan(1024);
    expect(alive(vm!.pid)).toBe(true);
    const t = vm!.timings;
    // user networking: ready = an SSH login; the agent (micro has one) is asked for the IP afterwards
    expect(t.agent).toBeUndefined();
    expect(t.qmp! <= t.ssh! && t.ssh! <= t.ip!).toBe(true);
    const accel = JSON.parse(readFileSync(path.join(dir, "accel.json"), "utf8")) as { kvm: boolean; detail: string };
    expect(typeof accel.kvm).toBe("boolean");
    expect(readFileSync(path.join(dir, "serial.log"), "utf8")).toMatch(/Loading \/vmlinuz|\[ *\d+\.\d+\]/);
    console.log("boot timings (ms since spawn):", JSON.stringify(t), "accel:", vm!.accel);
  });

  it("passes exit codes, stdout and stderr apart", async () => {
    const r = await run("echo out; echo err >&2; exit 3");
    expect(r).toMatchObject({ code: 3, out: "out\n", err: "err\n" });
    expect((await run("true")).code).toBe(0);
  });

  it("passes environment variables with awkward values", async () => {
    const r = await run('printf "%s|%s" "$FOO" "$BAR"', { FOO: "a b'c \"d\" $HOME", BAR: "" });
    expect(r.out).toBe("a b'c \"d\" $HOME|");
  });

  it("rsync copies a tree, symlinks as regular files, and deletes extras", async () => {
    const src = path.join(dir, "tree");
    mkdirSync(path.join(src, "sub"), { recursive: true });
    writeFileSync(path.join(src, "sub", "data.txt"), "payload\n");
    symlinkSync("sub/data.txt", path.join(src, "link.txt"));
    writeFileSync(path.join(src, "extra"), "x");
    await vm!.rsyncTo(src, "/tmp/deep/target");
    let r = await run("cd /tmp/deep/target && test -f link.txt && ! test -L link.txt && cat link.txt sub/data.txt && ls");
    expect(r.code).toBe(0);
    expect(r.out).toBe("payload\npayload\nextra\nlink.txt\nsub\n");
    rmSync(path.join(src, "extra"));
    await vm!.rsyncTo(src, "/tmp/deep/target/");
    r = await run("ls /tmp/deep/target");
    expect(r.out).toBe("link.txt\nsub\n");
  });

  it("a command over its timeout fails with exec-timeout and the connection stays usable", async () => {
    const err = await vm!.exec("sleep 30", { timeoutMs: 500 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbuildError);
    expect((err as DbuildError).problems[0]!.reason).toBe("exec-timeout");
    expect((await run("echo again")).out).toBe("again\n");
  });

  it("an aborted command rejects promptly", async () => {
    const ac = new AbortController();
    const p = vm!.exec("sleep 30", { signal: ac.signal });
    setTimeout(() => ac.abort(new Error("stop")), 200);
    const t0 = Date.now();
    await expect(p).rejects.toThrow("stop");
    expect(Date.now() - t0).toBeLessThan(2000);
  });

  it("shuts down: QEMU exits and the run dir is removed", async () => {
    const pid = vm!.pid;
    const t0 = Date.now();
    await vm!.shutdown({ timeoutMs: 20_000 });
    const ms = Date.now() - t0;
    expect(alive(pid)).toBe(false);
    expect(existsSync(path.join(dir, "run"))).toBe(false);
    // poweroff is seconds, not the timeout: the guest obeyed the power button
    expect(ms).toBeLessThan(10_000);
    await vm!.shutdown(); // idempotent
    await vm!.kill();
  });
});
