// Push and pull throughput of dbuild's OCI client next to `skopeo copy` of the same blob, against Debian's
// docker-registry on 127.0.0.1. Writes docs/bench/oci.md. Run: npm run bench -- oci
//
// Each round starts a fresh registry, so neither tool finds the blob already there (skopeo keeps a blob
// location cache keyed by registry host and would otherwise mount instead of uploading), and alternates
// which tool goes first so the page cache favours neither.
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { nodeManifest, pullNodeImage, pushNodeImage } from "../dist/cache/artifact.js";
import { OciClient, OCI_MANIFEST } from "../dist/cache/oci.js";
import { startRegistry } from "./lib.js";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const ROUNDS = Number(process.env.OCI_BENCH_ROUNDS ?? 5);
const MiB = 1024 * 1024;

/** A real qcow2 of ~200 MiB: a raw disk with random data in half of each 128 KiB, converted. */
function makeQcow2(dir) {
  const raw = path.join(dir, "disk.raw");
  const fd = fs.openSync(raw, "w");
  const size = 400 * MiB;
  for (let off = 0; off < size; off += 128 * 1024) fs.writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, off);
  fs.ftruncateSync(fd, size);
  fs.closeSync(fd);
  const out = path.join(dir, "node.qcow2");
  execFileSync("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, out]);
  fs.rmSync(raw);
  return out;
}

function sha256(file) {
  const h = createHash("sha256");
  const fd = fs.openSync(file, "r");
  const buf = Buffer.alloc(4 * MiB);
  for (let n; (n = fs.readSync(fd, buf, 0, buf.length, null)) > 0; ) h.update(buf.subarray(0, n));
  fs.closeSync(fd);
  return `sha256:${h.digest("hex")}`;
}

/** An OCI layout holding the same artifact dbuild pushes, for skopeo to copy from. */
function makeLayout(dir, file, digest, size, key) {
  const blobs = path.join(dir, "blobs", "sha256");
  fs.mkdirSync(blobs, { recursive: true });
  fs.linkSync(file, path.join(blobs, digest.slice(7)));
  const empty = Buffer.from("{}");
  fs.writeFileSync(path.join(blobs, createHash("sha256").update(empty).digest("hex")), empty);
  const manifest = Buffer.from(JSON.stringify(nodeManifest({ key, stack: "bench", layer: "bench", parentKey: null }, { digest, size })));
  const mDigest = createHash("sha256").update(manifest).digest("hex");
  fs.writeFileSync(path.join(blobs, mDigest), manifest);
  fs.writeFileSync(path.join(dir, "oci-layout"), JSON.stringify({ imageLayoutVersion: "1.0.0" }));
  fs.writeFileSync(
    path.join(dir, "index.json"),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: OCI_MANIFEST, digest: `sha256:${mDigest}`, size: manifest.length, annotations: { "org.opencontainers.image.ref.name": key } }],
    }),
  );
}

const cpu = { ourPush: [], skoPush: [], ourPull: [], skoPull: [] };

/** Runs skopeo copy; returns its CPU seconds (user + sys) as bash's `time` reports them. */
function skopeo(args) {
  const quoted = args.map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(" ");
  const out = execFileSync("bash", ["-c", `TIMEFORMAT='%U %S'; { time skopeo copy --quiet ${quoted} >/dev/null; } 2>&1`], {
    encoding: "utf8",
    stdio: ["ignore", "pipe", "inherit"],
  });
  return out.trim().split(/\s+/).slice(-2).map(Number).reduce((a, b) => a + b, 0);
}

