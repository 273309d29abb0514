/**
 * Fingerprints. A node's key is the sha256 of ONE canonical JSON (keys sorted) of its InputManifest:
 *
 *   format    FORMAT_VERSION: bump when the meaning of keys changes, so old images are never reused wrongly
 *   kind      the layer's kind
 *   layer     the layer's name: renaming a layer makes a different stack (a different build/STACK.qcow2),
 *             so it counts even when the files are identical
 *   parent    the parent node's key ("" for a base): a change anywhere below propagates to every descendant
 *   file:P    sha256 of the contents, plus ":x" if any exec bit is set (the copy keeps exec bits)
 *   link:P    a symlink's target text
 *   dir:P     a directory (an added empty directory is copied into the guest too)
 *   setting:K finalizing nodes only: the targets/ file's values over the MEM/CPUS/NAME defaults
 *   project:K demobuild.yaml values that change images (none today: jobs, timeouts, network and buildVm
 *             change how, not what; default MEM/CPUS reach finalizing nodes as setting:MEM/CPUS)
 *
 * Files that count, relative to the layer dir:
 *   intermediate/finalizing: `target/` as `rsync -rL` copies it (symlinks followed; each symlink also
 *     recorded as link:P so a retarget to identical content still counts), plus `install`, `layer.yaml`,
 *     `convert` if present (symlinks there are recorded by their target text only: the addlayer.sh
 *     symlink does not make every layer depend on the content of utils/).
 *   base: every file of the layer dir, symlinks by target text, never followed.
 * Timestamps never count. targets/ values also reach intermediate installs as environment, but only
 * finalizing nodes are keyed by them: one intermediate node is shared by many targets.
 */
import { createHash } from "node:crypto";
import { constants as fsc, lstatSync, readdirSync, readlinkSync, realpathSync, statSync } from "node:fs";
import type { Stats } from "node:fs";
import * as path from "node:path";
import type { Layer, LayerKind } from "../project/types.js";
import { isEditorNoise } from "../util/editor-noise.js";
import { DbuildError } from "../util/errors.js";
import type { Problem } from "../util/errors.js";
import { SMALL_FILE } from "./statcache.js";
import type { StatCache } from "./statcache.js";
import type { InputManifest, NodeKey } from "./types.js";

export const FORMAT_VERSION = "1";
/** Large files streamed at once on a cold cache: enough to keep libuv's threads and the disk busy. */
const HASH_CONCURRENCY = 16;

const EXEC = fsc.S_IXUSR | fsc.S_IXGRP | fsc.S_IXOTH;

interface PendingFile {
  abs: string;
  /** Manifest name: "file:<relpath>". */
  name: string;
  st: Stats;
}

interface Walk {
  layer: Layer;
  manifest: InputManifest;
  files: PendingFile[];
  problems: Problem[];
}

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Walk as `rsync -rL` copies: symlinks followed, a symlink back to an ancestor is a loop. */
function walkFollow(w: Walk, abs: string, rel: string, ancestors: Set<string>, real: string): void {
  let ents;
  try {
    ents = readdirSync(abs, { withFileTypes: true });
  } catch (e) {
    w.problems.push({ reason: "unreadable", where: relWhere(w.layer, rel), message: `cannot read directory: ${(e as Error).message}` });
    return;
  }
  for (const e of ents) {
    if (isEditorNoise(e.name)) continue; // rsync excludes them too (vm/rsync.ts)
    const a = `${abs}/${e.name}`;
    const r = `${rel}/${e.name}`;
    if (e.isSymbolicLink()) {
      w.manifest[`link:${r}`] = readlinkSync(a);
      let st: Stats;
      try {
        st = statSync(a);
      } catch (err) {
        const code = errCode(err);
        w.problems.push(
          code === "ELOOP"
            ? { reason: "symlink-loop", where: relWhere(w.layer, r), message: "symlink loop", hint: "fix or remove the symlink: rsync -L cannot copy it" }
            : { reason: "dangling-symlink", where: relWhere(w.layer, r), message: `symlink to ${JSON.stringify(w.manifest[`link:${r}`])} points nowhere`, hint: "fix or remove the symlink: rsync -L cannot copy it" },
        );
        continue;
      }
      if (st.isDirectory()) {
        const target = realpathSync(a);
        if (ancestors.has(target)) {
          w.problems.push({ reason: "symlink-loop", where: relWhere(w.layer, r), message: `symlink to ${JSON.stringify(w.manifest[`link:${r}`])} loops back to a directory that contains it`, hint: "point it elsewhere or remove it: rsync -L would copy forever" });
          continue;
        }
        w.manifest[`dir:${r}`] = "dir";
        ancestors.add(target);
        walkFollow(w, a, r, ancestors, target);
        ancestors.delete(target);
      } else if (st.isFile()) {
        w.files.push({ abs: a, name: `file:${r}`, st });
      }
      // rsync -r without -D skips sockets, fifos and devices: so do we.
    } else if (e.isDirectory()) {
      const sub = `${real}/${e.name}`;
      w.manifest[`dir:${r}`] = "dir";
      ancestors.add(sub);
      walkFollow(w, a, r, ancestors, sub);
      ancestors.delete(sub);
    } else if (e.isFile()) {
      w.files.push({ abs: a, name: `file:${r}`, st: statSync(a) });
    }
  }
}

