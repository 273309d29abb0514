// Shared bench helpers: the micro test image (built by the test helper's cache) and medians.
import { execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import { createServer } from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const cache = process.env.DBUILD_TEST_CACHE ?? path.join(os.tmpdir(), "dbuild-test-cache");

/** The newest cached micro test image and its key; built through the e2e test helper if missing. */
export function microImage() {
  const pick = () =>
    fs.existsSync(cache)
      ? fs
          .readdirSync(cache)
          .filter((f) => /^micro-[0-9a-f]+(-[0-9a-f]+)?\.qcow2$/.test(f))
          .map((f) => path.join(cache, f))
          .sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0]
      : undefined;
  let img = pick();
  if (!img) {
    // Build it through the test helper (vitest compiles TypeScript helpers for us).
    execFileSync("npx", ["vitest", "run", "test/e2e/micro-image.test.ts"], { cwd: root, stdio: "inherit" });
    img = pick();
  }
  if (!img) throw new Error(`no micro image in ${cache}`);
  return { image: img, key: path.join(cache, "test-key"), pubkey: path.join(cache, "test-key.pub") };
}

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

export const loadavg = () => os.loadavg().map((x) => x.toFixed(1)).join(" ");

export function writeSection(name, md) {
  fs.mkdirSync(path.join(root, "docs", "bench"), { recursive: true });
  fs.writeFileSync(path.join(root, "docs", "bench", `${name}.md`), md);
  console.log(md);
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Debian's docker-registry on 127.0.0.1 with its storage under `dir`; resolves once /v2/ answers. */
export async function startRegistry(dir) {
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const cfg = path.join(dir, "config.yml");
  fs.writeFileSync(
    cfg,
    `version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: ${path.join(dir, "data")}}, delete: {enabled: true}}
http: {addr: "127.0.0.1:${port}"}
`,
  );
  const child = spawn("/usr/bin/docker-registry", ["serve", cfg], { stdio: "ignore" });
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/v2/`, { signal: AbortSignal.timeout(1000) });
      if (r.status === 200) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error("docker-registry did not start");
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    url: `oci://127.0.0.1:${port}/bench`,
    stop: async () => {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.once("exit", r)));
    },
  };
}
