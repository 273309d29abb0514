/**
 * Load a project: demobuild.yaml (optional), layers/NAME/ in the Demobuilder layout, targets/ files.
 * Every problem found is collected and thrown at once as one DbuildError, so a user fixes a broken
 * project in one pass instead of one error per run.
 */
import { constants as fsc } from "node:fs";
// Synchronous fs on purpose: a project is hundreds of tiny files, and a thread-pool round trip per
// stat or read costs more than the call itself (see docs/bench/plan.md).
import * as fs from "node:fs";
import type { Stats } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { DbuildError } from "../util/errors.js";
import type { Problem } from "../util/errors.js";
import { ConfigCache, pathKey, type ConfigKind, type ConfigPath } from "./config-cache.js";
import type { LayerYaml, ProjectYaml } from "./schema.js";
import { LAYER_NAME, parseStack } from "./stack.js";
import type { Layer, LayerConfig, LayerKind, Project, ProjectSettings, Target } from "./types.js";
import type { YamlResult } from "./yaml.js";

// yaml and zod take longer to load than a warm plan takes to run: they are loaded on the first config
// file the config cache does not know (most layers have no layer.yaml at all).
let yamlTools: Promise<[typeof import("./yaml.js"), typeof import("./schema.js")]> | undefined;
const loadYamlTools = (): Promise<[typeof import("./yaml.js"), typeof import("./schema.js")]> =>
  (yamlTools ??= Promise.all([import("./yaml.js"), import("./schema.js")]));

export const PROJECT_FILE = "demobuild.yaml";
export const LAYER_FILE = "layer.yaml";
const TARGET_KEY = /^[A-Z_][A-Z0-9_]*$/;

const UNIT = { M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 } as const;

/** `disk:` in bytes, rounded up to whole MiB: 4G, 512M, 1.5T, or a bare number of GiB. */
export function parseDiskSize(v: number | string): number {
  if (typeof v === "number") return Math.ceil((v * UNIT.G) / UNIT.M) * UNIT.M;
  const unit = v.slice(-1) as keyof typeof UNIT;
  return Math.ceil((Number(v.slice(0, -1)) * UNIT[unit]) / UNIT.M) * UNIT.M;
}

/** Settings a tree without demobuild.yaml gets. */
export function defaultSettings(root: string): ProjectSettings {
  return {
    buildDir: path.join(root, "build"),
    defaults: { mem: 1024, cpus: 1 },
    // The micro guest and Debian minbase both install comfortably in 512 MiB; layers needing more say so
    // in layer.yaml (mem:).
    buildVm: { mem: 512, cpus: 1 },
    jobs: Math.max(1, os.availableParallelism()),
    memoryBudget: Math.max(256, Math.floor((os.totalmem() / 1024 / 1024) * 0.75)),
    timeouts: { boot: 300, install: 1800, shutdown: 60 },
    network: { mode: "user", bridge: "virbr0" },
    accelerator: "auto",
    proxy: { mode: "cache" },
    ssh: { user: "root" },
    cache: {},
    // A snapshot of a 512 MiB build VM is ~100-300 MiB (RAM in use) plus its boot overlay.
    warm: { enabled: true, maxMiB: 4096 },
    secrets: {},
  };
}

function lstatOrUndefined(p: string): Stats | undefined {
  try {
    return fs.lstatSync(p);
  } catch {
    return undefined;
  }
}

function statOrUndefined(p: string): Stats | undefined {
  try {
    return fs.statSync(p);
  } catch {
    return undefined;
  }
}

const isExecutableFile = (st: Stats | undefined): boolean =>
  st !== undefined && st.isFile() && (st.mode & (fsc.S_IXUSR | fsc.S_IXGRP | fsc.S_IXOTH)) !== 0;

/** The names in a directory, or undefined when it cannot be listed (then every name is looked up). */
function listDir(dir: string): Set<string> | undefined {
  try {
    return new Set(fs.readdirSync(dir));
  } catch {
    return undefined;
  }
}

