/**
 * Secrets for layer installs: read on the host when a build needs them, delivered to the guest over the
 * SSH channel's standard input into files on a tmpfs, masked in every line of output, gone before the
 * VM powers off.
 *
 * Where a value must never be: on a command line (host or guest: `ps` shows both), on the image's disk,
 * in a log or event, in a node key, a record or the remote cache. So: the value travels only as stdin of
 * `cat > FILE` (the file name is the secret's name, not its value), the files live on a tmpfs mounted for
 * the install and unmounted before clean-up, keys and records only ever see layer.yaml (which names
 * secrets, never holds them), and NodeLog masks values in output before writing or emitting a line.
 */
import { readFileSync } from "node:fs";
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import type { Layer, Project } from "../project/types.js";
import { DbuildError, type Problem } from "../util/errors.js";
import type { Vm } from "../vm/types.js";
import { StepError } from "./step-error.js";

/** Where target/install finds its secrets (also in its environment as DBUILD_SECRETS). */
export const GUEST_SECRETS_DIR = "/run/dbuild/secrets";

/** What replaces a secret's value in output. */
export const MASK = "********";

/**
 * The values of the named secrets, read now. Every secret that cannot be read (variable unset or empty,
 * file missing, unreadable or empty) is reported at once, before anything boots.
 */
export function readSecrets(project: Project, needs: ReadonlyMap<string, readonly string[]>): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  const problems: Problem[] = [];
  for (const [name, layers] of needs) {
    const src = project.settings.secrets[name];
    const who = `needed by ${layers.map((l) => `layers/${l}`).join(", ")}`;
    if (!src) {
      // loadProject already refuses this; kept so a caller with a hand-made Project gets a clear message.
      problems.push({ reason: "unknown-secret", where: "demobuild.yaml", message: `secret ${JSON.stringify(name)} (${who}) is not declared`, hint: `add secrets: {${name}: {env: VARIABLE}}` });
      continue;
    }
    if ("env" in src) {
      const v = process.env[src.env];
      if (v === undefined || v === "") {
        problems.push({ reason: "missing-secret", where: src.where, message: `secret ${JSON.stringify(name)} (${who}): environment variable ${src.env} is ${v === undefined ? "not set" : "empty"}`, hint: `export ${src.env}=... before building (or build without those layers)` });
        continue;
      }
      out.set(name, Buffer.from(v));
    } else {
      try {
        const v = readFileSync(src.file);
        if (v.length === 0) throw Object.assign(new Error("the file is empty"), { code: "EMPTY" });
        out.set(name, v);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        const why = code === "ENOENT" ? "does not exist" : code === "EMPTY" ? "is empty" : `cannot be read (${(e as Error).message})`;
        problems.push({ reason: "missing-secret", where: src.where, message: `secret ${JSON.stringify(name)} (${who}): file ${src.file} ${why}`, hint: `create ${src.file} (readable by you), or point secrets.${name} elsewhere` });
      }
    }
  }
  if (problems.length) throw new DbuildError(problems);
  return out;
}

/**
 * A function replacing every secret value in a line of output. Multi-line values (a config file) are
 * also masked line by line, since output reaches us one line at a time; lines shorter than 4 characters
 * of such a file are not (masking every "}" or "[a]" would garble the log and hide nothing).
 */
export function secretMasker(values: Iterable<Buffer>): (line: string) => string {
  const pats = new Set<string>();
  for (const v of values) {
    const s = v.toString("utf8");
    const lines = s.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "");
    if (lines.length === 1) pats.add(lines[0]!);
    else for (const l of lines) if (l.length >= 4) pats.add(l);
    if (s.trim() !== "") pats.add(s.trim());
  }
  const list = [...pats].sort((a, b) => b.length - a.length);
  if (!list.length) return (l) => l;
  return (line) => {
    let out = line;
    for (const p of list) if (out.includes(p)) out = out.split(p).join(MASK);
    return out;
  };
}

