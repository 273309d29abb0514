/**
 * Fingerprints. A node's key is the sha256 of ONE canonical JSON (keys sorted) of its InputManifest:
 *
 *   format    FORMAT_VERSION: bump when the meaning of keys changes, so old images are never reused wrongly
 *   kind      the layer's kind
 *   layer     the layer's name: renaming a layer makes a different stack (a different build/STACK.qcow2),
 *             so it counts even when the files are identical
 *   parent    the parent node's key ("" for a base): a change anywhere below propagates to every descendant
 *   epoch     layer.yaml `epoch:` when set: bumping it gives every image of the layer (and, through
 *             `parent`, of every layer above it) a new key, so neither the store nor a remote cache
 *             can answer it with an old image
 *   file:P    sha256 of the contents, plus ":x" if any exec bit is set (the copy keeps exec bits)
 *   link:P    a symlink's target text (what it resolves to is keyed as file:P or below dir:P as well)
 *   dir:P     a directory (an added empty directory is copied into the guest too)
 *   input:R   a file matched by layer.yaml `inputs:` globs, R relative to the project root: sha256 of
 *             the contents (symlinks followed) plus ":x" if executable
 *   setting:K finalizing nodes only: the targets/ file's values over the MEM/CPUS/NAME defaults
 *   project:K demobuild.yaml values that change images (none today: jobs, timeouts, network and buildVm
 *             change how, not what; default MEM/CPUS reach finalizing nodes as setting:MEM/CPUS)
 *
 * Every file dbuild runs on the host or copies into a VM is keyed by its content, symlinks followed.
 * Files that count, relative to the layer dir:
 *   intermediate/finalizing: `target/` as `rsync -rL` copies it (symlinks followed; each symlink also
 *     recorded as link:P so a retarget to identical content still counts), `layer.yaml` and `convert`
 *     (the host script of a finalizing layer) followed the same way, and `install` by its symlink text
 *     only: on these layers it is Demobuilder's addlayer.sh marker, which dbuild never runs.
 *   base: every file of the layer dir but test/, symlinks followed (the host `install` and whatever it
 *     reads beside it), plus the files its `inputs:` globs match (any layer that runs a host script may
 *     declare them; a match outside the project is an error).
 * A layer's test/ is never an input of an image (a test edit must not rebuild what it tests): it is
 * walked apart by the same rules (testManifests) into the digest that test results are filed under.
 * Timestamps never count. targets/ values also reach intermediate installs as environment, but only
 * finalizing nodes are keyed by them: one intermediate node is shared by many targets.
 */
import { constants as fsc, lstatSync, readdirSync, readlinkSync, realpathSync, statSync } from "node:fs";
import type { Stats } from "node:fs";
import * as path from "node:path";
import type { Layer, LayerKind } from "../project/types.js";
import { sha256Hex } from "../util/digest.js";
import { isEditorNoise } from "../util/editor-noise.js";
import { DbuildError } from "../util/errors.js";
import type { Problem } from "../util/errors.js";
import { createRequire } from "node:module";
import { DIR, FILE, LINK, OTHER, SMALL_FILE } from "./statcache.js";
import type { DirEnt, DirRec, Ent, FileEnt, LayerRec, LinkEnt, StatCache } from "./statcache.js";
import type { InputManifest, NodeKey } from "../model/plan.js";

// fast-glob (CommonJS) is loaded on the first layer with `inputs:`: most plans have none, and it costs
// more to load than a warm plan of a small project takes.
const requireCjs = createRequire(import.meta.url);
let fg: typeof import("fast-glob") | undefined;
const fastGlob = (): typeof import("fast-glob") => (fg ??= requireCjs("fast-glob") as typeof import("fast-glob"));

/** 2: symlinked host scripts keyed by content, inputs: globs, epoch: (images keyed by 1 are not reused). */
export const FORMAT_VERSION = "2";
/** A layer's tests (layers/NAME/test/): never an input of its images, only of its test results. */
const TEST_DIR = "test";
/** Large files streamed at once on a cold cache: enough to keep libuv's threads and the disk busy. */
const HASH_CONCURRENCY = 16;

