/**
 * The OCI client against an in-process HTTP server that plays a registry and misbehaves on demand:
 * fails N times, checks Content-Range of every chunk, asks for tokens, serves corrupt bytes.
 */
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { OciClient, type OciClientOptions } from "../../src/cache/oci.js";
import { pullNodeImage, pushNodeImage } from "../../src/cache/artifact.js";
import { backoffMs, TransientError, withRetry } from "../../src/cache/retry.js";
import { sleep } from "../../src/util/sleep.js";
import { DbuildError } from "../../src/util/errors.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const sha = (b: Uint8Array): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

interface Seen {
  method: string;
  path: string;
  range?: string;
  length?: string;
  bytes: number;
  authorization?: string;
}

type Fault = (req: IncomingMessage, res: ServerResponse) => boolean;

/** Just enough of the distribution API, strict where real registries are strict (chunk order, digests). */
class FakeRegistry {
  server: Server;
  port = 0;
  blobs = new Map<string, Buffer>();
  manifests = new Map<string, Buffer>();
  uploads = new Map<string, Buffer[]>();
  seen: Seen[] = [];
  /** Called before the normal handler; returns true when it answered the request. */
  faults: Fault[] = [];
  auth: "none" | "basic" | "bearer" = "none";
  tokenScopes: string[] = [];
  nextId = 0;

  constructor() {
    this.server = createServer((req, res) => void this.handle(req, res));
  }
  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, "127.0.0.1", r));
    this.port = (this.server.address() as AddressInfo).port;
  }
  get url(): string {
    return `oci://127.0.0.1:${this.port}/team/repo`;
  }
  count(method: string, prefix: string): number {
    return this.seen.filter((s) => s.method === method && s.path.startsWith(prefix)).length;
  }
  reset(): void {
    this.blobs.clear();
    this.manifests.clear();
    this.seen = [];
    this.faults = [];
    this.auth = "none";
    this.tokenScopes = [];
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks);
    const url = new URL(req.url!, `http://127.0.0.1:${this.port}`);
    this.seen.push({
      method: req.method!,
      path: url.pathname,
      range: req.headers["content-range"],
      length: req.headers["content-length"],
      bytes: body.length,
      authorization: req.headers.authorization,
    });
    for (const f of this.faults) if (f(req, res)) return;

    if (url.pathname === "/token") {
      if (req.headers.authorization !== `Basic ${Buffer.from("ci:pw").toString("base64")}`) {
        res.writeHead(401).end();
        return;
      }
      const scopes = url.searchParams.getAll("scope");
      this.tokenScopes.push(...scopes);
      const push = scopes.some((s) => s.endsWith(":pull,push"));
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ token: push ? "tok-push" : "tok-pull" }));
      return;
    }
    // like real registries: a pull token does not allow writes
    const write = req.method !== "GET" && req.method !== "HEAD";
    if (this.auth === "bearer" && req.headers.authorization !== "Bearer tok-push" && (write || req.headers.authorization !== "Bearer tok-pull")) {
      res
        .writeHead(401, { "www-authenticate": `Bearer realm="http://127.0.0.1:${this.port}/token",service="fake",scope="repository:team/repo:pull"` })
        .end();
      return;
    }
    if (this.auth === "basic" && req.headers.authorization !== `Basic ${Buffer.from("ci:pw").toString("base64")}`) {
      res.writeHead(401, { "www-authenticate": 'Basic realm="fake"' }).end();
      return;
    }

    const m = /^\/v2\/team\/repo\/(blobs|manifests)\/(.+)$/.exec(url.pathname);
    if (!m) {
      res.writeHead(404).end();
      return;
    }
    const [, kind, rest] = m as unknown as [string, string, string];
    if (kind === "blobs" && rest === "uploads/" && req.method === "POST") {
      const id = `u${this.nextId++}`;
      this.uploads.set(id, []);
      res.writeHead(202, { location: `/v2/team/repo/blobs/uploads/${id}?_state=0` }).end();
      return;
    }
    const up = /^uploads\/(u\d+)$/.exec(rest);
    if (kind === "blobs" && up) {
      const parts = this.uploads.get(up[1]!);
      if (!parts) {
        res.writeHead(404).end();
        return;
      }
      const have = parts.reduce((n, b) => n + b.length, 0);
      if (req.method === "PATCH") {
        const range = /^(\d+)-(\d+)$/.exec(req.headers["content-range"] ?? "");
        if (!range || Number(range[1]) !== have || Number(range[2]) !== have + body.length - 1) {
          res.writeHead(416).end();
          return;
        }
        parts.push(body);
        res.writeHead(202, { location: `/v2/team/repo/blobs/uploads/${up[1]}?_state=${have + body.length}`, range: `0-${have + body.length - 1}` }).end();
        return;
      }
      if (req.method === "PUT") {
        parts.push(body);
        const all = Buffer.concat(parts);
        const digest = url.searchParams.get("digest");
        if (sha(all) !== digest) {
          res.writeHead(400, { "content-type": "application/json" }).end(JSON.stringify({ errors: [{ code: "DIGEST_INVALID", message: "digest mismatch" }] }));
          return;
        }
        this.blobs.set(digest, all);
        this.uploads.delete(up[1]!);
        res.writeHead(201, { location: `/v2/team/repo/blobs/${digest}` }).end();
        return;
      }
    }
    if (kind === "blobs") {
      const blob = this.blobs.get(rest);
      if (!blob) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-length": blob.length, "docker-content-digest": rest });
      res.end(req.method === "HEAD" ? undefined : blob);
      return;
    }
    if (kind === "manifests") {
      if (req.method === "PUT") {
        this.manifests.set(rest, body);
        res.writeHead(201).end();
        return;
      }
      const man = this.manifests.get(rest);
      if (!man) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": "application/vnd.oci.image.manifest.v1+json", "docker-content-digest": sha(man), "content-length": man.length });
      res.end(req.method === "HEAD" ? undefined : man);
      return;
    }
    res.writeHead(405).end();
  }
}

