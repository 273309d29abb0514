/**
 * A real registry for tests: Debian's `docker-registry` (CNCF distribution 2.8) on 127.0.0.1 with its
 * storage in a temporary directory. Not a mock: what passes here passes against a registry people run.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { mkdtemp, open, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

export const REGISTRY_BIN = "/usr/bin/docker-registry";

export interface TestRegistry {
  /** `oci://127.0.0.1:PORT/dbuild-test` */
  url: string;
  host: string;
  port: number;
  /** Storage root: blobs live under docker/registry/v2/blobs/sha256/XX/HEX/data. */
  dataDir: string;
  /** Stops the registry (SIGTERM, then SIGKILL) and removes its directory. */
  stop(): Promise<void>;
  /** Kills the registry at once (SIGKILL), as a crash or a dropped host would; keeps the data. */
  kill(): Promise<void>;
  /** Path of a stored blob's data file. */
  blobPath(digest: string): string;
  /** Overwrites `bytes` at `offset` of a stored blob, keeping its size, so only the digest check can tell. */
  corruptBlob(digest: string, offset?: number, bytes?: Buffer): Promise<void>;
  /** The registry's own log (stderr), for failure messages. */
  log(): Promise<string>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once("exit", () => resolve()));
}

async function waitReady(origin: string, child: ChildProcess, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error("docker-registry exited during start-up");
    try {
      const res = await fetch(`${origin}/v2/`, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`docker-registry did not answer ${origin}/v2/ within ${timeoutMs} ms`);
}

export async function startRegistry(opts: { repo?: string; timeoutMs?: number } = {}): Promise<TestRegistry> {
  const repo = opts.repo ?? "dbuild-test";
  const dir = await mkdtemp(join(tmpdir(), "dbuild-registry-"));
  const dataDir = join(dir, "data");
  // The port is picked then released, so another process may take it first: try a few times.
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    const config = [
      "version: 0.1",
      "log:",
      "  level: warn",
      "  accesslog:",
      "    disabled: true",
      "storage:",
      "  filesystem:",
      `    rootdirectory: ${dataDir}`,
      "  delete:",
      "    enabled: true",
      "  maintenance:",
      "    uploadpurging:",
      "      enabled: false",
      "http:",
      `  addr: 127.0.0.1:${port}`,
      "",
    ].join("\n");
    const configPath = join(dir, "config.yml");
    await writeFile(configPath, config);
    const logPath = join(dir, "registry.log");
    const logFile = await open(logPath, "a");
    const child = spawn(REGISTRY_BIN, ["serve", configPath], { stdio: ["ignore", logFile.fd, logFile.fd] });
    await logFile.close();
    const origin = `http://127.0.0.1:${port}`;
    try {
      await waitReady(origin, child, opts.timeoutMs ?? 15_000);
    } catch (e) {
      child.kill("SIGKILL");
      await exited(child);
      if (attempt < 3) continue;
      const log = await readFile(logPath, "utf8").catch(() => "");
      await rm(dir, { recursive: true, force: true });
      throw new Error(`${(e as Error).message}\n${log}`);
    }
    const blobPath = (digest: string): string => {
      const hex = digest.replace(/^sha256:/, "");
      return join(dataDir, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
    };
    return {
      url: `oci://127.0.0.1:${port}/${repo}`,
      host: "127.0.0.1",
      port,
      dataDir,
      blobPath,
      async kill() {
        child.kill("SIGKILL");
        await exited(child);
      },
      async stop() {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill("SIGTERM");
          const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
          await exited(child);
          clearTimeout(timer);
        }
        await rm(dir, { recursive: true, force: true });
      },
      async corruptBlob(digest, offset = 0, bytes = Buffer.from("dbuild-corruption")) {
        const path = blobPath(digest);
        const { size } = await stat(path);
        const at = Math.max(0, Math.min(offset, size - bytes.length));
        const fh = await open(path, "r+");
        try {
          // Flip the bytes rather than write fixed ones, so the content changes whatever was there.
          const old = Buffer.alloc(Math.min(bytes.length, size));
          await fh.read(old, 0, old.length, at);
          const next = Buffer.from(old.map((b, i) => b ^ (bytes[i]! | 1)));
          await fh.write(next, 0, next.length, at);
        } finally {
          await fh.close();
        }
      },
      log: () => readFile(logPath, "utf8").catch(() => ""),
    };
  }
}
