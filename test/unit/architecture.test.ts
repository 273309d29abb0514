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
