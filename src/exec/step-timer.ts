/**
 * Step events of one node: `step` when a step begins (or, the same step again, reports progress) and
 * `step-done` when it ends, so every reporter gets exact step durations without inferring them.
 */
import type { BuildEvent, Step } from "../report/events.js";

export class StepTimer {
  private current: { step: Step; start: number } | undefined;

  constructor(
    private readonly stack: string,
    private readonly emit: (e: BuildEvent) => void,
  ) {}

  begin(step: Step, detail?: string): void {
    const now = Date.now();
    if (this.current?.step !== step) {
      this.end(true, now);
      this.current = { step, start: now };
    }
    this.emit({ type: "step", time: now, stack: this.stack, step, ...(detail ? { detail } : {}) });
  }

  /** Ends the running step, if any: at the next step, or when the node is done or failed. */
  end(ok: boolean, now = Date.now()): void {
    const c = this.current;
    if (!c) return;
    this.current = undefined;
    this.emit({ type: "step-done", time: now, stack: this.stack, step: c.step, duration: (now - c.start) / 1000, ok });
  }
}
