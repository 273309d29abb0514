/**
 * The randomized edit suite's parts: a generated project, random edits of the kinds issue 12 lists, and
 * an independent reference that decides from scratch (hashing everything, no stat cache, none of
 * src/plan's code) which nodes an edit affects. The suite (test/unit/cache-random-edits.test.ts) plans
 * after every edit with the real planner and its on-disk stat cache, and compares node by node.
 */
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

/** mulberry32: a tiny seeded PRNG, so a failing run replays exactly from its printed seed. */
export function rng(seed: number): { next(): number; int(n: number): number; pick<T>(a: readonly T[]): T } {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number): number => Math.floor(next() * n);
  return { next, int, pick: (arr) => arr[int(arr.length)]! };
}

export type Kind = "base" | "intermediate" | "finalizing";

export interface GenLayer {
  name: string;
  kind: Kind;
}

export interface GenProject {
  layers: GenLayer[];
  /** Target stacks (file names in targets/). */
  targets: string[];
}

const sh = (body: string): string => `#!/bin/sh\n${body}\n`;

/**
 * Writes the project under `root`: two base layers (one whose host install is a symlink to a shared
 * script and which reads utils/data/*.txt through `inputs:`), four intermediates (symlinks in target/
 * to shared scripts and to a directory reached only through a symlink), two finalizing layers whose
 * `convert` is a symlink to a shared converter, and targets with settings. Two layers have tests: the
 * base layer (a guest test, a helper in a subdirectory, a host test that is a symlink to a shared script)
 * and l2 (a guest test, and test data that is a symlink to a shared directory).
 */
export function writeProject(root: string): GenProject {
  const w = (rel: string, content: string, mode = 0o644): void => {
    const abs = path.join(root, rel);
    fs.mkdirSync(path.dirname(abs), { recursive: true });
    fs.writeFileSync(abs, content);
    fs.chmodSync(abs, mode);
  };
  const ln = (rel: string, to: string): void => {
    const abs = path.join(root, rel);
    fs.mkdirSync(path.dirname(abs), { recursive: true });
    fs.symlinkSync(to, abs);
  };
  w("utils/addlayer.sh", sh("exec dbuild addlayer"), 0o755);
  for (let i = 0; i < 4; i++) w(`utils/s${i}.sh`, sh(i === 3 ? "echo s0" : `echo s${i}`), 0o755); // s3 = s0's size
  w("utils/mkbase.sh", sh("qemu-img create -f qcow2 \"$DBUILD_OUTPUT\" 1G"), 0o755);
  w("utils/conv.sh", sh("qemu-img convert -O qcow2 \"$DBUILD_IMAGE\" \"$DBUILD_OUTPUT\""), 0o755);
  for (let i = 0; i < 3; i++) w(`utils/data/d${i}.txt`, `data ${i}\n`);
  w("utils/data/ignored.md", "not matched by the glob\n");
  for (let i = 0; i < 3; i++) w(`utils/lib/l${i}.conf`, `lib ${i}\n`);

  ln("layers/base/install", "../../utils/mkbase.sh");
  w("layers/base/layer.yaml", 'kind: base\ninputs: ["../../utils/data/*.txt"]\n');
  w("layers/base/files/a.txt", "base a\n");
  w("layers/alt/install", sh("echo alt"), 0o755);
  w("layers/alt/README", "alt base\n");
  const inter = ["l1", "l2", "l3", "l4"];
  inter.forEach((n, i) => {
    ln(`layers/${n}/install`, "../../utils/addlayer.sh");
    w(`layers/${n}/target/install`, sh(`echo ${n}`), 0o755);
    for (let j = 0; j < 3; j++) w(`layers/${n}/target/etc/f${j}.conf`, `${n} ${j}\n`);
    ln(`layers/${n}/target/tool.sh`, `../../../utils/s${i % 3}.sh`);
    if (i % 2 === 0) ln(`layers/${n}/target/lib`, "../../../utils/lib");
  });
  for (const f of ["fa", "fb"]) {
    w(`layers/${f}/layer.yaml`, "kind: finalizing\n");
    ln(`layers/${f}/install`, "../../utils/addlayer.sh");
    ln(`layers/${f}/convert`, "../../utils/conv.sh");
    w(`layers/${f}/target/install`, sh(`echo ${f}`), 0o755);
  }
  w("layers/base/test/guest/boots", sh("true"), 0o755);
  w("layers/base/test/guest/lib/helper.sh", "# sourced by the tests\n");
  ln("layers/base/test/host/http", "../../../../utils/s1.sh");
  w("layers/l2/test/guest/t", sh("test -f /etc/f0.conf"), 0o755);
  ln("layers/l2/test/data", "../../../utils/lib");
  const targets = ["base:l1:fa", "base:l1:l2:fb", "base:l3:fa", "alt:l4:fb", "alt:l2:l3", "base:l1:l2"];
  targets.forEach((t, i) => w(`targets/${t}`, i % 2 ? `MEM=${1024 + i * 256}\n` : ""));
  return {
    layers: [
      { name: "base", kind: "base" },
      { name: "alt", kind: "base" },
      ...inter.map((name) => ({ name, kind: "intermediate" as const })),
      { name: "fa", kind: "finalizing" },
      { name: "fb", kind: "finalizing" },
    ],
    targets,
  };
}

