/**
 * The package cache end to end on the micro guest: its busybox wget downloads from an HTTP origin on
 * the host's 127.0.0.1 (which the guest can only reach through the proxy at 10.0.2.2), twice; the second
 * build fetches nothing upstream. A closed port on 127.0.0.1 fails the layer with the clear error; a
 * proxy of the user's own is used when demobuild.yaml names it; nothing proxy-related stays in the image.
 */
import { createHash, randomBytes } from "node:crypto";
import * as fs from "node:fs/promises";
import * as http from "node:http";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PackageProxy, type ProxyListener } from "../../src/proxy/server.js";
import { dbuild } from "../helpers/cli.js";
import { killQemuOf } from "../helpers/processes.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";

const DEB = randomBytes(1024 * 1024);
const DEB_SHA = createHash("sha256").update(DEB).digest("hex");
const INDEX = "Origin: dbuild test\nSuite: test\n";
const seen: Array<{ path: string; conditional: boolean }> = [];
const origin = http.createServer((req, res) => {
  seen.push({ path: req.url ?? "", conditional: req.headers["if-none-match"] !== undefined });
  if (req.url === "/pool/main/t/tool_1.0_all.deb") {
    res.writeHead(200, { "content-length": DEB.length, "last-modified": "Mon, 01 Jan 2024 00:00:00 GMT" });
    res.end(DEB);
  } else if (req.url === "/dists/test/InRelease") {
    const etag = '"index-1"';
    if (req.headers["if-none-match"] === etag) {
      res.writeHead(304, { etag });
      res.end();
    } else {
      res.writeHead(200, { etag, "content-length": INDEX.length });
      res.end(INDEX);
    }
  } else {
    res.writeHead(404);
    res.end();
  }
});

let p: VmProject;
let cacheHome = "";
let originHost = "";
let closedPort = 0;
const env = (): Record<string, string> => ({ DBUILD_CACHE_HOME: cacheHome });
const run = (...args: string[]) => dbuild(["--progress", "json", ...args], { cwd: p.root, env: env() });

function listen(s: net.Server): Promise<number> {
  return new Promise((resolve) => s.listen(0, "127.0.0.1", () => resolve((s.address() as net.AddressInfo).port)));
}

type Ev = Record<string, unknown> & { type: string };
const nodeDone = (events: Ev[], stack: string): (Ev & { proxy?: Record<string, number> }) | undefined => events.find((e) => e.type === "node-done" && e.stack === stack);

/** The fetch layer: downloads through whatever http_proxy it is given, checks what it got. */
const fetchScript = (comment: string) => `# ${comment}
[ -n "$http_proxy" ] || { echo "no http_proxy"; exit 1; }
wget -q -O /root/tool.deb "http://$ORIGIN/pool/main/t/tool_1.0_all.deb"
wget -q -O /root/InRelease "http://$ORIGIN/dists/test/InRelease"
[ "$(sha256sum /root/tool.deb | cut -d' ' -f1)" = "${DEB_SHA}" ] || { echo "bad download"; exit 1; }
cat /etc/apt/apt.conf.d/00dbuild-proxy > /root/apt-conf-during-install
echo "$http_proxy" > /root/proxy-during-install`;

beforeAll(async () => {
  originHost = `127.0.0.1:${await listen(origin)}`;
  const tmp = net.createServer();
  closedPort = await listen(tmp);
  await new Promise((r) => tmp.close(r));
  cacheHome = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-proxy-cache-"));
  p = await makeVmProject("dbuild-e2e-proxy-");
  // A guest "with apt": apt's proxy setting is written where /etc/apt/apt.conf.d exists.
  await p.layer("aptdir", "mkdir -p /etc/apt/apt.conf.d");
  await p.layer("fetch", fetchScript("first"), { files: { "layer.yaml": `env: {ORIGIN: "${originHost}"}\n` } });
  await p.layer("unreachable", `wget -O /tmp/InRelease "http://127.0.0.1:${closedPort}/debian/dists/bookworm/InRelease"`);
});

afterAll(async () => {
  killQemuOf(p.root);
  await p.cleanup();
  await fs.rm(cacheHome, { recursive: true, force: true });
  await new Promise((r) => origin.close(r));
});

