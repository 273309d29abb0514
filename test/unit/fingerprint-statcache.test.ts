// The stat cache's layers beyond per-file stats: reused directory listings, reused layer digests, and
// what must defeat each of them.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadProject } from "../../src/project/load.js";
import { makePlan } from "../../src/plan/planner.js";
import { StatCache } from "../../src/plan/statcache.js";
import type { Plan } from "../../src/model/plan.js";
import { FakeStore, demoProject, exe, writeFixture } from "../helpers/fixture.js";
import type { Description, Fixture } from "../helpers/fixture.js";

let fx: Fixture;
afterEach(async () => {
  await fx.cleanup();
});

/** Past the cache's racy window, so what was just written can be trusted on the next run. */
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 150));

interface Run {
  plan: Plan;
  keys: Record<string, string>;
  hashed: string[];
  listed: string[];
}

/** A plan as a fresh process runs it: the stat cache loaded from disk, and saved afterwards. */
async function run(stacks: "all" | string[] = "all"): Promise<Run> {
  const project = await loadProject(fx.root);
  const cache = await StatCache.load(project.settings.buildDir, fx.root);
  const hashed: string[] = [];
  const listed: string[] = [];
  cache.onHash = (p) => hashed.push(p);
  cache.onList = (p) => listed.push(p);
  const plan = await makePlan(project, stacks, new FakeStore(project.settings.buildDir), { statCache: cache });
  await cache.save();
  return { plan, keys: Object.fromEntries(plan.nodes.map((n) => [n.stack, n.key])), hashed: hashed.sort(), listed: listed.sort() };
}

