/**
 * Retries with exponential backoff and jitter, for idempotent registry steps only. Jitter keeps many CI
 * runners that failed together from hammering a recovering registry in lockstep.
 */
import { sleep } from "../util/sleep.js";

export interface RetryOptions {
  /** Retries after the first attempt (so `retries + 1` attempts in all). */
  retries: number;
  /** First backoff in ms; doubles per attempt. */
  baseMs: number;
  /** Cap on one backoff in ms. */
  maxMs: number;
  /** Injected for tests; defaults to Math.random. */
  random?: () => number;
}

export const DEFAULT_RETRY: RetryOptions = { retries: 4, baseMs: 250, maxMs: 8_000 };

/** A failure worth retrying; `retryAfterMs` carries a server's Retry-After. */
export class TransientError extends Error {
  readonly retryAfterMs: number | undefined;
  /** The HTTP status that was answered, or undefined when no answer came (network error, stall). */
  readonly status: number | undefined;
  constructor(message: string, options?: { cause?: unknown; retryAfterMs?: number; status?: number }) {
    super(message, { cause: options?.cause });
    this.name = "TransientError";
    this.retryAfterMs = options?.retryAfterMs;
    this.status = options?.status;
  }
}

/** Backoff before retry number `attempt` (0-based): half fixed, half random ("equal jitter"). */
export function backoffMs(attempt: number, opts: RetryOptions): number {
  const cap = Math.min(opts.maxMs, opts.baseMs * 2 ** attempt);
  const rnd = (opts.random ?? Math.random)();
  return Math.round(cap / 2 + (cap / 2) * rnd);
}

/**
 * Runs `fn` until it succeeds, throws something other than a TransientError, the retries run out (the last
 * TransientError is thrown), or `signal` aborts (its reason is thrown).
 */
export async function withRetry<T>(
  fn: (attempt: number) => Promise<T>,
  opts: RetryOptions,
  signal?: AbortSignal,
  onRetry?: (err: TransientError, attempt: number, delayMs: number) => void,
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    signal?.throwIfAborted();
    try {
      return await fn(attempt);
    } catch (e) {
      if (!(e instanceof TransientError) || attempt >= opts.retries || signal?.aborted) throw e;
      const delay = Math.min(opts.maxMs, Math.max(backoffMs(attempt, opts), e.retryAfterMs ?? 0));
      onRetry?.(e, attempt, delay);
      await sleep(delay, signal);
    }
  }
}
