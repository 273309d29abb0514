/**
 * Registry authentication: the `WWW-Authenticate` challenge a registry answers 401 with, credentials from
 * the Docker config file (what `docker login`, `podman login --authfile` and `skopeo login` write), and the
 * bearer-token exchange of the distribution token spec.
 */
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { loadExeca } from "../util/lazy.js";

export interface Challenge {
  /** Lower-cased auth scheme: "bearer", "basic", ... */
  scheme: string;
  /** Parameters with lower-cased names (realm, service, scope, error). */
  params: Record<string, string>;
}

export interface Credentials {
  username: string;
  password: string;
}

/**
 * Parses a `WWW-Authenticate` header (RFC 7235): one or more challenges, each a scheme followed by
 * comma-separated `name=value` parameters whose values may be quoted strings holding commas and escapes.
 */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const n = header.length;
  const skipWs = (): void => {
    while (i < n && (header[i] === " " || header[i] === "\t")) i++;
  };
  const readToken = (): string => {
    const start = i;
    while (i < n && /[!#$%&'*+\-.^_`|~0-9A-Za-z]/.test(header[i]!)) i++;
    return header.slice(start, i);
  };
  const readValue = (): string => {
    if (header[i] !== '"') {
      const start = i;
      // token68 values (e.g. base64 with trailing '=') and plain tokens end at a comma or space
      while (i < n && header[i] !== "," && header[i] !== " " && header[i] !== "\t") i++;
      return header.slice(start, i);
    }
    i++;
    let v = "";
    while (i < n && header[i] !== '"') {
      if (header[i] === "\\" && i + 1 < n) i++;
      v += header[i];
      i++;
    }
    i++; // closing quote (or end of input)
    return v;
  };

  let current: Challenge | undefined;
  while (i < n) {
    skipWs();
    if (header[i] === ",") {
      i++;
      continue;
    }
    const save = i;
    const tok = readToken();
    if (tok === "") {
      i++; // stray character: skip rather than loop forever
      continue;
    }
    skipWs();
    if (header[i] === "=" && current) {
      i++;
      skipWs();
      current.params[tok.toLowerCase()] = readValue();
    } else if (header[i] === "=" && !current) {
      // a parameter before any scheme: malformed, ignore it
      i++;
      readValue();
    } else {
      // a new scheme; what follows may be params or a token68 we do not need
      i = save + tok.length;
      current = { scheme: tok.toLowerCase(), params: {} };
      out.push(current);
    }
  }
  return out;
}

/** Where the Docker config file is: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env.DOCKER_CONFIG && env.DOCKER_CONFIG !== "" ? env.DOCKER_CONFIG : join(env.HOME ?? homedir(), ".docker");
  return join(dir, "config.json");
}

// Keys in `auths` are written variously as `host`, `host:port`, `https://host`, `https://host/v1/`.
function normaliseAuthKey(key: string): string {
  return key
    .replace(/^[a-z]+:\/\//i, "")
    .replace(/\/.*$/, "")
    .toLowerCase();
}

interface DockerAuthEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
}

export interface CredentialOptions {
  /** Environment for credential helpers (PATH finds `docker-credential-NAME`). */
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  /** Limit for one credential helper run, default 10 s (a locked keychain may prompt and hang). */
  helperTimeoutMs?: number;
}

/**
 * Credentials for `authority` (`host[:port]`) from a Docker config file, or undefined when there are none.
 * Looks where docker does: a per-registry `credHelpers` entry, then the `auths` entry, then `credsStore`.
 */
export async function dockerCredentials(
  authority: string,
  configPath = dockerConfigPath(),
  opts: CredentialOptions = {},
): Promise<Credentials | undefined> {
  let text: string;
  try {
    text = await readFile(configPath, "utf8");
  } catch {
    return undefined;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof parsed !== "object" || parsed === null) return undefined;
  const config = parsed as { auths?: unknown; credHelpers?: unknown; credsStore?: unknown };
  const want = authority.toLowerCase();

  if (typeof config.credHelpers === "object" && config.credHelpers !== null) {
    for (const [key, helper] of Object.entries(config.credHelpers as Record<string, unknown>)) {
      if (normaliseAuthKey(key) === want && typeof helper === "string") return credentialHelper(helper, authority, opts);
    }
  }
  if (typeof config.auths === "object" && config.auths !== null) {
    for (const [key, value] of Object.entries(config.auths as Record<string, unknown>)) {
      if (normaliseAuthKey(key) !== want || typeof value !== "object" || value === null) continue;
      const entry = value as DockerAuthEntry;
      if (typeof entry.auth === "string" && entry.auth !== "") {
        const decoded = Buffer.from(entry.auth, "base64").toString("utf8");
        const colon = decoded.indexOf(":");
        if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
      }
      if (typeof entry.username === "string" && typeof entry.password === "string") {
        return { username: entry.username, password: entry.password };
      }
    }
  }
  if (typeof config.credsStore === "string" && config.credsStore !== "") return credentialHelper(config.credsStore, authority, opts);
  return undefined;
}

/**
 * Asks `docker-credential-NAME get` (the docker credential helper protocol: server on stdin, JSON out).
 * A helper that is missing, fails or knows no entry yields undefined; the registry's 401 then says more.
 * Identity tokens (Username "<token>") need an OAuth2 refresh exchange, which is not supported.
 */
export async function credentialHelper(name: string, authority: string, opts: CredentialOptions = {}): Promise<Credentials | undefined> {
  if (!/^[A-Za-z0-9._-]+$/.test(name)) return undefined;
  const execa = await loadExeca();
  const r = await execa(`docker-credential-${name}`, ["get"], {
    input: authority,
    reject: false,
    timeout: opts.helperTimeoutMs ?? 10_000,
    ...(opts.signal ? { cancelSignal: opts.signal } : {}),
    ...(opts.env ? { env: opts.env, extendEnv: false } : {}),
  });
  opts.signal?.throwIfAborted();
  if (r.failed || typeof r.stdout !== "string") return undefined;
  try {
    const out = JSON.parse(r.stdout) as { Username?: unknown; Secret?: unknown };
    if (typeof out.Username !== "string" || typeof out.Secret !== "string" || out.Username === "<token>") return undefined;
    return { username: out.Username, password: out.Secret };
  } catch {
    return undefined;
  }
}

export function basicAuthorization(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`, "utf8").toString("base64")}`;
}

/** Builds the token request URL from a bearer challenge; `scope` overrides the challenge's own scope. */
export function tokenUrl(challenge: Challenge, scope?: string): URL {
  const realm = challenge.params.realm;
  if (!realm) throw new Error("bearer challenge without realm");
  const url = new URL(realm);
  if (challenge.params.service) url.searchParams.set("service", challenge.params.service);
  const scopes = scope ?? challenge.params.scope;
  // Several scopes are sent as repeated parameters, not one space-separated value.
  if (scopes) for (const s of scopes.split(" ").filter(Boolean)) url.searchParams.append("scope", s);
  return url;
}
