/**
 * What a build VM is given to use a proxy, and how a failed install is explained when its package
 * archive could not be reached. Nothing here may outlive the install: the environment is per command,
 * and the apt setting is removed by the layer's clean-up step before the image is published.
 */

/** The host's loopback as a QEMU user-networking guest sees it. */
export const USER_NET_HOST = "10.0.2.2";

/** apt's proxy setting for the length of one install (removed by GUEST_PROXY_CLEANUP). */
export const GUEST_APT_CONF = "/etc/apt/apt.conf.d/00dbuild-proxy";

/** Part of the layer clean-up: runs whether or not a proxy was used, so no image ever keeps the file. */
export const GUEST_PROXY_CLEANUP = `rm -f ${GUEST_APT_CONF}`;

export interface GuestProxySetup {
  /** Environment of target/install. */
  env: Record<string, string>;
  /** Shell run before target/install (as root): apt's setting, where apt exists. */
  setup: string;
}

/** `url` as the guest must use it: http://HOST:PORT with no trailing slash. */
export function guestProxySetup(url: string): GuestProxySetup {
  const u = url.replace(/\/+$/, "");
  const local = "localhost,127.0.0.1,::1";
  // HTTPS goes through the same proxy as a CONNECT tunnel (not cached), so it is counted and so a guest
  // whose network allows only the proxy still works.
  const env = { http_proxy: u, HTTP_PROXY: u, https_proxy: u, HTTPS_PROXY: u, no_proxy: local, NO_PROXY: local };
  const conf = [`Acquire::http::Proxy "${u}/";`, `Acquire::https::Proxy "${u}/";`];
  const setup = `if [ -d /etc/apt/apt.conf.d ]; then printf '%s\\n' ${conf.map((l) => `'${l}'`).join(" ")} > ${GUEST_APT_CONF}; fi`;
  return { env, setup };
}

/**
 * The user's own proxy as the guest reaches it: a proxy on the host's loopback is at 10.0.2.2 in
 * user networking (the guest's own 127.0.0.1 is the guest).
 */
export function guestUrlOfOwnProxy(url: string, userNetworking: boolean): string {
  const u = new URL(url);
  if (userNetworking && ["127.0.0.1", "localhost", "[::1]"].includes(u.hostname)) u.hostname = USER_NET_HOST;
  return `${u.protocol}//${u.host}`;
}

export interface ArchiveFailure {
  url: string;
  message: string;
}

/** Lines of package-manager output that say a download failed for want of a connection. */
const NET_TROUBLE = /could not connect|couldn't connect|connection refused|connection failed|unable to connect|temporary failure resolving|could not resolve|network is unreachable|no route to host|timed out|bad gateway|failed to fetch|curl error/i;
const URL_IN_LINE = /\bhttps?:\/\/[^\s'"<>)\]]+/;

/**
 * Archive failures named in an install's output (apt's `Err:`/`E: Failed to fetch`, dnf's `Curl error`,
 * wget's messages): used when the proxy cannot tell (the user's own proxy, or none).
 */
export function archiveFailuresInOutput(lines: readonly string[]): ArchiveFailure[] {
  const out: ArchiveFailure[] = [];
  for (let i = 0; i < lines.length && out.length < 3; i++) {
    const line = lines[i]!;
    if (!NET_TROUBLE.test(line)) continue;
    // apt prints the URL on the `Err:` line and the reason on the next one.
    const url = URL_IN_LINE.exec(line)?.[0] ?? (i > 0 ? URL_IN_LINE.exec(lines[i - 1]!)?.[0] : undefined);
    if (!url || out.some((f) => f.url === url)) continue;
    out.push({ url, message: line.trim().replace(/\s+/g, " ").slice(0, 200) });
  }
  return out;
}

/** The one sentence a failed layer shows when its package archive could not be reached. */
export function unreachableArchiveMessage(layer: string, failures: readonly ArchiveFailure[], proxy: string): string {
  const list = failures
    .slice(0, 3)
    .map((f) => `${f.url} (${f.message})`)
    .join(", ");
  const more = failures.length > 3 ? ` and ${failures.length - 3} more` : "";
  return `layer ${layer} could not reach its package archive: ${list}${more}; proxy in use: ${proxy}`;
}
