/**
 * dbuild's package cache: a caching forward HTTP proxy that runs on the host for the length of a build,
 * bound to 127.0.0.1 only. Build VMs reach it at 10.0.2.2:PORT through QEMU user networking.
 *
 * - GET of an http:// URL: served from the cache (ProxyStore, keyed by URL) when the URL names immutable
 *   content (classify.ts); otherwise revalidated upstream with a conditional GET (validators and 304
 *   merging by http-cache-semantics) and served from the cache on 304. A miss streams to the client and
 *   into the cache at once; the entry is committed only when the whole body arrived.
 * - Any other method (HEAD, POST, ...) is forwarded uncached.
 * - CONNECT (HTTPS) is a plain TCP tunnel: nothing in it is seen or cached.
 *
 * Each VM gets its own listener (port) so that counters and upstream failures can be told apart per
 * layer when several VMs build at once; all listeners share one cache and one upstream connection pool.
 * Why our own module rather than apt-cacher-ng or squid: docs/proxy.md.
 */
import { createReadStream } from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import type { Duplex } from "node:stream";
import CachePolicy from "http-cache-semantics";
import { classifyUrl } from "./classify.js";
import { ProxyStore, type CachedBody } from "./store.js";

export interface UpstreamFailure {
  url: string;
  /** What went wrong, e.g. "connection refused", "HTTP 404". */
  message: string;
  /** A cached copy was served instead (the build went on). */
  servedStale?: boolean;
}

/** Counters of one listener (one VM) or of a whole build. Byte counts are bodies, not headers. */
export interface ProxyStats {
  /** Requests received (HTTP and CONNECT). */
  requests: number;
  /** Served from the cache without asking upstream (immutable URLs). */
  hits: number;
  /** Served from the cache after upstream answered 304 Not Modified. */
  revalidated: number;
  /** Bodies fetched from upstream with 200 (cached or not). */
  fetched: number;
  /** Served from the cache because upstream could not be reached. */
  stale: number;
  bytesFromCache: number;
  bytesFromUpstream: number;
  /** The part of bytesFromUpstream that was package payloads (immutable URLs), not index files. */
  packageBytesFromUpstream: number;
  /** Bytes through CONNECT tunnels, both ways (HTTPS; never cached). */
  bytesTunneled: number;
  failures: UpstreamFailure[];
}

export function emptyStats(): ProxyStats {
  return { requests: 0, hits: 0, revalidated: 0, fetched: 0, stale: 0, bytesFromCache: 0, bytesFromUpstream: 0, packageBytesFromUpstream: 0, bytesTunneled: 0, failures: [] };
}

const MAX_FAILURES = 50;

export function addStats(into: ProxyStats, s: ProxyStats): ProxyStats {
  into.requests += s.requests;
  into.hits += s.hits;
  into.revalidated += s.revalidated;
  into.fetched += s.fetched;
  into.stale += s.stale;
  into.bytesFromCache += s.bytesFromCache;
  into.bytesFromUpstream += s.bytesFromUpstream;
  into.packageBytesFromUpstream += s.packageBytesFromUpstream;
  into.bytesTunneled += s.bytesTunneled;
  for (const f of s.failures) if (into.failures.length < MAX_FAILURES) into.failures.push(f);
  return into;
}

export interface ProxyListener {
  port: number;
  /** Live counters of this listener. */
  readonly stats: ProxyStats;
  close(): Promise<void>;
}

export interface PackageProxyOptions {
  /** The user cache root (userCacheDir()); entries go under its proxy/ folder. */
  cacheRoot: string;
  /** Give up on an upstream that accepts no connection or sends nothing for this long. */
  upstreamTimeoutMs?: number;
}

/** Hop-by-hop headers (RFC 9110 7.6.1) plus those a proxy must not pass on. */
const HOP = new Set(["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"]);
/** Client headers the proxy sets itself: it fetches whole, unencoded bodies so one copy serves every client. */
const OWN = new Set(["host", "range", "if-range", "if-none-match", "if-modified-since", "accept-encoding"]);

