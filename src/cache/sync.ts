/**
 * The remote cache between the store and an OCI registry: push a fresh node's image, pull a stale node's
 * image and make it fresh with no VM, ask which keys the registry holds.
 *
 * What a node artifact holds: the object file (the qcow2 delta over the parent, its backing file still
 * naming the pusher's parent object) and, for finalizing nodes, the deliverable as a second layer. The
 * deliverable is pushed rather than re-converted on pull: converters may be slow (ova, box), need tools
 * the puller lacks, and are not reproducible, and a CI consumer wants the deliverable itself.
 *
 * Why a pull checks the parent digest: VM builds are not reproducible, so two runners can publish
 * different images for the same parent key. A delta is only valid over the exact bytes it was written
 * over, so a child is pulled only over a local parent whose image digest is the one it was pushed over;
 * otherwise it is rebuilt.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { NodeKey, PlanNode } from "../model/plan.js";
import { qemuImg } from "../store/qemu-img.js";
import type { Store } from "../store/store.js";
import type { NodeRecord } from "../model/store.js";
import { DbuildError } from "../util/errors.js";
import { OciClient, type OciClientOptions } from "./oci.js";
import { hasNode, pullDeliverable, pullNodeImage, pushNodeImage, readNodeManifest, type PulledNode } from "./artifact.js";

export type PullOutcome =
  | { status: "pulled"; record: NodeRecord; bytes: number }
  /** The registry has no artifact for the key. */
  | { status: "miss" }
  /** The artifact does not fit the local parent (or lacks a part this node needs): build it instead. */
  | { status: "mismatch"; message: string };

export interface PushOutcome {
  /** False when the registry had the key already (first push of a key wins). */
  uploaded: boolean;
  existed: boolean;
  bytes: number;
}

export interface SyncOptions {
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

/** True for failures that mean the registry cannot be reached at all (stop asking it for the rest of a run). */
export function isUnreachable(e: unknown): boolean {
  return e instanceof DbuildError && e.problems.some((p) => p.reason === "registry-unreachable");
}

export class RemoteCache {
  readonly client: OciClient;

  constructor(
    readonly url: string,
    private readonly store: Store,
    opts: OciClientOptions = {},
  ) {
    this.client = new OciClient(url, opts);
  }

  /** Which of `keys` the registry holds. */
  status(keys: readonly NodeKey[], opts: { signal?: AbortSignal; concurrency?: number } = {}): Promise<Map<NodeKey, boolean>> {
    return remoteStatus(this.client, keys, opts);
  }

  /**
   * Makes `node` fresh from the registry: downloads its image (and deliverable) into the store's tmp dir,
   * checks it was pushed over the local parent's image, re-links its backing file to the local parent
   * object, publishes and commits a record with the node's inputs from the plan. Nothing is published
   * unless every part arrived verified. Registry failures (unreachable, corrupt blob) are thrown.
   */
  async pull(node: PlanNode, parent: NodeRecord | undefined, opts: SyncOptions = {}): Promise<PullOutcome> {
    if (node.parent !== null && !parent) return { status: "mismatch", message: `parent ${node.parent} has no local image` };
    const t0 = Date.now();
    const tmp = `${this.store.tmpPath(node.stack)}.qcow2`;
    const work = [tmp];
    const transfer = { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) };
    try {
      const info = await pullNodeImage(this.client, node.key, tmp, transfer);
      if (!info) return { status: "miss" };
      const wantParent = parent?.key ?? null;
      if (info.parentKey !== wantParent) {
        return { status: "mismatch", message: `the cached image was built over parent key ${info.parentKey ?? "(none)"}, not ${wantParent ?? "(none)"}` };
      }
      let relinked = false;
      const qi = JSON.parse(await qemuImg(["info", "--output=json", tmp], opts.signal)) as { format?: string; "backing-filename"?: string };
      if (qi.format !== "qcow2") throw this.bad(node, `the cached image is ${qi.format ?? "of an unknown format"}, not qcow2`);
      if (parent) {
        const want = await this.store.objectDigest(parent);
        if (info.parentDigest !== want) {
          return {
            status: "mismatch",
            message: info.parentDigest
              ? `the cached image was built over another image of ${node.parent} (${info.parentDigest.slice(0, 19)}…, local ${want.slice(0, 19)}…)`
              : "the cached image does not say which parent image it was built over",
          };
        }
        if (!qi["backing-filename"]) throw this.bad(node, "the cached image has no backing file but the node has a parent");
        relinked = qi["backing-filename"] !== this.store.backingRef(parent.object);
      } else if (qi["backing-filename"]) {
        throw this.bad(node, `the cached base image has a backing file (${qi["backing-filename"]})`);
      }
      let delivTmp: { file: string; ext: string } | undefined;
      if (node.kind === "finalizing") {
        if (!info.deliverable) return { status: "mismatch", message: "the cached artifact has no deliverable" };
        delivTmp = { file: this.store.tmpPath(`${node.stack}.${info.deliverable.ext}`), ext: info.deliverable.ext };
        work.push(delivTmp.file);
        await pullDeliverable(this.client, info, delivTmp.file, transfer);
      }
      // Everything arrived verified: publish. The image keeps the registry blob's digest as its identity
      // (see NodeRecord.digest), which is what children in the registry were pushed over.
      const object = await this.store.publishImage(tmp, node.key, parent?.object ?? null, info.digest);
      const rec: NodeRecord = {
        key: node.key,
        stack: node.stack,
        layer: node.layer,
        parentKey: wantParent,
        inputs: node.inputs,
        object,
        duration: info.duration ?? (Date.now() - t0) / 1000,
        builtAt: new Date().toISOString(),
        digest: info.digest,
        pulled: { from: this.client.ref.url, relinked },
      };
      if (delivTmp) {
        const dobj = await this.store.publishFile(delivTmp.file, node.key, delivTmp.ext);
        rec.deliverable = { path: path.relative(this.store.buildDir, this.store.deliverablePath(node.layer, node.stack, delivTmp.ext)), object: dobj };
      }
      await this.store.commit(rec);
      // A pushed image passed its tests where it was built (a push follows a passed test): not rerun here;
      // a later edit of the tests does run them (the pass is filed under these tests' digest).
      if (node.tests) {
        await this.store.recordTestPass({ key: node.key, stack: node.stack, object, digest: node.tests.digest, passedAt: rec.builtAt, results: [], trustedFromCache: this.client.ref.url });
      }
      return { status: "pulled", record: rec, bytes: info.size + (info.deliverable?.size ?? 0) };
    } finally {
      for (const f of work) await fs.rm(f, { force: true });
    }
  }

