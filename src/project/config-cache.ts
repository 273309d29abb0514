/**
 * Validated configs by content. A demobuild.yaml or layer.yaml parses and validates to the same value
 * every time its bytes are the same, so a load whose files are all known here needs neither the YAML
 * parser nor zod, which take longer to load than a warm plan of a large project spends on its files.
 *
 * An entry is keyed by the sha256 of the file's kind and text: it is found only for exactly the bytes
 * it was made from, so there is no stat to trust and no racy window (the file is read either way, and it
 * is small). Only files that validated without a problem are kept, with the value zod produced (as
 * JSON) and the positions of the paths a load asks for even when nothing is wrong (`secrets:`). The
 * cache as a whole is tied to the schema and parser modules it was made with (their size and mtime):
 * another dbuild (or a rebuilt one) starts empty.
 *
 * Lives in `<buildDir>/.dbuild/configs.json`, beside the stat cache; written (temp file + rename) only
 * when its entries changed and only where that directory exists (loading a project creates nothing).
 * Entries of files no longer in the project are dropped when it is written.
 */
import { readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { sha256Hex } from "../util/digest.js";
import { fileURLToPath } from "node:url";

const FORMAT = 1;
export const CONFIG_CACHE_FILE = "configs.json";

export type ConfigKind = "project" | "layer";

/** A path in a config file, as yaml.ts's locate() takes it. */
export type ConfigPath = readonly (string | number)[];

export interface CachedConfig {
  /** The validated value, a fresh copy on every get (callers may keep and change it). */
  value: unknown;
  /** `line:col` of the paths recorded with it, by path joined with "\0". */
  locs: Readonly<Record<string, string>>;
}

interface Entry {
  /** JSON of the validated value. */
  v: string;
  locs: Record<string, string>;
}

export const pathKey = (p: ConfigPath): string => p.map(String).join("\0");

/** The schema and parser modules, by size and mtime: entries made by other ones are not used. */
function modulesStamp(): string | undefined {
  const here = fileURLToPath(import.meta.url);
  const ext = path.extname(here);
  const parts: string[] = [];
  for (const m of ["schema", "yaml"]) {
    const st = statSync(path.join(path.dirname(here), `${m}${ext}`), { throwIfNoEntry: false });
    if (!st) return undefined;
    parts.push(`${m}:${st.size}:${st.mtimeMs}`);
  }
  return parts.join(";");
}

export class ConfigCache {
  private readonly used = new Map<string, Entry>();
  private changed = false;

  private constructor(
    readonly file: string,
    private readonly stamp: string,
    private readonly entries: ReadonlyMap<string, Entry>,
  ) {}

  static path(buildDir: string): string {
    return path.join(buildDir, ".dbuild", CONFIG_CACHE_FILE);
  }

  /** The cache of `buildDir`: empty when absent, unreadable or made by other modules; undefined when it cannot be used at all. */
  static load(buildDir: string): ConfigCache | undefined {
    const stamp = modulesStamp();
    if (stamp === undefined) return undefined;
    const file = ConfigCache.path(buildDir);
    const entries = new Map<string, Entry>();
    try {
      const data = JSON.parse(readFileSync(file, "utf8")) as { format?: unknown; stamp?: unknown; entries?: Record<string, unknown> };
      if (data.format === FORMAT && data.stamp === stamp && data.entries) {
        for (const [k, e] of Object.entries(data.entries)) {
          const { v, locs } = (e ?? {}) as Partial<Entry>;
          if (typeof v === "string" && locs && typeof locs === "object" && Object.values(locs).every((l) => typeof l === "string")) entries.set(k, { v, locs });
        }
      }
    } catch {
      // absent or corrupt: start empty
    }
    return new ConfigCache(file, stamp, entries);
  }

  private static key(kind: ConfigKind, text: string): string {
    return sha256Hex(`${kind}\n${text}`);
  }

  get(kind: ConfigKind, text: string): CachedConfig | undefined {
    const k = ConfigCache.key(kind, text);
    const e = this.entries.get(k) ?? this.used.get(k);
    if (!e) return undefined;
    this.used.set(k, e);
    return { value: JSON.parse(e.v) as unknown, locs: e.locs };
  }

  /** Remember a file that validated without a problem: its value and the positions of `paths`. */
  put(kind: ConfigKind, text: string, value: unknown, locs: Record<string, string>): void {
    const k = ConfigCache.key(kind, text);
    this.used.set(k, { v: JSON.stringify(value), locs });
    this.changed = true;
  }

  /** Write the entries used by this load, if they differ from the file's and its directory exists. */
  save(): void {
    if (!this.changed && this.used.size === this.entries.size) return;
    const dir = path.dirname(this.file);
    if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) return;
    const tmp = `${this.file}.${process.pid}.${Date.now()}.tmp`;
    try {
      writeFileSync(tmp, JSON.stringify({ format: FORMAT, stamp: this.stamp, entries: Object.fromEntries(this.used) }));
      renameSync(tmp, this.file);
    } catch {
      // only an optimisation: a read-only build dir plans as before
      rmSync(tmp, { force: true });
    }
  }
}
