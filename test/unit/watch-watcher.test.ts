/**
 * The file watcher against a real directory (chokidar on a temp dir), and the change -> targets lookup.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Project } from "../../src/project/types.js";
import { DbuildError } from "../../src/util/errors.js";
import { affectedStacks, layerOfPath, requireAffected } from "../../src/watch/affected.js";
import { isEditorNoise, resolveWatchPaths, startWatcher, type Watcher } from "../../src/watch/watcher.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe("isEditorNoise", () => {
  it.each([".install.swp", ".install.swx", ".install.swo", "install~", "4913", ".#install", "#install#", "x.tmp", ".goutputstream-AB12CD"])(
    "%s is noise",
    (f) => expect(isEditorNoise(`layers/web/target/${f}`)).toBe(true),
  );
  it.each(["install", "README", "swp", "install.sh", "a4913", ".config"])("%s is a real file", (f) => expect(isEditorNoise(`layers/web/${f}`)).toBe(false));
});

describe("affected stacks", () => {
  const project = {
    root: "/p",
    targets: [{ stack: "micro:web:openstack" }, { stack: "micro:db" }, { stack: "micro:web:vagrant" }, { stack: "micro:webx" }],
  } as unknown as Project;

  it("maps layers/NAME/... to NAME", () => {
    expect(layerOfPath(path.join("layers", "web", "target", "install"))).toBe("web");
    expect(layerOfPath("layers")).toBeUndefined();
    expect(layerOfPath(path.join("utils", "vm-functions"))).toBeUndefined();
  });
  it("a layer's change concerns the targets containing that layer, nothing else", () => {
    expect(affectedStacks(project, ["layers/web/target/install"])).toEqual(["micro:web:openstack", "micro:web:vagrant"]);
    expect(affectedStacks(project, ["layers/openstack/convert"])).toEqual(["micro:web:openstack"]);
    expect(affectedStacks(project, ["layers/db/x", "layers/webx/y"])).toEqual(["micro:db", "micro:webx"]);
  });
  it("a change outside layers/ concerns every target; --stack wins", () => {
    expect(affectedStacks(project, ["utils/vm-functions"])).toHaveLength(4);
    expect(affectedStacks(project, ["layers/web/x"], ["micro:db", "micro:db"])).toEqual(["micro:db"]);
  });
  it("a layer no target uses is a user error naming the layer", () => {
    expect(() => requireAffected(project, ["layers/nothere"])).toThrow(DbuildError);
    expect(() => requireAffected(project, ["layers/nothere"])).toThrow(/no stack in targets\/ contains layer nothere/);
  });
});

describe("watcher on a real directory", () => {
  let root: string;
  let w: Watcher | undefined;
  let seen: string[];

  beforeEach(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-watch-unit-"));
    await fs.mkdir(path.join(root, "layers", "web", "target"), { recursive: true });
    await fs.mkdir(path.join(root, "layers", "db"), { recursive: true });
    await fs.mkdir(path.join(root, "build"), { recursive: true });
    await fs.writeFile(path.join(root, "layers", "web", "target", "install"), "echo 1\n");
    await fs.writeFile(path.join(root, "layers", "web", "target", "other"), "x\n");
    seen = [];
  });
  afterEach(async () => {
    await w?.close();
    w = undefined;
    await fs.rm(root, { recursive: true, force: true });
  });

  async function watchPaths(...given: string[]): Promise<void> {
    const specs = await resolveWatchPaths(root, given, root);
    w = await startWatcher({ root, specs, ignoreDirs: [path.join(root, "build")], onChange: (p) => seen.push(p), onError: (e) => seen.push(`error ${e.message}`) });
  }

  /** Wait until `n` changes have been seen (or fail after a while), then a little more for strays. */
  async function settle(n: number): Promise<void> {
    for (let i = 0; i < 100 && seen.length < n; i++) await sleep(30);
    await sleep(400);
  }

  it("reports an edit in a layer directory with its project-relative path", async () => {
    await watchPaths("layers/web");
    await fs.writeFile(path.join(root, "layers", "web", "target", "install"), "echo 2\n");
    await settle(1);
    expect([...new Set(seen)]).toEqual([path.join("layers", "web", "target", "install")]);
  });

  it("ignores swap, backup and temp files, and other layers", async () => {
    await watchPaths("layers/web");
    const t = path.join(root, "layers", "web", "target");
    await fs.writeFile(path.join(t, ".install.swp"), "swap");
    await fs.writeFile(path.join(t, "install~"), "backup");
    await fs.writeFile(path.join(t, "4913"), "");
    await fs.writeFile(path.join(t, ".#install"), "lock");
    await fs.writeFile(path.join(t, "x.tmp"), "tmp");
    await fs.writeFile(path.join(root, "layers", "db", "install"), "db");
    await fs.writeFile(path.join(root, "build", "x.qcow2"), "img");
    await sleep(300);
    // A real edit afterwards proves the watcher was listening all along.
    await fs.writeFile(path.join(t, "other"), "z\n");
    await settle(1);
    expect([...new Set(seen)]).toEqual([path.join("layers", "web", "target", "other")]);
  });

  it("an atomic save (write a temp file, rename it over the original) is one change of the original", async () => {
    await watchPaths("layers/web");
    const t = path.join(root, "layers", "web", "target");
    await fs.writeFile(path.join(t, ".goutputstream-XYZ123"), "echo 3\n");
    await fs.rename(path.join(t, ".goutputstream-XYZ123"), path.join(t, "install"));
    await settle(1);
    expect([...new Set(seen)]).toEqual([path.join("layers", "web", "target", "install")]);
  });

  it("watching one file reports that file (also across an atomic save) and not its siblings", async () => {
    await watchPaths("layers/web/target/install");
    const t = path.join(root, "layers", "web", "target");
    await fs.writeFile(path.join(t, "other"), "y\n");
    await fs.writeFile(path.join(t, "install.tmp"), "echo 4\n");
    await fs.rename(path.join(t, "install.tmp"), path.join(t, "install"));
    await settle(1);
    await fs.writeFile(path.join(t, "install"), "echo 5\n");
    await settle(2);
    expect(seen.length).toBeGreaterThanOrEqual(2);
    expect([...new Set(seen)]).toEqual([path.join("layers", "web", "target", "install")]);
  });

  it("refuses paths that do not exist or lie outside the project", async () => {
    await expect(resolveWatchPaths(root, ["layers/nope"], root)).rejects.toThrow(/no such file/);
    await expect(resolveWatchPaths(root, [os.tmpdir()], root)).rejects.toThrow(/not inside the project/);
    await expect(resolveWatchPaths(root, [], root)).rejects.toThrow(/no path to watch/);
  });
});
