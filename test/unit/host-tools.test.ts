// Every host command that dbuild, its layers, utils and its tests run must be installed by
// scripts/setup.sh (CI runs `bash .ci/run` on a fresh machine): a new tool without a setup line fails here,
// not on a fresh CI machine. Commands are found in two ways: string-literal first arguments of
// spawn/execa/execFile calls in TypeScript/JavaScript, and words in command position of the host-side
// shell scripts that name an executable on this machine's PATH.
import { execFileSync } from "node:child_process";
import { accessSync, constants, readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { delimiter, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/**
 * command -> Debian package that provides it. "essential": the package is Essential (always installed),
 * checked below with dpkg. Keep in step with scripts/setup.sh.
 */
const PROVIDER: Record<string, string> = {
  "qemu-system-x86_64": "qemu-system-x86",
  "qemu-img": "qemu-utils",
  "qemu-io": "qemu-utils",
  rsync: "rsync",
  ssh: "openssh-client",
  "ssh-keygen": "openssh-client",
  "mkfs.ext4": "e2fsprogs",
  debugfs: "e2fsprogs",
  packer: "packer",
  sfdisk: "fdisk",
  syslinux: "syslinux",
  mcopy: "mtools",
  mmd: "mtools",
  "mkfs.fat": "dosfstools",
  fatlabel: "dosfstools",
  mdir: "mtools",
  mtype: "mtools",
  mmdebstrap: "mmdebstrap",
  cpio: "cpio",
  xz: "xz-utils",
  zstd: "zstd",
  fakeroot: "fakeroot",
  "docker-registry": "docker-registry",
  skopeo: "skopeo",
  git: "git",
  xmllint: "libxml2-utils",
  busybox: "busybox-static",
  pgrep: "procps",
  chromium: "chromium",
  // "essential": from a package that is Essential or of Priority required, so on every Debian system
  // (even a minbase container); setup.sh need not list it.
  "apt-get": "essential",
  sync: "essential",
  fstrim: "essential",
  "apt-cache": "essential",
  "dpkg-deb": "essential",
  bash: "essential",
  sh: "essential",
  cat: "essential",
  tar: "essential",
  gzip: "essential",
  du: "essential",
  sha256sum: "essential",
  stat: "essential",
  unshare: "essential",
  setpriv: "essential",
  flock: "essential",
  mount: "essential",
  umount: "essential",
  dd: "essential",
  truncate: "essential",
  mktemp: "essential",
  tr: "essential",
  sed: "essential",
  awk: "essential",
  grep: "essential",
  find: "essential",
  sort: "essential",
  cut: "essential",
  head: "essential",
  printf: "essential",
  ln: "essential",
  cp: "essential",
  mv: "essential",
  rm: "essential",
  mkdir: "essential",
  chmod: "essential",
  touch: "essential",
  readlink: "essential",
  dirname: "essential",
  basename: "essential",
  ls: "essential",
  id: "essential",
  env: "essential",
  xargs: "essential",
  wc: "essential",
  sleep: "essential",
  date: "essential",
  uname: "essential",
  true: "essential",
  false: "essential",
  test: "essential",
  echo: "essential",
  install: "essential",
  chown: "essential",
  tail: "essential",
  comm: "essential",
  uniq: "essential",
  kill: "essential",
  timeout: "essential",
  realpath: "essential",
  seq: "essential",
  cmp: "essential",
  diff: "essential",
  tee: "essential",
  fallocate: "essential",
  ldd: "essential",
  hostname: "essential",
  which: "essential",
};

const KNOWN_TOOLS = new Set(Object.entries(PROVIDER).filter(([, p]) => p !== "essential").map(([c]) => c));

/** Shell builtins (some also exist as files on PATH): never a package to install. */
const BUILTINS = new Set(["cd", "pwd", "echo", "printf", "test", "true", "false", "read", "set", "export", "exit", "return", "shift", "trap", "wait", "eval", "type", "unset", "local", "command", "kill", "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "for", "while", "until", "in"]);

/** Not host tools: node itself, npm/npx (the set-up's own prerequisites), dbuild. */
const IGNORED = new Set(["node", "npm", "npx", "dbuild"]);

function files(dir: string, keep: (f: string) => boolean, out: string[] = []): string[] {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === "node_modules" || e.name.startsWith(".")) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) files(p, keep, out);
    else if (keep(p)) out.push(p);
  }
  return out;
}

/** First arguments of spawn/execa/execFile calls written as string literals (`/usr/bin/x` -> `x`). */
export function spawnedInCode(text: string): string[] {
  const out: string[] = [];
  const re = /\b(?:spawn|spawnSync|execa|execaSync|execFile|execFileSync)\(\s*["'`]([A-Za-z0-9_./+-]+)["'`]/g;
  for (const m of text.matchAll(re)) out.push(m[1]!.split("/").pop()!);
  // Known tools passed through local wrappers (e.g. `run("skopeo", ...)`).
  for (const m of text.matchAll(/\b\w+\(\s*["']([a-z][a-z0-9_.+-]*)["']\s*,\s*\[/g)) if (KNOWN_TOOLS.has(m[1]!)) out.push(m[1]!);
  // Constants holding a binary path (e.g. REGISTRY_BIN = "/usr/bin/docker-registry").
  for (const m of text.matchAll(/=\s*["'](\/usr\/s?bin\/[A-Za-z0-9_.+-]+)["']/g)) out.push(m[1]!.split("/").pop()!);
  return [...new Set(out)];
}

const PATH_DIRS = (process.env.PATH ?? "").split(delimiter).concat(["/usr/sbin", "/sbin", "/usr/bin", "/bin"]);
/** The real path of `cmd` found on PATH (symlinks resolved), if any. */
function whichReal(cmd: string): string | undefined {
  for (const d of PATH_DIRS) {
    try {
      accessSync(join(d, cmd), constants.X_OK);
      if (statSync(join(d, cmd)).isFile()) return realpathSync(join(d, cmd));
    } catch {
      // not in this directory
    }
  }
  return undefined;
}
const onPath = (cmd: string): boolean => whichReal(cmd) !== undefined;

/** Words in command position of a shell script (line start, after | && || ; $( then do else exec command -v). */
export function commandsInShell(text: string): string[] {
  const out: string[] = [];
  const body = text
    .split("\n")
    .filter((l) => !/^\s*#/.test(l))
    .join("\n")
    .replace(/<<-?\s*'?(\w+)'?[^\n]*\n[\s\S]*?\n\1\n/g, "\n") // here-documents are data
    .replace(/\(\([^)]*\)\)/g, " "); // arithmetic
  const re = /(?<=(?:^|[|;&(`]|\bthen|\bdo|\belse|\bexec|\bcommand -v|\bneed|\bfakeroot --|\bxargs)\s*)(?<![A-Za-z0-9_.+-])([A-Za-z][A-Za-z0-9_.+-]*)(?![=A-Za-z0-9_.+-])/gm;
  for (const m of body.matchAll(re)) if (!BUILTINS.has(m[1]!)) out.push(m[1]!);
  return out;
}

function setupPackages(): Set<string> {
  const text = readFileSync(join(root, "scripts/setup.sh"), "utf8");
  const pkgs = new Set<string>();
  for (const m of text.matchAll(/packages\+?=\(([^)]*)\)/g)) for (const p of m[1]!.split(/\s+/)) if (p) pkgs.add(p);
  return pkgs;
}

function hostCommands(): Map<string, string[]> {
  const found = new Map<string, string[]>();
  const add = (cmd: string, where: string): void => {
    if (IGNORED.has(cmd)) return;
    found.set(cmd, [...(found.get(cmd) ?? []), where]);
  };
  const code = ["src", "test", "bench"].flatMap((d) => files(join(root, d), (f) => /\.(ts|js)$/.test(f)));
  for (const f of code) {
    if (f.endsWith("host-tools.test.ts")) continue;
    for (const c of spawnedInCode(readFileSync(f, "utf8"))) add(c, f.slice(root.length + 1));
  }
  // Host-side scripts only: layers' target/ and the micro rootfs run inside the guest.
  const scripts = [
    ...readdirSync(join(root, "layers")).flatMap((l) => ["install", "convert"].map((s) => join(root, "layers", l, s))),
    ...files(join(root, "utils"), () => true),
    ...files(join(root, "scripts"), () => true),
    join(root, ".ci/run"),
  ].filter((f) => {
    try {
      return statSync(f).isFile() && readFileSync(f, "utf8").startsWith("#!");
    } catch {
      return false;
    }
  });
  const seen = new Set<string>();
  for (const f of scripts) {
    const real = readFileSync(f, "utf8");
    if (seen.has(real)) continue; // the install symlinks all point at utils/addlayer.sh
    seen.add(real);
    for (const c of commandsInShell(real)) if (PROVIDER[c] !== undefined || onPath(c)) add(c, f.slice(root.length + 1));
  }
  return found;
}

describe("host tools", () => {
  it("finds the spawned commands in code", () => {
    expect(spawnedInCode(`spawn("qemu-system-x86_64", args); execa(\n  "rsync", []); x = "/usr/bin/docker-registry";`)).toEqual([
      "qemu-system-x86_64",
      "rsync",
      "docker-registry",
    ]);
    expect(commandsInShell("a=$(qemu-img info x | sed -n p)\nif [ -f x ]; then mcopy -i f; fi\n# zstd\nsize=1\n(( size < 2 ))\ncat <<EOF\nxmllint\nEOF\n")).toEqual(
      ["qemu-img", "sed", "mcopy", "cat"],
    );
    expect(commandsInShell("cat <<EOF\nxmllint\nEOF\n")).not.toContain("xmllint");
  });

  it("every command the code, layers, utils and tests run has a known Debian package", () => {
    const found = hostCommands();
    // The scan must see the tools we know are used, or it has gone blind.
    for (const c of ["qemu-system-x86_64", "qemu-img", "rsync", "ssh-keygen", "skopeo", "xmllint", "busybox", "mkfs.ext4", "sfdisk"]) {
      expect([...found.keys()], c).toContain(c);
    }
    const unknown = [...found].filter(([c]) => PROVIDER[c] === undefined).map(([c, w]) => `${c} (run by ${w.join(", ")})`);
    expect(unknown, "add each to PROVIDER in this test and its package to scripts/setup.sh").toEqual([]);
  });

  it("scripts/setup.sh installs the package of every command (or it is Essential)", () => {
    const pkgs = setupPackages();
    expect(pkgs.size).toBeGreaterThan(10);
    const found = hostCommands();
    const missing = [...found.keys()]
      .map((c) => [c, PROVIDER[c]!] as const)
      .filter(([, p]) => p !== "essential" && !pkgs.has(p))
      .map(([c, p]) => `${c}: ${p}`);
    expect(missing, "add these packages to scripts/setup.sh").toEqual([]);
  });

  it("the command -> package map is true on this machine (dpkg agrees, Essential is Essential)", () => {
    const found = [...hostCommands().keys()];
    // With merged /usr, a package may list /bin/x while PATH finds /usr/bin/x: ask for both.
    const bins = found.map((c) => whichReal(c) ?? "-");
    const alt = (b: string): string[] => (b.startsWith("/usr/") ? [b, b.slice(4)] : [b, `/usr${b}`]);
    const owners = new Map<string, string[]>();
    // dpkg's file lists, read directly: `dpkg -S` takes seconds to start.
    const paths = bins.filter((b) => b.startsWith("/")).flatMap(alt);
    const out = execFileSync("bash", ["-c", 'grep -HFx -f - /var/lib/dpkg/info/*.list || true'], { input: paths.join("\n"), encoding: "utf8", maxBuffer: 16 << 20 });
    for (const line of out.split("\n")) {
      const m = /^\/var\/lib\/dpkg\/info\/([^:]+?)(?::[a-z0-9]+)?\.list:(\/.*)$/.exec(line);
      if (m) owners.set(m[2]!, [...(owners.get(m[2]!) ?? []), m[1]!]);
    }
    const bad: string[] = [];
    const essential = new Map<string, boolean>();
    const allOwners = [...new Set([...owners.values()].flat())];
    for (const line of execFileSync("dpkg-query", ["-W", "-f", "${Package} ${Essential} ${Priority}\\n", ...allOwners], { encoding: "utf8" }).split("\n")) {
      const [p, ess, prio] = line.split(" ");
      if (p) essential.set(p, ess === "yes" || prio === "required");
    }
    found.forEach((c, i) => {
      const bin = bins[i] ?? "-";
      const owner = bin.startsWith("/") ? alt(bin).map((b) => owners.get(b)).find(Boolean) : undefined;
      if (!owner) return void bad.push(`${c}: not installed, or not from a Debian package (${bin})`);
      const want = PROVIDER[c]!;
      if (want === "essential") {
        if (!owner.some((p) => essential.get(p))) bad.push(`${c}: from ${owner.join(", ")}, which is not Essential: name its package in PROVIDER and setup.sh`);
      } else if (!owner.includes(want)) {
        bad.push(`${c}: the map says ${want}, dpkg says ${owner.join(", ")}`);
      }
    });
    expect(bad).toEqual([]);
  });
});