/** Walk without following symlinks (base layers: the directory is the input, as is). */
function walkPlain(w: Walk, abs: string, rel: string): void {
  let ents;
  try {
    ents = readdirSync(abs, { withFileTypes: true });
  } catch (e) {
    w.problems.push({ reason: "unreadable", where: relWhere(w.layer, rel), message: `cannot read directory: ${(e as Error).message}` });
    return;
  }
  for (const e of ents) {
    if (isEditorNoise(e.name)) continue;
    const a = `${abs}/${e.name}`;
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isSymbolicLink()) w.manifest[`link:${r}`] = readlinkSync(a);
    else if (e.isDirectory()) {
      w.manifest[`dir:${r}`] = "dir";
      walkPlain(w, a, r);
    } else if (e.isFile()) w.files.push({ abs: a, name: `file:${r}`, st: statSync(a) });
  }
}

function relWhere(layer: Layer, rel: string): string {
  return rel ? `layers/${layer.name}/${rel}` : `layers/${layer.name}`;
}

function walkLayer(layer: Layer): Walk {
  const w: Walk = { layer, manifest: {}, files: [], problems: [] };
  if (layer.kind === "base") {
    walkPlain(w, layer.dir, "");
    return w;
  }
  for (const extra of ["install", "layer.yaml", "convert"]) {
    const a = path.join(layer.dir, extra);
    let st: Stats;
    try {
      st = lstatSync(a);
    } catch {
      continue;
    }
    if (st.isSymbolicLink()) w.manifest[`link:${extra}`] = readlinkSync(a);
    else if (st.isFile()) w.files.push({ abs: a, name: `file:${extra}`, st });
  }
  const target = path.join(layer.dir, "target");
  let tst: Stats | undefined;
  try {
    tst = statSync(target);
  } catch {
    tst = undefined;
  }
  if (tst?.isDirectory()) {
    const real = realpathSync(target);
    walkFollow(w, target, "target", new Set([real]), real);
  }
  return w;
}

/** Files hashed synchronously between two yields to the event loop (so aborts and signals get through). */
const SYNC_BATCH = 64;

const yieldToLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

export interface LayerFiles {
  /** "file:", "link:", "dir:" entries of the layer. */
  manifest: InputManifest;
  /** sha256 of the canonical JSON of `manifest`: how the files enter every node key of this layer. */
  digest: string;
}

/**
 * The file part of the manifest of each given layer, hashing only what the stat cache cannot vouch
 * for. Throws one DbuildError for every unreadable file, dangling symlink or symlink loop found.
 */
