/**
 * dbuild's artifact format in an OCI registry: one node image (its qcow2 delta over the parent) is one
 * blob, described by an OCI image manifest tagged with the node key, annotated with the stack, layer,
 * parent key and parent digest; a finalizing node's deliverable is a second layer. Built on the
 * distribution client (oci.ts); the cache sync (sync.ts) uses it.
 */
import type { NodeKey } from "../model/plan.js";
import { DbuildError } from "../util/errors.js";
import { checkDigest, OCI_EMPTY, OCI_EMPTY_DIGEST, OCI_MANIFEST, SHA256_DIGEST, type Descriptor, type ImageManifest, type OciClient, type TransferOptions } from "./oci.js";

export const DBUILD_ARTIFACT_TYPE = "application/vnd.dbuild.layer.v1";
export const DBUILD_QCOW2 = "application/vnd.dbuild.layer.v1.qcow2";
/** A finalizing node's deliverable (the output of its `convert`), as a second layer next to the qcow2. */
export const DBUILD_DELIVERABLE = "application/vnd.dbuild.deliverable.v1";

export const ANNOTATION = {
  title: "org.opencontainers.image.title",
  created: "org.opencontainers.image.created",
  stack: "dev.dbuild.stack",
  layer: "dev.dbuild.layer",
  parentKey: "dev.dbuild.parent-key",
  parentDigest: "dev.dbuild.parent-digest",
  key: "dev.dbuild.key",
  /** Seconds the node took to build where it was built (for plan estimates on the puller). */
  duration: "dev.dbuild.duration",
  /** File extension of a deliverable layer (`qcow2`, `box`, `ova`, ...). */
  extension: "dev.dbuild.extension",
} as const;

const NODE_KEY = /^[0-9a-f]{64}$/;

export interface NodeArtifact {
  key: string;
  stack: string;
  layer: string;
  parentKey: string | null;
  /**
   * sha256 (`sha256:HEX`) of the parent image the delta was built over. VM builds are not reproducible:
   * two runners can publish different images for the same parent key, and a delta only fits the exact
   * bytes it was written over, so a puller checks this against the parent it has.
   */
  parentDigest?: string;
  /** Build duration in seconds, recorded as an annotation. */
  duration?: number;
}

export interface PushNodeInput extends NodeArtifact {
  /** The node's qcow2 delta file. */
  file: string;
  /** Its sha256 (`sha256:HEX`) if known. */
  digest?: string;
  /** Finalizing nodes: the deliverable file and its extension, pushed as a second layer. */
  deliverable?: { file: string; ext: string; digest?: string };
}

export interface PushedNode {
  /** The image blob's digest and size (the registry's, when `existed`). */
  digest: string;
  size: number;
  /** True when bytes were sent; false when the blob or the whole node was there already. */
  uploaded: boolean;
  /** True when the registry had an artifact for this key already and nothing was pushed. */
  existed: boolean;
  manifestDigest: string;
}

export interface PulledNode {
  key: NodeKey;
  stack: string;
  layer: string;
  parentKey: NodeKey | null;
  /** sha256 of the parent image the delta was built over, when the pusher recorded it. */
  parentDigest: string | null;
  /** The image blob's digest and size. */
  digest: string;
  size: number;
  /** All manifest annotations, for display. */
  annotations: Record<string, string>;
  /** Build duration in seconds where it was built, when annotated. */
  duration: number | null;
  /** The deliverable layer of a finalizing node, when it was pushed with one. */
  deliverable: { digest: string; size: number; ext: string } | null;
}

/** True when the registry holds an artifact for the node key ("remote hit"). */
export function hasNode(client: OciClient, key: string, opts: { signal?: AbortSignal } = {}): Promise<boolean> {
  checkNodeKey(key);
  return client.hasManifest(key, opts);
}

/**
 * Pushes a node's qcow2 delta as an artifact tagged with its key. If the registry has the key already,
 * nothing is pushed (`existed`): VM builds are not reproducible, and replacing an image would silently
 * break the children other runners pushed over it. `overwrite` replaces it anyway.
 */
export async function pushNodeImage(client: OciClient, node: PushNodeInput, opts: TransferOptions & { overwrite?: boolean } = {}): Promise<PushedNode> {
  checkNodeKey(node.key);
  if (node.parentKey !== null) checkNodeKey(node.parentKey);
  if (node.parentDigest !== undefined) checkDigest(node.parentDigest);
  if (!opts.overwrite) {
    const existing = await client.getManifest(node.key, opts);
    if (existing) {
      const info = readNodeManifest(client.ref.url, node.key, existing.manifest);
      return { digest: info.digest, size: info.size, uploaded: false, existed: true, manifestDigest: existing.digest };
    }
  }
  // A new key's image is new content, so hash it while sending rather than in a pass of its own.
  const blob = await client.pushBlobFromFile(node.file, { ...opts, ...(node.digest ? { digest: node.digest } : { checkExists: false }) });
  let deliv: { digest: string; size: number; ext: string } | undefined;
  if (node.deliverable) {
    const d = node.deliverable;
    const r = await client.pushBlobFromFile(d.file, { ...opts, ...(d.digest ? { digest: d.digest } : { checkExists: false }) });
    deliv = { digest: r.digest, size: r.size, ext: d.ext };
  }
  await client.pushBlobBytes(Buffer.from("{}"), { ...(opts.signal ? { signal: opts.signal } : {}) });
  // The manifest goes last: a tag only ever names an artifact whose blobs are all in the registry.
  const manifest = nodeManifest(node, blob, deliv);
  const manifestDigest = await client.putManifest(node.key, manifest, opts);
  return { digest: blob.digest, size: blob.size, uploaded: blob.uploaded, existed: false, manifestDigest };
}