const EXEC = fsc.S_IXUSR | fsc.S_IXGRP | fsc.S_IXOTH;
/** The top of a non-base layer besides target/; whether symlinks there are followed (see above). */
const EXTRAS = [
  ["install", false],
  ["layer.yaml", true],
  ["convert", true],
] as const;

interface PendingFile {
  w: Walk;
  abs: string;
  ent: FileEnt;
  size: number;
}

/** One layer's walk against the record of its previous walk. */
interface Walk {
  layer: Layer;
  cache: StatCache;
  problems: Problem[];
  pending: PendingFile[];
  /** Every listing, file stat, symlink target and entry kind matched the previous walk. */
  hit: boolean;
}

function errCode(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/**
 * Can this stat be trusted on a later run, once the stamp written after this walk vouches for it? Only
 * on the stamp's own file system: another one's clock and granularity cannot be compared with it.
 */
const onStampClock = (w: Walk, st: Stats): boolean => st.dev === w.cache.stamp.dev;

function relWhere(w: Walk, abs: string): string {
  const rel = path.relative(w.layer.dir, abs);
  return rel ? `layers/${w.layer.name}/${rel}` : `layers/${w.layer.name}`;
}

/** lstat without an exception (nor an options object) per missing path. */
const NO_THROW = { throwIfNoEntry: false } as const;

/** The entry kind of a stat, from its mode bits (no method call per file). */
function kindOf(st: Stats): Ent["kind"] {
  const t = st.mode & fsc.S_IFMT;
  return t === fsc.S_IFREG ? FILE : t === fsc.S_IFDIR ? DIR : t === fsc.S_IFLNK ? LINK : OTHER;
}

/** A file's entry: the previous digest when its stat matches, else queued for hashing. */
function fileEnt(w: Walk, abs: string, name: string, st: Stats, prev: Ent | undefined): FileEnt {
  w.cache.stats.files++;
  const exec = (st.mode & EXEC) !== 0 ? 1 : 0;
  if (
    prev?.kind === FILE &&
    prev.size === st.size &&
    prev.mtimeMs === st.mtimeMs &&
    prev.ctimeMs === st.ctimeMs &&
    prev.ino === st.ino &&
    prev.digest !== "" &&
    w.cache.trusts(prev.mtimeMs, prev.ctimeMs)
  ) {
    // chmod moves ctime, so the exec bit matches too; checked anyway, a wrong layer digest costs a wrong image.
    // The previous entry is then this entry, word for word: reuse it rather than allocate one per file.
    if (prev.exec === exec && prev.name === name) return prev;
    w.hit = false;
    return { name, kind: FILE, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino, digest: prev.digest, exec };
  }
  w.hit = false;
  const ent: FileEnt = { name, kind: FILE, size: onStampClock(w, st) ? st.size : -1, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino, digest: "", exec };
  w.pending.push({ w, abs, ent, size: st.size });
  return ent;
}

/**
 * Walk one directory whose stat (following symlinks or not, as the caller walks) is `st`. Reuses the
 * previous listing when the directory's (mtime, ctime, inode) match it; `follow` walks as `rsync -rL`
 * copies (symlinks followed, a symlink back to an ancestor is a loop; `real` is this directory's real
 * path and `ancestors` the real paths above it), otherwise symlinks are recorded by target text only.
 */
function walkDir(w: Walk, abs: string, st: Stats, prev: DirRec | undefined, follow: boolean, ancestors: Set<string>, real: string, skip?: string): DirRec {
  const ps = prev?.st;
  const trusted = ps !== undefined && ps.mtimeMs === st.mtimeMs && ps.ctimeMs === st.ctimeMs && ps.ino === st.ino && w.cache.trusts(ps.mtimeMs, ps.ctimeMs);
  const ents: Ent[] = [];
  const rec: DirRec = { st: onStampClock(w, st) ? { mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino } : undefined, ents };
  if (trusted) {
    const pes = prev!.ents;
    for (let i = 0; i < pes.length; i++) {
      const pe = pes[i]!;
      // A listing recorded before `skip` was left out still holds it: the digest must be recomputed.
      if (pe.name === skip) w.hit = false;
      else visit(w, abs, pe.name, pe.kind, pe, ents, follow, ancestors, real);
    }
    return rec;
  }
  w.hit = false;
  w.cache.listing(abs);
  let dirents;
  try {
    dirents = readdirSync(abs, { withFileTypes: true });
  } catch (e) {
    w.problems.push({ reason: "unreadable", where: relWhere(w, abs), message: `cannot read directory: ${(e as Error).message}` });
    rec.st = undefined;
    return rec;
  }
  const byName = new Map<string, Ent>();
  if (prev) for (const pe of prev.ents) byName.set(pe.name, pe);
  for (const d of dirents) {
    if (isEditorNoise(d.name) || d.name === skip) continue; // rsync excludes editor noise too (vm/rsync.ts)
    const kind = d.isSymbolicLink() ? LINK : d.isDirectory() ? DIR : d.isFile() ? FILE : OTHER;
    visit(w, abs, d.name, kind, byName.get(d.name), ents, follow, ancestors, real);
  }
  return rec;
}

function visit(w: Walk, dir: string, name: string, kind: Ent["kind"], prev: Ent | undefined, ents: Ent[], follow: boolean, ancestors: Set<string>, real: string): void {
  const abs = `${dir}/${name}`;
  if (kind === FILE || kind === DIR) {
    const st = lstatSync(abs, NO_THROW);
    if (st === undefined) {
      w.hit = false; // vanished while we walked
      return;
    }
    const now = kindOf(st);
    if (now !== kind) {
      // Replaced behind a listing we trusted (or since readdir): take it as what it is now.
      w.hit = false;
      if (now !== FILE && now !== DIR) {
        visit(w, dir, name, now, undefined, ents, follow, ancestors, real);
        return;
      }
    }
    if (now === FILE) ents.push(fileEnt(w, abs, name, st, prev));
    else {
      const sub = follow ? `${real}/${name}` : "";
      if (follow) ancestors.add(sub);
      ents.push({ name, kind: DIR, dir: walkDir(w, abs, st, prev?.kind === DIR ? prev.dir : undefined, follow, ancestors, sub) });
      if (follow) ancestors.delete(sub);
    }
    return;
  }
  if (kind === OTHER) {
    // rsync -r without -D skips sockets, fifos and devices: so do we (they stay listed, unkeyed).
    if (prev?.kind !== OTHER) w.hit = false;
    ents.push({ name, kind: OTHER });
    return;
  }
  let target: string;
  try {
    target = readlinkSync(abs);
  } catch (e) {
    w.hit = false;
    if (errCode(e) === "EINVAL") {
      // no longer a symlink
      const st = lstatSync(abs, NO_THROW);
      if (st !== undefined) visit(w, dir, name, kindOf(st), undefined, ents, follow, ancestors, real);
    }
    return;
  }
  const plink = prev?.kind === LINK ? prev : undefined;
  if (plink?.target !== target) w.hit = false;
  const ent: LinkEnt = { name, kind: LINK, target };
  ents.push(ent);
  if (!follow) return;
  let st: Stats;
  try {
    st = statSync(abs);
  } catch (err) {
    w.hit = false;
    const where = relWhere(w, abs);
    const hint = "fix or remove the symlink: rsync -L cannot copy it";
    w.problems.push(
      errCode(err) === "ELOOP"
        ? { reason: "symlink-loop", where, message: "symlink loop", hint }
        : { reason: "dangling-symlink", where, message: `symlink to ${JSON.stringify(target)} points nowhere`, hint },
    );
    return;
  }
  const pf = plink?.followed;
  if (st.isDirectory()) {
    const to = realpathSync.native(abs);
    if (ancestors.has(to)) {
      w.hit = false;
      w.problems.push({ reason: "symlink-loop", where: relWhere(w, abs), message: `symlink to ${JSON.stringify(target)} loops back to a directory that contains it`, hint: "point it elsewhere or remove it: rsync -L would copy forever" });
      return;
    }
    ancestors.add(to);
    const d: DirEnt = { name: "", kind: DIR, dir: walkDir(w, abs, st, pf?.kind === DIR ? pf.dir : undefined, true, ancestors, to) };
    ancestors.delete(to);
    ent.followed = d;
  } else if (st.isFile()) {
    ent.followed = fileEnt(w, abs, "", st, pf);
  } else if (pf !== undefined) {
    w.hit = false;
  }
}

/** The synthetic top of a non-base layer: install (symlink text only), layer.yaml, convert, target/ (followed). */
function walkTop(w: Walk, prev: DirRec | undefined): DirRec {
  const ents: Ent[] = [];
  const prevEnts = prev?.ents ?? [];
  const prevOf = (name: string): Ent | undefined => prevEnts.find((e) => e.name === name);
  for (const [extra, follow] of EXTRAS) {
    const a = `${w.layer.dir}/${extra}`;
    const st = lstatSync(a, NO_THROW);
    if (st === undefined) continue;
    const pe = prevOf(extra);
    const kind = kindOf(st);
    if (kind === LINK) {
      if (follow) {
        const real = realpathSync.native(w.layer.dir);
        visit(w, w.layer.dir, extra, LINK, pe, ents, true, new Set([real]), real);
        continue;
      }
      const target = readlinkSync(a);
      if (pe?.kind !== LINK || pe.target !== target || pe.followed !== undefined) w.hit = false;
      ents.push({ name: extra, kind: LINK, target });
    } else if (kind === FILE) {
      ents.push(fileEnt(w, a, extra, st, pe));
    }
  }
  const target = `${w.layer.dir}/target`;
  const tst = statSync(target, NO_THROW);
  if (tst !== undefined && kindOf(tst) === DIR) {
    const real = realpathSync.native(target);
    const pe = prevOf("target");
    ents.push({ name: "target", kind: DIR, dir: walkDir(w, target, tst, pe?.kind === DIR ? pe.dir : undefined, true, new Set([real]), real) });
  }
  if (ents.length !== prevEnts.length) w.hit = false;
  return { st: undefined, ents };
}

/**
 * The files a layer's `inputs:` globs match (symlinks followed), each named by its path relative to the
 * project root. A match whose real path is outside the project is a problem naming it: the project
 * would not build the same anywhere else.
 */
function walkInputs(w: Walk, root: string, prev: FileEnt[] | undefined): FileEnt[] | undefined {
  const patterns = w.layer.config.inputs;
  if (!patterns?.length) {
    if (prev?.length) w.hit = false;
    return undefined;
  }
  const matches = fastGlob().sync(patterns, { cwd: w.layer.dir, absolute: true, onlyFiles: true, dot: true, followSymbolicLinks: true, unique: true });
  const realRoot = realpathSync.native(root);
  const byName = new Map((prev ?? []).map((e) => [e.name, e]));
  const out: FileEnt[] = [];
  for (const abs of [...new Set(matches.map((m) => path.resolve(m)))].sort()) {
    const rel = path.relative(root, abs);
    let real: string;
    try {
      real = realpathSync.native(abs);
    } catch (e) {
      w.problems.push({ reason: "unreadable", where: rel, message: `input of layers/${w.layer.name} cannot be resolved: ${(e as Error).message}` });
      continue;
    }
    const relReal = path.relative(realRoot, real);
    if (rel.startsWith("..") || path.isAbsolute(rel) || relReal.startsWith("..") || path.isAbsolute(relReal)) {
      w.problems.push({
        reason: "input-outside-project",
        where: `layers/${w.layer.name}/layer.yaml`,
        message: `input ${abs}${real !== abs ? ` (-> ${real})` : ""} is outside the project ${root}`,
        hint: "copy it into the project (e.g. utils/) and match it there: a build must not depend on files the project does not hold",
      });
      continue;
    }
    const st = statSync(abs, { throwIfNoEntry: false });
    if (!st?.isFile()) continue;
    out.push(fileEnt(w, abs, rel, st, byName.get(rel)));
  }
  if (out.length !== (prev?.length ?? 0)) w.hit = false;
  return out;
}

/** The "file:", "link:", "dir:" entries of a walked layer. */
export function manifestOf(kind: LayerKind, top: DirRec, inputs?: readonly FileEnt[]): InputManifest {
  const m: InputManifest = {};
  const add = (e: Ent, r: string): void => {
    switch (e.kind) {
      case FILE:
        m[`file:${r}`] = e.exec ? `${e.digest}:x` : e.digest;
        break;
      case DIR:
        m[`dir:${r}`] = "dir";
        addDir(e.dir, r);
        break;
      case LINK:
        m[`link:${r}`] = e.target;
        if (e.followed) add(e.followed, r);
        break;
      case OTHER:
        break;
    }
  };
  const addDir = (d: DirRec, rel: string): void => {
    for (const e of d.ents) add(e, rel ? `${rel}/${e.name}` : e.name);
  };
  if (kind === "base") addDir(top, "");
  else {
    for (const e of top.ents) {
      // target/ itself is no entry: only what rsync copies out of it is
      if (e.kind === DIR) addDir(e.dir, e.name);
      else add(e, e.name);
    }
  }
  for (const e of inputs ?? []) m[`input:${e.name}`] = e.exec ? `${e.digest}:x` : e.digest;
  return m;
}

interface WalkResult {
  w: Walk;
  prev: LayerRec | undefined;
  top: DirRec;
  inputs: FileEnt[] | undefined;
}

function walkLayer(layer: Layer, cache: StatCache): WalkResult {
  const w: Walk = { layer, cache, problems: [], pending: [], hit: true };
  const prev = cache.previous(layer.dir);
  let top: DirRec;
  if (layer.kind !== "base") top = walkTop(w, prev?.top);
  else {
    const st = statSync(layer.dir, NO_THROW);
    if (st === undefined || kindOf(st) !== DIR) {
      w.problems.push({ reason: "unreadable", where: `layers/${layer.name}`, message: "cannot read directory: it is gone" });
      return { w, prev, top: { st: undefined, ents: [] }, inputs: undefined };
    }
    const real = realpathSync.native(layer.dir);
    // test/ is not part of the image: editing a test reruns the tests, never the build (see testManifests).
    top = walkDir(w, layer.dir, st, prev?.top, true, new Set([real]), real, TEST_DIR);
  }
  return { w, prev, top, inputs: walkInputs(w, cache.root, prev?.inputs) };
}

/**
 * The walk of a layer's test/ directory, as `rsync -rL` copies it into the test VM and as host tests see
 * it: symlinks followed (their target texts recorded too), exec bits, editor noise left out, every stat
 * trusted only as the stat cache's stamp allows. Its stat-cache record is keyed by the test dir, apart
 * from the layer's own; `inputs:` are not walked (they key the layer's image, not its tests).
 */
function walkTests(layer: Layer, cache: StatCache): WalkResult {
  const dir = `${layer.dir}/${TEST_DIR}`;
  // Named "NAME/test" so problems read layers/NAME/test/...; kind base: manifestOf lists the whole tree.
  const pseudo: Layer = { ...layer, name: `${layer.name}/${TEST_DIR}`, dir, kind: "base" };
  const w: Walk = { layer: pseudo, cache, problems: [], pending: [], hit: true };
  const prev = cache.previous(dir);
  const st = statSync(dir, NO_THROW);
  if (st === undefined || kindOf(st) !== DIR) {
    w.problems.push({ reason: "unreadable", where: `layers/${layer.name}/${TEST_DIR}`, message: "cannot read directory: it is gone" });
    return { w, prev, top: { st: undefined, ents: [] }, inputs: undefined };
  }
  const real = realpathSync.native(dir);
  return { w, prev, top: walkDir(w, dir, st, prev?.top, true, new Set([real]), real), inputs: undefined };
}

/** Milliseconds of synchronous hashing between two yields to the event loop (so aborts and signals get through). */
const SYNC_SLICE_MS = 20;

const yieldToLoop = (): Promise<void> => new Promise((r) => setImmediate(r));

/** The file part of a layer's manifest, and its digest. */
export interface LayerFiles {
  /** "file:", "link:", "dir:" entries of the layer (built on first use when the digest was reused). */
  readonly manifest: InputManifest;
  /** sha256 of the canonical JSON of `manifest`: how the files enter every node key of this layer. */
  readonly digest: string;
}

class WalkedLayer implements LayerFiles {
  private m: InputManifest | undefined;
  constructor(
    private readonly kind: LayerKind,
    private readonly top: DirRec,
    private readonly inputs: FileEnt[] | undefined,
    readonly digest: string,
    manifest?: InputManifest,
  ) {
    this.m = manifest;
  }

  get manifest(): InputManifest {
    return (this.m ??= manifestOf(this.kind, this.top, this.inputs));
  }
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
  return digestWalks([...layers].map((l) => walkLayer(l, cache)), cache, signal);
}

/**
 * The digest of each given layer's test/ tree (file contents, exec bits, symlinks followed), keyed by
 * layer name, hashing only what the stat cache cannot vouch for. Layers without tests are left out.
 */
export async function testManifests(layers: Iterable<Layer>, cache: StatCache, signal?: AbortSignal): Promise<Map<string, LayerFiles>> {
  const withTests = [...layers].filter((l) => l.tests);
  const out = await digestWalks(withTests.map((l) => walkTests(l, cache)), cache, signal);
  return new Map(withTests.map((l) => [l.name, out.get(`${l.name}/${TEST_DIR}`)!]));
}

async function digestWalks(walks: WalkResult[], cache: StatCache, signal?: AbortSignal): Promise<Map<string, LayerFiles>> {
  const problems = walks.flatMap(({ w }) => w.problems);
  if (problems.length) throw new DbuildError(problems);
  const small: PendingFile[] = [];
  const large: PendingFile[] = [];
  for (const { w } of walks) for (const f of w.pending) (f.size <= SMALL_FILE ? small : large).push(f);
  const unreadable = (f: PendingFile, e: unknown): void => {
    problems.push({ reason: "unreadable", where: relWhere(f.w, f.abs), message: `cannot read: ${(e as Error).message}` });
  };
  const bigJobs = pool(
    large,
    HASH_CONCURRENCY,
    async (f) => {
      try {
        f.ent.digest = await cache.hash(f.abs, f.size);
      } catch (e) {
        unreadable(f, e);
      }
    },
    signal,
  );
  let slice = performance.now();
  for (let i = 0; i < small.length; i++) {
    if (i % 16 === 15 && performance.now() - slice >= SYNC_SLICE_MS) {
      await yieldToLoop();
      signal?.throwIfAborted();
      slice = performance.now();
    }
    const f = small[i]!;
    try {
      f.ent.digest = cache.hashSync(f.abs, f.size);
    } catch (e) {
      unreadable(f, e);
    }
  }
  await bigJobs;
  if (problems.length) throw new DbuildError(problems);
  const out = new Map<string, LayerFiles>();
  for (const { w, prev, top, inputs } of walks) {
    if (w.hit && prev !== undefined) {
      out.set(w.layer.name, new WalkedLayer(w.layer.kind, top, inputs, prev.digest));
      continue;
    }
    const manifest = manifestOf(w.layer.kind, top, inputs);
    const digest = sha256(canonicalJson(manifest));
    cache.update(w.layer.dir, inputs ? { digest, top, inputs } : { digest, top });
    out.set(w.layer.name, new WalkedLayer(w.layer.kind, top, inputs, digest, manifest));
  }
  return out;
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

// One-shot hashing: no Hash object per call (thousands of small strings per plan).
const sha256 = sha256Hex;

export interface NodeInputArgs {
  kind: LayerKind;
  layer: string;
  /** layer.yaml `epoch:`, when set. */
  epoch?: string;
  parentKey: NodeKey | null;
  files: InputManifest;
  settings: Record<string, string>;
  project?: Record<string, string>;
}

/** The manifest entries of a node other than its files. */
export function nodeScalars(a: Omit<NodeInputArgs, "files">): InputManifest {
  const m: InputManifest = { format: FORMAT_VERSION, kind: a.kind, layer: a.layer, parent: a.parentKey ?? "" };
  if (a.epoch !== undefined) m.epoch = a.epoch;
  for (const [k, v] of Object.entries(a.settings)) m[`setting:${k}`] = v;
  for (const [k, v] of Object.entries(a.project ?? {})) m[`project:${k}`] = v;
  return m;
}

export function nodeInputs(a: NodeInputArgs): InputManifest {
  return { ...nodeScalars(a), ...a.files };
}

/** An array index as an object key: JSON.stringify would list it before every other key. */
const INDEX_KEY = /^(?:0|[1-9][0-9]*)$/;

/**
 * Canonical JSON: keys in code-unit order, so the same manifest always gives the same bytes. Written
 * out pair by pair (the bytes JSON.stringify gives for an object built in that order), without building
 * the object; a manifest with an index-like key (never one of ours) takes JSON.stringify's own order.
 */
export function canonicalJson(m: InputManifest): string {
  const keys = Object.keys(m).sort();
  let out = "";
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!;
    const v = m[k];
    if (INDEX_KEY.test(k)) return canonicalJsonSlow(keys, m);
    // JSON.stringify leaves out a key whose value is undefined (none of ours has one).
    if (v !== undefined) out += `${out ? "," : ""}${JSON.stringify(k)}:${JSON.stringify(v)}`;
  }
  return `{${out}}`;
}

function canonicalJsonSlow(keys: readonly string[], m: InputManifest): string {
  const o: Record<string, string> = {};
  for (const k of keys) o[k] = m[k]!;
  return JSON.stringify(o);
}

const isFileEntry = (k: string): boolean => k.startsWith("file:") || k.startsWith("link:") || k.startsWith("dir:") || k.startsWith("input:");

/**
 * The node key: sha256 of one canonical JSON of the manifest, where the file entries ("file:",
 * "link:", "dir:", "input:") enter as the sha256 of their own canonical JSON under the name "files". Hundreds of
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

/** What a node's key needs beyond its layer: the parent's key and the settings. */
export type NodeKeyer = (parentKey: NodeKey | null, settings: Record<string, string>, project?: Record<string, string>) => NodeKey;

/**
 * nodeKeyFrom(nodeScalars(...), filesDigest) for the many nodes of one layer, byte for byte: the entries
 * they share (epoch, files, format, kind, layer) all sort before "parent", and a node's own (parent,
 * project:*, setting:*) all after it, so the shared part of the canonical JSON is written once per layer.
 */
export function layerKeyer(a: Pick<NodeInputArgs, "kind" | "layer" | "epoch">, filesDigest: string): NodeKeyer {
  const shared: InputManifest = { format: FORMAT_VERSION, kind: a.kind, layer: a.layer, files: filesDigest };
  if (a.epoch !== undefined) shared.epoch = a.epoch;
  const head = canonicalJson(shared).slice(0, -1);
  return (parentKey, settings, project) => {
    const own: InputManifest = { parent: parentKey ?? "" };
    for (const k of Object.keys(settings)) own[`setting:${k}`] = settings[k]!;
    if (project) for (const k of Object.keys(project)) own[`project:${k}`] = project[k]!;
    return sha256(`${head},${canonicalJson(own).slice(1)}`) as NodeKey;
  };
}
