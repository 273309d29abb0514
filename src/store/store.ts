/**
 * The image store: immutable objects addressed by node key, atomic publication, and the
 * Demobuilder view `build/STACK.qcow2` (a relative symlink to the current object).
 *
 * Layout under the build dir:
 *   STACK.qcow2                    -> .dbuild/objects/<key>.qcow2   (user's view, deleting it = stale)
 *   <layer>/<stack>.<ext>          -> ../.dbuild/objects/<key>.<ext> (deliverables of finalizing nodes)
 *   logs/<stack>.log               per-node log (install output, serial console)
 *   .dbuild/objects/<key>.qcow2    read-only; backing file recorded as `.dbuild/objects/<parent>.qcow2`,
 *                                  relative, so the whole build dir can be moved, copied or cached
 *   .dbuild/objects/.dbuild -> ..  makes that relative path resolve from objects/ as well as from build/
 *   .dbuild/records/<key>.json     what the object was built from (inputs, parent key, duration)
 *   .dbuild/tmp/                   work in progress; never referenced by a published object
 *   .dbuild/sums/<object>.json     size, mtime, ctime and sha256 of each object at publish: a record is
 *                                  trusted only while its object (and the objects it is backed by) match
 *   .dbuild/vms/<name>.pid         pidfile of each running build VM (QEMU -pidfile), for reaping orphans
 *
 * Why objects are never replaced: a child's qcow2 holds only a delta over its parent's bytes. If a
 * parent object changed under a child, the child would silently become garbage. So a rebuild of a key
 * whose object still exists (the user deleted the view to force it) publishes under a new name
 * (`<key>.<n>.qcow2`) and leaves the old one for the children backed by it; `gc` removes it later.
 */
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync, readSync, realpathSync, fstatSync, type Stats } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { NodeKey } from "../model/plan.js";
import type { NodeRecord, StoreView, TestRecord } from "../model/store.js";
import { qcow2BackingNameFd, qcow2BackingNameSync } from "./qcow2.js";
import { qemuImg } from "./qemu-img.js";
import { sha256File } from "../util/digest.js";
import { fsyncPath, writeFileAtomic } from "./durable.js";

export class Store implements StoreView {
  readonly buildDir: string;
  readonly internalDir: string;
  readonly objectsDir: string;
  readonly recordsDir: string;
  readonly tmpDir: string;
  readonly logsDir: string;
  readonly cacheDir: string;
  /** Pidfiles of running build VMs (reaped by the next run if their dbuild died). */
  readonly vmsDir: string;
  /** Per object: size, timestamps and sha256 recorded at publish (see objectOk). */
  readonly sumsDir: string;
  private readonly objectOkCache = new Map<string, Now<boolean>>();
  /** Per object: chainOk's answer (the object and the objects it is backed by). */
  private readonly chainOkCache = new Map<string, Now<boolean>>();
  /** Backing names read from headers while checking sums (see checkObject). */
  private readonly backingNames = new Map<string, string | undefined>();
  /** Recorded passes of layer tests, `<key>-<test digest>.json`. */
  readonly testsDir: string;
  private readonly recordCache = new Map<string, Now<NodeRecord | null>>();
  /** Digests of objects published by this process, picked up by commit() for their records. */
  private readonly publishedDigests = new Map<string, string>();
  /** While a plan runs (see planning()): names in the build, records, objects and tests dirs. */
  private listing: Listing | undefined;
  private planners = 0;

  constructor(buildDir: string) {
    this.buildDir = path.resolve(buildDir);
    this.internalDir = path.join(this.buildDir, ".dbuild");
    this.objectsDir = path.join(this.internalDir, "objects");
    this.recordsDir = path.join(this.internalDir, "records");
    this.tmpDir = path.join(this.internalDir, "tmp");
    this.logsDir = path.join(this.buildDir, "logs");
    this.cacheDir = path.join(this.internalDir, "cache");
    this.vmsDir = path.join(this.internalDir, "vms");
    this.sumsDir = path.join(this.internalDir, "sums");
    this.testsDir = path.join(this.internalDir, "tests");
  }