/** Answers the first `n` requests matching `method path-prefix` with `status` (or drops the connection). */
function failTimes(n: number, method: string, prefix: string, status: number | "drop", headers: Record<string, string> = {}): Fault {
  let left = n;
  return (req, res) => {
    if (left <= 0 || req.method !== method || !new URL(req.url!, "http://x").pathname.startsWith(prefix)) return false;
    left--;
    if (status === "drop") req.socket.destroy();
    else res.writeHead(status, headers).end();
    return true;
  };
}

function problem(e: unknown): { reason: string; where: string; message: string; hint?: string } {
  expect(e).toBeInstanceOf(DbuildError);
  return (e as DbuildError).problems[0]!;
}

async function caught(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection");
}

const fast: OciClientOptions = { retry: { retries: 3, baseMs: 5, maxMs: 20 } };

describe("OciClient against a fake registry", () => {
  const reg = new FakeRegistry();
  let dir: string;
  beforeAll(async () => {
    await reg.start();
    dir = await mkdtemp(join(tmpdir(), "dbuild-oci-unit-"));
  });
  afterAll(async () => {
    reg.server.closeAllConnections();
    await new Promise((r) => reg.server.close(r));
    await rm(dir, { recursive: true, force: true });
  });
  afterEach(() => reg.reset());

  async function file(name: string, size: number): Promise<{ path: string; data: Buffer }> {
    const data = randomBytes(size);
    const path = join(dir, name);
    await writeFile(path, data);
    return { path, data };
  }

  it("uploads a file bigger than the chunk size as ordered PATCHes with Content-Range", async () => {
    const { path, data } = await file("big.bin", 5 * MiB + 123);
    const progress: number[] = [];
    const client = new OciClient(reg.url, { ...fast, chunkSize: MiB, monolithicMax: 256 * KiB });
    const r = await client.pushBlobFromFile(path, { onProgress: (d) => progress.push(d) });
    expect(r).toEqual({ digest: sha(data), size: data.length, uploaded: true });
    expect(reg.blobs.get(sha(data))!.equals(data)).toBe(true);
    const patches = reg.seen.filter((s) => s.method === "PATCH");
    expect(patches.map((p) => p.range)).toEqual([
      "0-1048575",
      "1048576-2097151",
      "2097152-3145727",
      "3145728-4194303",
      "4194304-5242879",
      `5242880-${5 * MiB + 122}`,
    ]);
    expect(patches.every((p) => Number(p.length) === p.bytes && p.bytes <= MiB)).toBe(true);
    const put = reg.seen.find((s) => s.method === "PUT")!;
    expect(put.bytes).toBe(0);
    expect(progress.at(-1)).toBe(data.length);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));

    // present already: one HEAD, no upload
    reg.seen = [];
    expect(await client.pushBlobFromFile(path)).toMatchObject({ uploaded: false });
    expect(reg.seen.map((s) => s.method)).toEqual(["HEAD"]);
  });

  it("hashes while sending when asked not to check first, even when a chunk is sent twice", async () => {
    const { path, data } = await file("onepass.bin", 3 * MiB + 5);
    reg.auth = "bearer";
    let patches = 0;
    // the token "expires" during the second chunk: that chunk is read and sent again after re-auth
    reg.faults.push((req, res) => {
      if (req.method !== "PATCH" || ++patches !== 2) return false;
      res.writeHead(401, { "www-authenticate": `Bearer realm="http://127.0.0.1:${reg.port}/token",service="fake"` }).end();
      return true;
    });
    const client = new OciClient(reg.url, { ...fast, chunkSize: MiB, credentials: { username: "ci", password: "pw" } });
    const r = await client.pushBlobFromFile(path, { checkExists: false });
    expect(r).toEqual({ digest: sha(data), size: data.length, uploaded: true });
    expect(reg.blobs.get(sha(data))!.equals(data)).toBe(true);
    expect(reg.count("HEAD", "/v2/")).toBe(0);
    expect(reg.count("POST", "/v2/")).toBe(2); // the first one was answered 401
    expect(reg.count("PATCH", "/v2/")).toBe(5); // 4 chunks, the second twice
  });

  it("uploads a small file in one PUT", async () => {
    const { path, data } = await file("small.bin", 100 * KiB);
    await new OciClient(reg.url, fast).pushBlobFromFile(path);
    expect(reg.seen.map((s) => s.method)).toEqual(["HEAD", "POST", "PUT"]);
    expect(reg.seen[2]!.bytes).toBe(data.length);
    expect(reg.blobs.get(sha(data))!.equals(data)).toBe(true);
  });

  it("retries transient failures with backoff and restarts a broken chunked upload", async () => {
    const { path, data } = await file("retry.bin", 3 * MiB);
    reg.faults.push(failTimes(2, "HEAD", "/v2/team/repo/blobs/", 503));
    reg.faults.push(failTimes(1, "POST", "/v2/team/repo/blobs/uploads/", "drop"));
    let patches = 0;
    // the third PATCH fails once: the whole upload starts over with a new session
    reg.faults.push((req, res) => {
      if (req.method !== "PATCH") return false;
      if (++patches !== 3) return false;
      res.writeHead(502).end();
      return true;
    });
    const client = new OciClient(reg.url, { ...fast, chunkSize: MiB, monolithicMax: 0 });
    await client.pushBlobFromFile(path);
    expect(reg.blobs.get(sha(data))!.equals(data)).toBe(true);
    expect(reg.count("HEAD", "/v2/team/repo/blobs/")).toBe(3);
    expect(reg.count("POST", "/v2/team/repo/blobs/uploads/")).toBe(3); // dropped, broken by the PATCH, good
    expect(reg.count("PATCH", "/v2/team/repo/blobs/uploads/")).toBe(3 + 3); // 3 chunks, the third failed once
    expect(reg.count("DELETE", "/v2/team/repo/blobs/uploads/")).toBe(1); // the broken session is given up
  });

  it("gives up after the retries with an error naming the registry, and does not retry 4xx", async () => {
    reg.faults.push(failTimes(100, "HEAD", "/v2/", 503));
    const e = await caught(new OciClient(reg.url, fast).hasBlob(sha(Buffer.from("x"))));
    const p = problem(e);
    expect(p.reason).toBe("registry-error");
    expect(p.where).toBe(reg.url);
    expect(p.message).toContain("after 4 attempts");
    expect(p.message).toContain("503");
    expect(reg.count("HEAD", "/v2/")).toBe(4);

    reg.reset();
    const { path } = await file("refused.bin", 1000);
    reg.faults.push((req, res) => {
      if (req.method !== "PUT") return false;
      res.writeHead(400, { "content-type": "application/json" }).end(JSON.stringify({ errors: [{ code: "BLOB_UPLOAD_INVALID", message: "no" }] }));
      return true;
    });
    const e2 = problem(await caught(new OciClient(reg.url, fast).pushBlobFromFile(path)));
    expect(e2.reason).toBe("registry-error");
    expect(e2.message).toContain("BLOB_UPLOAD_INVALID: no");
    expect(e2.hint).toContain("nothing local was changed");
    expect(reg.count("PUT", "/v2/")).toBe(1);
  });

  it("reports an unreachable registry clearly", async () => {
    const dead = new FakeRegistry();
    await dead.start();
    const url = dead.url;
    await new Promise((r) => dead.server.close(r));
    const p = problem(await caught(new OciClient(url, fast).hasManifest("latest")));
    expect(p.reason).toBe("registry-unreachable");
    expect(p.where).toBe(url);
    expect(p.message).toContain("ECONNREFUSED");
    expect(p.hint).toContain(`http://127.0.0.1:${dead.port}/v2/`);
  });

  it("honours the caller's abort signal without retrying", async () => {
    reg.faults.push(failTimes(100, "HEAD", "/v2/", 503));
    const ac = new AbortController();
    const client = new OciClient(reg.url, { retry: { retries: 10, baseMs: 200, maxMs: 200 } });
    setTimeout(() => ac.abort(new Error("user cancelled")), 50);
    const t0 = Date.now();
    const e = await caught(client.hasBlob(sha(Buffer.from("y")), { signal: ac.signal }));
    expect((e as Error).message).toBe("user cancelled");
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  it("fails a stalled download after the stall timeout", async () => {
    const digest = sha(Buffer.from("stall"));
    reg.faults.push((req, res) => {
      if (req.method !== "GET") return false;
      res.writeHead(200, { "content-length": "1000" });
      res.write("partial");
      return true; // never ends
    });
    const client = new OciClient(reg.url, { retry: { retries: 0, baseMs: 1, maxMs: 1 }, stallTimeoutMs: 300 });
    const dest = join(dir, "stalled.bin");
    const p = problem(await caught(client.pullBlobToFile(digest, dest)));
    expect(p.reason).toBe("registry-unreachable");
    expect(p.message).toContain("no answer for");
    expect(existsSync(dest)).toBe(false);
    expect((await readdir(dir)).filter((f) => f.includes("stalled"))).toEqual([]);
  });

  it("verifies pulled blobs and leaves nothing behind on a mismatch", async () => {
    const good = Buffer.from("the real content");
    const digest = sha(good);
    reg.blobs.set(digest, Buffer.from("the fake content"));
    const dest = join(dir, "pulled.bin");
    const p = problem(await caught(new OciClient(reg.url, fast).pullBlobToFile(digest, dest)));
    expect(p.reason).toBe("digest-mismatch");
    expect(p.message).toContain(digest);
    expect(existsSync(dest)).toBe(false);
    expect((await readdir(dir)).filter((f) => f.includes("pulled"))).toEqual([]);
    expect(reg.count("GET", "/v2/")).toBe(1); // corruption at rest is not retried

    // more bytes than the manifest declared: stopped, not written out
    reg.blobs.set(digest, Buffer.concat([good, Buffer.alloc(3 * MiB)]));
    const long = problem(await caught(new OciClient(reg.url, fast).pullBlobToFile(digest, dest, { size: good.length })));
    expect(long.reason).toBe("digest-mismatch");
    expect(existsSync(dest)).toBe(false);

    reg.blobs.set(digest, good);
    expect(await new OciClient(reg.url, fast).pullBlobToFile(digest, dest)).toEqual({ digest, size: good.length });
    expect((await readFile(dest)).equals(good)).toBe(true);
  });

  it("detects a manifest whose digest does not match the registry's header", async () => {
    reg.faults.push((req, res) => {
      if (req.method !== "GET" || !req.url!.includes("/manifests/")) return false;
      res.writeHead(200, { "docker-content-digest": sha(Buffer.from("other")) }).end('{"schemaVersion":2,"config":{},"layers":[]}');
      return true;
    });
    expect(problem(await caught(new OciClient(reg.url, fast).getManifest("latest"))).reason).toBe("digest-mismatch");
  });

  it("fetches a bearer token with docker config credentials and push scope", async () => {
    reg.auth = "bearer";
    const cfg = join(dir, "config.json");
    await writeFile(cfg, JSON.stringify({ auths: { [`127.0.0.1:${reg.port}`]: { auth: Buffer.from("ci:pw").toString("base64") } } }));
    const { path, data } = await file("authed.bin", 2000);
    const client = new OciClient(reg.url, { ...fast, dockerConfig: cfg });
    expect(await client.hasManifest("nothing")).toBe(false);
    expect(reg.tokenScopes).toEqual(["repository:team/repo:pull"]);
    await client.pushBlobFromFile(path);
    expect(reg.blobs.get(sha(data))!.equals(data)).toBe(true);
    // the pull-only token was refused for the upload, so a push token was fetched once
    expect(reg.tokenScopes).toEqual(["repository:team/repo:pull", "repository:team/repo:pull,push"]);
    const authed = reg.seen.filter((s) => s.path.startsWith("/v2/") && s.authorization === "Bearer tok-push");
    expect(authed.map((s) => s.method)).toEqual(["POST", "PUT"]);

    const wrong = join(dir, "wrong.json");
    await writeFile(wrong, JSON.stringify({ auths: { [`127.0.0.1:${reg.port}`]: { auth: Buffer.from("ci:nope").toString("base64") } } }));
    const p = problem(await caught(new OciClient(reg.url, { ...fast, dockerConfig: wrong }).hasManifest("x")));
    expect(p.reason).toBe("registry-auth");
    expect(p.message).toContain("rejected the credentials");
    expect(p.hint).toContain(`login 127.0.0.1:${reg.port}`);
  });

  it("uses Basic credentials when challenged with Basic, and says when there are none", async () => {
    reg.auth = "basic";
    const none = problem(await caught(new OciClient(reg.url, { ...fast, dockerConfig: join(dir, "absent.json") }).hasManifest("x")));
    expect(none.reason).toBe("registry-auth");
    expect(none.message).toContain("needs credentials");
    const client = new OciClient(reg.url, { ...fast, credentials: { username: "ci", password: "pw" } });
    expect(await client.hasManifest("x")).toBe(false);
    const bad = problem(await caught(new OciClient(reg.url, { ...fast, credentials: { username: "ci", password: "no" } }).hasManifest("x")));
    expect(bad.message).toContain("denied (401");
  });

  it("round-trips a node artifact and refuses an artifact labelled with another key", async () => {
    const { path, data } = await file("node.qcow2", 300 * KiB);
    const key = "b".repeat(64);
    const parentKey = "c".repeat(64);
    const client = new OciClient(reg.url, fast);
    const parentDigest = sha(Buffer.from("parent image"));
    await pushNodeImage(client, { key, stack: "micro:web", layer: "web", parentKey, parentDigest, file: path });
    expect(reg.blobs.has("sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")).toBe(true);
    const dest = join(dir, "node-pulled.qcow2");
    const got = await pullNodeImage(client, key, dest);
    expect(got).toMatchObject({ key, stack: "micro:web", layer: "web", parentKey, parentDigest, digest: sha(data), size: data.length });
    expect(got!.annotations["org.opencontainers.image.title"]).toBe("micro-web.qcow2");

    // first writer wins: the key is there, so nothing is uploaded again
    reg.seen = [];
    const again = await pushNodeImage(client, { key, stack: "micro:web", layer: "web", parentKey, parentDigest, file: path });
    expect(again).toMatchObject({ existed: true, uploaded: false, digest: sha(data) });
    expect(reg.seen.map((s) => s.method)).toEqual(["GET"]);

    const other = "d".repeat(64);
    reg.manifests.set(other, reg.manifests.get(key)!);
    expect(problem(await caught(pullNodeImage(client, other, join(dir, "x.qcow2")))).reason).toBe("cache-artifact-invalid");
  });
});