describe("package cache (micro guest, busybox wget, origin on 127.0.0.1)", () => {
  it("the first build fetches through the proxy; a rebuild after a comment-only change fetches nothing upstream", async () => {
    const a = await run("build", "micro:aptdir:fetch");
    expect(a.code, a.stdout.slice(-3000) + a.stderr).toBe(0);
    const first = nodeDone(a.events, "micro:aptdir:fetch")?.proxy;
    expect(first).toMatchObject({ fetched: 2, bytesFromUpstream: DEB.length + INDEX.length, packageBytesFromUpstream: DEB.length, bytesFromCache: 0, failures: 0 });
    expect(seen.map((s) => s.path).sort()).toEqual(["/dists/test/InRelease", "/pool/main/t/tool_1.0_all.deb"]);
    const totals = a.events.find((e) => e.type === "build-done")?.proxy as Record<string, unknown>;
    expect(totals).toMatchObject({ bytesFromUpstream: DEB.length + INDEX.length, cacheDir: path.join(cacheHome, "proxy") });

    seen.length = 0;
    await p.write("layers/fetch/target/install", `#!/bin/sh\nset -e\n${fetchScript("second, only this comment changed")}\n`, 0o755);
    const b = await run("build", "micro:aptdir:fetch");
    expect(b.code, b.stdout.slice(-3000) + b.stderr).toBe(0);
    const second = nodeDone(b.events, "micro:aptdir:fetch")?.proxy;
    // The package from the cache as it is; the index revalidated (304, no body).
    expect(second).toMatchObject({ hits: 1, revalidated: 1, fetched: 0, bytesFromUpstream: 0, packageBytesFromUpstream: 0, bytesFromCache: DEB.length + INDEX.length });
    expect(seen).toEqual([{ path: "/dists/test/InRelease", conditional: true }]);
  }, 600_000);

  it("leaves nothing proxy-related in the published image", async () => {
    const snap = path.join(p.root, "fetch.qcow2");
    expect((await dbuild(["snap", "micro:aptdir:fetch", snap], { cwd: p.root })).code).toBe(0);
    const vm = await dbuild(["run", snap], { cwd: p.root });
    expect(vm.code, vm.stderr).toBe(0);
    const pid = Number(/QEMUPID=(\d+)/.exec(vm.stdout)?.[1]);
    try {
      const out = await dbuild(["ssh", snap, "cat /root/apt-conf-during-install /root/proxy-during-install; ls -A /etc/apt/apt.conf.d; echo END"], { cwd: p.root });
      expect(out.code, out.stderr).toBe(0);
      // During the install apt's setting and http_proxy pointed at the host's proxy...
      expect(out.stdout).toMatch(/^Acquire::http::Proxy "http:\/\/10\.0\.2\.2:\d+\/";\nAcquire::https::Proxy "http:\/\/10\.0\.2\.2:\d+\/";\nhttp:\/\/10\.0\.2\.2:\d+\n/);
      // ...and the clean-up removed it: the directory is empty in the image.
      expect(out.stdout).toMatch(/\nEND\n$/);
      expect(out.stdout).not.toContain("00dbuild-proxy\n");
    } finally {
      process.kill(pid, "SIGTERM");
    }
  });

  it("an unreachable archive (closed port on 127.0.0.1) fails the layer naming the layer, the URL and the proxy", async () => {
    const r = await run("build", "micro:unreachable");
    expect(r.code).toBe(1);
    const failed = r.events.find((e) => e.type === "node-failed") as Ev & { message: string; step: string };
    expect(failed.step).toBe("install");
    expect(failed.message).toMatch(
      new RegExp(
        `^layer unreachable could not reach its package archive: http://127\\.0\\.0\\.1:${closedPort}/debian/dists/bookworm/InRelease \\(connection refused\\); ` +
          `proxy in use: dbuild's package cache \\(http_proxy=http://10\\.0\\.2\\.2:\\d+ in the guest, 127\\.0\\.0\\.1:\\d+ on the host\\) \\(target/install exited with code 1\\)$`,
      ),
    );
  });

  it("proxy: http://127.0.0.1:PORT sends the guest to the user's own proxy instead", async () => {
    const own = await PackageProxy.start({ cacheRoot: await fs.mkdtemp(path.join(cacheHome, "own-")) });
    let l: ProxyListener | undefined;
    try {
      l = await own.listen();
      await p.write("demobuild.yaml", `buildVm: {mem: 256, cpus: 1}\ntimeouts: {boot: 90, install: 300, shutdown: 30}\nproxy: http://127.0.0.1:${l.port}\n`);
      await p.write("layers/fetch/target/install", `#!/bin/sh\nset -e\n${fetchScript("third: through the user's proxy")}\n`, 0o755);
      const r = await run("build", "micro:aptdir:fetch");
      expect(r.code, r.stdout.slice(-3000) + r.stderr).toBe(0);
      expect(l.stats).toMatchObject({ requests: 2, fetched: 2, bytesFromUpstream: DEB.length + INDEX.length });
      // dbuild ran no cache of its own in this build.
      expect(r.events.find((e) => e.type === "build-done")?.proxy).toBeUndefined();
    } finally {
      await own.close();
    }
  });
});