/** One load of the project: the config cache it reads (none: every file is parsed), and what it saw of it. */
interface LoadCtx {
  cache: ConfigCache | undefined;
  /** Some config came from the cache. */
  fromCache: boolean;
  /** A position the cache did not record was asked for: the load is done again without the cache. */
  incomplete: boolean;
}

type ConfigOf<K extends ConfigKind> = K extends "project" ? ProjectYaml : LayerYaml;

/**
 * Parse and validate a config file: from the config cache when it knows these bytes, else with yaml and
 * zod (the result then goes into the cache if it has no problem, with the positions of `eager`'s paths).
 */
async function parseConfig<K extends ConfigKind>(ctx: LoadCtx, kind: K, text: string, relFile: string, eager: (v: ConfigOf<K>) => ConfigPath[]): Promise<YamlResult<ConfigOf<K>>> {
  const hit = ctx.cache?.get(kind, text);
  if (hit) {
    ctx.fromCache = true;
    return {
      value: hit.value as ConfigOf<K>,
      problems: [],
      locate: (p) => {
        const at = hit.locs[pathKey(p)];
        if (at === undefined) ctx.incomplete = true;
        return at === undefined ? relFile : `${relFile}:${at}`;
      },
    };
  }
  const [{ parseYamlFile }, { projectYaml, layerYaml }] = await loadYamlTools();
  const r = (kind === "project" ? parseYamlFile(text, relFile, projectYaml) : parseYamlFile(text, relFile, layerYaml)) as YamlResult<ConfigOf<K>>;
  if (ctx.cache && r.value !== undefined && !r.problems.length) {
    const locs: Record<string, string> = {};
    for (const p of eager(r.value)) {
      const at = r.locate(p);
      if (at.startsWith(`${relFile}:`)) locs[pathKey(p)] = at.slice(relFile.length + 1);
    }
    ctx.cache.put(kind, text, r.value, locs);
  }
  return r;
}

/**
 * Where the build dir (and so the config cache) is, from demobuild.yaml's text before it is parsed: a
 * plain `buildDir: PATH` line, else the default. Only a guess of which cache file to open: an entry is
 * found by the file's exact bytes, so a wrong guess costs a parse, never a wrong value.
 */
function buildDirGuess(root: string, text: string | undefined): string {
  const m = text === undefined ? null : /^buildDir:[ \t]*(?:"([^"\\]+)"|'([^']+)'|([^\s"'#][^#\n]*?))[ \t]*(?:#.*)?$/m.exec(text);
  return path.resolve(root, m?.[1] ?? m?.[2] ?? m?.[3] ?? "build");
}

/** demobuild.yaml's text; undefined when there is none, an Error when it cannot be read. */
function readProjectFile(root: string): string | Error | undefined {
  try {
    return fs.readFileSync(path.join(root, PROJECT_FILE), "utf8");
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "ENOENT" ? undefined : (e as Error);
  }
}