const WEB = ["micro:web", "micro:web:openstack", "micro:web:vagrant"];
const changed = (a: Record<string, string>, b: Record<string, string>): string[] =>
  [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((s) => a[s] !== b[s]).sort();

async function warm(extra: Description = {}): Promise<Run> {
  fx = await writeFixture(demoProject({ "layers/web/target/etc/conf.d/a.conf": "a\n", ...extra }));
  await settle();
  const first = await run();
  expect(first.hashed.length).toBe(first.plan.hashStats!.files);
  return first;
}

describe("stat cache: directory listings", () => {
  it("a warm no-op plan lists no directory and reads no file", async () => {
    const first = await warm();
    expect(first.listed).toContain("layers/web/target/etc/conf.d");
    const again = await run();
    expect(again.listed).toEqual([]);
    expect(again.hashed).toEqual([]);
    expect(again.keys).toEqual(first.keys);
  });

  it("notices a file added, removed or renamed behind a reused listing, and lists only that directory", async () => {
    const first = await warm();
    await settle();
    await fx.write("layers/web/target/etc/conf.d/b.conf", "b\n");
    await settle();
    const added = await run();
    expect(changed(first.keys, added.keys)).toEqual(WEB);
    expect(added.listed).toEqual(["layers/web/target/etc/conf.d"]);
    expect(added.hashed).toEqual(["layers/web/target/etc/conf.d/b.conf"]);

    await settle();
    await fs.rename(fx.path("layers/web/target/etc/conf.d/b.conf"), fx.path("layers/web/target/etc/conf.d/c.conf"));
    await settle();
    const renamed = await run();
    expect(changed(added.keys, renamed.keys)).toEqual(WEB);
    expect(changed(first.keys, renamed.keys)).toEqual(WEB);
    expect(renamed.listed).toEqual(["layers/web/target/etc/conf.d"]);

    await settle();
    await fx.remove("layers/web/target/etc/conf.d/c.conf");
    await settle();
    const removed = await run();
    expect(removed.keys).toEqual(first.keys);
    expect(removed.listed).toEqual(["layers/web/target/etc/conf.d"]);
    expect(removed.hashed).toEqual([]);
  });

  it("notices a file replaced by a directory of the same name, and a new empty directory", async () => {
    const first = await warm();
    await settle();
    await fx.remove("layers/web/target/etc/conf.d/a.conf");
    await fx.write("layers/web/target/etc/conf.d/a.conf/inner", "a\n");
    const replaced = await run();
    expect(changed(first.keys, replaced.keys)).toEqual(WEB);
    expect(replaced.plan.nodes.find((n) => n.stack === "micro:web")!.inputs).toMatchObject({
      "dir:target/etc/conf.d/a.conf": "dir",
    });
    await settle();
    await fx.write("layers/web/target/empty", { dir: true });
    const withDir = await run();
    expect(changed(replaced.keys, withDir.keys)).toEqual(WEB);
  });

  it("does not trust a listing taken within the racy window: the directory is listed again next time", async () => {
    const first = await warm();
    const dir = fx.path("layers/web/target/etc/conf.d");
    await fx.write("layers/web/target/etc/conf.d/b.conf", "b\n");
    // An mtime in the future keeps the directory inside the window however slowly this machine runs.
    const soon = new Date(Date.now() + 60_000);
    await fs.utimes(dir, soon, soon);
    const racy = await run();
    expect(racy.listed).toEqual(["layers/web/target/etc/conf.d"]);
    expect(changed(first.keys, racy.keys)).toEqual(WEB);
    // Nothing changed, but an entry could have appeared in the same tick as that listing: list again.
    const next = await run();
    expect(next.listed).toEqual(["layers/web/target/etc/conf.d"]);
    expect(next.keys).toEqual(racy.keys);
    const past = new Date(Date.now() - 60_000);
    await fs.utimes(dir, past, past);
    await settle();
    const settled = await run();
    expect(settled.listed).toEqual(["layers/web/target/etc/conf.d"]);
    const quiet = await run();
    expect(quiet.listed).toEqual([]);
    expect(quiet.hashed).toEqual([]);
    expect(quiet.keys).toEqual(racy.keys);
  });
});

describe("stat cache: layer digests", () => {
  it("a file edited within the racy window is read again on the next run, and its edit counts", async () => {
    const first = await warm();
    const f = "layers/web/target/etc/conf.d/a.conf";
    await fx.write(f, "A\n");
    const soon = new Date(Date.now() + 60_000);
    await fs.utimes(fx.path(f), soon, soon);
    const edited = await run();
    expect(edited.hashed).toEqual([f]);
    expect(changed(first.keys, edited.keys)).toEqual(WEB);
    // Its stat is unchanged, but a second edit in the same tick would not have moved it: read again.
    const again = await run();
    expect(again.hashed).toEqual([f]);
    expect(again.keys).toEqual(edited.keys);
    const past = new Date(Date.now() - 60_000);
    await fs.utimes(fx.path(f), past, past);
    await settle();
    expect((await run()).hashed).toEqual([f]);
    expect((await run()).hashed).toEqual([]);
  });

  it("a directory shared by two layers through symlinks: planning one layer never makes the other's digest look current", async () => {
    const first = await warm({
      "shared/conf/x.conf": "x\n",
      "layers/web/target/conf": { symlink: "../../../shared/conf" },
      "layers/db/target/conf": { symlink: "../../../shared/conf" },
    });
    await settle();
    await fx.write("shared/conf/y.conf", "y\n");
    await settle();
    const dbOnly = await run(["micro:db:openstack"]);
    expect(changed(first.keys, dbOnly.keys)).toEqual(["micro:db", "micro:db:openstack", "micro:web", "micro:web:openstack", "micro:web:vagrant"]);
    const all = await run();
    expect(changed(first.keys, all.keys)).toEqual(["micro:db", "micro:db:openstack", ...WEB]);
    expect(all.keys["micro:db"]).toBe(dbOnly.keys["micro:db"]);
  });

  it("a symlink retargeted to identical content, and a symlink turned into a file, change the key", async () => {
    const first = await warm({ "layers/web/target/a": "same\n", "layers/web/target/b": "same\n", "layers/web/target/link": { symlink: "a" } });
    await settle();
    await fx.write("layers/web/target/link", { symlink: "b" });
    const retargeted = await run();
    expect(changed(first.keys, retargeted.keys)).toEqual(WEB);
    await settle();
    await fx.write("layers/web/target/link", "same\n");
    const file = await run();
    expect(changed(retargeted.keys, file.keys)).toEqual(WEB);
    expect(changed(first.keys, file.keys)).toEqual(WEB);
  });

  it("a convert symlink retargeted changes the key; chmod +x too", async () => {
    const first = await warm({
      "utils/one.sh": exe("#!/bin/sh\n"),
      "utils/two.sh": exe("#!/bin/sh\n"),
      "layers/openstack/convert": { symlink: "../../utils/one.sh" },
    });
    await settle();
    await fx.write("layers/openstack/convert", { symlink: "../../utils/two.sh" });
    const relinked = await run();
    expect(changed(first.keys, relinked.keys)).toEqual(["micro:db:openstack", "micro:web:openstack"]);
    await settle();
    await fs.chmod(fx.path("layers/web/target/etc/conf.d/a.conf"), 0o755);
    const chmodded = await run();
    expect(changed(relinked.keys, chmodded.keys)).toEqual(WEB);
    expect(chmodded.plan.nodes.find((n) => n.stack === "micro:web")!.inputs["file:target/etc/conf.d/a.conf"]).toMatch(/:x$/);
  });

  it("a reused digest still gives the full manifest, identical to the one a cold plan computes", async () => {
    const first = await warm();
    const again = await run();
    expect(again.hashed).toEqual([]);
    for (const n of again.plan.nodes) expect(n.inputs).toEqual(first.plan.nodes.find((m) => m.stack === n.stack)!.inputs);
  });

  it("a corrupt or foreign cache file is an empty cache", async () => {
    const first = await warm();
    const file = StatCache.cachePath(path.join(fx.root, "build"));
    const good = JSON.parse(await fs.readFile(file, "utf8")) as { layers: Record<string, unknown> };
    for (const k of Object.keys(good.layers)) good.layers[k] = ["0".repeat(64), [[1, 2, 3], [7, ["x"], null, ["a", 0, "b"]]]];
    await fs.writeFile(file, JSON.stringify(good));
    const mangled = await run();
    expect(mangled.keys).toEqual(first.keys);
    expect(mangled.hashed.length).toBe(mangled.plan.hashStats!.files);
    await fs.writeFile(file, "{not json");
    const broken = await run();
    expect(broken.keys).toEqual(first.keys);
  });
});
