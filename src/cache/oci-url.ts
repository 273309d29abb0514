/**
 * `oci://HOST[:PORT]/REPO` cache URLs. The repository may contain slashes (`team/dbuild/cache`).
 * Plain HTTP is used only for loopback hosts: credentials and images never cross a network unencrypted.
 */
import { DbuildError } from "../util/errors.js";

export interface OciRef {
  /** The URL as the user wrote it, normalised (`oci://host[:port]/repo`), for messages. */
  readonly url: string;
  /** Host name or IP without brackets (`::1`, `127.0.0.1`, `registry.example.com`). */
  readonly host: string;
  readonly port: number | undefined;
  /** `host[:port]` as it appears in HTTP `Host` and in `~/.docker/config.json` keys (IPv6 bracketed). */
  readonly authority: string;
  readonly repo: string;
  readonly scheme: "http" | "https";
  /** `http[s]://authority` with no trailing slash. */
  readonly origin: string;
}

// Repository path components as the distribution spec defines them.
const REPO_COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const HOSTNAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$/;
const IPV4 = /^\d{1,3}(?:\.\d{1,3}){3}$/;

export function isLoopbackHost(host: string): boolean {
  const h = host.toLowerCase();
  if (h === "localhost" || h === "::1" || h === "0:0:0:0:0:0:0:1") return true;
  // 127.0.0.0/8 is loopback as a whole, not just 127.0.0.1.
  return IPV4.test(h) && h.startsWith("127.");
}

function bad(url: string, message: string): DbuildError {
  return new DbuildError({
    reason: "bad-cache-url",
    where: url,
    message,
    hint: "write the cache as oci://HOST[:PORT]/REPO, e.g. oci://registry.example.com/team/dbuild or oci://127.0.0.1:5000/dbuild",
  });
}

export function parseOciUrl(input: string): OciRef {
  const raw = input.trim();
  const m = /^oci:\/\/([^/]*)\/(.*)$/i.exec(raw);
  if (!m) throw bad(raw, "not an oci:// URL");
  const hostPart = m[1] ?? "";
  let repo = m[2] ?? "";
  repo = repo.replace(/\/+$/, "");
  if (hostPart === "") throw bad(raw, "the registry host is missing");
  if (hostPart.includes("@")) throw bad(raw, "credentials do not belong in the URL; put them in ~/.docker/config.json (docker login / skopeo login)");

  let host: string;
  let portText: string | undefined;
  if (hostPart.startsWith("[")) {
    const close = hostPart.indexOf("]");
    if (close < 0) throw bad(raw, "unclosed [ in IPv6 host");
    host = hostPart.slice(1, close);
    const rest = hostPart.slice(close + 1);
    if (rest !== "" && !rest.startsWith(":")) throw bad(raw, `unexpected "${rest}" after the IPv6 host`);
    portText = rest === "" ? undefined : rest.slice(1);
    if (!/^[0-9a-fA-F:.]+$/.test(host) || !host.includes(":")) throw bad(raw, `"${host}" is not an IPv6 address`);
  } else {
    const colon = hostPart.lastIndexOf(":");
    host = colon < 0 ? hostPart : hostPart.slice(0, colon);
    portText = colon < 0 ? undefined : hostPart.slice(colon + 1);
    if (!HOSTNAME.test(host)) throw bad(raw, `"${host}" is not a valid host name`);
  }
  let port: number | undefined;
  if (portText !== undefined) {
    if (!/^\d{1,5}$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) {
      throw bad(raw, `"${portText}" is not a valid port`);
    }
    port = Number(portText);
  }

  if (repo === "") throw bad(raw, "the repository is missing after the host");
  if (repo.length > 255) throw bad(raw, "the repository name is longer than 255 characters");
  for (const part of repo.split("/")) {
    if (!REPO_COMPONENT.test(part)) {
      throw bad(raw, `repository component "${part}" is not valid (lowercase letters, digits, and . _ __ - between them)`);
    }
  }

  const hostInAuthority = host.includes(":") ? `[${host}]` : host.toLowerCase();
  const authority = port === undefined ? hostInAuthority : `${hostInAuthority}:${port}`;
  const scheme = isLoopbackHost(host) ? "http" : "https";
  return {
    url: `oci://${authority}/${repo}`,
    host: host.includes(":") ? host : host.toLowerCase(),
    port,
    authority,
    repo,
    scheme,
    origin: `${scheme}://${authority}`,
  };
}