  /**
   * Pushes a fresh node's image (and deliverable). `parent` is the record of the parent it is backed by;
   * its image digest is annotated so pullers can check their parent is the same image.
   */
  async push(rec: NodeRecord, parent: NodeRecord | undefined, opts: SyncOptions = {}): Promise<PushOutcome> {
    if (rec.parentKey !== null && (!parent || parent.key !== rec.parentKey)) {
      throw new DbuildError({ reason: "cache-push", where: rec.stack, message: "its parent image is not in the local store", hint: "build the stack again, then push" }, 1);
    }
    const parentDigest = parent ? await this.store.objectDigest(parent) : undefined;
    // A pulled image whose header was re-linked no longer hashes to its identity digest: let the client
    // hash it while sending.
    const digest = rec.pulled?.relinked ? undefined : await this.store.objectDigest(rec);
    // The deliverable is `<layer>/<stack>.<ext>`; the extension may have dots of its own (tar.gz).
    const ext = rec.deliverable ? path.basename(rec.deliverable.path).slice(rec.stack.length + 1) : "";
    const r = await pushNodeImage(this.client, {
        key: rec.key,
        stack: rec.stack,
        layer: rec.layer,
        parentKey: rec.parentKey,
        ...(parentDigest ? { parentDigest } : {}),
        file: this.store.objectPath(rec.object),
        ...(digest ? { digest } : {}),
        duration: rec.duration,
        ...(rec.deliverable ? { deliverable: { file: this.store.objectPath(rec.deliverable.object), ext } } : {}),
      },
      { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.onProgress ? { onProgress: opts.onProgress } : {}) },
    );
    return { uploaded: r.uploaded, existed: r.existed, bytes: r.uploaded ? r.size : 0 };
  }

  private bad(node: PlanNode, message: string): DbuildError {
    return new DbuildError({ reason: "cache-artifact-invalid", where: `${this.client.ref.url}:${node.key.slice(0, 12)} (${node.stack})`, message, hint: "delete the tag in the registry; dbuild builds the node locally meanwhile" }, 1);
  }
}

/** Which of `keys` the registry holds: one HEAD per key, `concurrency` (default 8) at once. */
export async function remoteStatus(
  client: OciClient,
  keys: readonly NodeKey[],
  opts: { signal?: AbortSignal; concurrency?: number } = {},
): Promise<Map<NodeKey, boolean>> {
  const out = new Map<NodeKey, boolean>();
  const queue = [...new Set(keys)];
  const worker = async (): Promise<void> => {
    for (let k = queue.shift(); k !== undefined; k = queue.shift()) {
      out.set(k, await hasNode(client, k, opts.signal ? { signal: opts.signal } : {}));
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? 8, Math.max(1, queue.length)) }, worker));
  // In the order asked, whatever order the answers came in.
  return new Map([...new Set(keys)].map((k) => [k, out.get(k) ?? false]));
}

/**
 * What the registry holds for each of `keys`: the artifact's description (parent key and digest, sizes)
 * or undefined. One manifest read per key, no blob is fetched.
 */
export async function remoteArtifacts(
  client: OciClient,
  keys: readonly NodeKey[],
  opts: { signal?: AbortSignal; concurrency?: number } = {},
): Promise<Map<NodeKey, PulledNode | undefined>> {
  const out = new Map<NodeKey, PulledNode | undefined>();
  const queue = [...new Set(keys)];
  const worker = async (): Promise<void> => {
    for (let k = queue.shift(); k !== undefined; k = queue.shift()) {
      const found = await client.getManifest(k, opts.signal ? { signal: opts.signal } : {});
      out.set(k, found ? readNodeManifest(client.ref.url, k, found.manifest) : undefined);
    }
  };
  await Promise.all(Array.from({ length: Math.min(opts.concurrency ?? 8, Math.max(1, queue.length)) }, worker));
  return out;
}

/** The cache URLs in effect: command-line flags win over demobuild.yaml's `cache: {from, to}`. */
export function cacheUrls(flags: { cacheFrom?: string; cacheTo?: string }, settings: { from?: string; to?: string }): { from?: string; to?: string } {
  const from = flags.cacheFrom ?? settings.from;
  const to = flags.cacheTo ?? settings.to;
  return { ...(from ? { from } : {}), ...(to ? { to } : {}) };
}
