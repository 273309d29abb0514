/**
 * The module layering of src/ (LAYERS in .dependency-cruiser.cjs) holds: no import cycle, no upward or
 * sideways import, no command importing another. The second half proves the check can fail: a small tree
 * with each kind of violation must be reported, rule by rule.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { createRequire } from "node:module";
import { cruise, type ICruiseOptions, type ICruiseResult, type IViolation } from "dependency-cruiser";
import { afterAll, describe, expect, it } from "vitest";
import { repoRoot } from "../helpers/cli.js";

const require = createRequire(import.meta.url);

async function check(baseDir: string): Promise<{ violations: IViolation[]; modules: number }> {
  const config = require(path.join(repoRoot, ".dependency-cruiser.cjs")) as { forbidden: unknown[]; options: Record<string, unknown> };
  const r = await cruise(["src"], { ...config.options, baseDir, validate: true, ruleSet: { forbidden: config.forbidden } } as ICruiseOptions);
  const { summary } = r.output as ICruiseResult;
  return { violations: summary.violations, modules: summary.totalCruised };
}

function show(v: IViolation): string {
  return `${v.rule.name}: ${v.from} -> ${v.to}${v.cycle ? ` (cycle ${v.cycle.map((c) => c.name).join(" -> ")})` : ""}`;
}

describe("module layering", () => {
  it("src/ has no import cycle and no import against LAYERS", async () => {
    const r = await check(repoRoot);
    expect(r.violations.map(show)).toEqual([]);
    // Every module was read (an import it could not resolve would be a violation of its own).
    expect(r.modules).toBeGreaterThan(50);
  }, 120_000);

  it("docs/architecture.md draws exactly the edges LAYERS allows", async () => {
    const config = require(path.join(repoRoot, ".dependency-cruiser.cjs")) as { forbidden: Array<{ name: string; from?: { path?: string }; to?: { pathNot?: string } }> };
    // LAYERS, read back from the rules made of it: `layer-X` forbids src/ except ^src/(X|allowed...)/
    const allowed = new Set<string>();
    for (const r of config.forbidden.filter((f) => f.name.startsWith("layer-"))) {
      const from = r.name.slice("layer-".length);
      const list = /^\^src\/\((.*)\)\/$/.exec(r.to?.pathNot ?? "")?.[1]?.split("|") ?? [];
      for (const to of list) if (to !== from) allowed.add(`${from} --> ${to}`);
    }
    expect(allowed.size).toBeGreaterThan(20);
    const doc = await fs.readFile(path.join(repoRoot, "docs/architecture.md"), "utf8");
    const graph = /```mermaid\ngraph TD\n([\s\S]*?)```/.exec(doc)?.[1] ?? "";
    const drawn = new Set(graph.split("\n").map((l) => l.trim()).filter(Boolean));
    // util is allowed everywhere and drawn only under the folders that import nothing else of ours.
    const notUtil = (e: string): boolean => !e.endsWith("--> util");
    expect([...drawn].filter(notUtil).sort()).toEqual([...allowed].filter(notUtil).sort());
    for (const e of drawn) expect(allowed.has(e), e).toBe(true);
  });

  let tmp: string | undefined;
  afterAll(async () => {
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  it("reports a cycle, an upward import, a command importing a command, an unknown folder", async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-layers-"));
    const files: Record<string, string> = {
      "src/util/a.ts": 'import { b } from "./b.js";\nexport const a = b;\n',
      "src/util/b.ts": 'import { a } from "./a.js";\nexport const b = () => a;\n',
      "src/plan/p.ts": 'import { run } from "../exec/e.js";\nexport const p = run;\n',
      "src/exec/e.ts": "export const run = 1;\n",
      "src/cli/commands/x.ts": 'import { y } from "./y.js";\nexport const x = y;\n',
      "src/cli/commands/y.ts": "export const y = 1;\n",
      "src/extra/z.ts": 'import { a } from "../util/a.js";\nexport const z = a;\n',
    };
    for (const [rel, text] of Object.entries(files)) {
      await fs.mkdir(path.dirname(path.join(tmp, rel)), { recursive: true });
      await fs.writeFile(path.join(tmp, rel), text);
    }
    const r = await check(tmp);
    const v = r.violations.map(show).sort();
    expect(v).toEqual([
      "layer-plan: src/plan/p.ts -> src/exec/e.ts",
      "no-command-to-command: src/cli/commands/x.ts -> src/cli/commands/y.ts",
      "no-cycle: src/util/a.ts -> src/util/b.ts (cycle src/util/b.ts -> src/util/a.ts)",
      "no-unknown-folder: src/extra/z.ts -> src/util/a.ts",
    ]);
  }, 120_000);
});
