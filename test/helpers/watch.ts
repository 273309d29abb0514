/** `dbuild watch --progress json` driven from a test: its NDJSON events, parsed as they arrive. */
import type { ChildProcess } from "node:child_process";
import { startDbuild, type CliResult } from "./cli.js";

type Ev = CliResult["events"][number];

/** A running `dbuild watch --progress json`, with its events parsed as they arrive. */
export class WatchProc {
  readonly events: Ev[] = [];
  readonly child: ChildProcess;
  readonly done: Promise<CliResult>;
  private buf = "";
  private waiters: Array<() => void> = [];

  constructor(args: string[], opts: { cwd: string; env?: Record<string, string> }) {
    const s = startDbuild(["watch", "--progress", "json", "--debounce", "150", ...args], opts);
    this.child = s.child;
    this.done = s.done;
    this.child.stdout!.on("data", (d: Buffer) => {
      this.buf += d.toString();
      const lines = this.buf.split("\n");
      this.buf = lines.pop() ?? "";
      for (const l of lines) if (l.startsWith("{")) this.events.push(JSON.parse(l) as Ev);
      for (const w of this.waiters.splice(0)) w();
    });
  }

  /** Wait for an event matching `pred` at index >= from; returns its index. */
  async waitFor(pred: (e: Ev) => boolean, from: number, timeoutMs: number, what: string): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.events.findIndex((e, k) => k >= from && pred(e));
      if (i >= 0) return i;
      if (Date.now() > deadline || this.child.exitCode !== null) {
        throw new Error(`no ${what} within ${timeoutMs} ms; events: ${JSON.stringify(this.events.slice(from)).slice(-3000)}`);
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, 200);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  since(from: number, type: string): Ev[] {
    return this.events.slice(from).filter((e) => e.type === type);
  }

  /** Index after the next completed cycle (watch-cycle-done or watch-unchanged) from `from`. */
  async cycleEnd(from: number, timeoutMs = 90_000): Promise<number> {
    return (await this.waitFor((e) => e.type === "watch-cycle-done" || e.type === "watch-unchanged", from, timeoutMs, "end of cycle")) + 1;
  }
}
