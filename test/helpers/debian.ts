/**
 * The Debian test images, built once per content of layers/debian and shared by every test.
 *
 * - `ensureDebianBase()`: layers/debian built BY DBUILD (`dbuild debian`) in a project kept in the test
 *   cache; dbuild's own store is the cache, so a second test run finds the node fresh and builds nothing.
 * - `ensureGenericCloud()`: a "genericcloud-like" image from the same install with DEBIAN_NO_AGENT=1 and
 *   DEBIAN_NO_ROOT_KEY=1: cloud-init, no guest agent, no key for anyone, root login closed, cloud-init's
 *   default user `debian`. Built after the base with the same package cache, so it downloads nothing.
 *
 * Both are READ-ONLY by contract (backing files of every test's VM): boot a COW child or a snapshot.
 * Package downloads land in `testCacheDir()/user-cache` (DBUILD_CACHE_HOME of the builds), so repeated
 * runs on one machine fetch nothing from deb.debian.org.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { execa } from "execa";
import lockfile from "proper-lockfile";
import { dbuild, repoRoot } from "./cli.js";
import { ensureMicroImage, testCacheDir } from "./micro.js";

export const debianLayerDir = path.join(repoRoot, "layers", "debian");

export interface DebianImage {
  /** Absolute path of the image (read-only: boot a child of it). */
  image: string;
  key: string;
  pubkey: string;
  /** Output of the build when it ran in this process; undefined when it was cached. */
  buildLog?: string;
  /** Seconds the build took when it ran in this process. */
  seconds?: number;
}

export const userCacheHome = (): string => path.join(testCacheDir(), "user-cache");

async function hashLayer(): Promise<string> {
  const h = createHash("sha256");
  for (const name of (await fs.readdir(debianLayerDir)).sort()) {
    const abs = path.join(debianLayerDir, name);
    const st = await fs.stat(abs);
    h.update(`${name} ${st.mode & 0o111 ? "x" : "-"}\n`);
    h.update(await fs.readFile(abs));
  }
  return h.digest("hex").slice(0, 16);
}

async function withLock<T>(name: string, f: () => Promise<T>): Promise<T> {
  const dir = testCacheDir();
  await fs.mkdir(dir, { recursive: true });
  const target = path.join(dir, name);
  await fs.writeFile(target, "", { flag: "a" });
  // A cold Debian build takes minutes on a loaded 2-core machine: wait up to ~25 minutes.
  const release = await lockfile.lock(target, { stale: 30_000, update: 5_000, retries: { retries: 1500, minTimeout: 1000, maxTimeout: 1000, factor: 1 } });
  try {
    return await f();
  } finally {
    await release();
  }
}

let baseP: Promise<DebianImage> | undefined;
let cloudP: Promise<DebianImage> | undefined;

/** The project in the test cache whose `debian` node is the shared base. */
export const baseProjectDir = (): string => path.join(testCacheDir(), "debian-project");

export function ensureDebianBase(): Promise<DebianImage> {
  baseP ??= withLock("debian-base.lock", async () => {
    const micro = await ensureMicroImage(); // only for the shared test key
    const root = baseProjectDir();
    await fs.mkdir(path.join(root, "layers"), { recursive: true });
    await fs.mkdir(path.join(root, "keys"), { recursive: true });
    await fs.rm(path.join(root, "layers", "debian"), { force: true });
    await fs.symlink(debianLayerDir, path.join(root, "layers", "debian"));
    await fs.copyFile(micro.key, path.join(root, "keys", "demobuilder"));
    await fs.chmod(path.join(root, "keys", "demobuilder"), 0o600);
    await fs.copyFile(micro.pubkey, path.join(root, "keys", "demobuilder.pub"));
    await fs.writeFile(path.join(root, "demobuild.yaml"), "buildVm: {mem: 1024, cpus: 1}\ndefaults: {mem: 1024, cpus: 1}\n");
    const t0 = performance.now();
    const r = await dbuild(["debian", "--progress", "json"], { cwd: root, env: { DBUILD_CACHE_HOME: userCacheHome() } });
    if (r.code !== 0) throw new Error(`dbuild debian failed (${r.code}):\n${r.stderr}\n${await fs.readFile(path.join(root, "build/logs/debian.log"), "utf8").catch(() => "")}`);
    const built = r.events.some((e) => e.type === "node-done" && e.stack === "debian" && !e.restored);
    const image = await fs.realpath(path.join(root, "build", "debian.qcow2"));
    const out: DebianImage = { image, key: micro.key, pubkey: micro.pubkey };
    if (built && r.events.some((e) => e.type === "step" && e.step === "install-host")) {
      out.buildLog = await fs.readFile(path.join(root, "build/logs/debian.log"), "utf8");
      out.seconds = (performance.now() - t0) / 1000;
    }
    return out;
  });
  baseP.catch(() => (baseP = undefined));
  return baseP;
}

export function ensureGenericCloud(): Promise<DebianImage> {
  cloudP ??= (async () => {
    // After the base: its packages and lists are in the cache, so this build downloads nothing.
    const base = await ensureDebianBase();
    return withLock("debian-cloud.lock", async () => {
      const image = path.join(testCacheDir(), `debian-genericcloud-${await hashLayer()}.qcow2`);
      const out: DebianImage = { image, key: base.key, pubkey: base.pubkey };
      try {
        await fs.access(image);
        return out;
      } catch {
        /* build it */
      }
      const tmp = `${image}.tmp-${process.pid}`;
      const work = await fs.mkdtemp(path.join(testCacheDir(), "work-"));
      const t0 = performance.now();
      try {
        const r = await execa(path.join(debianLayerDir, "install"), {
          cwd: debianLayerDir,
          env: {
            DBUILD_OUTPUT: tmp,
            DBUILD_PUBKEY: base.pubkey,
            DBUILD_CACHE: path.join(userCacheHome(), "layers", "debian"),
            DBUILD_WORKDIR: work,
            DEBIAN_NO_AGENT: "1",
            DEBIAN_NO_ROOT_KEY: "1",
          },
          all: true,
          reject: false,
          timeout: 1_500_000,
        });
        if (r.failed) throw new Error(`layers/debian/install (genericcloud-like) failed:\n${r.all}`);
        await fs.chmod(tmp, 0o444);
        await fs.rename(tmp, image);
        out.buildLog = r.all;
        out.seconds = (performance.now() - t0) / 1000;
        return out;
      } finally {
        await fs.rm(work, { recursive: true, force: true });
        await fs.rm(tmp, { force: true });
      }
    });
  })();
  cloudP.catch(() => (cloudP = undefined));
  return cloudP;
}
