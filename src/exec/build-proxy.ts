/**
 * The package proxy for the length of one build: started when the first node needs it, one listener
 * per node (so counters and upstream failures belong to one layer even with -j 2), closed when the
 * build ends. Turns the project's `proxy:` setting into what a VM or a host install script is given.
 */
import type { ProjectSettings } from "../project/types.js";
import type { ProxyCounters } from "../report/events.js";
import { userCacheDir } from "../store/user-cache.js";
import {
  archiveFailuresInOutput,
  guestProxySetup,
  guestUrlOfOwnProxy,
  unreachableArchiveMessage,
  USER_NET_HOST,
  type ArchiveFailure,
} from "../proxy/guest.js";
// Types only: the server (node:http, http-cache-semantics) is loaded when a build first needs it, so a
// no-op `dbuild all` does not pay for it.
import type { PackageProxy, ProxyListener, ProxyStats } from "../proxy/server.js";

/** What one node gets. */
export interface NodeProxy {
  /** Environment of target/install in the guest. */
  env: Record<string, string>;
  /** Shell run in the guest before target/install (apt's proxy setting). */
  setup: string;
  /** The proxy as a person should read it in an error. */
  describe: string;
  /** This node's counters (dbuild's cache only). */
  counters(): ProxyCounters | undefined;
  /** Why a failed install failed, if its package archive could not be reached. */
  explainFailure(layer: string, outputTail: readonly string[]): string | undefined;
  close(): Promise<void>;
}

export function countersOf(s: ProxyStats): ProxyCounters {
  const { failures, ...rest } = s;
  return { ...rest, failures: failures.length };
}

export class BuildProxy {
  private proxy: Promise<PackageProxy> | undefined;
  private warned = false;

  constructor(
    private readonly settings: ProjectSettings,
    private readonly warn: (message: string) => void,
  ) {}

  /** For a VM applying a layer; undefined when build VMs use no proxy. */
  async forVm(): Promise<NodeProxy | undefined> {
    const p = this.settings.proxy;
    const user = this.settings.network.mode === "user";
    if (p.mode === "off") return undefined;
    if (p.mode === "own") return fromOutputOnly(guestUrlOfOwnProxy(p.url, user), `your proxy ${p.url}`);
    if (!user) {
      // The cache listens on 127.0.0.1 only, which a bridged guest cannot reach.
      if (!this.warned) this.warn("the package cache is not used in bridge networking (it listens on 127.0.0.1 only); set proxy: http://HOST:PORT in demobuild.yaml to use a proxy of your own");
      this.warned = true;
      return undefined;
    }
    const l = await (await this.start()).listen();
    return fromListener(l, `http://${USER_NET_HOST}:${l.port}`);
  }

  /** For a base layer's host install script (DBUILD_PROXY); undefined when none. */
  async forHost(): Promise<{ url: string; close(): Promise<void>; counters(): ProxyCounters } | undefined> {
    const p = this.settings.proxy;
    if (p.mode === "off" || p.mode === "own") return undefined;
    const l = await (await this.start()).listen();
    return { url: `http://127.0.0.1:${l.port}`, close: () => l.close(), counters: () => countersOf(l.stats) };
  }

  private start(): Promise<PackageProxy> {
    this.proxy ??= import("../proxy/server.js").then(({ PackageProxy }) => PackageProxy.start({ cacheRoot: userCacheDir() }));
    return this.proxy;
  }

  /** The build's totals, or undefined if the cache never ran. */
  async close(): Promise<(ProxyCounters & { cacheDir: string }) | undefined> {
    if (!this.proxy) return undefined;
    const proxy = await this.proxy.catch(() => undefined);
    if (!proxy) return undefined;
    await proxy.close();
    return { ...countersOf(proxy.stats()), cacheDir: proxy.cacheDir };
  }
}

function fromListener(l: ProxyListener, guestUrl: string): NodeProxy {
  const describe = `dbuild's package cache (http_proxy=${guestUrl} in the guest, 127.0.0.1:${l.port} on the host)`;
  return {
    ...guestProxySetup(guestUrl),
    describe,
    counters: () => countersOf(l.stats),
    explainFailure(layer, tail) {
      // The proxy saw the failures itself. A copy served stale failed nothing, and a 404 is often
      // harmless (apt probes optional files): it counts only if the install's output names its URL.
      const text = tail.join("\n");
      const seen: ArchiveFailure[] = l.stats.failures.filter((f) => !f.servedStale && (!/^HTTP 4/.test(f.message) || text.includes(f.url)));
      const failures = seen.length ? seen : archiveFailuresInOutput(tail);
      return failures.length ? unreachableArchiveMessage(layer, failures, describe) : undefined;
    },
    close: () => l.close(),
  };
}

function fromOutputOnly(guestUrl: string, describe: string): NodeProxy {
  return {
    ...guestProxySetup(guestUrl),
    describe,
    counters: () => undefined,
    explainFailure(layer, tail) {
      const failures = archiveFailuresInOutput(tail);
      return failures.length ? unreachableArchiveMessage(layer, failures, describe) : undefined;
    },
    close: () => Promise.resolve(),
  };
}