describe("retry", () => {
  it("backs off exponentially with bounded jitter", () => {
    const o = { retries: 5, baseMs: 100, maxMs: 1000 };
    expect([0, 1, 2, 3, 4].map((a) => backoffMs(a, { ...o, random: () => 0 }))).toEqual([50, 100, 200, 400, 500]);
    expect([0, 1, 2, 3, 4].map((a) => backoffMs(a, { ...o, random: () => 1 }))).toEqual([100, 200, 400, 800, 1000]);
  });

  it("retries only TransientErrors, honours Retry-After up to the cap", async () => {
    let calls = 0;
    const delays: number[] = [];
    const r = await withRetry(
      () => {
        if (++calls < 3) return Promise.reject(new TransientError("busy", { retryAfterMs: calls === 1 ? 30 : 5000, status: 429 }));
        return Promise.resolve("ok");
      },
      { retries: 5, baseMs: 1, maxMs: 40 },
      undefined,
      (_e, _a, d) => delays.push(d),
    );
    expect(r).toBe("ok");
    expect(delays).toEqual([30, 40]);
    calls = 0;
    await expect(withRetry(() => Promise.reject(new Error(`fatal ${++calls}`)), { retries: 5, baseMs: 1, maxMs: 1 })).rejects.toThrow("fatal 1");
    await expect(withRetry(() => Promise.reject(new TransientError("x")), { retries: 2, baseMs: 1, maxMs: 1 })).rejects.toThrow("x");
  });

  it("sleep rejects when aborted", async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error("stop")), 10);
    await expect(sleep(10_000, ac.signal)).rejects.toThrow("stop");
  });
});
