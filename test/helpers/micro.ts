/**
 * The micro test guest, built once per content of layers/micro and shared by every test.
 *
 * The cached image is READ-ONLY by contract: it is the backing file of every test's VM, and writing to
 * it would silently corrupt all of them (qcow2 children record no checksum of their base). Boot a COW
 * child made with `makeChild` instead, never the image itself.
 *
 * Cache: `os.tmpdir()/dbuild-test-cache/` (or $DBUILD_TEST_CACHE) holds `micro-<hash>.qcow2` (hash of
 * every file under layers/micro plus the variant), the test key pair `test-key`/`test-key.pub`
 * (ed25519, no passphrase) and `debs/` (the install's DBUILD_CACHE). Vitest runs files in several
 * worker processes, so builds are serialized by a lock file; whoever gets it second finds the image.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { execa } from "execa";
import lockfile from "proper-lockfile";

export const repoDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
export const microLayerDir = path.join(repoDir, "layers", "micro");

export interface MicroImage {
  /** Absolute path of the cached qcow2 (read-only: boot a `makeChild` of it). */
  image: string;
  /** Private key (OpenSSH, ed25519, no passphrase) whose public half is root's authorized_keys. */
  key: string;
  pubkey: string;
}

export interface MicroOptions {
  /** Build the variant without qemu-guest-agent (a guest that never answers the agent). */
  noAgent?: boolean;
  signal?: AbortSignal;
}

export function testCacheDir(): string {
  return process.env.DBUILD_TEST_CACHE ?? path.join(os.tmpdir(), "dbuild-test-cache");
}

