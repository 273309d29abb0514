/**
 * The watch --shell hand-off's disk juggling on real qcow2 files (qemu-img, qemu-io; no VM): after the
 * build VM's poweroff, the published image is one delta over the parent holding every write (the layer's
 * and the poweroff's), and the frozen disk the shell resumes keeps only what was written before the
 * freeze, with an absolute backing chain, registered with the store and removed with the hand-off.
 * The end-to-end proof with a real build VM is in test/e2e/watch.test.ts.
 */
import { execFileSync } from "node:child_process";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, expect, it } from "vitest";
import { removeHandoff, settleHandoff, type Handoff } from "../../src/exec/handoff.js";
import { registeredSnapshots } from "../../src/store/snapshots.js";
import { Store } from "../../src/store/store.js";

let tmp: string;
const img = (...a: string[]): string => execFileSync("qemu-img", a, { encoding: "utf8" });
const io = (file: string, cmd: string): string => execFileSync("qemu-io", ["-c", cmd, file], { encoding: "utf8" });
/** Does `file` read `pattern` (one byte value) over the range? */
const holds = (file: string, pattern: number, off: string, len: string): boolean => !/Pattern verification failed/.test(io(file, `read -P ${pattern} ${off} ${len}`));
const info = (file: string): Record<string, string> => JSON.parse(img("info", "--output=json", file)) as Record<string, string>;

beforeEach(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-handoff-unit-"));
});
afterEach(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

it("publishes parent + layer + poweroff writes as one delta; the frozen disk keeps the pre-poweroff state", async () => {
  const store = new Store(path.join(tmp, "build"));
  await store.init();
  const parent = path.join(tmp, "parent.qcow2");
  img("create", "-q", "-f", "qcow2", parent, "64M");
  io(parent, "write -P 0x11 0 1M");
  // A warm boot overlay below the layer's disk (as when the parent's snapshot was saved in this build).
  const boot = path.join(tmp, "warm", "boot.qcow2");
  await fs.mkdir(path.dirname(boot));
  img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", parent, boot);
  io(boot, "write -P 0x22 1M 1M");
  // The layer's disk, in the build dir's temporary folder, backed by a relative path.
  const work = path.join(tmp, "build", "tmp");
  await fs.mkdir(work, { recursive: true });
  const tmpImage = path.join(work, "micro:a:b.qcow2");
  img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", path.relative(work, boot), tmpImage);
  io(tmpImage, "write -P 0x33 2M 1M");
  // Frozen there; the VM went on in `next` (QEMU writes absolute backing paths), the poweroff wrote 0x44.
  const next = `${tmpImage}.next`;
  img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", tmpImage, next);
  io(next, "write -P 0x44 3M 1M");

  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-handoff-"));
  const handoff: Handoff = { stack: "micro:a:b", dir, disk: path.join(dir, "disk.qcow2"), state: path.join(dir, "state"), mac: "52:54:00:00:00:01", ip: "10.0.2.15", mem: 256, cpus: 1, user: "root", seed: false };
  const r = await settleHandoff({ store, handoff, tmpImage, next, parentPath: parent, signal: new AbortController().signal });
  expect(r).toEqual({ handoff });

  // The image to publish: every write above the parent, backed by the parent directly.
  expect(info(tmpImage)["backing-filename"]).toBe(parent);
  await expect(fs.stat(next)).rejects.toThrow();
  for (const [p, off] of [[0x11, "0"], [0x22, "1M"], [0x33, "2M"], [0x44, "3M"]] as const) expect(holds(tmpImage, p, off, "1M")).toBe(true);
  img("check", tmpImage);

  // The frozen disk: the layer's writes, not the poweroff's, over the boot overlay by an absolute path.
  expect(info(handoff.disk)["backing-filename"]).toBe(boot);
  expect(holds(handoff.disk, 0x33, "2M", "1M")).toBe(true);
  expect(holds(handoff.disk, 0x22, "1M", "1M")).toBe(true);
  expect(holds(handoff.disk, 0x00, "3M", "1M")).toBe(true);
  expect(await registeredSnapshots(store, { prune: false })).toEqual([handoff.disk]);

  await removeHandoff(store, handoff);
  await expect(fs.stat(dir)).rejects.toThrow();
  expect(await registeredSnapshots(store, { prune: false })).toEqual([]);
});
