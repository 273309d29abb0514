// The validated-config cache: demobuild.yaml and layer.yaml values taken by their bytes, never stale,
// problems reported exactly as without it, and nothing written where no build dir exists.
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigCache } from "../../src/project/config-cache.js";
import { loadProject } from "../../src/project/load.js";
import { addlayer, demoProject, exe, problemsOf, writeFixture } from "../helpers/fixture.js";
import type { Description, Fixture } from "../helpers/fixture.js";

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.cleanup();
  fx = undefined;
});

const cacheFile = (buildDir = path.join(fx!.root, "build")): string => ConfigCache.path(buildDir);

/** A project whose build dir exists (as after a first plan), loaded once so its configs are cached. */
async function cached(desc: Description, buildDir = "build"): Promise<void> {
  fx = await writeFixture(desc);
  await fs.mkdir(path.join(fx.root, buildDir, ".dbuild"), { recursive: true });
  await loadProject(fx.root);
}

describe("config cache", () => {
  it("serves a later load every config by its bytes, and is written only where the build dir exists", async () => {
    fx = await writeFixture(demoProject({ "demobuild.yaml": "defaults: {mem: 2048}\n" }));
    const first = await loadProject(fx.root);
    // Loading a project creates nothing.
    await expect(fs.access(path.join(fx.root, "build"))).rejects.toThrow();
    await fs.mkdir(path.join(fx.root, "build", ".dbuild"), { recursive: true });
    await loadProject(fx.root);
    const data = JSON.parse(await fs.readFile(cacheFile(), "utf8")) as { entries: Record<string, { v: string }> };
    // demobuild.yaml and the two layer.yaml files.
    expect(Object.keys(data.entries)).toHaveLength(3);
    // The values really come from the cache: planted ones are what a load returns.
    for (const e of Object.values(data.entries)) {
      const v = JSON.parse(e.v) as Record<string, unknown>;
      if ("kind" in v) e.v = JSON.stringify({ ...v, description: "from the cache" });
    }
    await fs.writeFile(cacheFile(), JSON.stringify(data));
    const again = await loadProject(fx.root);
    expect(again.layers.get("openstack")!.config.description).toBe("from the cache");
    expect(again.settings).toEqual(first.settings);
  });

  it("is never stale: an edit of a layer.yaml is a new entry, a revert finds the old one", async () => {
    await cached(demoProject({ "layers/web/layer.yaml": "epoch: 1\n" }));
    expect((await loadProject(fx!.root)).layers.get("web")!.config.epoch).toBe("1");
    await fx!.write("layers/web/layer.yaml", "epoch: 2\n");
    expect((await loadProject(fx!.root)).layers.get("web")!.config.epoch).toBe("2");
    await fx!.write("layers/web/layer.yaml", "epoch: 1\n");
    expect((await loadProject(fx!.root)).layers.get("web")!.config.epoch).toBe("1");
  });

  it("problems found with cached configs are reported, and placed, as a load without the cache does", async () => {
    const desc = demoProject({
      "demobuild.yaml": "secrets:\n  token: {env: TOKEN}\n",
      // A layer no target uses, finalizing by its convert: its format: is allowed.
      "layers/extra/install": addlayer(),
      "layers/extra/layer.yaml": "description: extra\nformat: qcow2\nsecrets: [token]\n",
      "layers/extra/convert": exe("#!/bin/sh\n"),
    });
    await cached(desc);
    // convert no longer executable: extra is intermediate now, and format: is a problem at a position
    // the cache did not record; the secret is no longer declared either.
    await fx!.write("layers/extra/convert", "#!/bin/sh\n");
    await fx!.write("demobuild.yaml", "secrets: {}\n");
    const withCache = await problemsOf(() => loadProject(fx!.root));
    await fs.rm(cacheFile());
    const without = await problemsOf(() => loadProject(fx!.root));
    expect(withCache).toEqual(without);
    expect(without.map((p) => p.where)).toEqual(expect.arrayContaining(["layers/extra/layer.yaml:2:9", "layers/extra/layer.yaml:3:11"]));
  });

  it("keeps a secret's position in demobuild.yaml for the build that reads it", async () => {
    await cached(demoProject({ "demobuild.yaml": "# secrets\nsecrets:\n  token: {env: TOKEN}\n", "layers/web/layer.yaml": "secrets: [token]\n" }));
    const p = await loadProject(fx!.root);
    expect(p.settings.secrets.token).toEqual({ env: "TOKEN", where: "demobuild.yaml:3:10" });
  });

  it("lives in a build dir set by demobuild.yaml, and ignores a cache made by other schema modules", async () => {
    await cached(demoProject({ "demobuild.yaml": "buildDir: out # here\n", "layers/web/layer.yaml": "description: web\n" }), "out");
    await loadProject(fx!.root);
    const file = cacheFile(path.join(fx!.root, "out"));
    const data = JSON.parse(await fs.readFile(file, "utf8")) as { stamp: string; entries: Record<string, { v: string }> };
    expect(Object.keys(data.entries)).toHaveLength(4);
    await expect(fs.access(path.join(fx!.root, "build"))).rejects.toThrow();
    for (const e of Object.values(data.entries)) e.v = JSON.stringify({ description: "planted" });
    await fs.writeFile(file, JSON.stringify({ ...data, stamp: "other" }));
    expect((await loadProject(fx!.root)).layers.get("web")!.config.description).toBe("web");
  });
});