/** Hash of layers/micro: relative paths, modes (the exec bit matters), contents and symlink targets. */
export async function hashMicroLayer(noAgent = false): Promise<string> {
  const h = createHash("sha256");
  h.update(`variant ${noAgent ? "no-agent" : "agent"}\n`);
  const walk = async (rel: string): Promise<void> => {
    const entries = await fs.readdir(path.join(microLayerDir, rel), { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const r = path.posix.join(rel, e.name);
      const abs = path.join(microLayerDir, r);
      if (e.isDirectory()) {
        h.update(`d ${r}\n`);
        await walk(r);
      } else if (e.isSymbolicLink()) {
        h.update(`l ${r} ${await fs.readlink(abs)}\n`);
      } else {
        const st = await fs.stat(abs);
        h.update(`f ${r} ${(st.mode & 0o111) !== 0 ? "x" : "-"} ${st.size}\n`);
        h.update(await fs.readFile(abs));
      }
    }
  };
  await walk("");
  return h.digest("hex").slice(0, 16);
}

export interface BuildResult {
  stdout: string;
  ms: number;
}

/** Runs layers/micro/install as dbuild would. Throws with the script's output on failure. */
export async function buildMicroImage(opts: {
  output: string;
  pubkey: string;
  cache: string;
  workdir?: string;
  noAgent?: boolean;
  signal?: AbortSignal;
  timeoutMs?: number;
}): Promise<BuildResult> {
  const t0 = performance.now();
  const env: Record<string, string> = {
    DBUILD_OUTPUT: opts.output,
    DBUILD_PUBKEY: opts.pubkey,
    DBUILD_CACHE: opts.cache,
  };
  if (opts.workdir) env.DBUILD_WORKDIR = opts.workdir;
  if (opts.noAgent) env.MICRO_NO_AGENT = "1";
  const r = await execa(path.join(microLayerDir, "install"), {
    cwd: microLayerDir,
    env,
    all: true,
    reject: false,
    timeout: opts.timeoutMs ?? 600_000,
    forceKillAfterDelay: 5_000,
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
  });
  if (r.failed) {
    throw new Error(`layers/micro/install failed (${r.exitCode ?? r.signal ?? "?"}):\n${r.all}`);
  }
  return { stdout: r.stdout, ms: performance.now() - t0 };
}

async function exists(p: string): Promise<boolean> {
  return fs.access(p).then(
    () => true,
    () => false,
  );
}

async function ensureKey(dir: string): Promise<{ key: string; pubkey: string }> {
  const key = path.join(dir, "test-key");
  const pubkey = `${key}.pub`;
  if ((await exists(key)) && (await exists(pubkey))) return { key, pubkey };
  // Generated under a unique name and renamed, so a reader never sees half a key pair.
  const tmp = path.join(dir, `test-key.tmp-${process.pid}-${randomBytes(4).toString("hex")}`);
  await execa("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "dbuild-test", "-f", tmp], { timeout: 30_000 });
  await fs.rename(`${tmp}.pub`, pubkey);
  await fs.rename(tmp, key);
  await fs.chmod(key, 0o600);
  return { key, pubkey };
}

const inProcess = new Map<string, Promise<MicroImage>>();

/**
 * Builds (or finds) the cached micro image. Fast when cached: one hash of layers/micro.
 * The returned image must not be written: boot `makeChild(image, dir)`.
 */
export async function ensureMicroImage(opts: MicroOptions = {}): Promise<MicroImage> {
  const hash = await hashMicroLayer(opts.noAgent);
  let p = inProcess.get(hash);
  if (!p) {
    p = ensureMicroImageUncached(hash, opts);
    inProcess.set(hash, p);
    p.catch(() => inProcess.delete(hash));
  }
  return p;
}

async function ensureMicroImageUncached(hash: string, opts: MicroOptions): Promise<MicroImage> {
  const dir = testCacheDir();
  await fs.mkdir(dir, { recursive: true });
  const lockTarget = path.join(dir, "micro.lock");
  await fs.writeFile(lockTarget, "", { flag: "a" });
  // A cold build takes ~15-60 s on a loaded 2-core machine: wait up to ~10 minutes for another worker.
  const release = await lockfile.lock(lockTarget, {
    stale: 30_000,
    update: 5_000,
    retries: { retries: 600, minTimeout: 500, maxTimeout: 1_000, factor: 1 },
  });
  try {
    const { key, pubkey } = await ensureKey(dir);
    // The key is baked into the image: a new key pair (cache dir partly wiped) needs a new image.
    const keyHash = createHash("sha256").update(await fs.readFile(pubkey)).digest("hex").slice(0, 8);
    const prefix = `micro${opts.noAgent ? "-noagent" : ""}-`;
    const image = path.join(dir, `${prefix}${hash}-${keyHash}.qcow2`);
    if (!(await exists(image))) {
      const tmp = `${image}.tmp-${process.pid}`;
      const workdir = await fs.mkdtemp(path.join(dir, "work-"));
      try {
        await buildMicroImage({
          output: tmp,
          pubkey,
          cache: path.join(dir, "debs"),
          workdir,
          noAgent: opts.noAgent ?? false,
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        await fs.chmod(tmp, 0o444);
        await fs.rename(tmp, image);
        await pruneOldImages(dir, prefix, image);
      } finally {
        await fs.rm(workdir, { recursive: true, force: true });
        await fs.rm(tmp, { force: true });
      }
    }
    return { image, key, pubkey };
  } finally {
    await release();
  }
}

/**
 * Images of older contents of layers/micro are dead weight (~37 MB each) once a new one exists. Keep
 * those used in the last hour: a test run that started before the change may still make children.
 */
async function pruneOldImages(dir: string, prefix: string, keep: string): Promise<void> {
  const hourAgo = Date.now() - 3_600_000;
  for (const name of await fs.readdir(dir)) {
    const p = path.join(dir, name);
    // micro-HASH-KEY.qcow2 must not match micro-noagent-HASH-KEY.qcow2.
    if (!new RegExp(`^${prefix}[0-9a-f]{16}-[0-9a-f]{8}\\.qcow2$`).test(name) || p === keep) continue;
    const st = await fs.stat(p).catch(() => undefined);
    if (st && st.atimeMs < hourAgo && st.mtimeMs < hourAgo) await fs.rm(p, { force: true });
  }
}

/**
 * Creates a qcow2 COW child of `image` in `dir` (absolute backing path, explicit backing format:
 * QEMU 7.2 requires -F, and a relative -b would resolve against the child's directory).
 */
export async function makeChild(image: string, dir: string, name?: string): Promise<string> {
  await fs.mkdir(dir, { recursive: true });
  const child = path.join(dir, name ?? `child-${randomBytes(4).toString("hex")}.qcow2`);
  await execa("qemu-img", ["create", "-q", "-f", "qcow2", "-b", path.resolve(image), "-F", "qcow2", child], {
    timeout: 30_000,
  });
  return child;
}
