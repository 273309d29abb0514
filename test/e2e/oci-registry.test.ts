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
import { ANNOTATION, DBUILD_ARTIFACT_TYPE, OciClient } from "../../src/cache/oci.js";
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
    expect(await client.hasNode(k)).toBe(false);
    const pushed = await client.pushNodeImage({ key: k, stack: "micro:web", layer: "web", parentKey: parent, file: image });
    expect(pushed).toMatchObject({ digest: imageDigest, size: 40 * MiB, uploaded: true });
    expect(await client.hasNode(k)).toBe(true);
    // the same blob again: skipped, manifest rewritten
    const again = await client.pushNodeImage({ key: k, stack: "micro:web", layer: "web", parentKey: parent, file: image });
    expect(again.uploaded).toBe(false);
    expect(again.manifestDigest).toBe(pushed.manifestDigest);

    const dest = join(dir, "pulled.qcow2");
    const pulled = await new OciClient(reg.url).pullNodeImage(k, dest);
    expect(pulled).toMatchObject({ key: k, stack: "micro:web", layer: "web", parentKey: parent, digest: imageDigest, size: 40 * MiB });
    expect(await sha(dest)).toBe(imageDigest);
    expect(await new OciClient(reg.url).pullNodeImage(key("nope"), join(dir, "none.qcow2"))).toBeUndefined();
  });

  it("writes artifacts skopeo can read", async () => {
    const client = new OciClient(reg.url);
    const k = key("skopeo");
    await client.pushNodeImage({ key: k, stack: "micro", layer: "micro", parentKey: null, file: image });
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
});