async function loadSettings(root: string, text: string | Error | undefined, ctx: LoadCtx, problems: Problem[]): Promise<{ settings: ProjectSettings; file?: string }> {
  const settings = defaultSettings(root);
  const file = path.join(root, PROJECT_FILE);
  if (text === undefined) return { settings };
  if (text instanceof Error) {
    problems.push({ reason: "unreadable", where: PROJECT_FILE, message: `cannot read: ${text.message}` });
    return { settings, file };
  }
  const r = await parseConfig(ctx, "project", text, PROJECT_FILE, (v) => Object.keys(v.secrets ?? {}).map((name) => ["secrets", name]));
  problems.push(...r.problems);
  const y = r.value;
  if (!y) return { settings, file };
  if (y.buildDir !== undefined) settings.buildDir = path.resolve(root, y.buildDir);
  Object.assign(settings.defaults, y.defaults);
  Object.assign(settings.buildVm, y.buildVm);
  if (y.jobs !== undefined) settings.jobs = y.jobs;
  if (y.memoryBudget !== undefined) settings.memoryBudget = y.memoryBudget;
  Object.assign(settings.timeouts, y.timeouts);
  Object.assign(settings.network, y.network);
  if (y.accelerator !== undefined) settings.accelerator = y.accelerator;
  if (y.proxy !== undefined) settings.proxy = y.proxy === "off" ? { mode: "off" } : { mode: "own", url: y.proxy.replace(/\/$/, "") };
  if (y.ssh?.user !== undefined) settings.ssh.user = y.ssh.user;
  if (y.cache?.from !== undefined) settings.cache.from = y.cache.from;
  if (y.cache?.to !== undefined) settings.cache.to = y.cache.to;
  Object.assign(settings.warm, y.warm);
  for (const [name, src] of Object.entries(y.secrets ?? {})) {
    const where = r.locate(["secrets", name]);
    // Only where the value lives is kept: reading it is the build's business (src/exec/secrets.ts), so a
    // plan never needs the secret, and a missing one is reported only when a build needs it.
    settings.secrets[name] = "env" in src ? { env: src.env, where } : { file: expandHome(src.file, root), where };
  }
  if (settings.buildVm.mem > settings.memoryBudget) {
    problems.push({
      reason: "memory-budget",
      where: y.memoryBudget !== undefined ? r.locate(["memoryBudget"]) : y.buildVm?.mem !== undefined ? r.locate(["buildVm", "mem"]) : PROJECT_FILE,
      message: `buildVm.mem (${settings.buildVm.mem} MiB) exceeds memoryBudget (${settings.memoryBudget} MiB): no layer could ever run`,
      hint: "raise memoryBudget or lower buildVm.mem",
    });
  }
  return { settings, file };
}

/** `~` and `~/...` are the user's home (as in a shell); other relative paths start at the project root. */
export function expandHome(p: string, root: string): string {
  if (p === "~" || p.startsWith("~/")) return path.join(os.homedir(), p.slice(1));
  return path.resolve(root, p);
}

const TEST_SIDES = ["guest", "host"] as const;

/**
 * layers/NAME/test/: executables directly in test/guest/ and test/host/ are the tests (anything else
 * there, and any subdirectory, is a helper they may use). Problems: tests that do not say which side
 * they run on, a test/ dir with none, a test: config with nothing to test.
 */
function findTests(dir: string, rel: string, config: LayerConfig, where: (key: string) => string, problems: Problem[], listed: boolean): Layer["tests"] {
  const testDir = path.join(dir, "test");
  const st = listed ? statOrUndefined(testDir) : undefined;
  if (!st?.isDirectory()) {
    if (config.test) {
      problems.push({ reason: "test-without-tests", where: where("test"), message: `test: is set but ${rel}/test/ does not exist`, hint: `add executables to ${rel}/test/guest/ (run in a VM of the image) or ${rel}/test/host/ (run on the host), or remove test:` });
    }
    return undefined;
  }
  const found: Record<(typeof TEST_SIDES)[number], string[]> = { guest: [], host: [] };
  for (const side of TEST_SIDES) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(path.join(testDir, side)).filter((n) => !n.startsWith(".")).sort();
    } catch {
      continue;
    }
    for (const n of names) if (isExecutableFile(statOrUndefined(path.join(testDir, side, n)))) found[side].push(`${side}/${n}`);
  }
  let loose: string[] = [];
  try {
    loose = fs.readdirSync(testDir).filter((n) => !TEST_SIDES.includes(n as (typeof TEST_SIDES)[number]) && !n.startsWith(".") && isExecutableFile(statOrUndefined(path.join(testDir, n))));
  } catch {
    // unreadable test/: reported by the fingerprint walk
  }
  for (const n of loose) {
    problems.push({ reason: "test-side", where: `${rel}/test/${n}`, message: "a test must say where it runs", hint: `move it to ${rel}/test/guest/ (runs in a VM of the image) or ${rel}/test/host/ (runs on the host, reaching the VM through DBUILD_SSH and DBUILD_PORT_<n>)` });
  }
  if (!found.guest.length && !found.host.length) {
    if (!loose.length) {
      problems.push({ reason: "test-none", where: `${rel}/test`, message: "no tests found (a test is an executable file in test/guest/ or test/host/)", hint: `chmod +x the test scripts, or remove ${rel}/test/` });
    }
    return undefined;
  }
  if (config.test?.ports?.length && !found.host.length) {
    problems.push({ reason: "test-ports-unused", where: where("test"), message: "test.ports forwards guest ports for host tests, but there are none", hint: `add a host test to ${rel}/test/host/, or remove test.ports` });
  }
  return { dir: testDir, guest: found.guest, host: found.host };
}

