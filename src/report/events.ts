/**
 * Typed events flowing from the executor to reporters. Reporters (tty, plain, json, junit) are the
 * only code that turns them into text.
 */
import type { LayerKind } from "../project/types.js";

/** The steps of a node, in the order they run. Base: install|import; others: the seed's seven steps. */
export type Step =
  | "queued"
  | "import"
  | "install-host"
  | "cow"
  | "boot"
  | "rsync"
  | "install"
  | "cleanup"
  | "poweroff"
  | "convert"
  | "test"
  | "publish"
  | "pull"
  /** Remote-cache push of a published node (runs behind the build, after node-done). */
  | "push";

/**
 * Package-cache counters (docs/proxy.md): of one node (its VM's listener) or of a whole build. Bytes
 * are response bodies; "from upstream" is what came from outside this machine.
 */
export interface ProxyCounters {
  requests: number;
  /** Served from the cache without asking upstream. */
  hits: number;
  /** Served from the cache after upstream answered 304 Not Modified. */
  revalidated: number;
  /** Fetched from upstream with 200. */
  fetched: number;
  /** Served from the cache because upstream could not be reached. */
  stale: number;
  bytesFromCache: number;
  bytesFromUpstream: number;
  /** The part of bytesFromUpstream that was package payloads (.deb, .rpm, .apk, by-hash), not index files. */
  packageBytesFromUpstream: number;
  /** HTTPS tunnelled through CONNECT (never cached), both ways. */
  bytesTunneled: number;
  /** Upstream failures (connection errors, HTTP errors). */
  failures: number;
}

/** TAP counts of one test, when it printed TAP (a plan line `1..N` or `TAP version`). */
export interface TapCounts {
  count: number;
  pass: number;
  fail: number;
  skip: number;
  todo: number;
}

export type BuildEvent =
  | { type: "build-start"; time: number; stale: string[]; fresh: string[]; jobs: number }
  /** `key`: the node's content key (so a later report can tell whether a failure still applies). */
  | { type: "node-start"; time: number; stack: string; layer: string; kind: LayerKind; key: string }
  /** A step began, or (same step again) reports progress in `detail`. */
  | { type: "step"; time: number; stack: string; step: Step; detail?: string }
  /** A step ended (the next step's start, the node's end, or a push finishing): exact step durations. */
  | { type: "step-done"; time: number; stack: string; step: Step; duration: number; ok: boolean; detail?: string }
  /**
   * A VM of the node (its build VM, or its test VM) was stopped. `cpuSeconds`: CPU time QEMU used (user +
   * system, from /proc/PID/stat, sampled just before the power-off), absent where the kernel does not say.
   */
  | { type: "vm-usage"; time: number; stack: string; pid: number; cpuSeconds?: number; wallSeconds: number }
  /** A line of output; `test` names the layer test that printed it (else the node's own steps did). */
  | { type: "output"; time: number; stack: string; stream: "stdout" | "stderr"; line: string; test?: string }
  /** A layer test (a child of its node) starts: `test` is "guest/NAME" (runs in the VM) or "host/NAME". */
  | { type: "test-start"; time: number; stack: string; test: string }
  | {
      type: "test-done";
      time: number;
      stack: string;
      test: string;
      ok: boolean;
      duration: number;
      /** null: killed (timeout, or the VM went away). */
      exitCode: number | null;
      tap?: TapCounts;
      /** Why it failed, in plain words. */
      message?: string;
      /** Failed tests: the last lines of their output. */
      output?: string[];
    }
  | {
      type: "node-done";
      time: number;
      stack: string;
      duration: number;
      image: string;
      deliverable?: string;
      next?: string;
      pulled?: boolean;
      /** The image for these inputs was still in the store: the view was pointed back at it. */
      restored?: boolean;
      /** This node's package-cache traffic, when it made any. */
      proxy?: ProxyCounters;
      /** The image was not rebuilt: only its tests ran (they had not passed on it, or `dbuild test`). */
      testsOnly?: boolean;
    }
  | {
      type: "node-failed";
      time: number;
      stack: string;
      step: Step;
      duration: number;
      message: string;
      exitCode?: number | null;
      logTail: string[];
      logPath: string;
      keptDisk?: string;
      /** Tests failed: the image is in the store (not shown by the view); this command opens a shell on it. */
      shell?: string;
    }
  | { type: "node-skipped"; time: number; stack: string; reason: string }
  /** Something went wrong that does not fail the build (e.g. a remote-cache push). */
  | { type: "warning"; time: number; stack?: string; message: string }
  | {
      type: "build-done";
      time: number;
      ok: boolean;
      built: string[];
      failed: string[];
      skipped: string[];
      duration: number;
      interrupted: boolean;
      /** The build's package-cache totals, when the cache ran. */
      proxy?: ProxyCounters & { cacheDir: string };
    };

export interface Reporter {
  event(e: BuildEvent): void;
  /** Flush and release the terminal. */
  close(): void;
}

/** Fan one event stream out to several reporters (e.g. tty + junit). */
export class MultiReporter implements Reporter {
  constructor(private readonly reporters: Reporter[]) {}
  event(e: BuildEvent): void {
    for (const r of this.reporters) r.event(e);
  }
  close(): void {
    for (const r of this.reporters) r.close();
  }
}
