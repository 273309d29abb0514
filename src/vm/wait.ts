/** Bounded waits for the VM runtime (the sleep itself is src/util/sleep.ts). */
import { abortError } from "../util/sleep.js";


export class TimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TimeoutError";
  }
}

/**
 * Races `p` against a timeout and an abort signal. The underlying work is not cancelled here:
 * callers own the resource and close it when this rejects.
 */
export function withTimeout<T>(p: Promise<T>, ms: number, what: string, signal?: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal));
      return;
    }
    const onAbort = (): void => {
      cleanup();
      reject(abortError(signal));
    };
    const t = setTimeout(() => {
      cleanup();
      reject(new TimeoutError(`${what}: no answer within ${ms} ms`));
    }, ms);
    const cleanup = (): void => {
      clearTimeout(t);
      signal?.removeEventListener("abort", onAbort);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    p.then(
      (v) => {
        cleanup();
        resolve(v);
      },
      (e: unknown) => {
        cleanup();
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
