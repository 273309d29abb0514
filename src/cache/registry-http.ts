/**
 * The transport under the OCI distribution client: one HTTP exchange with a registry on Node's fetch, with
 * token and basic auth (a 401 challenge answered once per request, credentials from the Docker config),
 * stall timers, retries of idempotent steps, and failures classified into TransientError (retry), a plain
 * refusal (RegistryHttpError) or a user-facing DbuildError. Knows nothing of blobs or manifests.
 */
import { DbuildError, errorMessage } from "../util/errors.js";
import type { Challenge, Credentials } from "./oci-auth.js";
import { basicAuthorization, dockerConfigPath, dockerCredentials, parseWwwAuthenticate, tokenUrl } from "./oci-auth.js";
import type { OciRef } from "./oci-url.js";
import type { RetryOptions } from "./retry.js";
import { DEFAULT_RETRY, TransientError, withRetry } from "./retry.js";

type FetchBody = NonNullable<RequestInit["body"]>;

export interface RegistryHttpOptions {
  /** Used instead of the Docker config file. */
  credentials?: Credentials;
  /** Docker config file to read credentials from (default: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`). */
  dockerConfig?: string;
  retry?: Partial<RetryOptions>;
  /** Whole-request limit for small requests (HEAD, manifests, token), default 30 s. */
  requestTimeoutMs?: number;
  /** Blob transfers fail when no byte moves for this long, default 60 s. */
  stallTimeoutMs?: number;
}

/** A registry answer that retrying will not change (4xx other than 401/429). */
export class RegistryHttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "RegistryHttpError";
  }
}

/**
 * Aborts when the parent aborts (with the parent's reason) or when `kick` was not called for `ms`
 * (with a TransientError, so retries treat a stalled transfer like a dropped connection).
 */
function watchdog(ms: number, what: string, parent?: AbortSignal): { signal: AbortSignal; kick: () => void; dispose: () => void } {
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let disposed = false;
  const kick = (): void => {
    // late kicks from a body still draining must not re-arm a finished request's timer
    if (disposed) return;
    clearTimeout(timer);
    timer = setTimeout(() => ac.abort(new TransientError(`${what}: no answer for ${Math.round(ms / 1000)} s`)), ms);
  };
  const onParent = (): void => ac.abort(parent!.reason);
  if (parent?.aborted) ac.abort(parent.reason);
  else parent?.addEventListener("abort", onParent, { once: true });
  kick();
  return {
    signal: ac.signal,
    kick,
    dispose: () => {
      disposed = true;
      clearTimeout(timer);
      parent?.removeEventListener("abort", onParent);
    },
  };
}

function networkCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let i = 0; i < 4 && cur instanceof Error; i++) {
    const code = (cur as { code?: unknown }).code;
    if (typeof code === "string") return code;
    cur = cur.cause;
  }
  return undefined;
}

function retryAfter(res: Response): number | undefined {
  const h = res.headers.get("retry-after");
  if (!h) return undefined;
  const secs = Number(h);
  if (Number.isFinite(secs)) return secs * 1000;
  const when = Date.parse(h);
  return Number.isNaN(when) ? undefined : Math.max(0, when - Date.now());
}

async function errorText(res: Response): Promise<string> {
  let body = "";
  try {
    body = (await res.text()).slice(0, 4000);
  } catch {
    // the body is only decoration for the message
  }
  try {
    const parsed = JSON.parse(body) as { errors?: { code?: string; message?: string }[] };
    if (Array.isArray(parsed.errors) && parsed.errors.length > 0) {
      return parsed.errors.map((e) => [e.code, e.message].filter(Boolean).join(": ")).join("; ");
    }
  } catch {
    // not the registry's JSON error format
  }
  return body.trim().slice(0, 200) || res.statusText;
}

export interface SendInit {
  headers?: Record<string, string>;
  body?: () => FetchBody;
  /** Statuses that count as success; anything else throws. */
  expect: number[];
  push: boolean;
  signal?: AbortSignal;
  /** Stall timer; kicked by body producers and consumers. */
  timeoutMs?: number;
  /** Called with the watchdog's kick so streaming bodies can keep it alive. */
  onWatchdog?: (kick: () => void) => void;
  /** Leave the response's body unread and the watchdog running: the caller consumes and disposes. */
  stream?: boolean;
}