export async function layerManifests(
  layers: Iterable<Layer>,
  cache: StatCache,
  signal?: AbortSignal,
): Promise<Map<string, LayerFiles>> {
  const walks = [...layers].map(walkLayer);
  const problems = walks.flatMap((w) => w.problems);
  if (problems.length) throw new DbuildError(problems);
  const small: { w: Walk; f: PendingFile }[] = [];
  const large: { w: Walk; f: PendingFile }[] = [];
  const put = (w: Walk, f: PendingFile, digest: string): void => {
    w.manifest[f.name] = (f.st.mode & EXEC) !== 0 ? `${digest}:x` : digest;
  };
  const unreadable = (w: Walk, f: PendingFile, e: unknown): void => {
    problems.push({ reason: "unreadable", where: relWhere(w.layer, f.name.slice(5)), message: `cannot read: ${(e as Error).message}` });
  };
  for (const w of walks) {
    for (const f of w.files) {
      const hit = cache.lookup(f.abs, f.st);
      if (hit !== undefined) put(w, f, hit);
      else (f.st.size <= SMALL_FILE ? small : large).push({ w, f });
    }
  }
  const bigJobs = pool(
    large,
    HASH_CONCURRENCY,
    async ({ w, f }) => {
      try {
        put(w, f, await cache.hash(f.abs, f.st));
      } catch (e) {
        unreadable(w, f, e);
      }
    },
    signal,
  );
  for (let i = 0; i < small.length; i++) {
    if (i % SYNC_BATCH === SYNC_BATCH - 1) {
      await yieldToLoop();
      signal?.throwIfAborted();
    }
    const { w, f } = small[i]!;
    try {
      put(w, f, cache.hashSync(f.abs, f.st));
    } catch (e) {
      unreadable(w, f, e);
    }
  }
  await bigJobs;
  if (problems.length) throw new DbuildError(problems);
  return new Map(walks.map((w) => [w.layer.name, { manifest: w.manifest, digest: sha256(canonicalJson(w.manifest)) }]));
}

async function pool<T>(items: readonly T[], n: number, fn: (item: T) => Promise<void>, signal?: AbortSignal): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      signal?.throwIfAborted();
      const item = items[next++]!;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, worker));
}

const sha256 = (s: string): string => createHash("sha256").update(s).digest("hex");

export interface NodeInputArgs {
  kind: LayerKind;
  layer: string;
  parentKey: NodeKey | null;
  files: InputManifest;
  settings: Record<string, string>;
  project?: Record<string, string>;
}

/** The manifest entries of a node other than its files. */
export function nodeScalars(a: Omit<NodeInputArgs, "files">): InputManifest {
  const m: InputManifest = { format: FORMAT_VERSION, kind: a.kind, layer: a.layer, parent: a.parentKey ?? "" };
  for (const [k, v] of Object.entries(a.settings)) m[`setting:${k}`] = v;
  for (const [k, v] of Object.entries(a.project ?? {})) m[`project:${k}`] = v;
  return m;
}

export function nodeInputs(a: NodeInputArgs): InputManifest {
  return { ...nodeScalars(a), ...a.files };
}

/** Canonical JSON: keys in code-unit order, so the same manifest always gives the same bytes. */
export function canonicalJson(m: InputManifest): string {
  const keys = Object.keys(m).sort();
  const o: Record<string, string> = {};
  for (const k of keys) o[k] = m[k]!;
  return JSON.stringify(o);
}

const isFileEntry = (k: string): boolean => k.startsWith("file:") || k.startsWith("link:") || k.startsWith("dir:");

/**
 * The node key: sha256 of one canonical JSON of the manifest, where the file entries ("file:",
 * "link:", "dir:") enter as the sha256 of their own canonical JSON under the name "files". Hundreds of
 * nodes share a layer, so its files are serialised once per layer, not once per node; the key still
 * depends on every file entry and on nothing else.
 */
export function nodeKey(m: InputManifest): NodeKey {
  const files: InputManifest = {};
  const rest: InputManifest = {};
  for (const [k, v] of Object.entries(m)) (isFileEntry(k) ? files : rest)[k] = v;
  return nodeKeyFrom(rest, sha256(canonicalJson(files)));
}

/** nodeKey for a manifest given as its non-file entries plus the digest of its file entries. */
export function nodeKeyFrom(nonFile: InputManifest, filesDigest: string): NodeKey {
  return sha256(canonicalJson({ ...nonFile, files: filesDigest })) as NodeKey;
}
