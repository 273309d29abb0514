// The build-dir lock is a kernel lock (flock) held by a child process: released the moment its holder
// dies (SIGKILL included), never stale while the holder lives, and a waiter learns who holds it.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { buildDirLocked, lockBuildDir, LOCKED_EXIT, readLockHolder } from "../../src/store/lock.js";
import { Store } from "../../src/store/store.js";
import { DbuildError } from "../../src/util/errors.js";

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
let root: string;
let store: Store;
let holder: ChildProcess | undefined;

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-lock-"));
  store = new Store(path.join(root, "build"));
});
afterEach(async () => {
  holder?.kill("SIGKILL");
  holder = undefined;
  await fs.rm(root, { recursive: true, force: true });
});

/** Another process holding the lock (the compiled module, as the CLI runs it). */
async function holdInChild(): Promise<ChildProcess> {
  const script = `
    import { lockBuildDir } from ${JSON.stringify(path.join(repo, "dist/store/lock.js"))};
    import { Store } from ${JSON.stringify(path.join(repo, "dist/store/store.js"))};
    const release = await lockBuildDir(new Store(${JSON.stringify(store.buildDir)}), { command: "dbuild all (test holder)", wait: false });
    process.stdout.write("held\\n");
    process.stdin.on("data", async () => { await release(); process.stdout.write("released\\n"); });
    setInterval(() => {}, 1000);
  `;
  const file = path.join(root, "holder.mjs");
  await fs.writeFile(file, script);
  const c = spawn(process.execPath, [file], { stdio: ["pipe", "pipe", "inherit"] });
  await new Promise<void>((resolve, reject) => {
    c.stdout.on("data", (d: Buffer) => d.toString().includes("held") && resolve());
    c.once("exit", (code) => reject(new Error(`holder exited early: ${code}`)));
  });
  return c;
}

describe("build-dir lock", () => {
  it("--no-wait fails with exit 75 naming the holder; the lock is free the moment the holder is SIGKILLed", async () => {
    holder = await holdInChild();
    const h = await readLockHolder(store);
    expect(h?.pid).toBe(holder.pid);
    expect(h?.command).toBe("dbuild all (test holder)");
    const err = await lockBuildDir(store, { command: "dbuild gc", wait: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbuildError);
    expect((err as DbuildError).exitCode).toBe(LOCKED_EXIT);
    expect((err as DbuildError).message).toContain(`pid ${holder.pid}: dbuild all (test holder)`);
    const died = new Promise((r) => holder!.once("exit", r));
    holder.kill("SIGKILL"); // no exit handler runs: only the kernel can release it
    await died;
    const t0 = Date.now();
    let release: (() => Promise<void>) | undefined;
    for (let i = 0; i < 50 && !release; i++) {
      release = await lockBuildDir(store, { command: "dbuild all", wait: false }).catch(() => undefined);
      if (!release) await new Promise((r) => setTimeout(r, 20));
    }
    expect(release, "lock still held after its holder died").toBeDefined();
    expect(Date.now() - t0).toBeLessThan(1000);
    expect((await readLockHolder(store))?.pid).toBe(process.pid);
    await release!();
    expect(await readLockHolder(store)).toBeUndefined();
  });

  it("a second taker waits, says who holds the lock, and gets it when the holder releases", async () => {
    holder = await holdInChild();
    const waited: string[] = [];
    const taking = lockBuildDir(store, { command: "dbuild all", wait: true, onWait: (h) => waited.push(h?.command ?? "?") });
    let got = false;
    void taking.then(() => (got = true));
    await new Promise((r) => setTimeout(r, 300));
    expect(got).toBe(false);
    expect(waited).toEqual(["dbuild all (test holder)"]);
    holder.stdin!.write("release\n");
    const release = await taking;
    expect(got).toBe(true);
    await release();
  });

  it("waiting can be aborted (Ctrl-C)", async () => {
    holder = await holdInChild();
    const ac = new AbortController();
    const taking = lockBuildDir(store, { command: "dbuild all", wait: true, signal: ac.signal });
    setTimeout(() => ac.abort(new Error("interrupted")), 200);
    await expect(taking).rejects.toThrow("interrupted");
  });

  it("buildDirLocked says whether another process holds the lock, and takes nothing", async () => {
    expect(await buildDirLocked(store)).toBe(false);
    holder = await holdInChild();
    expect(await buildDirLocked(store)).toBe(true);
    holder.stdin!.write("release\n");
    await new Promise<void>((resolve) => holder!.stdout!.on("data", (d: Buffer) => d.toString().includes("released") && resolve()));
    expect(await buildDirLocked(store)).toBe(false);
    // The look left the lock free for a real taker.
    const release = await lockBuildDir(store, { command: "dbuild all", wait: false });
    await release();
  });

  it("the CLI honours --no-wait wherever it is given (after the command, before it, after a stack)", async () => {
    // A project with one host-built base layer: nothing here needs a VM, the lock is refused first.
    await fs.mkdir(path.join(root, "layers", "base"), { recursive: true });
    await fs.mkdir(path.join(root, "targets"));
    await fs.writeFile(path.join(root, "layers", "base", "install"), "#!/bin/sh\nexit 1\n", { mode: 0o755 });
    await fs.writeFile(path.join(root, "targets", "base"), "");
    holder = await holdInChild();
    for (const args of [["all", "--no-wait"], ["build", "--no-wait"], ["--no-wait", "build"], ["base", "--no-wait"], ["gc", "--no-wait"]]) {
      const r = spawnSync(process.execPath, [path.join(repo, "bin", "dbuild.js"), "-C", root, ...args], { encoding: "utf8", timeout: 20_000 });
      expect(r.status, `dbuild ${args.join(" ")}: ${r.stderr}`).toBe(LOCKED_EXIT);
      expect(r.stderr).toContain(`the build dir is locked by pid ${holder.pid}`);
    }
  });

  it("the same process can take and release it repeatedly (watch: once per build)", async () => {
    for (let i = 0; i < 3; i++) {
      const release = await lockBuildDir(store, { command: "dbuild watch", wait: false });
      await release();
    }
  });
});
