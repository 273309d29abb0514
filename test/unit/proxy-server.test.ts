/**
 * The package cache proxy against a real HTTP origin and a real TCP server, both on 127.0.0.1.
 */
import * as fs from "node:fs/promises";
import * as http from "node:http";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { classifyUrl } from "../../src/proxy/classify.js";
import { PackageProxy, type ProxyListener } from "../../src/proxy/server.js";
import { ProxyStore } from "../../src/proxy/store.js";

const DEB = Buffer.alloc(200_000, "d");
let indexBody = "Release v1\n";
let indexEtag = '"v1"';
const seen: Array<{ path: string; inm?: string; ims?: string; ae?: string }> = [];
/** Lets a test hold the half-sent body of /slow.deb until it has looked at the cache. */
let releaseSlow: (() => void) | undefined;

const origin = http.createServer((req, res) => {
  seen.push({ path: req.url ?? "", inm: req.headers["if-none-match"], ims: req.headers["if-modified-since"], ae: req.headers["accept-encoding"] });
  switch (req.url) {
    case "/pool/main/h/hello_1.0_all.deb":
      res.writeHead(200, { "content-length": DEB.length, "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT" });
      res.end(DEB);
      return;
    case "/dists/stable/InRelease":
      if (req.headers["if-none-match"] === indexEtag) {
        res.writeHead(304, { etag: indexEtag });
        res.end();
        return;
      }
      res.writeHead(200, { etag: indexEtag, "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT", "content-length": Buffer.byteLength(indexBody) });
      res.end(indexBody);
      return;
    case "/half.deb":
      res.writeHead(200, { "content-length": 1000 });
      res.write(Buffer.alloc(500, "h"));
      setTimeout(() => res.socket?.destroy(), 50);
      return;
    case "/slow.deb":
      res.writeHead(200, { "content-length": 1000 });
      res.write(Buffer.alloc(500, "s"));
      releaseSlow = () => res.end(Buffer.alloc(500, "s"));
      return;
    case undefined:
    default:
      res.writeHead(404);
      res.end("no\n");
  }
});
const echo = net.createServer((s) => s.pipe(s));
let originUrl = "";
let echoPort = 0;
let closedPort = 0;
let cacheRoot = "";
let proxy: PackageProxy;
let l: ProxyListener;

function listen(s: net.Server): Promise<number> {
  return new Promise((resolve) => s.listen(0, "127.0.0.1", () => resolve((s.address() as net.AddressInfo).port)));
}

/** GET an absolute URL through the proxy, as apt or wget does. */
async function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; body: Buffer; error?: string }> {
  const r = await new Promise<{ status: number; body: Buffer; error?: string }>((resolve) => {
    const req = http.get({ host: "127.0.0.1", port: l.port, path: url, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on("error", (e) => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), error: e.message }));
      res.on("aborted", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks), error: "aborted" }));
    });
    req.on("error", (e) => resolve({ status: 0, body: Buffer.alloc(0), error: e.message }));
  });
  // The client knows the length, so it may see the end just before the proxy's commit to the cache.
  await proxy.settled();
  return r;
}

beforeAll(async () => {
  originUrl = `http://127.0.0.1:${await listen(origin)}`;
  echoPort = await listen(echo);
  const tmp = net.createServer();
  closedPort = await listen(tmp);
  await new Promise((r) => tmp.close(r));
});
afterAll(async () => {
  await new Promise((r) => origin.close(r));
  await new Promise((r) => echo.close(r));
});
beforeEach(async () => {
  cacheRoot = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-proxy-"));
  proxy = await PackageProxy.start({ cacheRoot, upstreamTimeoutMs: 5000 });
  l = await proxy.listen();
  seen.length = 0;
  indexBody = "Release v1\n";
  indexEtag = '"v1"';
});
afterEach(async () => {
  await proxy.close();
  await fs.rm(cacheRoot, { recursive: true, force: true });
});

