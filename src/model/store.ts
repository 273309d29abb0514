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
}