export interface Sent {
  res: Response;
  /** Kicks the stall timer while the caller streams the body. */
  kick: () => void;
  /** Stops the stall timer. */
  dispose: () => void;
}

export class RegistryHttp {
  private readonly retry: RetryOptions;
  private authorization: string | undefined;
  private authHasPush = false;
  private credentials: Credentials | null | undefined;

  constructor(
    readonly ref: OciRef,
    private readonly opts: RegistryHttpOptions = {},
  ) {
    this.retry = { ...DEFAULT_RETRY, ...opts.retry };
  }

  /** The URL of a path under the repository, e.g. `blobs/sha256:...`. */
  url(path: string): string {
    return `${this.ref.origin}/v2/${this.ref.repo}/${path}`;
  }

  private async loadCredentials(signal?: AbortSignal): Promise<Credentials | undefined> {
    if (this.credentials === undefined) {
      this.credentials =
        this.opts.credentials ??
        (await dockerCredentials(this.ref.authority, this.opts.dockerConfig ?? dockerConfigPath(), signal ? { signal } : {})) ??
        null;
    }
    return this.credentials ?? undefined;
  }

  private authError(message: string, hint?: string): DbuildError {
    return new DbuildError(
      {
        reason: "registry-auth",
        where: this.ref.url,
        message,
        hint:
          hint ??
          `log in with \`skopeo login ${this.ref.authority}\` or \`docker login ${this.ref.authority}\` (credentials are read from ${this.opts.dockerConfig ?? dockerConfigPath()})`,
      },
      1,
    );
  }

  /** Answers a 401 challenge: sets `this.authorization` or throws. */
  private async authenticate(challenges: Challenge[], push: boolean, signal?: AbortSignal): Promise<void> {
    const creds = await this.loadCredentials(signal);
    const bearer = challenges.find((c) => c.scheme === "bearer");
    if (bearer) {
      const scope = push ? `repository:${this.ref.repo}:pull,push` : (bearer.params.scope ?? `repository:${this.ref.repo}:pull`);
      let url: URL;
      try {
        url = tokenUrl(bearer, scope);
      } catch (e) {
        throw this.authError(`the registry's token challenge is unusable: ${errorMessage(e)}`, "report this registry's WWW-Authenticate header to dbuild");
      }
      if (url.protocol !== "https:" && !(url.protocol === "http:" && this.ref.scheme === "http")) {
        throw this.authError(`the registry sends credentials to a plain-http token service ${url.origin}`, "use a registry whose token service is https");
      }
      const headers: Record<string, string> = {};
      if (creds) headers.authorization = basicAuthorization(creds);
      const dog = watchdog(this.opts.requestTimeoutMs ?? 30_000, `token from ${url.origin}`, signal);
      let res: Response;
      try {
        res = await fetch(url, { headers, signal: dog.signal });
        if (res.status === 401 || res.status === 403) {
          await res.body?.cancel();
          throw this.authError(creds ? `the token service ${url.origin} rejected the credentials for ${this.ref.authority}` : `${this.ref.authority} needs credentials`);
        }
        if (res.status >= 500 || res.status === 429) throw new TransientError(`token service ${url.origin} answered ${res.status}`, { status: res.status });
        if (!res.ok) throw new RegistryHttpError(res.status, `token service ${url.origin} answered ${res.status}: ${await errorText(res)}`);
        const body = (await res.json()) as { token?: unknown; access_token?: unknown };
        const token = typeof body.token === "string" ? body.token : typeof body.access_token === "string" ? body.access_token : undefined;
        if (!token) throw this.authError(`the token service ${url.origin} returned no token`);
        this.authorization = `Bearer ${token}`;
        this.authHasPush = push;
      } catch (e) {
        throw this.classifyFetchError(e, signal);
      } finally {
        dog.dispose();
      }
      return;
    }
    if (challenges.some((c) => c.scheme === "basic")) {
      if (!creds) throw this.authError(`${this.ref.authority} needs credentials`);
      this.authorization = basicAuthorization(creds);
      this.authHasPush = true;
      return;
    }
    throw this.authError(`the registry asks for an unsupported authentication scheme (${challenges.map((c) => c.scheme).join(", ") || "none"})`);
  }