async function loadLayer(root: string, name: string, ctx: LoadCtx, problems: Problem[]): Promise<Layer | undefined> {
  const dir = path.join(root, "layers", name);
  const rel = `layers/${name}`;
  const configFile = path.join(dir, LAYER_FILE);
  // One listing rather than a failed stat (an error object each) for every file a layer may lack.
  const names = listDir(dir);
  const has = (n: string): boolean => names?.has(n) ?? true;
  let config: LayerConfig = {};
  let hasConfig = false;
  let ok = true;
  let locate: ((p: readonly (string | number)[]) => string) | undefined;
  let text: string | undefined;
  if (has(LAYER_FILE)) {
    try {
      text = fs.readFileSync(configFile, "utf8");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOENT") {
        problems.push({ reason: "unreadable", where: `${rel}/${LAYER_FILE}`, message: `cannot read: ${(e as Error).message}` });
        ok = false;
      }
    }
  }
  if (text !== undefined) {
    hasConfig = true;
    const r = await parseConfig(ctx, "layer", text, `${rel}/${LAYER_FILE}`, (v) => (v.secrets ?? []).map((_, i) => ["secrets", i]));
    problems.push(...r.problems);
    locate = r.locate;
    if (r.value) {
      const { disk, ...rest } = r.value;
      config = rest;
      if (disk !== undefined) config.disk = parseDiskSize(disk);
    } else ok = false;
  }

  const installL = has("install") ? lstatOrUndefined(path.join(dir, "install")) : undefined;
  const installS = installL?.isSymbolicLink() ? statOrUndefined(path.join(dir, "install")) : installL;
  const convertS = has("convert") ? statOrUndefined(path.join(dir, "convert")) : undefined;
  const targetS = has("target") ? statOrUndefined(path.join(dir, "target")) : undefined;
  let installIsAddlayer = false;
  if (installL?.isSymbolicLink()) {
    const link = fs.readlinkSync(path.join(dir, "install"));
    installIsAddlayer = path.basename(link) === "addlayer.sh";
  }
  const hasConvert = isExecutableFile(convertS);
  const installExec = isExecutableFile(installS);

  let kind: LayerKind | undefined;
  let kindFrom: string | undefined;
  if (config.kind) [kind, kindFrom] = [config.kind, "layer.yaml"];
  // A convert script only makes sense on a finalizing layer, and Demobuilder's finalizing layers also
  // carry the addlayer symlink, so convert is checked before it.
  else if (hasConvert) [kind, kindFrom] = ["finalizing", "convert"];
  else if (installIsAddlayer) [kind, kindFrom] = ["intermediate", "addlayer"];
  else if (config.import) [kind, kindFrom] = ["base", "import"];
  else if (installExec) [kind, kindFrom] = ["base", "install"];

  if (!kind) {
    if (ok) {
      problems.push({
        reason: "unknown-layer-kind",
        where: rel,
        message: "cannot tell what kind of layer this is",
        hint:
          installL && !installExec && !installIsAddlayer
            ? `install is not executable: chmod +x ${rel}/install, or add ${rel}/layer.yaml with kind: base|intermediate|finalizing`
            : `add ${rel}/layer.yaml with kind: base|intermediate|finalizing (or make install a symlink to ../../utils/addlayer.sh for an intermediate layer)`,
      });
    }
    return undefined;
  }

  const where = (key: string): string => locate?.([key]) ?? `${rel}/${LAYER_FILE}`;
  if (config.import && kind !== "base") {
    problems.push({ reason: "layer-import-not-base", where: where("import"), message: `import: only base layers can import an image, but this layer is ${kind}`, hint: "remove import: or set kind: base" });
  }
  if (config.format && kind !== "finalizing") {
    problems.push({ reason: "layer-format-not-final", where: where("format"), message: `format: only finalizing layers produce a deliverable format, but this layer is ${kind}`, hint: "remove format: or set kind: finalizing" });
  }
  if (config.inputs && kind === "intermediate") {
    problems.push({
      reason: "layer-inputs-not-host",
      where: where("inputs"),
      message: "inputs: names host files for scripts run on the host, but an intermediate layer runs only target/install, in the VM",
      hint: "put the files under target/ (a symlink there is followed and keyed), or remove inputs:",
    });
  }
  config.inputs?.forEach((g, i) => {
    // The glob's fixed part must stay inside the project; matches are checked again when planning
    // (a symlink could still lead out).
    const fixed = g.split("/").filter((seg) => seg !== "" || g.startsWith("/"));
    const stop = fixed.findIndex((seg) => /[*?[\]{}()!]/.test(seg));
    const base = path.resolve(dir, (stop < 0 ? fixed : fixed.slice(0, stop)).join("/") || ".");
    const relToRoot = path.relative(root, base);
    if (path.isAbsolute(g) || relToRoot.startsWith("..") || path.isAbsolute(relToRoot)) {
      problems.push({
        reason: "input-outside-project",
        where: locate?.(["inputs", i]) ?? `${rel}/${LAYER_FILE}`,
        message: `input ${JSON.stringify(g)} is outside the project (${base})`,
        hint: "copy the file into the project (e.g. utils/) and name it relative to the layer dir, e.g. ../../utils/*.sh",
      });
    }
  });
  if (kind === "base" && !config.import && !installExec) {
    problems.push({
      reason: "base-without-install",
      where: rel,
      message: "a base layer needs an executable install script or an import: in layer.yaml",
      hint: installL ? `chmod +x ${rel}/install` : `add ${rel}/install (run on the host to create the image) or import: { from, sha256 } in layer.yaml`,
    });
  }
  if (config.secrets?.length && kind === "base" && config.import) {
    problems.push({ reason: "secrets-import", where: where("secrets"), message: "secrets: an imported base layer runs no install that could read them", hint: "remove secrets:" });
  }
  if (kind === "finalizing" && convertS && !hasConvert) {
    problems.push({ reason: "convert-not-executable", where: `${rel}/convert`, message: "convert exists but is not an executable file", hint: `chmod +x ${rel}/convert` });
  }

  const layer: Layer = {
    name,
    dir,
    kind,
    config,
    hasInstall: installL !== undefined,
    installIsAddlayer,
    hasConvert,
    hasTarget: targetS?.isDirectory() ?? false,
    kindFrom: kindFrom ?? "layer.yaml",
  };
  const secretAt: Record<string, string> = {};
  (config.secrets ?? []).forEach((n, i) => (secretAt[n] = locate?.(["secrets", i]) ?? `${rel}/${LAYER_FILE}`));
  secretWhere.set(layer, secretAt);
  const tests = findTests(dir, rel, config, where, problems, has("test"));
  if (tests) layer.tests = tests;
  if (hasConfig) layer.configFile = configFile;
  return layer;
}

