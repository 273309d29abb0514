import type { Step } from "../report/events.js";

/** A node failed in a known step; carries the exit code of the process that failed, if any. */
export class StepError extends Error {
  constructor(
    readonly step: Step,
    message: string,
    readonly exitCode?: number | null,
  ) {
    super(message);
    this.name = "StepError";
  }
}
