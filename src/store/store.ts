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
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { NodeKey } from "../model/plan.js";
import type { NodeRecord, StoreView, TestRecord } from "../model/store.js";
import { qcow2Backing } from "./qcow2.js";
import { qemuImg } from "./qemu-img.js";
import { sha256File } from "../util/digest.js";
import { pathExists } from "../util/fs.js";
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
  private readonly objectOkCache = new Map<string, Promise<boolean>>();
  /** Recorded passes of layer tests, `<key>-<test digest>.json`. */
  readonly testsDir: string;
  private readonly recordCache = new Map<string, NodeRecord | null>();
  /** Digests of objects published by this process, picked up by commit() for their records. */
  private readonly publishedDigests = new Map<string, string>();

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
    return path.join(this.buildDir, `${stack}.qcow2`);
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

  async record(key: NodeKey): Promise<NodeRecord | undefined> {
    const hit = this.recordCache.get(key);
    if (hit !== undefined) return hit ?? undefined;
    let rec: NodeRecord | null = null;
    try {
      rec = JSON.parse(await fs.readFile(path.join(this.recordsDir, `${key}.json`), "utf8")) as NodeRecord;
      // A record without its object is not an image (object deleted by hand, or gc in progress), nor is one
      // whose object, or an object it is backed by, no longer matches what was published (bit rot, a
      // write through a chmod, a torn copy): that node is rebuilt rather than used.
      if (!(await pathExists(this.objectPath(rec.object)))) rec = null;
      else if (!(await this.chainOk(rec.object))) rec = null;
      else if (rec.deliverable && !(await this.objectOk(rec.deliverable.object))) rec = null;
    } catch {
      rec = null;
    }
    this.recordCache.set(key, rec);
    return rec ?? undefined;
  }

  /**
   * True if the object still matches its publish-time sum: same size, and either the same mtime and ctime
   * (cheap: nothing wrote to it) or, when they changed (a copy of the build dir, a write), the same
   * sha256, re-checked once and then re-stamped. Objects published before sums existed are trusted.
   */
  objectOk(name: string): Promise<boolean> {
    let p = this.objectOkCache.get(name);
    if (!p) {
      p = this.checkObject(name);
      this.objectOkCache.set(name, p);
    }
    return p;
  }

  private async checkObject(name: string): Promise<boolean> {
    const sumFile = path.join(this.sumsDir, `${name}.json`);
    let sum: ObjectSum;
    try {
      sum = JSON.parse(await fs.readFile(sumFile, "utf8")) as ObjectSum;
    } catch {
      return true;
    }
    let st: import("node:fs").Stats;
    try {
      st = await fs.stat(this.objectPath(name));
    } catch {
      return false;
    }
    if (st.size !== sum.size) return false;
    if (st.mtimeMs === sum.mtimeMs && st.ctimeMs === sum.ctimeMs) return true;
    if ((await objectDigest(this.objectPath(name))) !== sum.digest) return false;
    await writeFileAtomic(sumFile, JSON.stringify({ ...sum, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs }) + "\n").catch(() => undefined);
    return true;
  }

  /** objectOk for the object and every store object it is backed by (a child's delta needs its parent's bytes). */
  async chainOk(name: string): Promise<boolean> {
    let cur: string | undefined = this.objectPath(name);
    for (let depth = 0; cur && path.dirname(cur) === this.objectsDir && depth < 64; depth++) {
      if (!(await this.objectOk(path.basename(cur)))) return false;
      cur = await qcow2Backing(cur);
    }
    return true;
  }

  /** Object file name the view of `stack` points at, if the view is a link into the objects dir. */
  async viewObject(stack: string): Promise<string | undefined> {
    return this.linkedObject(this.viewPath(stack));
  }

  private async linkedObject(link: string): Promise<string | undefined> {
    try {
      const target = await fs.readlink(link);
      const abs = path.resolve(path.dirname(link), target);
      if (path.dirname(abs) !== this.objectsDir) return undefined;
      if (!(await pathExists(abs))) return undefined;
      return path.basename(abs);
    } catch {
      return undefined;
    }
  }

  async currentRecord(stack: string): Promise<NodeRecord | undefined> {
    const obj = await this.viewObject(stack);
    if (obj) {
      const key = obj.split(".")[0] as NodeKey;
      const rec = await this.record(key);
      if (rec) return rec;
    }
    // The view was deleted: fall back to the last record written for this stack, so `why` and the
    // staleness reasons can still compare inputs.
    return this.lastRecordForStack(stack);
  }

  private stackIndex: Map<string, NodeRecord> | undefined;

  private async lastRecordForStack(stack: string): Promise<NodeRecord | undefined> {
    if (!this.stackIndex) {
      this.stackIndex = new Map();
      let names: string[] = [];
      try {
        names = await fs.readdir(this.recordsDir);
      } catch {
        names = [];
      }
      for (const n of names) {
        if (!n.endsWith(".json")) continue;
        const rec = await this.record(n.slice(0, -5) as NodeKey);
        if (!rec) continue;
        const prev = this.stackIndex.get(rec.stack);
        if (!prev || prev.builtAt < rec.builtAt) this.stackIndex.set(rec.stack, rec);
      }
    }
    return this.stackIndex.get(stack);
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

  async viewShows(stack: string, key: NodeKey): Promise<boolean> {
    const rec = await this.record(key);
    if (!rec) return false;
    if ((await this.viewObject(stack)) !== rec.object) return false;
    if (rec.deliverable) {
      const link = path.join(this.buildDir, rec.deliverable.path);
      if ((await this.linkedObject(link)) !== rec.deliverable.object) return false;
    }
    return true;
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
    await writeFileAtomic(path.join(this.recordsDir, `${rec.key}.json`), JSON.stringify(next, null, 2) + "\n");
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
        await fs.unlink(tmpFile);
        await fsyncPath(this.objectsDir);
        const st = await fs.stat(this.objectPath(name));
        const sum: ObjectSum = { size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, digest: fileDigest };
        await writeFileAtomic(path.join(this.sumsDir, `${name}.json`), JSON.stringify(sum) + "\n");
        this.objectOkCache.set(name, Promise.resolve(true));
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
    await writeFileAtomic(path.join(this.recordsDir, `${rec.key}.json`), JSON.stringify(rec, null, 2) + "\n");
    this.recordCache.set(rec.key, rec);
  }

  private testFile(key: NodeKey, digest: string): string {
    return path.join(this.testsDir, `${key}-${digest.slice(0, 32)}.json`);
  }

  async testsPassed(key: NodeKey, digest: string): Promise<boolean> {
    let pass: Partial<TestRecord>;
    try {
      pass = JSON.parse(await fs.readFile(this.testFile(key, digest), "utf8")) as Partial<TestRecord>;
    } catch {
      return false;
    }
    const rec = await this.record(key);
    return rec !== undefined && pass.object === rec.object;
  }

  /** Drop a recorded pass (the tests just failed on that image, e.g. under `dbuild test`). */
  async forgetTestPass(key: NodeKey, digest: string): Promise<void> {
    await fs.rm(this.testFile(key, digest), { force: true });
  }

  /** Record that the tests with this digest passed on the image of `rec.key` (only passes are cached). */
  async recordTestPass(rec: TestRecord): Promise<void> {
    await fs.mkdir(this.testsDir, { recursive: true });
    await writeFileAtomic(this.testFile(rec.key, rec.digest), JSON.stringify(rec, null, 2) + "\n");
  }

  /** Write the record, then point the user's views at the new objects (each an atomic rename). */
  async commit(rec: NodeRecord): Promise<void> {
    rec.digest ??= this.publishedDigests.get(rec.object);
    delete rec.held;
    await writeFileAtomic(path.join(this.recordsDir, `${rec.key}.json`), JSON.stringify(rec, null, 2) + "\n");
    this.recordCache.set(rec.key, rec);
    this.stackIndex?.set(rec.stack, rec);
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
  }

  /** Drop a record (gc): its object is gone, so it no longer describes an image. */
  async removeRecord(key: NodeKey): Promise<void> {
    await fs.rm(path.join(this.recordsDir, `${key}.json`), { force: true });
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

/** An object's sha256 as the records and sums write it (`sha256:HEX`). */
async function objectDigest(file: string): Promise<string> {
  return `sha256:${await sha256File(file)}`;
}
