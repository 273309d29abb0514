// The racy check on a file system with whole-second timestamps: a same-size rewrite in the same tick as
// the walk that hashed the file must still be seen, because the stat cache compares entries with its
// own file's mtime (a stamp on the file system's clock), not with the host's clock.
import * as fs from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadProject } from "../../src/project/load.js";
import { makePlan } from "../../src/plan/planner.js";
import { StatCache } from "../../src/plan/statcache.js";
import { canMount, mountCoarseFs } from "../helpers/coarse-fs.js";
import type { CoarseFs } from "../helpers/coarse-fs.js";
import { FakeStore, demoProject, writeFixture } from "../helpers/fixture.js";
import type { Fixture } from "../helpers/fixture.js";

let cfs: CoarseFs;
let fx: Fixture;
beforeAll(async () => {
  cfs = await mountCoarseFs();
  fx = await writeFixture(demoProject({ "layers/web/target/etc/conf.d/a.conf": "a\n" }), "p-", cfs.dir);
});
afterAll(async () => {
  await cfs?.cleanup();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A plan as a fresh process runs it: the stat cache loaded from disk (saved by makePlan). */
async function run(): Promise<{ keys: Record<string, string>; hashed: string[]; stampMs: number }> {
  const project = await loadProject(fx.root);
  const cache = await StatCache.load(project.settings.buildDir, fx.root);
  const hashed: string[] = [];
  cache.onHash = (p) => hashed.push(p);
  const plan = await makePlan(project, "all", new FakeStore(project.settings.buildDir), { statCache: cache });
  return { keys: Object.fromEntries(plan.nodes.map((n) => [n.stack, n.key])), hashed, stampMs: cache.stamp.ms };
}

/** Wait until `ms` into the next whole second of the wall clock. */
async function intoNextSecond(ms: number): Promise<void> {
  await sleep(1000 - (Date.now() % 1000) + ms);
}

describe.skipIf(!canMount())("stat cache on a file system with 1 s timestamps", () => {
  it("the mount really keeps whole seconds only", async () => {
    await fx.write("probe", "x");
    const st = await fs.stat(fx.path("probe"));
    expect(st.mtimeMs % 1000).toBe(0);
    expect(st.ctimeMs % 1000).toBe(0);
  });

  it("sees a same-size rewrite in the same tick as the walk, then trusts the file once a later stamp vouches for it", async () => {
    const file = "layers/web/target/etc/httpd.conf";
    await run();
    // Write 300 ms into a second, plan at once, rewrite within the same second: the file's mtime, ctime,
    // size and inode are all unchanged, only the content differs. (A wall-clock window of 100 ms would
    // trust the first stat: the walk runs 300+ ms after the floored mtime.)
    for (let attempt = 0; ; attempt++) {
      await intoNextSecond(300);
      await fx.write(file, "Listen 81\n");
      const before = await fs.stat(fx.path(file));
      const first = await run();
      expect(first.hashed).toContain(file);
      await fx.write(file, "Listen 82\n");
      const after = await fs.stat(fx.path(file));
      if (Date.now() % 1000 < 300 || after.mtimeMs !== before.mtimeMs) {
        // The second ended between the two writes (a slow machine): try again, a few times at most.
        expect(attempt).toBeLessThan(3);
        continue;
      }
      expect([after.size, after.mtimeMs, after.ctimeMs, after.ino]).toEqual([before.size, before.mtimeMs, before.ctimeMs, before.ino]);
      const second = await run();
      expect(second.hashed).toContain(file);
      expect(second.keys["micro:web"]).not.toBe(first.keys["micro:web"]);
      // Once the stamp is later than the file's tick, nothing is read again and the key holds.
      await intoNextSecond(0);
      const third = await run();
      const fourth = await run();
      expect(fourth.stampMs).toBeGreaterThan(after.mtimeMs);
      expect(fourth.hashed).toEqual([]);
      expect(fourth.keys).toEqual(third.keys);
      expect(third.keys["micro:web"]).toBe(second.keys["micro:web"]);
      break;
    }
  });

  it("sees a file added to a directory in the same tick as the walk that listed it", async () => {
    const dir = "layers/web/target/etc/conf.d";
    for (let attempt = 0; ; attempt++) {
      await intoNextSecond(300);
      await fx.write(`${dir}/b.conf`, "b\n");
      const before = await fs.stat(fx.path(dir));
      const first = await run();
      await fx.write(`${dir}/c.conf`, "c\n");
      const after = await fs.stat(fx.path(dir));
      await fx.remove(`${dir}/b.conf`);
      await fx.write(`${dir}/b.conf`, "b\n");
      if (Date.now() % 1000 < 300 || after.mtimeMs !== before.mtimeMs) {
        expect(attempt).toBeLessThan(3);
        await fx.remove(`${dir}/c.conf`);
        continue;
      }
      const second = await run();
      expect(second.hashed).toContain(`${dir}/c.conf`);
      expect(second.keys["micro:web"]).not.toBe(first.keys["micro:web"]);
      break;
    }
  });
});
