// npm run bench [-- NAME...]: runs bench/NAME.bench.js (all of them by default); each writes
// docs/bench/NAME.md, and this script joins those sections into docs/benchmarks.md (`-- --join`: only that).
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const all = fs.readdirSync(here).filter((f) => f.endsWith(".bench.js")).map((f) => f.replace(/\.bench\.js$/, "")).sort();
// --join: only rebuild docs/benchmarks.md from the sections already measured.
const args = process.argv.slice(2);
const joinOnly = args.includes("--join");
const wanted = joinOnly ? [] : args.length ? args : all;
let failed = 0;
for (const name of wanted) {
  if (!all.includes(name)) {
    console.error(`no benchmark "${name}" (have: ${all.join(", ")})`);
    process.exit(2);
  }
  console.log(`== bench ${name}`);
  const r = spawnSync(process.execPath, [path.join(here, `${name}.bench.js`)], { stdio: "inherit", cwd: root });
  if (r.status !== 0) {
    console.error(`bench ${name} failed (exit ${r.status})`);
    failed++;
  }
}
const dir = path.join(root, "docs", "bench");
const sections = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith(".md")).sort() : [];
const head = `# Benchmarks

Measured on the development machine (2 cores, no KVM: QEMU under TCG, Debian 12). Each section names the
command that reproduces it; \`npm run bench\` runs them all and rewrites this file. Ratios are measured within
one run, because this machine is noisy.
`;
fs.writeFileSync(
  path.join(root, "docs", "benchmarks.md"),
  head + sections.map((f) => "\n" + fs.readFileSync(path.join(dir, f), "utf8").trim() + "\n").join(""),
);
process.exit(failed ? 1 : 0);
