import * as fs from "node:fs/promises";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { layerYaml, projectYaml } from "../../src/project/schema.js";
import { defaultSettings } from "../../src/project/load.js";

interface JsonSchema {
  properties?: Record<string, JsonSchema>;
  description?: string;
  default?: unknown;
}

/** Every property path of a JSON schema, e.g. "timeouts.boot". */
function paths(s: JsonSchema, prefix = ""): string[] {
  return Object.entries(s.properties ?? {}).flatMap(([k, v]) => [prefix + k, ...paths(v, `${prefix}${k}.`)]);
}

const read = async (f: string): Promise<JsonSchema> =>
  JSON.parse(await fs.readFile(path.join(import.meta.dirname, "../../schema", f), "utf8")) as JsonSchema;

describe("shipped JSON schemas", () => {
  it("demobuild.schema.json has the same keys as the zod schema, each described", async () => {
    const shipped = await read("demobuild.schema.json");
    expect(paths(shipped).sort()).toEqual(paths(z.toJSONSchema(projectYaml) as JsonSchema).sort());
    const all = (s: JsonSchema): JsonSchema[] => Object.values(s.properties ?? {}).flatMap((v) => [v, ...all(v)]);
    for (const p of all(shipped)) expect(p.description).toBeTruthy();
  });

  it("demobuild.schema.json defaults match the loader's", async () => {
    const shipped = await read("demobuild.schema.json");
    const d = defaultSettings("/p");
    const def = (p: string): unknown => p.split(".").reduce<JsonSchema | undefined>((s, k) => s?.properties?.[k], shipped)?.default;
    expect(def("buildDir")).toBe("build");
    expect(def("defaults.mem")).toBe(d.defaults.mem);
    expect(def("defaults.cpus")).toBe(d.defaults.cpus);
    expect(def("buildVm.mem")).toBe(d.buildVm.mem);
    expect(def("buildVm.cpus")).toBe(d.buildVm.cpus);
    expect(def("timeouts.boot")).toBe(d.timeouts.boot);
    expect(def("timeouts.install")).toBe(d.timeouts.install);
    expect(def("timeouts.shutdown")).toBe(d.timeouts.shutdown);
    expect(def("network.mode")).toBe(d.network.mode);
    expect(def("network.bridge")).toBe(d.network.bridge);
    expect(def("accelerator")).toBe(d.accelerator);
  });

  it("layer.schema.json has the same keys as the zod schema", async () => {
    const shipped = await read("layer.schema.json");
    expect(paths(shipped).sort()).toEqual(paths(z.toJSONSchema(layerYaml, { io: "input" }) as JsonSchema).sort());
  });
});