  /** Maps what fetch threw to: the caller's abort reason, a TransientError, or the error itself. */
  classifyFetchError(e: unknown, signal?: AbortSignal): unknown {
    if (signal?.aborted) return signal.reason as unknown;
    if (e instanceof TransientError || e instanceof DbuildError || e instanceof RegistryHttpError) return e;
    const code = networkCode(e);
    const detail = code ? `${code}` : errorMessage(e);
    return new TransientError(`cannot reach ${this.ref.origin} (${detail})`, { cause: e });
  }

  /** One HTTP exchange: answers a 401 challenge once, classifies failures (TransientError for retries). */
  async send(method: string, url: string, init: SendInit): Promise<Sent> {
    for (let authTry = 0; ; authTry++) {
      const dog = watchdog(init.timeoutMs ?? this.opts.requestTimeoutMs ?? 30_000, `${method} ${url}`, init.signal);
      init.onWatchdog?.(dog.kick);
      const headers: Record<string, string> = { ...init.headers };
      if (this.authorization) headers.authorization = this.authorization;
      let res: Response;
      const body = init.body?.();
      try {
        res = await fetch(url, {
          method,
          headers,
          body,
          signal: dog.signal,
          redirect: "follow",
          ...(body !== undefined && typeof body === "object" && Symbol.asyncIterator in body ? { duplex: "half" as const } : {}),
        });
      } catch (e) {
        dog.dispose();
        closeBody(body);
        throw this.classifyFetchError(e, init.signal);
      }
      try {
        // One fresh authentication per request: a token may have expired, or lack the push scope.
        if (res.status === 401 && authTry === 0) {
          await res.body?.cancel();
          closeBody(body);
          const header = res.headers.get("www-authenticate") ?? "";
          await this.authenticate(parseWwwAuthenticate(header), init.push, init.signal);
          dog.dispose();
          continue;
        }
        if (res.status === 401 || res.status === 403) {
          const text = await errorText(res);
          throw this.authError(`${method === "HEAD" ? "access" : method} denied (${res.status}${text ? `: ${text}` : ""})`);
        }
        if (init.expect.includes(res.status)) {
          if (init.stream) return { res, kick: dog.kick, dispose: dog.dispose };
          dog.dispose();
          return { res, kick: () => undefined, dispose: () => undefined };
        }
        const text = method === "HEAD" ? res.statusText : await errorText(res);
        if (res.status === 429 || res.status === 502 || res.status === 503 || res.status === 504 || res.status === 500) {
          const after = retryAfter(res);
          throw new TransientError(`${this.ref.authority} answered ${res.status} ${text}`, { status: res.status, ...(after === undefined ? {} : { retryAfterMs: after }) });
        }
        throw new RegistryHttpError(res.status, `${this.ref.authority} answered ${res.status} ${text}`);
      } catch (e) {
        dog.dispose();
        closeBody(body);
        throw this.classifyFetchError(e, init.signal);
      }
    }
  }

  /** Runs an idempotent step with retries and turns what is left into a user-facing error. */
  async step<T>(what: string, push: boolean, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    let attempts = 0;
    try {
      return await withRetry(
        () => {
          attempts++;
          return fn();
        },
        this.retry,
        signal,
      );
    } catch (e) {
      if (signal?.aborted || e instanceof DbuildError) throw e;
      const unreachable = e instanceof TransientError && e.status === undefined;
      const tries = attempts > 1 ? ` after ${attempts} attempts` : "";
      throw new DbuildError(
        {
          reason: unreachable ? "registry-unreachable" : "registry-error",
          where: this.ref.url,
          message: `${what} failed${tries}: ${errorMessage(e)}`,
          hint: unreachable
            ? `check that the registry is running and reachable (${this.ref.origin}/v2/ should answer), then run the command again${push ? "; nothing local was changed" : ""}`
            : push
              ? "the registry refused the upload; nothing local was changed. Check the registry's logs and quota, then push again"
              : "check the registry's logs; `dbuild` builds the node locally when the cache cannot serve it",
        },
        1,
      );
    }
  }
}

/** Ends a streaming request body that fetch did not finish reading, so its file is closed now. */
function closeBody(body: FetchBody | undefined): void {
  if (body && typeof body === "object" && "return" in body && typeof body.return === "function") {
    (body as AsyncGenerator<unknown>).return(undefined).catch(() => undefined);
  }
}
