/**
 * What the store records per image, and the read-only view of the store the planner needs to decide
 * freshness. Types only; the implementation lives in store/ (plan/ reads the store through this view).
 * Published images never change; `build/STACK.qcow2` is the user's view of the current image.
 */
import type { InputManifest, NodeKey } from "./plan.js";

export interface NodeRecord {
  key: NodeKey;
  stack: string;
  layer: string;
  parentKey: NodeKey | null;
  inputs: InputManifest;
  /** Object file name relative to the objects dir. */
  object: string;
  /** Seconds the build took. */
  duration: number;
  builtAt: string;
  /** Finalizing nodes: the deliverable (path relative to the build dir, object file name). */
  deliverable?: { path: string; object: string };
  /**
   * sha256 (`sha256:HEX`) of the image as published: of the object file for a local build, of the registry
   * blob for a pulled one. A child's delta only fits these exact bytes, so the remote cache compares it
   * with the parent digest a child artifact was pushed over. Absent in records written before it existed.
   */
  digest?: string;
  /** Pulled images: the cache it came from, and whether re-linking the backing file changed header bytes. */
  pulled?: { from: string; relinked: boolean };
  /**
   * Set while the image is in the store but held back from its view because its tests failed (kept for
   * debugging). A later build reuses the image and only reruns the tests; the view switches once they pass.
   */
  held?: string;
}

/** The outcome of one layer test, as recorded and reported. */
export interface TestResult {
  /** "guest/NAME" or "host/NAME". */
  name: string;
  ok: boolean;
  /** Seconds. */
  duration: number;
  /** Exit status; null when killed (timeout, signal). */
  exitCode: number | null;
  /** TAP counts, when the test printed TAP. */
  tap?: { count: number; pass: number; fail: number; skip: number; todo: number };
  /** Why it failed, in plain words (exit code, failing TAP points, plan mismatch, timeout). */
  message?: string;
}

/**
 * A recorded pass of a node's tests: `.dbuild/tests/<key>-<test digest>.json`. It holds for one image:
 * the object it was run on (a rebuild of the same key, e.g. --force, is a new object, tested again).
 */
export interface TestRecord {
  key: NodeKey;
  stack: string;
  object: string;
  digest: string;
  passedAt: string;
  results: TestResult[];
  /** The image came from a remote cache and was not tested here. */
  trustedFromCache?: string;
}

export interface StoreView {
  /** Absolute path of build/STACK.qcow2. */
  viewPath(stack: string): string;
  /** Record of the image built from `key`, if the store holds one. */
  record(key: NodeKey): Promise<NodeRecord | undefined>;
  /** Record of the image the view build/STACK.qcow2 currently shows, if any (for `why` and reasons). */
  currentRecord(stack: string): Promise<NodeRecord | undefined>;
  /** True if build/STACK.qcow2 exists and shows the object built from `key`. */
  viewShows(stack: string, key: NodeKey): Promise<boolean>;
  /** Last build duration in seconds for the stack, if known (for estimates). */
  lastDuration(stack: string): Promise<number | undefined>;
  /**
   * sha256 of a stored image as published (what a remote artifact's parent digest must equal for it to
   * fit over this image). Absent in views that cannot read images: then no remote hit counts as cached.
   */
  objectDigest?(rec: NodeRecord): Promise<string>;
  /** True if a pass of the tests with this digest is recorded for the image the store holds for `key`. */
  testsPassed?(key: NodeKey, digest: string): Promise<boolean>;
  /**
   * Run a plan against the store as it is when the plan starts (the store may list its directories once
   * rather than ask for every node's files one by one).
   */
  planning?<T>(fn: () => Promise<T>): Promise<T>;
}
