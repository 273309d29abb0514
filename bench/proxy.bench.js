// Package cache benchmark (issue 10): a second build of debian:web after a comment-only change.
//   - bytes fetched from outside in the second build vs the first (proxy counters; goal <= 1%)
//   - wall time of the second build vs the first (same run)
// The Debian base is built first (outside the measurement, with the usual user cache); the two measured
// builds start from an EMPTY package cache (DBUILD_CACHE_HOME of their own), so the first one really
// downloads what `apt-get install nginx` needs from Debian's archive.
// Run: npm run bench -- proxy     Writes docs/bench/proxy.md. Needs root (the Debian base) and the archive.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { cache, loadavg, root, writeSection } from "./lib.js";

const example = path.join(root, "examples", "debian");
if (!fs.existsSync(path.join(example, "layers", "web"))) {
  // `npm run bench` runs every benchmark: say plainly that this one measured nothing, and write no section.
  console.error(`bench proxy: SKIPPED, nothing measured: ${example} has no web layer (the Debian example of issue 10)`);
  process.exit(0);
}
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-bench-proxy-"));
const proj = path.join(dir, "proj");
fs.cpSync(example, proj, { recursive: true, filter: (src) => !src.startsWith(path.join(example, "build")) });
const cacheHome = path.join(dir, "cache");

function dbuild(env, ...args) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [path.join(root, "bin", "dbuild.js"), "--progress", "json", ...args], {
    cwd: proj,
    encoding: "utf8",
    env: { ...process.env, ...env },
    maxBuffer: 256 * 1024 * 1024,
  });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`dbuild ${args.join(" ")} failed: ${r.stderr}\n${r.stdout.slice(-4000)}`);
  const events = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  return { ms, events };
}
const webCounters = (events) => {
  const done = events.find((e) => e.type === "node-done" && e.stack === "debian:web");
  if (!done?.proxy) throw new Error("debian:web was not built through the package cache");
  return done.proxy;
};
const mib = (n) => (n / 1024 / 1024).toFixed(2);

try {
  // Outside the measurement: the base image, from the test suite's user cache (its packages are there).
  dbuild({ DBUILD_CACHE_HOME: path.join(cache, "user-cache") }, "build", "debian");
  const first = dbuild({ DBUILD_CACHE_HOME: cacheHome }, "build", "debian:web");
  const install = path.join(proj, "layers", "web", "target", "install");
  fs.appendFileSync(install, "\n# a comment-only change: the layer is rebuilt, its packages are not downloaded again\n");
  const second = dbuild({ DBUILD_CACHE_HOME: cacheHome }, "build", "debian:web");
  const c1 = webCounters(first.events);
  const c2 = webCounters(second.events);
  const ratio = c1.bytesFromUpstream ? c2.bytesFromUpstream / c1.bytesFromUpstream : NaN;
  const wall = second.ms / first.ms;
  const md = `## Package cache: a second build of debian:web (\`npm run bench -- proxy\`)

Measured ${new Date().toISOString().slice(0, 10)}, load average ${loadavg()}. The Debian base is built first
and not measured; both measured builds of \`debian:web\` (\`apt-get install nginx\` and a page) use a package
cache that starts empty; between them only a comment in \`layers/web/target/install\` changes. Bytes are
response bodies counted by the proxy (\`node-done\` event's \`proxy\`).

| build of debian:web | wall time | fetched from outside | from the cache | files fetched / from cache / revalidated |
|---|---|---|---|---|
| first (empty cache) | ${(first.ms / 1000).toFixed(1)} s | ${mib(c1.bytesFromUpstream)} MiB | ${mib(c1.bytesFromCache)} MiB | ${c1.fetched} / ${c1.hits} / ${c1.revalidated} |
| second (comment-only change) | ${(second.ms / 1000).toFixed(1)} s | ${mib(c2.bytesFromUpstream)} MiB | ${mib(c2.bytesFromCache)} MiB | ${c2.fetched} / ${c2.hits} / ${c2.revalidated} |

- Bytes from outside, second / first: **${(ratio * 100).toFixed(2)}%** (goal <= 1%: ${ratio <= 0.01 ? "met" : "NOT met"}).
- Wall time, second / first: **${wall.toFixed(2)}x**.
- Of the second build's bytes from outside, package files: ${c2.packageBytesFromUpstream} B; the rest
  (${c2.bytesFromUpstream - c2.packageBytesFromUpstream} B) are index files fetched again in full. Index
  files are revalidated with a conditional GET (docs/proxy.md), but only when the origin gave a validator:
  the archive mirror this machine reaches answers InRelease with neither \`Last-Modified\` nor \`ETag\`
  (\`curl -sI http://deb.debian.org/debian/dists/bookworm/InRelease\`), so nothing can be revalidated and
  apt's three InRelease files (bookworm, -updates, -security: about 240 KB) come again on every build.
`;
  writeSection("proxy", md);
  if (!(ratio <= 0.01)) process.exitCode = 1;
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