// ---------------------------------------------------------------------------------------------------
// The reference: what a node's image depends on, computed from scratch every time.

const sha = (b: Buffer | string): string => createHash("sha256").update(b).digest("hex");

/** Every entry below `abs`, symlinks followed (recorded with their text too), as sorted lines. */
function tree(abs: string, rel: string, out: string[]): void {
  for (const name of fs.readdirSync(abs).sort()) {
    const p = path.join(abs, name);
    const r = rel ? `${rel}/${name}` : name;
    entry(p, r, out);
  }
}

function entry(p: string, r: string, out: string[]): void {
  const l = fs.lstatSync(p);
  if (l.isSymbolicLink()) out.push(`L ${r} -> ${fs.readlinkSync(p)}`);
  const st = fs.statSync(p);
  if (st.isDirectory()) {
    out.push(`D ${r}`);
    tree(p, r, out);
  } else if (st.isFile()) {
    out.push(`F ${r} ${sha(fs.readFileSync(p))} ${st.mode & 0o111 ? "x" : "-"}`);
  }
}

/** The reference description of one layer's files (its test/ is no input of its images). */
function layerRef(root: string, l: GenLayer): string {
  const dir = path.join(root, "layers", l.name);
  const out: string[] = [];
  if (l.kind === "base") {
    for (const name of fs.readdirSync(dir).sort()) if (name !== "test") entry(path.join(dir, name), name, out);
    // inputs: only base has them here, and the generated glob is ../../utils/data/*.txt
    const yaml = fs.existsSync(path.join(dir, "layer.yaml")) ? fs.readFileSync(path.join(dir, "layer.yaml"), "utf8") : "";
    if (yaml.includes("inputs:")) {
      const data = path.join(root, "utils/data");
      for (const n of fs.readdirSync(data).sort()) {
        const st = fs.statSync(path.join(data, n));
        if (n.endsWith(".txt") && st.isFile()) out.push(`I utils/data/${n} ${sha(fs.readFileSync(path.join(data, n)))} ${st.mode & 0o111 ? "x" : "-"}`);
      }
    }
  } else {
    const install = path.join(dir, "install");
    const il = fs.lstatSync(install, { throwIfNoEntry: false });
    if (il?.isSymbolicLink()) out.push(`L install -> ${fs.readlinkSync(install)}`);
    else if (il) entry(install, "install", out);
    for (const f of ["layer.yaml", "convert"]) if (fs.existsSync(path.join(dir, f))) entry(path.join(dir, f), f, out);
    if (fs.existsSync(path.join(dir, "target"))) tree(path.join(dir, "target"), "", out);
  }
  return out.join("\n");
}

/** Reference print of each layer's test/ tree (as rsync -rL copies it), for the layers that have one. */
export function referenceTestPrints(root: string, gp: GenProject): Map<string, string> {
  const out = new Map<string, string>();
  for (const l of gp.layers) {
    const dir = path.join(root, "layers", l.name, "test");
    if (!fs.existsSync(dir)) continue;
    const lines: string[] = [];
    tree(dir, "", lines);
    out.set(l.name, sha(lines.join("\n")));
  }
  return out;
}

