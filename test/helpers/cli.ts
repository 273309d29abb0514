/**
 * Run the real CLI (bin/dbuild.js, compiled dist/) as a child process, the way a user does.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const dbuildBin = path.join(repoRoot, "bin", "dbuild.js");

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
  /** Parsed NDJSON lines of stdout (when --progress json was used). */
  events: Array<Record<string, unknown> & { type: string }>;
}

export function startDbuild(args: string[], opts: { cwd: string; env?: Record<string, string> }): { child: ChildProcess; done: Promise<CliResult> } {
  const child = spawn(process.execPath, [dbuildBin, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env, FORCE_COLOR: "0" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<CliResult>((resolve) => {
    child.on("close", (code) => {
      const events: CliResult["events"] = [];
      for (const l of stdout.split("\n")) {
        if (!l.startsWith("{")) continue;
        try {
          events.push(JSON.parse(l) as CliResult["events"][number]);
        } catch {
          // not an NDJSON event (e.g. pretty-printed `plan --json`)
        }
      }
      resolve({ code, stdout, stderr, events });
    });
  });
  return { child, done };
}

export function dbuild(args: string[], opts: { cwd: string; env?: Record<string, string> }): Promise<CliResult> {
  return startDbuild(args, opts).done;
}

/** Stacks that emitted an event of the given type, in order. */
export function stacksOf(r: CliResult, type: string): string[] {
  return r.events.filter((e) => e.type === type).map((e) => String(e.stack));
}
