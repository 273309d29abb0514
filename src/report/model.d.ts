/**
 * The data of the HTML report (build/report.html). Shared by the writer (Node) and the viewer script
 * that runs in the browser (src/report/viewer/), which is why this is a declaration file: the viewer
 * is a plain browser script and can only refer to types, and the writer only needs the types too.
 * Times are epoch milliseconds unless a name says otherwise.
 */

/**
 * A node's status in the report. fresh: the image matches the inputs; cached: stale here but an image
 * for these inputs is in the store or a remote cache; stale: would be built; failed: the last build of
 * these very inputs failed; building: started by the build in progress and not finished yet.
 */
export type ReportStatus = "fresh" | "cached" | "stale" | "failed" | "building";

/** What the last build did with a node. */
export type NodeOutcome = "built" | "pulled" | "restored" | "failed" | "skipped" | "interrupted" | "building";

export interface TraceStep {
  /** A build step (cow, boot, rsync, install, ...); layer tests are steps too. */
  step: string;
  start: number;
  /** Unset while the step runs. */
  end?: number;
  ok?: boolean;
  detail?: string;
}

export interface NodeFailure {
  step: string;
  message: string;
  exitCode?: number | null;
  logTail: string[];
  logPath: string;
  keptDisk?: string;
}

/** One node of a recorded build. */
export interface TraceNode {
  stack: string;
  layer?: string;
  kind?: string;
  /** The node's key when it was built (a failure applies to these inputs only). */
  key?: string;
  start?: number;
  end?: number;
  outcome: NodeOutcome;
  steps: TraceStep[];
  /** CPU seconds the node's VMs used (build VM and test VM; QEMU user + system time). */
  cpuSeconds?: number;
  /** Seconds the node's VMs ran. */
  vmSeconds?: number;
  failure?: NodeFailure;
  skipReason?: string;
}

/** A build as recorded from its events: build/.dbuild/last-build.json, the report's timeline, --trace. */
export interface BuildTrace {
  version: 1;
  start: number;
  end?: number;
  jobs: number;
  /** Stacks stale / fresh when the build started. */
  stale: string[];
  fresh: string[];
  ok?: boolean;
  interrupted?: boolean;
  /** In the order they first appeared. */
  nodes: TraceNode[];
  warnings: Array<{ time: number; stack?: string; message: string }>;
}

export interface ReportNode {
  stack: string;
  layer: string;
  kind: string;
  parent: string | null;
  key: string;
  status: ReportStatus;
  /** With status cached: where the image is. */
  cachedIn?: "store" | "remote";
  /** Why the node is stale (plain words). */
  reasons: string[];
  /** A stack named in targets/. */
  target: boolean;
  /** Bytes on disk of the image the node's view shows: `image` with its backing chain, `delta` its own file. */
  bytes?: { image: number; delta: number; deliverable?: number };
  /** Seconds the last build of this stack took. */
  lastDuration?: number;
  builtAt?: string;
  /** Build-dir-relative path of the deliverable (finalizing nodes). */
  deliverable?: string;
  /** Tails of the node's logs from its last build, and their build-dir-relative paths. */
  log?: { install?: string; installPath?: string; console?: string; consolePath?: string; truncated?: boolean };
  /** What the last recorded build did with this node. */
  outcome?: NodeOutcome;
  failure?: NodeFailure;
}

export interface TimelineRow {
  stack: string;
  outcome: NodeOutcome;
  /** Milliseconds since the build started. */
  start: number;
  end: number;
  steps: Array<{ step: string; start: number; end: number; ok?: boolean; detail?: string }>;
  /** On the chain of nodes that decided when the build ended. */
  critical: boolean;
  cpuSeconds?: number;
}

export interface ReportBuild {
  start: number;
  end?: number;
  /** Wall seconds (so far, while building). */
  wall: number;
  ok?: boolean;
  interrupted?: boolean;
  jobs: number;
  counts: { built: number; reused: number; restored: number; pulled: number; failed: number; skipped: number; interrupted: number; building: number };
  /** CPU seconds of every build VM together. */
  cpuSeconds: number;
  /** Bytes the build added to the store (new images and deliverables). */
  bytesAdded: number;
  rows: TimelineRow[];
  warnings: Array<{ time: number; stack?: string; message: string }>;
}

export interface ReportData {
  version: 1;
  generatedAt: number;
  /** Project directory name and build dir path (for titles). */
  project: string;
  buildDir: string;
  /** Written while a build was running (the page says so). */
  live: boolean;
  /** Parents before children. */
  nodes: ReportNode[];
  /** The last build that ran any node; absent when none was recorded. */
  build?: ReportBuild;
  store: { bytes: number; objects: number };
}