describe("package cache proxy", () => {
  it("serves a package file from the cache the second time, also to a later build's proxy", async () => {
    const url = `${originUrl}/pool/main/h/hello_1.0_all.deb`;
    const a = await get(url);
    expect(a.status).toBe(200);
    expect(a.body.equals(DEB)).toBe(true);
    expect(seen.map((s) => s.path)).toEqual(["/pool/main/h/hello_1.0_all.deb"]);
    expect(seen[0]!.ae).toBe("identity"); // one unencoded copy serves every client
    const b = await get(url);
    expect(b.body.equals(DEB)).toBe(true);
    expect(seen).toHaveLength(1);
    expect(l.stats).toMatchObject({ requests: 2, fetched: 1, hits: 1, bytesFromUpstream: DEB.length, bytesFromCache: DEB.length });

    // The next build starts a new proxy on the same user cache: still no upstream traffic.
    await proxy.close();
    proxy = await PackageProxy.start({ cacheRoot });
    l = await proxy.listen();
    expect((await get(url)).body.equals(DEB)).toBe(true);
    expect(seen).toHaveLength(1);
    expect(proxy.stats()).toMatchObject({ hits: 1, bytesFromUpstream: 0, bytesFromCache: DEB.length });
  });

  it("revalidates an index file with a conditional GET and serves the cached copy on 304", async () => {
    const url = `${originUrl}/dists/stable/InRelease`;
    expect((await get(url)).body.toString()).toBe("Release v1\n");
    const b = await get(url);
    expect(b.status).toBe(200);
    expect(b.body.toString()).toBe("Release v1\n");
    expect(seen).toHaveLength(2);
    expect(seen[1]!.inm).toBe('"v1"');
    expect(l.stats).toMatchObject({ fetched: 1, revalidated: 1, bytesFromUpstream: 11, bytesFromCache: 11 });
    // Changed upstream: the new body replaces the cached one.
    indexBody = "Release v2 (longer)\n";
    indexEtag = '"v2"';
    expect((await get(url)).body.toString()).toBe("Release v2 (longer)\n");
    expect((await get(url)).body.toString()).toBe("Release v2 (longer)\n");
    expect(seen.slice(2).map((s) => s.inm)).toEqual(['"v1"', '"v2"']);
    // A client that has the file already (apt's If-Modified-Since) gets 304 from the cache.
    const c = await get(url, { "if-modified-since": "Tue, 02 Jan 2024 00:00:00 GMT" });
    expect(c.status).toBe(304);
  });

  it("tunnels CONNECT to a TCP server without caching anything", async () => {
    const sock = net.connect(l.port, "127.0.0.1");
    sock.write(`CONNECT 127.0.0.1:${echoPort} HTTP/1.1\r\nHost: 127.0.0.1:${echoPort}\r\n\r\n`);
    let got = "";
    await new Promise<void>((resolve) => {
      sock.on("data", (d: Buffer) => {
        got += d.toString();
        if (got.includes("\r\n\r\n") && !got.includes("ping")) sock.write("ping through the tunnel");
        if (got.includes("ping through the tunnel")) resolve();
      });
    });
    expect(got).toMatch(/^HTTP\/1\.1 200/);
    sock.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect(l.stats.bytesTunneled).toBe(2 * "ping through the tunnel".length);
    expect(await fs.readdir(path.join(cacheRoot, "proxy", "entries"))).toEqual([]);
  });

  it("an unreachable upstream (closed port) is a 502 and a recorded failure naming the URL", async () => {
    const url = `http://127.0.0.1:${closedPort}/debian/dists/bookworm/InRelease`;
    const r = await get(url);
    expect(r.status).toBe(502);
    expect(r.body.toString()).toContain("connection refused");
    const sock = net.connect(l.port, "127.0.0.1");
    sock.write(`CONNECT 127.0.0.1:${closedPort} HTTP/1.1\r\n\r\n`);
    const answer = await new Promise<string>((resolve) => sock.once("data", (d: Buffer) => resolve(d.toString())));
    sock.destroy();
    expect(answer).toMatch(/^HTTP\/1\.1 502/);
    expect(l.stats.failures).toEqual([
      { url, message: "connection refused" },
      { url: `https://127.0.0.1:${closedPort}/`, message: "connection refused" },
    ]);
    // An HTTP error from the origin is recorded too (apt's "404 Not Found" names the same URL).
    await get(`${originUrl}/pool/missing.deb`);
    expect(l.stats.failures[2]).toEqual({ url: `${originUrl}/pool/missing.deb`, message: "HTTP 404 Not Found" });
  });

  it("a cached index is served when the origin cannot be reached, and counted as stale", async () => {
    const url = `${originUrl}/dists/stable/InRelease`;
    await get(url);
    const store = new ProxyStore(cacheRoot);
    const entry = (await store.read(url))!.entry;
    // Same entry, but for a URL whose origin is gone.
    const gone = `http://127.0.0.1:${closedPort}/dists/stable/InRelease`;
    const w = store.writer(gone);
    w.stream.write("old index\n");
    await w.commit({ url: gone, stored: Date.now(), policy: entry.policy });
    const r = await get(gone);
    expect(r.body.toString()).toBe("old index\n");
    expect(l.stats.stale).toBe(1);
    expect(l.stats.failures).toEqual([{ url: gone, message: "connection refused", servedStale: true }]);
  });

  it("writes atomically: no entry while a body is arriving, none after a broken download", async () => {
    const store = new ProxyStore(cacheRoot);
    const slow = `${originUrl}/slow.deb`;
    const pending = get(slow);
    while (!releaseSlow) await new Promise((r) => setTimeout(r, 10));
    // Half the body is in flight: it is under tmp/ only, and the URL has no entry.
    expect(await store.read(slow)).toBeUndefined();
    expect(await fs.readdir(path.join(cacheRoot, "proxy", "entries"))).toEqual([]);
    expect(await fs.readdir(path.join(cacheRoot, "proxy", "tmp"))).toHaveLength(1);
    releaseSlow();
    expect((await pending).body.length).toBe(1000);
    await proxy.settled();
    expect((await store.read(slow))?.entry.size).toBe(1000);

    const half = `${originUrl}/half.deb`;
    const r = await get(half);
    expect(r.error ?? (r.body.length < 1000 ? "short" : undefined)).toBeDefined();
    await new Promise((res) => setTimeout(res, 100));
    expect(await store.read(half)).toBeUndefined();
    expect(await fs.readdir(path.join(cacheRoot, "proxy", "tmp"))).toEqual([]);
    seen.length = 0;
    await get(half);
    expect(seen.map((s) => s.path)).toEqual(["/half.deb"]); // not cached: asked upstream again
  });

  it("refuses origin-form requests: it is a forward proxy", async () => {
    const r = await get("/pool/x.deb");
    expect(r.status).toBe(400);
  });
});