function targetSettings(root: string, stack: string): string {
  const f = path.join(root, "targets", stack);
  if (!fs.existsSync(f)) return "";
  return fs
    .readFileSync(f, "utf8")
    .split("\n")
    .filter((x) => x.includes("="))
    .sort()
    .join(";");
}

/** Reference fingerprint of every node (stack prefix) of the targets, parents first. */
export function referencePrints(root: string, gp: GenProject): Map<string, string> {
  const kinds = new Map(gp.layers.map((l) => [l.name, l]));
  const layerPrint = new Map<string, string>();
  const out = new Map<string, string>();
  for (const t of gp.targets) {
    const parts = t.split(":");
    let parent = "";
    for (let i = 1; i <= parts.length; i++) {
      const stack = parts.slice(0, i).join(":");
      const l = kinds.get(parts[i - 1]!)!;
      let lp = layerPrint.get(l.name);
      if (lp === undefined) layerPrint.set(l.name, (lp = sha(layerRef(root, l))));
      // Finalizing nodes also depend on the target's settings (and on the NAME of the stack).
      const settings = l.kind === "finalizing" ? `${stack}|${targetSettings(root, stack)}` : "";
      const print = sha(`${parent}|${l.name}|${l.kind}|${lp}|${settings}`);
      out.set(stack, print);
      parent = print;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Random edits.

export const EDIT_KINDS = [
  "content edit",
  "revert",
  "rename",
  "chmod",
  "symlink retarget through utils/",
  "edit behind a symlink",
  "targets/ value",
  "layer.yaml",
  "host script behind a symlink",
  "same-size rewrite in the same tick",
  "view deleted",
  "test/ edit",
] as const;
export type EditKind = (typeof EDIT_KINDS)[number];

export interface Editor {
  /** Apply one random edit; returns its kind and a one-line description (for replay messages). */
  edit(): { kind: EditKind; what: string };
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(p);
    }
  };
  if (fs.existsSync(dir)) walk(dir);
  return out.sort();
}

export function editor(root: string, r: ReturnType<typeof rng>, deleteView: () => string | undefined): Editor {
  const history: Array<{ file: string; content: Buffer; mode: number }> = [];
  const rel = (p: string): string => path.relative(root, p);
  const own = (): string[] => ["base", "alt", "l1", "l2", "l3", "l4", "fa", "fb"].flatMap((l) => filesUnder(path.join(root, "layers", l)));
  const rewrite = (file: string, content: string | Buffer): void => {
    const st = fs.statSync(file);
    history.push({ file, content: fs.readFileSync(file), mode: st.mode & 0o777 });
    fs.writeFileSync(file, content);
  };
  const word = (): string => Math.floor(r.next() * 1e6).toString(36);
  const edits: Record<EditKind, () => string> = {
    "content edit": () => {
      const f = r.pick(own().filter((p) => !p.endsWith("layer.yaml")));
      rewrite(f, `${fs.readFileSync(f, "utf8")}# ${word()}\n`);
      return rel(f);
    },
    revert: () => {
      const h = history.length ? history.splice(r.int(history.length), 1)[0]! : undefined;
      if (!h || !fs.existsSync(h.file)) return "nothing to revert";
      fs.writeFileSync(h.file, h.content);
      fs.chmodSync(h.file, h.mode);
      return rel(h.file);
    },
    rename: () => {
      const f = r.pick(own().filter((p) => /\/(target\/etc|files)\//.test(p)));
      const to = path.join(path.dirname(f), r.next() < 0.5 ? `r${word()}.conf` : path.basename(f).replace(/^(r?)/, (m) => (m ? "" : "r")));
      if (fs.existsSync(to)) return "rename target exists";
      fs.renameSync(f, to);
      return `${rel(f)} -> ${rel(to)}`;
    },
    chmod: () => {
      // Not the host scripts themselves: a base install or convert that is not executable is a project error
      // (and so is a test/ left without any test).
      const f = r.pick([...own(), ...filesUnder(path.join(root, "utils"))].filter((p) => !/(conv|mkbase)\.sh$|alt\/install$|\/test\/(guest|host)\/[^/]+$/.test(p)));
      const mode = fs.statSync(f).mode & 0o777;
      fs.chmodSync(f, mode & 0o100 ? mode & ~0o111 : mode | 0o111);
      return rel(f);
    },
    "symlink retarget through utils/": () => {
      const l = r.pick(["l1", "l2", "l3", "l4"]);
      const link = path.join(root, "layers", l, "target/tool.sh");
      const to = `../../../utils/s${r.int(4)}.sh`;
      fs.rmSync(link, { force: true });
      fs.symlinkSync(to, link);
      return `${rel(link)} -> ${to}`;
    },
    "edit behind a symlink": () => {
      const f = r.pick([...filesUnder(path.join(root, "utils/lib")), ...[0, 1, 2, 3].map((i) => path.join(root, `utils/s${i}.sh`))]);
      rewrite(f, `${fs.readFileSync(f, "utf8")}# ${word()}\n`);
      return rel(f);
    },
    "targets/ value": () => {
      const t = r.pick(fs.readdirSync(path.join(root, "targets")));
      const f = path.join(root, "targets", t);
      rewrite(f, r.next() < 0.5 ? `MEM=${512 * (1 + r.int(8))}\n` : `CPUS=${1 + r.int(4)}\nNAME=${word()}\n`);
      return rel(f);
    },
    "layer.yaml": () => {
      const l = r.pick(["base", "l1", "l2", "l3", "l4", "fa", "fb"]);
      const f = path.join(root, "layers", l, "layer.yaml");
      const kind = l === "base" ? 'kind: base\ninputs: ["../../utils/data/*.txt"]\n' : l.startsWith("f") ? "kind: finalizing\n" : "kind: intermediate\n";
      const extra = r.pick([`epoch: ${1 + r.int(3)}\n`, `description: ${word()}\n`, ""]);
      if (fs.existsSync(f)) rewrite(f, kind + extra);
      else fs.writeFileSync(f, kind + extra);
      return `${rel(f)}: ${extra.trim() || "(kind only)"}`;
    },
    "host script behind a symlink": () => {
      const f = path.join(root, r.pick(["utils/mkbase.sh", "utils/conv.sh", "utils/data/d0.txt", "utils/data/d1.txt", "utils/data/ignored.md"]));
      rewrite(f, `${fs.readFileSync(f, "utf8")}# ${word()}\n`);
      return rel(f);
    },
    "same-size rewrite in the same tick": () => {
      // The same bytes count, one changed, and the old mtime put back: only ctime (and the content) moved.
      const f = r.pick([...own(), ...filesUnder(path.join(root, "utils"))].filter((p) => fs.statSync(p).size > 0 && !p.endsWith("layer.yaml")));
      const st = fs.statSync(f);
      const buf = fs.readFileSync(f);
      const i = r.int(buf.length);
      const b = Buffer.from(buf);
      b[i] = b[i] === 0x41 ? 0x42 : 0x41;
      history.push({ file: f, content: buf, mode: st.mode & 0o777 });
      fs.writeFileSync(f, b);
      fs.utimesSync(f, st.atime, st.mtime);
      return rel(f);
    },
    "view deleted": () => deleteView() ?? "no view to delete",
    "test/ edit": () => {
      const what = r.int(3);
      if (what === 0) {
        // a test, a helper or (through l2's data symlink) a shared file the tests read
        const f = r.pick([...filesUnder(path.join(root, "layers/base/test")), ...filesUnder(path.join(root, "layers/l2/test")), ...filesUnder(path.join(root, "utils/lib"))]);
        rewrite(f, `${fs.readFileSync(f, "utf8")}# ${word()}\n`);
        return rel(f);
      }
      if (what === 1) {
        const link = path.join(root, "layers/base/test/host/http");
        const to = `../../../../utils/s${1 + r.int(3)}.sh`;
        fs.rmSync(link, { force: true });
        fs.symlinkSync(to, link);
        return `${rel(link)} -> ${to}`;
      }
      // an empty directory is copied into the test VM too
      const d = path.join(root, "layers/l2/test/guest/empty");
      if (fs.existsSync(d)) fs.rmdirSync(d);
      else fs.mkdirSync(d);
      return `${rel(d)} ${fs.existsSync(d) ? "added" : "removed"}`;
    },
  };
  return {
    edit: () => {
      const kind = r.pick(EDIT_KINDS);
      return { kind, what: edits[kind]() };
    },
  };
}