async function timed(fn, cpuList) {
  const t0 = process.hrtime.bigint();
  const c0 = process.cpuUsage();
  const r = await fn();
  const c = process.cpuUsage(c0);
  cpuList?.push(typeof r === "number" ? r : (c.user + c.system) / 1e6);
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "dbuild-oci-bench-"));
  try {
    const file = makeQcow2(work);
    const size = fs.statSync(file).size;
    const digest = sha256(file);
    const key = createHash("sha256").update("bench").digest("hex");
    const layout = path.join(work, "layout");
    makeLayout(layout, file, digest, size, key);
    const t = { ourPush: [], ourPushHash: [], skoPush: [], ourPull: [], skoPull: [] };

    for (let round = 0; round < ROUNDS; round++) {
      const rdir = path.join(work, `reg${round}`);
      fs.mkdirSync(rdir);
      const reg = await startRegistry(rdir);
      const host = `127.0.0.1:${reg.port}`;
      const ours = async () => {
        // Digest known, as skopeo knows it from its layout's manifest (and the store records it at publish).
        t.ourPush.push(await timed(() => pushNodeImage(new OciClient(`oci://${host}/bench-dbuild`), { key, stack: "bench", layer: "bench", parentKey: null, file, digest }), cpu.ourPush));
        // Digest unknown: a new key's image is hashed while it is sent.
        t.ourPushHash.push(await timed(() => pushNodeImage(new OciClient(`oci://${host}/bench-dbuild-h`), { key, stack: "bench", layer: "bench", parentKey: null, file })));
        const dest = path.join(rdir, "pulled.qcow2");
        t.ourPull.push(await timed(() => pullNodeImage(new OciClient(`oci://${host}/bench-dbuild`), key, dest), cpu.ourPull));
        if (sha256(dest) !== digest) throw new Error("dbuild pull returned different bytes");
        fs.rmSync(dest);
      };
      const theirs = async () => {
        t.skoPush.push(await timed(() => skopeo(["--dest-tls-verify=false", `oci:${layout}:${key}`, `docker://${host}/bench-skopeo:${key}`]), cpu.skoPush));
        const out = path.join(rdir, "skopeo-out");
        t.skoPull.push(await timed(() => skopeo(["--src-tls-verify=false", `docker://${host}/bench-skopeo:${key}`, `oci:${out}:${key}`]), cpu.skoPull));
        fs.rmSync(out, { recursive: true });
      };
      if (round % 2 === 0) {
        await ours();
        await theirs();
      } else {
        await theirs();
        await ours();
      }
      await reg.stop();
      fs.rmSync(rdir, { recursive: true, force: true });
    }

    const mibs = (secs) => size / MiB / secs;
    const row = (name, oursT, skoT) => {
      const o = median(oursT);
      const s = median(skoT);
      return `| ${name} | ${o.toFixed(2)} s (${mibs(o).toFixed(0)} MiB/s) | ${s.toFixed(2)} s (${mibs(s).toFixed(0)} MiB/s) | ${(s / o).toFixed(2)}x |`;
    };
    const md = `## OCI cache: push and pull throughput vs skopeo

Reproduce: \`npm run bench -- oci\` (\`OCI_BENCH_ROUNDS=N\` for more rounds).

One qcow2 of ${(size / MiB).toFixed(0)} MiB (half random, half zero clusters before conversion) pushed to and pulled
from Debian's docker-registry (distribution ${registryVersion()}) on 127.0.0.1, a fresh registry per round,
median of ${ROUNDS} rounds. dbuild: \`OciClient.pushNodeImage\` (tag check, blob HEAD, chunked upload in 32 MiB
PATCHes streamed from the file, manifest) with the blob's digest known, as skopeo knows it from its layout;
"digest unknown" skips the blob HEAD and hashes the file while sending it (one read). \`pullNodeImage\`: manifest, streamed download
with sha256 checked while streaming, atomic rename. skopeo ${skopeoVersion()}: \`skopeo copy\` of the same
artifact from an OCI layout, and back into a fresh OCI layout. Ratio = skopeo time / dbuild time (above 1:
dbuild is faster; goal >= 0.9). The machine is shared: read the ratios, not the absolute figures.

| step | dbuild | skopeo copy | ratio |
|---|---|---|---|
${row("push", t.ourPush, t.skoPush)}
${row("push, digest unknown", t.ourPushHash, t.skoPush)}
${row("pull", t.ourPull, t.skoPull)}

CPU seconds of the client process (user + sys, median; the registry's share is the same for both): push
dbuild ${median(cpu.ourPush).toFixed(2)} vs skopeo ${median(cpu.skoPush).toFixed(2)}, pull dbuild ${median(cpu.ourPull).toFixed(2)} vs skopeo ${median(cpu.skoPull).toFixed(2)}.

Machine load during the run (1-min load average, 2 cores): ${os.loadavg()[0].toFixed(1)}.
Raw seconds: dbuild push ${t.ourPush.map((x) => x.toFixed(2)).join(", ")}; digest unknown ${t.ourPushHash.map((x) => x.toFixed(2)).join(", ")}; skopeo push ${t.skoPush.map((x) => x.toFixed(2)).join(", ")};
dbuild pull ${t.ourPull.map((x) => x.toFixed(2)).join(", ")}; skopeo pull ${t.skoPull.map((x) => x.toFixed(2)).join(", ")}.
`;
    fs.mkdirSync(path.join(root, "docs", "bench"), { recursive: true });
    fs.writeFileSync(path.join(root, "docs", "bench", "oci.md"), md);
    console.log(md);
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function registryVersion() {
  return execFileSync("/usr/bin/docker-registry", ["--version"], { encoding: "utf8" }).trim().split(/\s+/).pop();
}

function skopeoVersion() {
  return execFileSync("skopeo", ["--version"], { encoding: "utf8" }).trim().split(/\s+/).pop();
}

await main();