/**
 * Pulls the node image tagged `key` into `destFile` (verified; written atomically). Undefined when the
 * registry has no artifact for the key. The backing file is still the one recorded at push time: the
 * caller re-links it locally.
 */
export async function pullNodeImage(client: OciClient, key: string, destFile: string, opts: TransferOptions = {}): Promise<PulledNode | undefined> {
  checkNodeKey(key);
  const found = await client.getManifest(key, opts);
  if (!found) return undefined;
  const info = readNodeManifest(client.ref.url, key, found.manifest);
  await client.pullBlobToFile(info.digest, destFile, { ...opts, size: info.size });
  return info;
}

/** Pulls the deliverable layer of a node read by pullNodeImage into `destFile` (verified; atomic). */
export async function pullDeliverable(client: OciClient, info: PulledNode, destFile: string, opts: TransferOptions = {}): Promise<void> {
  if (!info.deliverable) throw new Error(`node ${info.key} has no deliverable layer`);
  await client.pullBlobToFile(info.deliverable.digest, destFile, { ...opts, size: info.deliverable.size });
}

function checkNodeKey(key: string): void {
  if (!NODE_KEY.test(key)) throw new Error(`not a node key (64 hex digits): ${key}`);
}

function imageTitle(stack: string): string {
  return `${stack.replace(/[^A-Za-z0-9._-]+/g, "-")}.qcow2`;
}

/** The OCI manifest that describes one node image. */
export function nodeManifest(
  node: NodeArtifact,
  blob: { digest: string; size: number },
  deliverable?: { digest: string; size: number; ext: string },
): ImageManifest {
  const annotations: Record<string, string> = {
    [ANNOTATION.title]: imageTitle(node.stack),
    [ANNOTATION.stack]: node.stack,
    [ANNOTATION.layer]: node.layer,
    [ANNOTATION.key]: node.key,
  };
  if (node.parentKey !== null) annotations[ANNOTATION.parentKey] = node.parentKey;
  if (node.parentDigest !== undefined) annotations[ANNOTATION.parentDigest] = node.parentDigest;
  if (node.duration !== undefined) annotations[ANNOTATION.duration] = String(Math.round(node.duration * 1000) / 1000);
  const layers: Descriptor[] = [
    {
      mediaType: DBUILD_QCOW2,
      digest: blob.digest,
      size: blob.size,
      annotations: { [ANNOTATION.title]: imageTitle(node.stack) },
    },
  ];
  if (deliverable) {
    layers.push({
      mediaType: DBUILD_DELIVERABLE,
      digest: deliverable.digest,
      size: deliverable.size,
      annotations: { [ANNOTATION.title]: `${imageTitle(node.stack).replace(/\.qcow2$/, "")}.${deliverable.ext}`, [ANNOTATION.extension]: deliverable.ext },
    });
  }
  return {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType: DBUILD_ARTIFACT_TYPE,
    config: { mediaType: OCI_EMPTY, digest: OCI_EMPTY_DIGEST, size: 2, data: "e30=" },
    layers,
    annotations,
  };
}

/** Reads the node description back from a manifest, refusing one that does not describe `key`. */
export function readNodeManifest(where: string, key: string, manifest: ImageManifest): PulledNode {
  const a = manifest.annotations ?? {};
  const layer = manifest.layers.find((l) => l.mediaType === DBUILD_QCOW2);
  const bad = (what: string): DbuildError =>
    new DbuildError(
      { reason: "cache-artifact-invalid", where: `${where}:${key}`, message: what, hint: "the tag was not written by dbuild push; delete it or use another repository" },
      1,
    );
  if (!layer || !SHA256_DIGEST.test(layer.digest) || !Number.isSafeInteger(layer.size) || layer.size < 0) {
    throw bad("the artifact has no usable qcow2 layer");
  }
  if (a[ANNOTATION.key] !== key) throw bad(`the artifact is labelled with key ${a[ANNOTATION.key] ?? "(none)"}`);
  const stack = a[ANNOTATION.stack];
  const layerName = a[ANNOTATION.layer];
  if (!stack || !layerName) throw bad("the artifact lacks its stack or layer annotation");
  const parent = a[ANNOTATION.parentKey];
  if (parent !== undefined && !NODE_KEY.test(parent)) throw bad(`the parent key annotation is not a key: ${parent}`);
  const parentDigest = a[ANNOTATION.parentDigest];
  if (parentDigest !== undefined && !SHA256_DIGEST.test(parentDigest)) throw bad(`the parent digest annotation is not a sha256 digest: ${parentDigest}`);
  const dur = a[ANNOTATION.duration] !== undefined ? Number(a[ANNOTATION.duration]) : NaN;
  const dl = manifest.layers.find((l) => l.mediaType === DBUILD_DELIVERABLE);
  const ext = dl?.annotations?.[ANNOTATION.extension];
  if (dl && (!SHA256_DIGEST.test(dl.digest) || !Number.isSafeInteger(dl.size) || dl.size < 0 || !ext || !/^[A-Za-z0-9._-]+$/.test(ext))) {
    throw bad("the deliverable layer is malformed");
  }
  return {
    key: key as NodeKey,
    stack,
    layer: layerName,
    parentKey: (parent ?? null) as NodeKey | null,
    parentDigest: parentDigest ?? null,
    digest: layer.digest,
    size: layer.size,
    annotations: { ...a },
    duration: Number.isFinite(dur) && dur >= 0 ? dur : null,
    deliverable: dl && ext ? { digest: dl.digest, size: dl.size, ext } : null,
  };
}

