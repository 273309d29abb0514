/**
 * The plan's data: a DAG of image nodes, one per stack prefix, each with a content fingerprint and a
 * staleness verdict. Types only, in `model/` because plan, store, cache, exec and report all read them;
 * `plan/` computes them and never starts a process.
 */
import type { LayerKind } from "../project/types.js";

/** A sha256 hex digest of a node's canonical input description. Branded so a file digest cannot stand in. */
export type NodeKey = string & { readonly __brand: "NodeKey" };
/** A sha256 hex digest of one file's contents. */
export type FileDigest = string & { readonly __brand: "FileDigest" };

/**
 * Flat description of what a node was built from, for `dbuild why`: input name -> digest or value.
 * Names: "format", "kind", "layer", "parent", "file:<relpath>" (sha256 + ":x" when executable),
 * "link:<relpath>" (symlink target), "setting:<KEY>", "project:<key>".
 */
export type InputManifest = Record<string, string>;

/**
 * fresh: build/STACK.qcow2 shows the image for these inputs. cached: an image for these inputs exists
 * in the local store or the remote cache, so the build re-links or pulls it and boots no VM. stale: a VM
 * (or the host install of a base) will run.
 */
export type NodeStatus = "fresh" | "cached" | "stale";
/** Where a cached node's image comes from. */
export type CacheSource = "store" | "remote";

/** Nodes a build has work for: everything not fresh (cached ones are re-linked or pulled). */
export const hasWork = (n: { status: NodeStatus }): boolean => n.status !== "fresh";

export interface PlanNode {
  /** The stack prefix this node builds, e.g. `micro:web`. Unique id of the node. */
  stack: string;
  /** Last element of `stack`. */
  layer: string;
  kind: LayerKind;
  /** Parent stack prefix, or null for a base. */
  parent: string | null;
  key: NodeKey;
  inputs: InputManifest;
  status: NodeStatus;
  /** Cached nodes: the local store (re-link) or the remote cache (pull). */
  source?: CacheSource;
  /** `dbuild build --force`: rebuilt by a VM whatever the store or a cache holds (it or an ancestor was named). */
  forced?: boolean;
  /** Cached nodes from the remote cache: bytes to pull (image plus deliverable). */
  pullBytes?: number;
  /** Plain-words reasons when not fresh, e.g. "no image yet", "target/install changed". */
  reasons: string[];
  /** User-facing image path: build/STACK.qcow2 (for finalizing nodes too: their qcow2 before conversion). */
  image: string;
  /** Settings from the targets/ file (finalizing nodes: merged with project defaults). */
  settings: Record<string, string>;
  /** Stacks of the targets this node belongs to. */
  targets: string[];
  /** What a build of this node would do, in plain words (for `plan`). */
  steps: string[];
  /** Seconds the last build of this stack took, when the store knows (stale nodes only: a cached node's cost is its transfer). */
  lastDuration?: number;
  /** Nodes not fresh nor cached in the store, when a remote cache was asked: does it hold an image for this key? */
  remote?: "hit" | "miss";
  /** The layer's tests (layers/NAME/test/), when it has any. */
  tests?: PlanTests;
}

export interface PlanTests {
  /** Relative to the layer's test/ dir, in the order they run: "guest/..." in the VM, "host/..." on the host. */
  names: string[];
  /** Guest ports forwarded for host tests. */
  ports: number[];
  /** sha256 of the test files (contents, exec bits) and test: settings: with the node key, what a result is cached by. */
  digest: string;
  /** A pass of these tests on this node's image is recorded (so they do not run again). */
  passed: boolean;
  /** A build of this plan runs them (not passed, or forced by `dbuild test`; never with --no-test). */
  run: boolean;
}

export interface Plan {
  /** Nodes in topological order (parents before children). */
  nodes: PlanNode[];
  /** Requested target stacks. */
  targets: string[];
  /** Files seen / hashed while fingerprinting (hashed < files means the stat cache worked). */
  hashStats?: { files: number; hashed: number; bytesHashed: number };
}