/**
 * The values of every secret the layers of these nodes ask for, read now (readSecrets): what a build
 * reads before it starts anything, so a missing secret stops it before any VM boots.
 */
export function readBuildSecrets(project: Project, nodes: Iterable<{ layer: string }>): Map<string, Buffer> {
  const needs = new Map<string, string[]>();
  for (const n of nodes) {
    for (const name of project.layers.get(n.layer)?.config.secrets ?? []) {
      const layers = needs.get(name) ?? [];
      if (!layers.includes(n.layer)) layers.push(n.layer);
      needs.set(name, layers);
    }
  }
  return needs.size ? readSecrets(project, needs) : new Map<string, Buffer>();
}

/** The secrets a layer asks for, with their values (from readSecrets' result). */
export function layerSecrets(layer: Layer, values: ReadonlyMap<string, Buffer>): Map<string, Buffer> {
  return new Map((layer.config.secrets ?? []).map((n) => [n, values.get(n)!]));
}

/**
 * Mount a private tmpfs at GUEST_SECRETS_DIR and write each secret into it from the SSH channel's stdin.
 * A guest that cannot mount a tmpfs fails the step: secrets are never written to its disk instead.
 */
export async function deliverSecrets(vm: Vm, secrets: ReadonlyMap<string, Buffer>, signal: AbortSignal): Promise<void> {
  const d = GUEST_SECRETS_DIR;
  const m = await vm.exec(`umask 077 && mkdir -p ${d} && mount -t tmpfs -o size=16m,mode=0700,nosuid,nodev,noexec dbuild-secrets ${d}`, { asRoot: true, timeoutMs: 30_000, signal });
  if (m.code !== 0) throw new StepError("install", `cannot mount a tmpfs at ${d} in the guest for the layer's secrets (exit code ${m.code ?? "?"}); secrets are never written to the disk`);
  for (const [name, value] of secrets) {
    const r = await vm.exec(`umask 077 && cat > ${d}/${name}`, { stdin: value, asRoot: true, timeoutMs: 30_000, signal });
    if (r.code !== 0) throw new StepError("install", `writing secret ${name} into ${d} failed (exit code ${r.code ?? "?"})`);
  }
}

/**
 * Unmount the secrets tmpfs (lazily if a process the install left behind still holds a file open: the
 * pages were never on disk either way) and remove the mount point, before clean-up and power-off.
 */
export async function removeSecrets(vm: Vm, signal: AbortSignal): Promise<void> {
  const d = GUEST_SECRETS_DIR;
  const r = await vm.exec(`umount ${d} 2>/dev/null || umount -l ${d}; if grep -q " ${d} " /proc/mounts; then exit 1; fi; rmdir ${d} 2>/dev/null; rmdir /run/dbuild 2>/dev/null; true`, { asRoot: true, timeoutMs: 30_000, signal });
  if (r.code !== 0) throw new StepError("cleanup", `cannot unmount the secrets tmpfs ${d} in the guest`);
}

/**
 * Base layers run `install` on the host: their secrets go to a private directory (mode 0700, on /dev/shm
 * when there is one, so in memory) named by DBUILD_SECRETS, removed when the install ends.
 */
export async function hostSecretsDir(secrets: ReadonlyMap<string, Buffer>): Promise<{ dir: string; remove: () => Promise<void> }> {
  let parent = os.tmpdir();
  try {
    if ((await fs.stat("/dev/shm")).isDirectory()) parent = "/dev/shm";
  } catch {
    // no /dev/shm: the temp dir
  }
  const dir = await fs.mkdtemp(path.join(parent, "dbuild-secrets-"));
  await fs.chmod(dir, 0o700);
  for (const [name, value] of secrets) await fs.writeFile(path.join(dir, name), value, { mode: 0o600 });
  return { dir, remove: () => fs.rm(dir, { recursive: true, force: true }) };
}