describe("which URLs are served without revalidation", () => {
  it.each([
    ["http://deb.debian.org/debian/pool/main/n/nginx/nginx_1.22.1-9_amd64.deb", "immutable"],
    ["http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "immutable"],
    ["http://mirror.example/fedora/os/Packages/n/nginx-1.24.0-1.fc39.x86_64.rpm", "immutable"],
    ["http://mirror.example/fedora/os/repodata/0123456789abcdef0123456789abcdef-primary.xml.zst", "immutable"],
    ["http://dl-cdn.example/alpine/v3.19/main/x86_64/nginx-1.24.0-r15.apk", "immutable"],
    ["http://deb.debian.org/debian/dists/bookworm/InRelease", "revalidate"],
    ["http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.xz", "revalidate"],
    ["http://deb.debian.org/debian/dists/bookworm/main/i18n/Translation-en.bz2", "revalidate"],
    ["http://deb.debian.org/debian/dists/bookworm/main/binary-amd64/Packages.diff/Index", "revalidate"],
    ["http://mirror.example/fedora/os/repodata/repomd.xml", "revalidate"],
    ["http://dl-cdn.example/alpine/v3.19/main/x86_64/APKINDEX.tar.gz", "revalidate"],
    ["http://example.org/install.sh", "revalidate"],
  ])("%s is %s", (url, cls) => {
    expect(classifyUrl(url)).toBe(cls);
  });
});