  async init(): Promise<void> {
    for (const d of [this.objectsDir, this.recordsDir, this.tmpDir, this.logsDir, this.cacheDir, this.vmsDir, this.sumsDir, this.testsDir]) {
      await fs.mkdir(d, { recursive: true });
    }
    // QEMU resolves a relative backing file against the directory of the name it opened, not of the
    // symlink's target. Backing files are recorded as `.dbuild/objects/PARENT.qcow2`, which resolves
    // from build/ (a user opening the view build/STACK.qcow2) and, through this self-link, from
    // objects/ too. Both are relative, so the build dir can still be moved or copied whole.
    const self = path.join(this.objectsDir, ".dbuild");
    try {
      await fs.symlink("..", self);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
  }

  /** Backing-file string recorded in a published child of `parentObject`. */
  backingRef(parentObject: string): string {
    return `.dbuild/objects/${parentObject}`;
  }

  viewPath(stack: string): string {
    // A stack has no "/": the path needs no normalising (a plan asks for thousands).
    return stack.includes("/") || this.buildDir === "/" ? path.join(this.buildDir, `${stack}.qcow2`) : `${this.buildDir}/${stack}.qcow2`;
  }

  deliverablePath(layer: string, stack: string, ext: string): string {
    return path.join(this.buildDir, layer, `${stack}.${ext}`);
  }

  logPath(stack: string): string {
    return path.join(this.logsDir, `${stack}.log`);
  }

  objectPath(name: string): string {
    return path.join(this.objectsDir, name);
  }

  /**
   * Run `fn`, a plan, against listings of the build dir (the views), the records, the objects, their sums
   * and the test passes, each taken once when the first plan starts: a node the store holds nothing for then costs
   * no system call, where it would cost a failed open or readlink, with an error object, each (a project
   * that was never built plans as fast as a built one). A plan reads the store as it was when it started;
   * what this process writes meanwhile is added to the listings.
   */
  async planning<T>(fn: () => Promise<T>): Promise<T> {
    if (this.planners++ === 0) {
      this.listing = {
        views: listNames(this.buildDir),
        records: listNames(this.recordsDir),
        objects: listNames(this.objectsDir),
        sums: listNames(this.sumsDir),
        tests: listNames(this.testsDir),
      };
    }
    try {
      return await fn();
    } finally {
      if (--this.planners === 0) this.listing = undefined;
    }
  }

  /** Is `name` in `dir`? From the plan's listing when there is one, else by asking the file system. */
  private listed(which: keyof Listing, dir: string, name: string): boolean {
    const names = this.listing?.[which];
    return names ? names.has(name) : existsSync(path.join(dir, name));
  }

  /** Tell a running plan's listing about a name written (or, with `gone`, removed) by this process. */
  private relist(which: keyof Listing, name: string, gone = false): void {
    const names = this.listing?.[which];
    if (gone) names?.delete(name);
    else names?.add(name);
  }

  record(key: NodeKey): Promise<NodeRecord | undefined> {
    return Promise.resolve(this.recordNow(key));
  }

  /**
   * The record of `key` if the store holds its image, else undefined. Records are small and read
   * synchronously (a plan reads hundreds, and a thread-pool round trip each costs more than the read), and
   * so is the usual check of their objects (see objectOk): the answer is a promise only when an object must
   * be hashed again.
   */
  private recordNow(key: NodeKey): Now<NodeRecord | undefined> {
    const hit = this.recordCache.get(key);
    if (hit !== undefined) return after(hit, (r) => r ?? undefined);
    // Not listed when the plan started: absent for this plan, and asked again after it.
    if (this.listing?.records?.has(`${key}.json`) === false) return undefined;
    let rec: NodeRecord;
    try {
      rec = readRecord(path.join(this.recordsDir, `${key}.json`));
    } catch {
      this.recordCache.set(key, null);
      return undefined;
    }
    const kept = after(this.trusted(rec), (ok) => (ok ? rec : null));
    this.recordCache.set(key, kept);
    if (kept instanceof Promise) {
      void kept.then((r) => {
        if (this.recordCache.get(key) === kept) this.recordCache.set(key, r);
      });
    }
    return after(kept, (r) => r ?? undefined);
  }

  /**
   * A record without its object is not an image (object deleted by hand, or gc in progress), nor is one
   * whose object, or an object it is backed by, no longer matches what was published (bit rot, a write
   * through a chmod, a torn copy): that node is rebuilt rather than used.
   */
  private trusted(rec: NodeRecord): Now<boolean> {
    if (!this.listed("objects", this.objectsDir, rec.object)) return false;
    const d = rec.deliverable;
    return after(this.chainOkNow(rec.object, 0), (ok) => ok && (d === undefined || this.objectOkNow(d.object)));
  }

  /**
   * True if the object still matches its publish-time sum: same size, and either the same mtime and ctime
   * (cheap: nothing wrote to it) or, when they changed (a copy of the build dir, a write), the same
   * sha256, re-checked once and then re-stamped. Objects published before sums existed are trusted.
   * Checked once per object and store.
   */
  objectOk(name: string): Promise<boolean> {
    return Promise.resolve(this.objectOkNow(name));
  }

  private objectOkNow(name: string): Now<boolean> {
    let ok = this.objectOkCache.get(name);
    if (ok === undefined) {
      ok = this.checkObject(name);
      this.objectOkCache.set(name, ok);
    }
    return ok;
  }

  // The sum and a stat, read synchronously: a plan of a built project checks every object once.
  private checkObject(name: string): Now<boolean> {
    const sumName = `${name}.json`;
    // Not listed when the plan started: published before sums existed (one published since is in objectOkCache).
    if (this.listing?.sums?.has(sumName) === false) return true;
    const sumFile = path.join(this.sumsDir, sumName);
    let sum: ObjectSum;
    try {
      const { text, whole } = readHead(sumFile);
      sum = JSON.parse(whole ? text : readFileSync(sumFile, "utf8")) as ObjectSum;
    } catch {
      return true;
    }
    let fd: number;
    try {
      fd = openSync(this.objectPath(name), "r");
    } catch {
      return false;
    }
    try {
      const st = fstatSync(fd);
      if (st.size !== sum.size) return false;
      if (st.mtimeMs !== sum.mtimeMs || st.ctimeMs !== sum.ctimeMs) return this.recheckObject(name, sumFile, sum, st);
      // The file is open: its backing name now, for chainOk (an object that matches its sum has its header as published).
      this.backingNames.set(name, qcow2BackingNameFd(fd));
      return true;
    } catch {
      return false;
    } finally {
      closeSync(fd);
    }
  }

  private async recheckObject(name: string, sumFile: string, sum: ObjectSum, st: Stats): Promise<boolean> {
    const digest = await objectDigest(this.objectPath(name)).catch(() => undefined);
    if (digest !== sum.digest) return false;
    await writeFileAtomic(sumFile, JSON.stringify({ ...sum, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs }) + "\n").catch(() => undefined);
    return true;
  }

  /** objectOk for the object and every store object it is backed by (a child's delta needs its parent's bytes). */
  chainOk(name: string): Promise<boolean> {
    return Promise.resolve(this.chainOkNow(name, 0));
  }

  // Remembered per object: the children of one parent share its chain, so a plan reads each header once.
  private chainOkNow(name: string, depth: number): Now<boolean> {
    let ok = this.chainOkCache.get(name);
    if (ok === undefined) {
      ok = after(this.objectOkNow(name), (own) => {
        if (!own || depth >= 63) return own;
        const parent = this.backingObject(name);
        return parent === undefined || this.chainOkNow(parent, depth + 1);
      });
      this.chainOkCache.set(name, ok);
    }
    return ok;
  }

  /**
   * The store object `name` is backed by, if any: its header's backing name as publishImage writes it
   * (backingRef, which resolves through the objects/.dbuild self-link) is read as the object it names;
   * any other form is resolved on the file system.
   */
  private backingObject(name: string): string | undefined {
    const raw = this.backingNames.has(name) ? this.backingNames.get(name) : qcow2BackingNameSync(this.objectPath(name));
    if (raw === undefined) return undefined;
    const ref = this.backingRef("");
    if (raw.startsWith(ref) && !raw.slice(ref.length).includes("/") && raw.length > ref.length) return raw.slice(ref.length);
    const resolved = path.resolve(this.objectsDir, raw);
    let real: string;
    try {
      real = realpathSync(resolved);
    } catch {
      real = resolved;
    }
    return path.dirname(real) === this.objectsDir ? path.basename(real) : undefined;
  }

  /** Object file name the view of `stack` points at, if the view is a link into the objects dir. */
  viewObject(stack: string): Promise<string | undefined> {
    return Promise.resolve(this.viewObjectSync(stack));
  }

  private viewObjectSync(stack: string): string | undefined {
    const name = `${stack}.qcow2`;
    if (this.listing?.views?.has(name) === false) return undefined;
    return this.linkedObject(path.join(this.buildDir, name));
  }

  private linkedObject(link: string): string | undefined {
    let target: string;
    try {
      target = readlinkSync(link);
    } catch {
      return undefined;
    }
    const abs = path.resolve(path.dirname(link), target);
    if (path.dirname(abs) !== this.objectsDir) return undefined;
    const name = path.basename(abs);
    return this.listed("objects", this.objectsDir, name) ? name : undefined;
  }

  currentRecord(stack: string): Promise<NodeRecord | undefined> {
    const obj = this.viewObjectSync(stack);
    const shown = obj ? this.recordNow(obj.split(".")[0] as NodeKey) : undefined;
    // The view was deleted: fall back to the last record written for this stack, so `why` and the
    // staleness reasons can still compare inputs.
    return Promise.resolve(after(shown, (rec) => rec ?? this.lastRecordForStack(stack)));
  }

  private stackIndex: Now<Map<string, NodeRecord>> | undefined;

  private lastRecordForStack(stack: string): Now<NodeRecord | undefined> {
    this.stackIndex ??= this.indexStacks();
    return after(this.stackIndex, (index) => index.get(stack));
  }

  private indexStacks(): Now<Map<string, NodeRecord>> {
    const recs: Now<NodeRecord | undefined>[] = [];
    for (const n of this.listing?.records ?? listNames(this.recordsDir) ?? []) {
      if (n.endsWith(".json")) recs.push(this.recordNow(n.slice(0, -5) as NodeKey));
    }
    const index = (all: (NodeRecord | undefined)[]): Map<string, NodeRecord> => {
      const m = new Map<string, NodeRecord>();
      for (const rec of all) {
        if (!rec) continue;
        const prev = m.get(rec.stack);
        if (!prev || prev.builtAt < rec.builtAt) m.set(rec.stack, rec);
      }
      return m;
    };
    return recs.some((r) => r instanceof Promise) ? Promise.all(recs.map((r) => Promise.resolve(r))).then(index) : index(recs as (NodeRecord | undefined)[]);
  }

  /** True if build/STACK.qcow2 exists at all (a link, even to another object). */
  async viewExists(stack: string): Promise<boolean> {
    try {
      await fs.lstat(this.viewPath(stack));
      return true;
    } catch {
      return false;
    }
  }

  viewShows(stack: string, key: NodeKey): Promise<boolean> {
    return Promise.resolve(
      after(this.recordNow(key), (rec) => {
        if (!rec || this.viewObjectSync(stack) !== rec.object) return false;
        const d = rec.deliverable;
        return d === undefined || this.linkedObject(path.join(this.buildDir, d.path)) === d.object;
      }),
    );
  }

  async lastDuration(stack: string): Promise<number | undefined> {
    return (await this.currentRecord(stack))?.duration;
  }

  /** A fresh temporary path under .dbuild/tmp (same filesystem as objects, so rename is atomic). */
  tmpPath(hint: string): string {
    return path.join(this.tmpDir, `${hint.replace(/[^A-Za-z0-9._-]/g, "_")}.${randomBytes(4).toString("hex")}`);
  }

  /**
   * Publish a finished qcow2: re-point its backing file at the parent's object (see init() for the
   * relative form), make it read-only and move it into place under a name no other image uses.
   * Returns the object file name.
   */
  async publishImage(tmpFile: string, key: NodeKey, parentObject: string | null, digest?: string): Promise<string> {
    if (parentObject) {
      await qemuImg(["rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", this.backingRef(parentObject), tmpFile]);
    }
    // Hashed once here, while the file is still in the page cache, so a push or a child's pull never
    // has to read the object again. A caller that knows the digest (a pull) passes it.
    const d = digest ?? (await objectDigest(tmpFile));
    // A pulled blob re-linked to its local parent no longer has the blob's bytes: hash the file for its sum.
    const fileDigest = digest && parentObject ? await objectDigest(tmpFile) : d;
    const name = await this.publishFile(tmpFile, key, "qcow2", fileDigest);
    this.publishedDigests.set(name, d);
    return name;
  }

  /**
   * The record's image digest; for records written before digests were recorded, the object is hashed
   * once and the record rewritten with it.
   */
  async objectDigest(rec: NodeRecord): Promise<string> {
    if (rec.digest) return rec.digest;
    const digest = `sha256:${await sha256File(this.objectPath(rec.object))}`;
    const next = { ...rec, digest };
    await writeFileAtomic(path.join(this.recordsDir, `${rec.key}.json`), recordJson(next));
    this.recordCache.set(rec.key, next);
    rec.digest = digest;
    return digest;
  }

  /**
   * Atomically move a finished file into objects/ as `<key>.<ext>` (or `<key>.<n>.<ext>`), read-only.
   * Durable before it is named: its data is fsynced before the link, the directory entry after, and its
   * sum (size, timestamps, sha256) is written, also fsynced, before any record or view refers to it.
   */
  async publishFile(tmpFile: string, key: NodeKey, ext: string, digest?: string): Promise<string> {
    await fs.chmod(tmpFile, 0o444);
    await fsyncPath(tmpFile);
    const fileDigest = digest ?? (await objectDigest(tmpFile));
    for (let n = 0; ; n++) {
      const name = n === 0 ? `${key}.${ext}` : `${key}.${n}.${ext}`;
      try {
        // link() fails if the name exists: never replaces an object another image may be backed by.
        await fs.link(tmpFile, this.objectPath(name));
        this.relist("objects", name);
        await fs.unlink(tmpFile);
        await fsyncPath(this.objectsDir);
        const st = await fs.stat(this.objectPath(name));
        const sum: ObjectSum = { size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, digest: fileDigest };
        await writeFileAtomic(path.join(this.sumsDir, `${name}.json`), JSON.stringify(sum) + "\n");
        this.objectOkCache.set(name, true);
        this.chainOkCache.delete(name);
        this.backingNames.delete(name);
        this.relist("sums", `${name}.json`);
        return name;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
    }
  }

  /**
   * Write the record of a published image whose tests failed, without touching the views: the image
   * stays for debugging and for the next build (which reruns only the tests), but nothing shows it and
   * no child builds on it. `held` says why.
   */
  async hold(rec: NodeRecord, held: string): Promise<void> {
    rec.digest ??= this.publishedDigests.get(rec.object);
    rec.held = held;
    await writeFileAtomic(path.join(this.recordsDir, `${rec.key}.json`), recordJson(rec));
    this.recordCache.set(rec.key, rec);
    this.relist("records", `${rec.key}.json`);
  }

  private testFile(key: NodeKey, digest: string): string {
    return path.join(this.testsDir, `${key}-${digest.slice(0, 32)}.json`);
  }

  testsPassed(key: NodeKey, digest: string): Promise<boolean> {
    const file = this.testFile(key, digest);
    if (this.listing?.tests?.has(path.basename(file)) === false) return Promise.resolve(false);
    let pass: Partial<TestRecord>;
    try {
      pass = JSON.parse(readFileSync(file, "utf8")) as Partial<TestRecord>;
    } catch {
      return Promise.resolve(false);
    }
    return Promise.resolve(after(this.recordNow(key), (rec) => rec !== undefined && pass.object === rec.object));
  }

  /** Drop a recorded pass (the tests just failed on that image, e.g. under `dbuild test`). */
  async forgetTestPass(key: NodeKey, digest: string): Promise<void> {
    const file = this.testFile(key, digest);
    await fs.rm(file, { force: true });
    this.relist("tests", path.basename(file), true);
  }

  /** Record that the tests with this digest passed on the image of `rec.key` (only passes are cached). */
  async recordTestPass(rec: TestRecord): Promise<void> {
    await fs.mkdir(this.testsDir, { recursive: true });
    const file = this.testFile(rec.key, rec.digest);
    await writeFileAtomic(file, JSON.stringify(rec, null, 2) + "\n");
    this.relist("tests", path.basename(file));
  }

  /** Write the record, then point the user's views at the new objects (each an atomic rename). */
  async commit(rec: NodeRecord): Promise<void> {
    rec.digest ??= this.publishedDigests.get(rec.object);
    delete rec.held;
    await writeFileAtomic(path.join(this.recordsDir, `${rec.key}.json`), recordJson(rec));
    this.recordCache.set(rec.key, rec);
    this.relist("records", `${rec.key}.json`);
    if (this.stackIndex instanceof Map) this.stackIndex.set(rec.stack, rec);
    else this.stackIndex = undefined;
    await this.pointLink(this.viewPath(rec.stack), this.objectPath(rec.object));
    if (rec.deliverable) {
      await this.pointLink(path.join(this.buildDir, rec.deliverable.path), this.objectPath(rec.deliverable.object));
    }
  }

  private async pointLink(link: string, target: string): Promise<void> {
    await fs.mkdir(path.dirname(link), { recursive: true });
    const tmp = `${link}.tmp-${randomBytes(4).toString("hex")}`;
    await fs.symlink(path.relative(path.dirname(link), target), tmp);
    await fs.rename(tmp, link);
    await fsyncPath(path.dirname(link));
    if (path.dirname(link) === this.buildDir) this.relist("views", path.basename(link));
  }

  /** Drop a record (gc): its object is gone, so it no longer describes an image. */
  async removeRecord(key: NodeKey): Promise<void> {
    await fs.rm(path.join(this.recordsDir, `${key}.json`), { force: true });
    this.relist("records", `${key}.json`, true);
    this.recordCache.delete(key);
    this.stackIndex = undefined;
  }

  /** Remove leftovers of interrupted builds (nothing published refers to tmp/). */
  async cleanTmp(): Promise<void> {
    await fs.rm(this.tmpDir, { recursive: true, force: true });
    await fs.mkdir(this.tmpDir, { recursive: true });
  }

  /** Every record in the store (for gc, push). */
  async allRecords(): Promise<NodeRecord[]> {
    const out: NodeRecord[] = [];
    let names: string[] = [];
    try {
      names = await fs.readdir(this.recordsDir);
    } catch {
      return out;
    }
    for (const n of names) {
      if (!n.endsWith(".json")) continue;
      const rec = await this.record(n.slice(0, -5) as NodeKey);
      if (rec) out.push(rec);
    }
    return out;
  }
}

/** What an object was at publish (`.dbuild/sums/<object>.json`). */
interface ObjectSum {
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  digest: string;
}

/**
 * A record as written: `inputs` (one entry per file of the layer: nearly all of the bytes) last, so that
 * a reader that needs the rest (a plan of a built project, for every fresh node) reads only the head.
 */
export function recordJson(rec: NodeRecord): string {
  const { inputs, ...rest } = rec;
  return JSON.stringify({ ...rest, inputs }, null, 2) + "\n";
}

/** Bytes of a record file read first: its head, whole, in the layout recordJson writes. */
const HEAD_BYTES = 4096;
const INPUTS_LAST = '\n  "inputs": ';
let headBuf: Buffer | undefined;

/**
 * Read a record. One written by recordJson is read up to its inputs only, and they are read (the whole
 * file) when first asked for: a record's inputs never change under its key (the key is their digest),
 * so a later rewrite (a digest added, a hold lifted) leaves them as they were. A record in any other
 * layout (earlier versions wrote inputs in the middle) is read and parsed whole.
 */
export function readRecord(file: string): NodeRecord {
  const { text, whole } = readHead(file);
  // A raw newline, two spaces and a quote only start a top-level key (strings hold no raw newline,
  // nested keys are indented further).
  const at = text.indexOf(INPUTS_LAST);
  if (at > 0 && text[at - 1] === ",") {
    let head: Partial<NodeRecord> | undefined;
    try {
      head = JSON.parse(`${text.slice(0, at - 1)}\n}`) as Partial<NodeRecord>;
    } catch {
      head = undefined;
    }
    // Everything but the inputs came before them: the layout recordJson writes.
    if (head && typeof head.key === "string" && typeof head.object === "string" && !("inputs" in head)) {
      let inputs: NodeRecord["inputs"] | undefined;
      Object.defineProperty(head, "inputs", {
        get: () => (inputs ??= (JSON.parse(readFileSync(file, "utf8")) as NodeRecord).inputs),
        set: (v: NodeRecord["inputs"]) => {
          inputs = v;
        },
        enumerable: true,
        configurable: true,
      });
      return head as NodeRecord;
    }
  }
  return JSON.parse(whole ? text : readFileSync(file, "utf8")) as NodeRecord;
}

/** The first HEAD_BYTES of a file, and whether that is the whole file: one open, one read, one close. */
function readHead(file: string): { text: string; whole: boolean } {
  const buf = (headBuf ??= Buffer.allocUnsafe(HEAD_BYTES));
  const fd = openSync(file, "r");
  let n: number;
  try {
    n = readSync(fd, buf, 0, HEAD_BYTES, 0);
  } finally {
    closeSync(fd);
  }
  return { text: buf.toString("utf8", 0, n), whole: n < HEAD_BYTES };
}

/** What Store.planning() lists: a set of names per directory, undefined when it could not be listed. */
interface Listing {
  views: Set<string> | undefined;
  records: Set<string> | undefined;
  objects: Set<string> | undefined;
  sums: Set<string> | undefined;
  tests: Set<string> | undefined;
}

/** A value now, or a promise of it when it takes I/O off the main thread (see Store.recordNow). */
type Now<T> = T | Promise<T>;

/** `f` of `v`, at once when `v` is a value, after it when it is a promise. */
function after<T, U>(v: Now<T>, f: (t: T) => Now<U>): Now<U> {
  return v instanceof Promise ? v.then(f) : f(v);
}

/** The names in `dir`: empty when it does not exist, undefined when it cannot be listed (then each name is asked for). */
function listNames(dir: string): Set<string> | undefined {
  try {
    return new Set(readdirSync(dir));
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ENOENT" ? new Set() : undefined;
  }
}

/** An object's sha256 as the records and sums write it (`sha256:HEX`). */
async function objectDigest(file: string): Promise<string> {
  return `sha256:${await sha256File(file)}`;
}
