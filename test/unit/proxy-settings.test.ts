/**
 * `proxy:` in demobuild.yaml, what a build VM is given, and how an unreachable archive is explained.
 */
import * as fs from "node:fs/promises";
import * as http from "node:http";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { BuildProxy, type NodeProxy } from "../../src/exec/build-proxy.js";
import { defaultSettings, loadProject } from "../../src/project/load.js";
import type { ProjectSettings } from "../../src/project/types.js";
import { DbuildError } from "../../src/util/errors.js";
import { archiveFailuresInOutput, GUEST_APT_CONF, GUEST_PROXY_CLEANUP, guestProxySetup, guestUrlOfOwnProxy, unreachableArchiveMessage } from "../../src/proxy/guest.js";
import { demoProject, writeFixture, type Fixture } from "../helpers/fixture.js";

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.cleanup();
  fx = undefined;
});

async function settingsOf(yaml: string) {
  fx = await writeFixture(demoProject({ "demobuild.yaml": yaml }));
  return (await loadProject(fx.root)).settings;
}

describe("proxy: in demobuild.yaml", () => {
  it("defaults to dbuild's package cache; off and http://HOST:PORT are read", async () => {
    expect((await settingsOf("jobs: 1\n")).proxy).toEqual({ mode: "cache" });
    expect((await settingsOf("proxy: off\n")).proxy).toEqual({ mode: "off" });
    expect((await settingsOf("proxy: http://127.0.0.1:3142/\n")).proxy).toEqual({ mode: "own", url: "http://127.0.0.1:3142" });
  });

  it.each(["proxy: on\n", "proxy: https://proxy:3128\n", "proxy: http://proxy\n", "proxy: false\n"])("rejects %j with file:line and what to write", async (yaml) => {
    fx = await writeFixture(demoProject({ "demobuild.yaml": `jobs: 1\n${yaml}` }));
    const err = await loadProject(fx.root).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DbuildError);
    const p = (err as DbuildError).problems[0]!;
    expect(p.where).toBe("demobuild.yaml:2:8");
    expect(p.message).toContain("expected off, or http://HOST:PORT of your own proxy");
  });
});

describe("what a build VM is given", () => {
  it("http_proxy and HTTP_PROXY (https too, through CONNECT), and apt's setting only where apt exists", () => {
    const g = guestProxySetup("http://10.0.2.2:4567");
    expect(g.env).toMatchObject({ http_proxy: "http://10.0.2.2:4567", HTTP_PROXY: "http://10.0.2.2:4567", https_proxy: "http://10.0.2.2:4567" });
    expect(g.setup).toBe(
      `if [ -d /etc/apt/apt.conf.d ]; then printf '%s\\n' 'Acquire::http::Proxy "http://10.0.2.2:4567/";' 'Acquire::https::Proxy "http://10.0.2.2:4567/";' > ${GUEST_APT_CONF}; fi`,
    );
    expect(GUEST_PROXY_CLEANUP).toBe(`rm -f ${GUEST_APT_CONF}`);
  });

  it("the user's proxy on the host's loopback is 10.0.2.2 to a user-networking guest", () => {
    expect(guestUrlOfOwnProxy("http://127.0.0.1:3142", true)).toBe("http://10.0.2.2:3142");
    expect(guestUrlOfOwnProxy("http://localhost:3142", true)).toBe("http://10.0.2.2:3142");
    expect(guestUrlOfOwnProxy("http://127.0.0.1:3142", false)).toBe("http://127.0.0.1:3142");
    expect(guestUrlOfOwnProxy("http://cache.lan:3142", true)).toBe("http://cache.lan:3142");
  });
});

