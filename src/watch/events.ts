/**
 * Events of a watch session, in addition to the build events of each cycle (src/report/events.ts).
 * With `--progress json` both kinds are written as NDJSON, one object per line; every watch event's
 * `type` starts with `watch-`. See docs/watch.md.
 */
import type { BuildEvent } from "../report/events.js";
import type { Problem } from "../util/errors.js";

export type WatchOutcome = "done" | "failed" | "cancelled" | "up-to-date";

export type WatchEvent =
  /** Watching has begun (after the initial scan): project-relative paths, stacks they affect now. */
  | { type: "watch-start"; time: number; paths: string[]; stacks: string[] }
  /** A cycle builds: what changed (empty for the initial build), targets replanned, nodes to build. */
  | { type: "watch-cycle"; time: number; cycle: number; changed: string[]; stacks: string[]; rebuilding: string[] }
  /** Changes seen, but every fingerprint is as in the last cycle (touch, save without change): nothing done. */
  | { type: "watch-unchanged"; time: number; cycle: number; changed: string[]; stacks: string[] }
  /** A cycle's build ended. `cancelled`: a change came in (or Ctrl-C) and the build was aborted. */
  | { type: "watch-cycle-done"; time: number; cycle: number; outcome: WatchOutcome; built: string[]; failed: string[]; duration: number }
  /** A cycle could not start (the project does not load, no target uses the layer, ...). Watching goes on. */
  | { type: "watch-error"; time: number; cycle: number; problems: Problem[] }
  /** --shell: a throwaway VM of `stack` is up; `ssh` is an OpenSSH command line that reaches it. */
  | { type: "watch-shell"; time: number; cycle: number; stack: string; disk: string; pid: number; sshHost: string; sshPort: number; keyPath: string; user: string; ssh: string; bootSeconds: number; from: "build VM" | "warm snapshot" | "boot" }
  | { type: "watch-shell-failed"; time: number; cycle: number; stack: string; message: string }
  /** The previous shell VM was stopped (a rebuild starts, or the session ends). */
  | { type: "watch-shell-stopped"; time: number; stack: string; pid: number }
  | { type: "watch-stop"; time: number };

/** Tells the two kinds of event a watch session emits apart (every watch event's type starts with `watch-`). */
export function isWatchEvent(e: WatchEvent | BuildEvent): e is WatchEvent {
  return e.type.startsWith("watch-");
}