async function loadLayers(root: string, ctx: LoadCtx, problems: Problem[]): Promise<Map<string, Layer>> {
  const layers = new Map<string, Layer>();
  const dir = path.join(root, "layers");
  let entries: fs.Dirent[];
  try {
    entries = fs
      .readdirSync(dir, { withFileTypes: true })
      .filter((d) => !d.name.startsWith("."))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
      problems.push({ reason: "unreadable", where: "layers", message: `cannot read: ${(e as Error).message}` });
    }
    return layers;
  }
  const loaded = await Promise.all(
    entries.map(async (d) => {
      const name = d.name;
      if (!(d.isDirectory() || (!d.isFile() && statOrUndefined(path.join(dir, name))?.isDirectory()))) return undefined;
      if (!LAYER_NAME.test(name)) {
        problems.push({
          reason: "bad-layer-name",
          where: `layers/${name}`,
          message: `${JSON.stringify(name)} is not a valid layer name`,
          hint: "rename the directory: letters, digits, '.', '_', '+', '-', starting with a letter or digit",
        });
        return undefined;
      }
      return loadLayer(root, name, ctx, problems);
    }),
  );
  for (const l of loaded) if (l) layers.set(l.name, l);
  return layers;
}

function unquote(v: string): string | undefined {
  const q = v[0];
  if (q !== '"' && q !== "'") return v;
  if (v.length >= 2 && v.endsWith(q)) return v.slice(1, -1);
  return undefined;
}

