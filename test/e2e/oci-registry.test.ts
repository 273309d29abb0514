/**
 * The OCI client against a real registry (Debian's docker-registry on 127.0.0.1) and a standard tool
 * (skopeo) reading what it wrote.
 */
import { execFile } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ANNOTATION, DBUILD_ARTIFACT_TYPE, hasNode, pullNodeImage, pushNodeImage } from "../../src/cache/artifact.js";
import { OciClient } from "../../src/cache/oci.js";
import { DbuildError } from "../../src/util/errors.js";
import { startRegistry, type TestRegistry } from "../helpers/registry.js";

const run = promisify(execFile);
const MiB = 1024 * 1024;

const key = (s: string): string => createHash("sha256").update(s).digest("hex");

/** A qcow2-like file: mostly zero clusters with random runs, so it is neither trivial nor all noise. */
async function makeImage(path: string, size: number): Promise<string> {
  const buf = Buffer.alloc(size);
  for (let off = 0; off < size; off += 256 * 1024) randomBytes(64 * 1024).copy(buf, off);
  await writeFile(path, buf);
  return `sha256:${createHash("sha256").update(buf).digest("hex")}`;
}

async function sha(path: string): Promise<string> {
  return `sha256:${createHash("sha256").update(await readFile(path)).digest("hex")}`;
}

describe("OCI client against docker-registry", () => {
  let reg: TestRegistry;
  let dir: string;
  let image: string;
  let imageDigest: string;

  beforeAll(async () => {
    reg = await startRegistry();
    dir = await mkdtemp(join(tmpdir(), "dbuild-oci-e2e-"));
    image = join(dir, "web.qcow2");
    imageDigest = await makeImage(image, 40 * MiB);
  });
  afterAll(async () => {
    await reg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("pushes a 40 MiB node image in chunks and pulls back an identical file", async () => {
    const client = new OciClient(reg.url, { chunkSize: 8 * MiB });
    const k = key("web");
    const parent = key("base");
    expect(await hasNode(client, k)).toBe(false);
    const pushed = await pushNodeImage(client, { key: k, stack: "micro:web", layer: "web", parentKey: parent, file: image });
    expect(pushed).toMatchObject({ digest: imageDigest, size: 40 * MiB, uploaded: true, existed: false });
    expect(await hasNode(client, k)).toBe(true);
    // the same key again: already there, nothing sent
    const again = await pushNodeImage(client, { key: k, stack: "micro:web", layer: "web", parentKey: parent, file: image });
    expect(again).toMatchObject({ existed: true, uploaded: false, digest: imageDigest, manifestDigest: pushed.manifestDigest });
    // another key with the same bytes and a known digest: the blob is found, only the manifest is new
    const twin = await pushNodeImage(client, { key: key("twin"), stack: "micro:twin", layer: "twin", parentKey: parent, file: image, digest: imageDigest });
    expect(twin).toMatchObject({ existed: false, uploaded: false, digest: imageDigest });

    const dest = join(dir, "pulled.qcow2");
    const pulled = await pullNodeImage(new OciClient(reg.url), k, dest);
    expect(pulled).toMatchObject({ key: k, stack: "micro:web", layer: "web", parentKey: parent, digest: imageDigest, size: 40 * MiB });
    expect(await sha(dest)).toBe(imageDigest);
    expect(await pullNodeImage(new OciClient(reg.url), key("nope"), join(dir, "none.qcow2"))).toBeUndefined();
  });

  it("writes artifacts skopeo can read", async () => {
    const client = new OciClient(reg.url);
    const k = key("skopeo");
    await pushNodeImage(client, { key: k, stack: "micro", layer: "micro", parentKey: null, file: image });
    const { stdout } = await run("skopeo", ["inspect", "--raw", "--tls-verify=false", `docker://127.0.0.1:${reg.port}/dbuild-test:${k}`]);
    const manifest = JSON.parse(stdout);
    expect(manifest.artifactType).toBe(DBUILD_ARTIFACT_TYPE);
    expect(manifest.annotations[ANNOTATION.key]).toBe(k);
    expect(manifest.annotations[ANNOTATION.stack]).toBe("micro");
    expect(manifest.annotations[ANNOTATION.layer]).toBe("micro");
    expect(manifest.annotations[ANNOTATION.parentKey]).toBeUndefined();
    expect(manifest.layers[0].digest).toBe(imageDigest);
    const tags = await run("skopeo", ["list-tags", "--tls-verify=false", `docker://127.0.0.1:${reg.port}/dbuild-test`]);
    expect(JSON.parse(tags.stdout).Tags).toContain(k);
  });

  it("detects a corrupted blob on pull and leaves no file at the destination", async () => {
    const client = new OciClient(reg.url);
    const k = key("corrupt");
    const pushed = await pushNodeImage(client, { key: k, stack: "micro:bad", layer: "bad", parentKey: key("base"), file: image });
    await reg.corruptBlob(pushed.digest, 20 * MiB);
    const out = join(dir, "out");
    await rm(out, { recursive: true, force: true });
    await import("node:fs/promises").then((fs) => fs.mkdir(out));
    const dest = join(out, "bad.qcow2");
    let err: unknown;
    try {
      await pullNodeImage(client, k, dest);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DbuildError);
    const p = (err as DbuildError).problems[0]!;
    expect(p.reason).toBe("digest-mismatch");
    expect(p.where).toBe(reg.url);
    expect(p.message).toContain(pushed.digest);
    expect(existsSync(dest)).toBe(false);
    expect(await readdir(out)).toEqual([]);
  });

  it("fails clearly when the registry disappears mid-push, leaving the source intact", async () => {
    // content the registry does not have yet, so the upload really happens
    const fresh = join(dir, "fresh.qcow2");
    const freshDigest = await makeImage(fresh, 40 * MiB);
    const client = new OciClient(reg.url, { chunkSize: 4 * MiB, retry: { retries: 2, baseMs: 50, maxMs: 100 } });
    let killed: Promise<void> | undefined;
    let err: unknown;
    const t0 = Date.now();
    try {
      await pushNodeImage(client, { key: key("crash"), stack: "micro:crash", layer: "crash", parentKey: null, file: fresh },
        {
          onProgress: (done) => {
            // after the first chunk is through, the registry host "dies"
            if (done > 6 * MiB && !killed) killed = reg.kill();
          },
        },
      );
    } catch (e) {
      err = e;
    }
    await killed;
    expect(killed).toBeDefined();
    expect(err).toBeInstanceOf(DbuildError);
    const p = (err as DbuildError).problems[0]!;
    expect(p.reason).toBe("registry-unreachable");
    expect(p.where).toBe(reg.url);
    expect(p.message).toMatch(/^pushing \/.*\/fresh\.qcow2 \(40\.0 MiB\) failed after 3 attempts: cannot reach http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)$/);
    expect(p.hint).toContain(`http://127.0.0.1:${reg.port}/v2/`);
    expect(p.hint).toContain("nothing local was changed");
    expect(Date.now() - t0).toBeLessThan(30_000);
    expect(await sha(fresh)).toBe(freshDigest);
  });
});