describe("an unreachable package archive", () => {
  it("is found in apt's output (URL on the Err: line, reason on the next) and in wget's", () => {
    const apt = [
      "Err:1 http://127.0.0.1:9/debian bookworm InRelease",
      "  Could not connect to 10.0.2.2:41000 (10.0.2.2). - connect (111: Connection refused)",
      "Reading package lists...",
      "E: Failed to fetch http://127.0.0.1:9/debian/dists/bookworm/InRelease  Could not connect to 10.0.2.2:41000 (10.0.2.2). - connect (111: Connection refused)",
    ];
    expect(archiveFailuresInOutput(apt)).toEqual([
      { url: "http://127.0.0.1:9/debian", message: "Could not connect to 10.0.2.2:41000 (10.0.2.2). - connect (111: Connection refused)" },
      { url: "http://127.0.0.1:9/debian/dists/bookworm/InRelease", message: expect.stringContaining("E: Failed to fetch") as string },
    ]);
    expect(archiveFailuresInOutput(["Connecting to 10.0.2.2:1234 (10.0.2.2:1234)", "wget: server returned error: HTTP/1.1 502 Bad Gateway"])).toEqual([]);
    expect(archiveFailuresInOutput(["all fine", "http://x/y fetched"])).toEqual([]);
  });

  it("names the layer, the URL and the proxy in one sentence", () => {
    expect(unreachableArchiveMessage("web", [{ url: "http://127.0.0.1:9/x.deb", message: "connection refused" }], "dbuild's package cache (http_proxy=http://10.0.2.2:5 in the guest)")).toBe(
      "layer web could not reach its package archive: http://127.0.0.1:9/x.deb (connection refused); proxy in use: dbuild's package cache (http_proxy=http://10.0.2.2:5 in the guest)",
    );
  });
});

describe("the build's proxy (exec/build-proxy)", () => {
  const base = (proxy: ProjectSettings["proxy"], mode: "user" | "bridge" = "user"): ProjectSettings => ({ ...defaultSettings("/p"), proxy, network: { mode, bridge: "br0" } });

  it("gives each VM its own listener on 127.0.0.1, reached as 10.0.2.2, and explains failures it saw", async () => {
    const home = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-bp-"));
    process.env.DBUILD_CACHE_HOME = home;
    try {
      const bp = new BuildProxy(base({ mode: "cache" }), () => undefined);
      const a = (await bp.forVm())!;
      const b = (await bp.forVm())!;
      const port = (np: NodeProxy) => Number(/10\.0\.2\.2:(\d+)/.exec(np.env.http_proxy!)![1]);
      expect(port(a)).not.toBe(port(b));
      // A request for a closed port on 127.0.0.1, through VM a's listener.
      const closed = await new Promise<number>((resolve) => {
        const s = net.createServer().listen(0, "127.0.0.1", () => {
          const p = (s.address() as net.AddressInfo).port;
          s.close(() => resolve(p));
        });
      });
      const status = await new Promise<number>((resolve) =>
        http.get({ host: "127.0.0.1", port: port(a), path: `http://127.0.0.1:${closed}/debian/pool/x.deb`, agent: false }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        }),
      );
      expect(status).toBe(502);
      expect(a.explainFailure("web", ["wget: server returned error: HTTP/1.1 502 Bad Gateway"])).toBe(
        `layer web could not reach its package archive: http://127.0.0.1:${closed}/debian/pool/x.deb (connection refused); proxy in use: ${a.describe}`,
      );
      expect(b.explainFailure("db", ["something else went wrong"])).toBeUndefined();
      expect(a.counters()).toMatchObject({ requests: 1, failures: 1 });
      await a.close();
      await b.close();
      expect(await bp.close()).toMatchObject({ requests: 1, failures: 1, cacheDir: path.join(home, "proxy") });
    } finally {
      delete process.env.DBUILD_CACHE_HOME;
      await fs.rm(home, { recursive: true, force: true });
    }
  });

  it("off: nothing; own proxy: the guest's URL; bridge networking: a warning, no cache", async () => {
    expect(await new BuildProxy(base({ mode: "off" }), () => undefined).forVm()).toBeUndefined();
    const own = (await new BuildProxy(base({ mode: "own", url: "http://localhost:3142" }), () => undefined).forVm())!;
    expect(own.env.http_proxy).toBe("http://10.0.2.2:3142");
    expect(own.counters()).toBeUndefined();
    const warnings: string[] = [];
    const bridged = new BuildProxy(base({ mode: "cache" }, "bridge"), (m) => warnings.push(m));
    expect(await bridged.forVm()).toBeUndefined();
    expect(await bridged.forVm()).toBeUndefined();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toContain("proxy: http://HOST:PORT");
    expect(await bridged.close()).toBeUndefined();
  });
});