/** Parse a targets/ file: KEY=VALUE lines, `#` comments, blank lines. */
export function parseTargetFile(text: string, relFile: string, problems: Problem[]): Pick<Target, "settings" | "settingLines"> {
  const settings: Record<string, string> = {};
  const settingLines: Record<string, number> = {};
  text.split("\n").forEach((raw, i) => {
    const lineNo = i + 1;
    const line = raw.replace(/\r$/, "").trim();
    if (line === "" || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    const where = `${relFile}:${lineNo}`;
    if (eq <= 0) {
      problems.push({ reason: "target-bad-line", where, message: `expected KEY=VALUE, found ${JSON.stringify(line)}`, hint: "write one KEY=VALUE per line (e.g. MEM=2048); comment lines start with #" });
      return;
    }
    const key = line.slice(0, eq).trim();
    if (!TARGET_KEY.test(key)) {
      problems.push({
        reason: "target-bad-key",
        where,
        message: `${JSON.stringify(key)} is not a valid setting name`,
        hint: /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? `setting names are upper case: ${key.toUpperCase()}` : "setting names are upper-case letters, digits and '_' (e.g. MEM, CPUS)",
      });
      return;
    }
    const value = unquote(line.slice(eq + 1).trim());
    if (value === undefined) {
      problems.push({ reason: "target-bad-quote", where, message: `unterminated quote in the value of ${key}`, hint: "close the quote or drop it" });
      return;
    }
    if ((key === "MEM" || key === "CPUS") && !/^[1-9][0-9]*$/.test(value)) {
      problems.push({ reason: "target-bad-number", where, message: `${key} must be a positive whole number${key === "MEM" ? " of MiB" : ""}, found ${JSON.stringify(value)}`, hint: key === "MEM" ? "e.g. MEM=2048" : "e.g. CPUS=2" });
      return;
    }
    settings[key] = value;
    settingLines[key] = lineNo;
  });
  return { settings, settingLines };
}

const isIgnoredTargetName = (n: string): boolean => n.startsWith(".") || /^README/i.test(n) || n.toLowerCase().endsWith(".md");

function loadTargets(root: string, layers: Map<string, Layer>, problems: Problem[]): Target[] {
  const dir = path.join(root, "targets");
  let entries: fs.Dirent[];
  try {
    entries = fs
      .readdirSync(dir, { withFileTypes: true })
      .filter((d) => !isIgnoredTargetName(d.name))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
      problems.push({ reason: "unreadable", where: "targets", message: `cannot read: ${(e as Error).message}` });
    }
    return [];
  }
  const targets: Target[] = [];
  for (const d of entries) {
    const name = d.name;
    const file = path.join(dir, name);
    // The listing's type settles regular files and directories; only a symlink (or an unknown type) is stat'ed.
    if (!(d.isFile() || (!d.isDirectory() && statOrUndefined(file)?.isFile()))) continue;
    const rel = `targets/${name}`;
    const parsed = parseTargetFile(fs.readFileSync(file, "utf8"), rel, problems);
    const stack = parseStack(name, layers, rel);
    if (Array.isArray(stack)) problems.push(...stack);
    targets.push({ stack: name, file, ...parsed });
  }
  return targets;
}