function failureText(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case "ECONNREFUSED":
      return "connection refused";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "host not found";
    case "ETIMEDOUT":
      return "timed out";
    case "ECONNRESET":
      return "connection reset";
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return "no route to host";
    case undefined:
    default:
      return e instanceof Error ? e.message : String(e);
  }
}

function plainHeaders(h: http.IncomingHttpHeaders): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of Object.entries(h)) if (v !== undefined && !HOP.has(k)) out[k] = v;
  return out;
}

export class PackageProxy {
  private readonly store: ProxyStore;
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
  private readonly listeners = new Set<ProxyListener>();
  private readonly closed: ProxyStats[] = [];
  private readonly timeoutMs: number;
  private readonly writing = new Set<Promise<void>>();

  private constructor(opts: PackageProxyOptions) {
    this.store = new ProxyStore(opts.cacheRoot);
    this.timeoutMs = opts.upstreamTimeoutMs ?? 30_000;
  }

  static async start(opts: PackageProxyOptions): Promise<PackageProxy> {
    const p = new PackageProxy(opts);
    await p.store.init();
    return p;
  }

  get cacheDir(): string {
    return this.store.dir;
  }

  /** A new listener on 127.0.0.1 (ephemeral port) with its own counters. */
  async listen(): Promise<ProxyListener> {
    const stats = emptyStats();
    const tunnels = new Set<Duplex>();
    const server = http.createServer((req, res) => {
      this.onRequest(req, res, stats).catch((e: unknown) => {
        if (!res.headersSent) {
          res.writeHead(500, { "content-type": "text/plain" });
          res.end(`dbuild package cache: ${failureText(e)}\n`);
        } else res.destroy();
      });
    });
    server.on("connect", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => this.onConnect(req, socket, head, stats, tunnels));
    server.on("clientError", (_e, socket) => socket.destroy());
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => resolve());
    });
    const port = (server.address() as net.AddressInfo).port;
    const listener: ProxyListener = {
      port,
      stats,
      close: async () => {
        if (!this.listeners.delete(listener)) return;
        this.closed.push(stats);
        for (const t of tunnels) t.destroy();
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      },
    };
    this.listeners.add(listener);
    return listener;
  }

  /** Counters summed over every listener this proxy had. */
  stats(): ProxyStats {
    const total = emptyStats();
    for (const s of this.closed) addStats(total, s);
    for (const l of this.listeners) addStats(total, l.stats);
    return total;
  }

  /** Resolves when every body being written has been committed to the cache (or dropped). */
  async settled(): Promise<void> {
    while (this.writing.size) await Promise.allSettled([...this.writing]);
  }

  /** Stop every listener; bodies that were complete are committed first. */
  async close(): Promise<void> {
    for (const l of [...this.listeners]) await l.close();
    await this.settled();
    this.agent.destroy();
  }

  private async onRequest(req: http.IncomingMessage, res: http.ServerResponse, stats: ProxyStats): Promise<void> {
    stats.requests++;
    const url = req.url ?? "";
    if (!/^http:\/\/[^/]/i.test(url)) {
      res.writeHead(400, { "content-type": "text/plain" });
      res.end("dbuild package cache: this is a forward proxy; ask it for an absolute http:// URL\n");
      return;
    }
    if (req.method !== "GET") return this.forward(req, res, url, stats);
    const cached = await this.store.read(url);
    if (cached && classifyUrl(url) === "immutable") {
      stats.hits++;
      return this.serveCached(req, res, cached, stats);
    }
    // The policy is judged on a request of our own: the cache serves many clients, whatever each asks.
    const policyReq = { url, method: "GET", headers: { host: new URL(url).host } };
    const headers = this.upstreamHeaders(req, url);
    if (cached) {
      const reval = CachePolicy.fromObject(cached.entry.policy).revalidationHeaders(policyReq);
      for (const k of ["if-none-match", "if-modified-since"]) if (reval[k]) headers[k] = reval[k];
    }
    let up: http.IncomingMessage;
    try {
      up = await this.upstream(url, "GET", headers, req);
    } catch (e) {
      if (req.destroyed) return;
      const message = failureText(e);
      if (cached) {
        // Offline or the mirror is down: the copy we have is better than failing the build.
        stats.stale++;
        this.fail(stats, { url, message, servedStale: true });
        return this.serveCached(req, res, cached, stats);
      }
      this.fail(stats, { url, message });
      res.writeHead(502, { "content-type": "text/plain" });
      res.end(`dbuild package cache: cannot fetch ${url}: ${message}\n`);
      return;
    }
    const status = up.statusCode ?? 502;
    if (cached && status === 304) {
      up.resume();
      const { policy } = CachePolicy.fromObject(cached.entry.policy).revalidatedPolicy(policyReq, { status, headers: up.headers });
      const entry = { ...cached.entry, policy: policy.toObject(), stored: Date.now() };
      await this.store.update(entry).catch(() => undefined);
      stats.revalidated++;
      return this.serveCached(req, res, { entry, file: cached.file }, stats);
    }
    if (status >= 400) this.fail(stats, { url, message: `HTTP ${status}${up.statusMessage ? ` ${up.statusMessage}` : ""}` });
    if (status === 200) stats.fetched++;
    const payload = classifyUrl(url) === "immutable";
    up.on("data", (c: Buffer) => {
      stats.bytesFromUpstream += c.length;
      if (payload) stats.packageBytesFromUpstream += c.length;
    });
    const policy = new CachePolicy(policyReq, { status, headers: up.headers }, { shared: true });
    res.writeHead(status, up.statusMessage, plainHeaders(up.headers));
    if (status !== 200 || !policy.storable()) {
      up.pipe(res);
      res.once("close", () => {
        if (!up.complete) up.destroy();
      });
      return;
    }
    const writing = this.fetchInto(url, up, res, policy);
    this.writing.add(writing);
    try {
      await writing;
    } finally {
      this.writing.delete(writing);
    }
  }

  /**
   * Stream a 200 to the client and into the cache; commit only a complete body. (A client that knows the
   * length may see the download finish just before the commit: `settled()` waits for the commits.)
   */
  private async fetchInto(url: string, up: http.IncomingMessage, res: http.ServerResponse, policy: CachePolicy): Promise<void> {
    const w = this.store.writer(url);
    const expected = up.headers["content-length"] !== undefined ? Number(up.headers["content-length"]) : undefined;
    let received = 0;
    up.on("data", (c: Buffer) => (received += c.length));
    up.pipe(w.stream, { end: false });
    up.pipe(res, { end: false });
    const complete = await new Promise<boolean>((resolve) => {
      up.once("end", () => resolve(up.complete && (expected === undefined || received === expected)));
      up.once("error", () => resolve(false));
      up.once("aborted", () => resolve(false));
      // A client that goes away stops the download: the next request starts it again.
      res.once("close", () => {
        if (!up.complete) {
          up.destroy();
          resolve(false);
        }
      });
    });
    if (!complete) {
      res.destroy();
      await w.abort();
      return;
    }
    await w.commit({ url, stored: Date.now(), policy: policy.toObject() }).catch(() => w.abort());
    res.end();
  }

  private serveCached(req: http.IncomingMessage, res: http.ServerResponse, c: CachedBody, stats: ProxyStats): Promise<void> {
    const policy = CachePolicy.fromObject(c.entry.policy);
    const headers = policy.responseHeaders() as Record<string, string>;
    // The client's own conditional request (apt sends If-Modified-Since for lists it already has).
    const inm = req.headers["if-none-match"];
    const ims = req.headers["if-modified-since"];
    const etag = headers.etag;
    const lastMod = headers["last-modified"];
    const notModified = inm !== undefined
      ? etag !== undefined && inm.split(",").some((t) => t.trim() === etag || t.trim() === "*")
      : ims !== undefined && lastMod !== undefined && Date.parse(lastMod) <= Date.parse(ims);
    if (notModified) {
      res.writeHead(304, headers);
      res.end();
      return Promise.resolve();
    }
    headers["content-length"] = String(c.entry.size);
    res.writeHead(200, headers);
    if (req.method === "HEAD") {
      res.end();
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      const body = createReadStream(c.file);
      body.on("data", (d: Buffer | string) => (stats.bytesFromCache += d.length));
      body.once("error", () => res.destroy());
      body.pipe(res);
      res.once("close", () => {
        body.destroy();
        resolve();
      });
    });
  }

  /** Methods other than GET go to the origin as they are, uncached. */
  private async forward(req: http.IncomingMessage, res: http.ServerResponse, url: string, stats: ProxyStats): Promise<void> {
    const headers: Record<string, string | string[]> = plainHeaders(req.headers);
    headers.host = new URL(url).host;
    let up: http.IncomingMessage;
    try {
      up = await this.upstream(url, req.method ?? "GET", headers, req, true);
    } catch (e) {
      if (req.destroyed) return;
      const message = failureText(e);
      this.fail(stats, { url, message });
      res.writeHead(502, { "content-type": "text/plain" });
      res.end(`dbuild package cache: cannot reach ${url}: ${message}\n`);
      return;
    }
    if ((up.statusCode ?? 502) >= 400) this.fail(stats, { url, message: `HTTP ${up.statusCode ?? "?"}` });
    up.on("data", (c: Buffer) => (stats.bytesFromUpstream += c.length));
    res.writeHead(up.statusCode ?? 502, up.statusMessage, plainHeaders(up.headers));
    up.pipe(res);
    res.once("close", () => {
      if (!up.complete) up.destroy();
    });
  }

  private upstreamHeaders(req: http.IncomingMessage, url: string): Record<string, string | string[]> {
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(req.headers)) if (v !== undefined && !HOP.has(k) && !OWN.has(k)) out[k] = v;
    out.host = new URL(url).host;
    out["accept-encoding"] = "identity";
    return out;
  }

  /** One request upstream; resolves with the response head, rejects on any connection failure. */
  private upstream(url: string, method: string, headers: Record<string, string | string[]>, client: http.IncomingMessage, withBody = false): Promise<http.IncomingMessage> {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
      const r = http.request({
        host: u.hostname.replace(/^\[|\]$/g, ""),
        port: u.port || 80,
        path: `${u.pathname}${u.search}`,
        method,
        headers,
        agent: this.agent,
        timeout: this.timeoutMs,
      });
      r.once("timeout", () => r.destroy(Object.assign(new Error("timed out"), { code: "ETIMEDOUT" })));
      r.once("error", reject);
      r.once("response", resolve);
      client.once("close", () => {
        if (!client.complete || !r.writableFinished) r.destroy();
      });
      if (withBody) client.pipe(r);
      else r.end();
    });
  }

  private onConnect(req: http.IncomingMessage, client: Duplex, head: Buffer, stats: ProxyStats, tunnels: Set<Duplex>): void {
    stats.requests++;
    const target = req.url ?? "";
    const m = /^\[?([^\][]+?)\]?:(\d+)$/.exec(target);
    if (!m) {
      client.end("HTTP/1.1 400 Bad Request\r\n\r\n");
      return;
    }
    const up = net.connect({ host: m[1]!, port: Number(m[2]) });
    tunnels.add(up);
    tunnels.add(client);
    let open = false;
    up.setTimeout(this.timeoutMs, () => {
      if (!open) up.destroy(Object.assign(new Error("timed out"), { code: "ETIMEDOUT" }));
    });
    up.once("connect", () => {
      open = true;
      up.setTimeout(0);
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length) up.write(head);
      up.pipe(client);
      client.pipe(up);
    });
    up.once("error", (e) => {
      if (open) return;
      const message = failureText(e);
      this.fail(stats, { url: `https://${target}/`, message });
      client.end(`HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\n\r\ndbuild package cache: cannot connect to ${target}: ${message}\n`);
    });
    client.on("error", () => up.destroy());
    client.once("close", () => up.destroy());
    up.once("close", () => {
      stats.bytesTunneled += up.bytesRead + up.bytesWritten;
      tunnels.delete(up);
      tunnels.delete(client);
      if (open) client.destroy();
    });
  }

  private fail(stats: ProxyStats, f: UpstreamFailure): void {
    if (stats.failures.length < MAX_FAILURES) stats.failures.push(f);
  }
}