/**
 * Load and validate the project at `root`. Throws one DbuildError listing every problem found.
 */
export async function loadProject(root: string): Promise<Project> {
  const abs = path.resolve(root);
  const st = statOrUndefined(abs);
  if (!st?.isDirectory()) {
    throw new DbuildError({ reason: "no-project", where: abs, message: "not a directory", hint: "run dbuild in a project directory or pass --dir" });
  }
  const ctx: LoadCtx = { cache: undefined, fromCache: false, incomplete: false };
  try {
    const project = await load(abs, ctx, true);
    if (!ctx.incomplete) {
      ctx.cache?.save();
      return project;
    }
  } catch (e) {
    if (!(e instanceof DbuildError) || !ctx.fromCache) throw e;
  }
  // A problem, or a position the cache did not record, in a load that took configs from the cache: load
  // again from the files alone, so that every problem is found and placed exactly as without the cache.
  return load(abs, { cache: undefined, fromCache: false, incomplete: false }, false);
}

async function load(abs: string, ctx: LoadCtx, useCache: boolean): Promise<Project> {
  const problems: Problem[] = [];
  const text = readProjectFile(abs);
  if (useCache) ctx.cache = ConfigCache.load(buildDirGuess(abs, typeof text === "string" ? text : undefined));
  const { settings, file } = await loadSettings(abs, text, ctx, problems);
  if (ctx.cache && ctx.cache.file !== ConfigCache.path(settings.buildDir)) ctx.cache = ConfigCache.load(settings.buildDir);
  const layers = await loadLayers(abs, ctx, problems);
  const targets = loadTargets(abs, layers, problems);
  checkLayerSecrets(layers, settings, problems);
  if (problems.length) throw new DbuildError(sortProblems(problems));
  const project: Project = { root: abs, settings, layers, targets };
  if (file) project.configFile = file;
  return project;
}

/** Where each secret name of a layer.yaml stands (file:line:col), for the check after all files are read. */
const secretWhere = new WeakMap<Layer, Record<string, string>>();

/** Every secret a layer asks for must be declared in demobuild.yaml (where its value comes from). */
function checkLayerSecrets(layers: Map<string, Layer>, settings: ProjectSettings, problems: Problem[]): void {
  for (const l of layers.values()) {
    for (const name of l.config.secrets ?? []) {
      if (settings.secrets[name]) continue;
      problems.push({
        reason: "unknown-secret",
        where: secretWhere.get(l)?.[name] ?? `layers/${l.name}/${LAYER_FILE}`,
        message: `secrets: ${JSON.stringify(name)} is not declared in ${PROJECT_FILE}`,
        hint: `add it to ${PROJECT_FILE}: secrets: {${name}: {env: VARIABLE}} or {${name}: {file: PATH}}`,
      });
    }
  }
}

/** Stable order (by where, numerically by line) so output does not depend on I/O timing. */
function sortProblems(ps: Problem[]): Problem[] {
  const key = (w: string): [string, number, number] => {
    const m = /^(.*?):(\d+)(?::(\d+))?$/.exec(w);
    return m ? [m[1]!, Number(m[2]), Number(m[3] ?? 0)] : [w, 0, 0];
  };
  return [...ps].sort((a, b) => {
    const [fa, la, ca] = key(a.where);
    const [fb, lb, cb] = key(b.where);
    return fa < fb ? -1 : fa > fb ? 1 : la - lb || ca - cb;
  });
}
