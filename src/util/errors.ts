/**
 * Errors a user can cause are values: a `reason` tag plus enough context to print
 * `where: what` and a hint saying what to do. Reporters and the CLI render them; nothing else prints.
 */
export interface Problem {
  /** Machine-readable tag, e.g. "unknown-layer", "yaml-syntax", "boot-timeout". */
  readonly reason: string;
  /** Where it comes from: `file:line:col`, `file`, a stack name, or `stack (step)`. */
  readonly where: string;
  /** What is wrong, in plain words. */
  readonly message: string;
  /** What to do about it (optional but preferred). */
  readonly hint?: string;
}

/** An error carrying one or more user-facing problems. Exit code 2 for project/config errors by default. */
export class DbuildError extends Error {
  readonly problems: readonly Problem[];
  readonly exitCode: number;
  constructor(problems: Problem | readonly Problem[], exitCode = 2) {
    const list = Array.isArray(problems) ? (problems as readonly Problem[]) : [problems as Problem];
    super(list.map(formatProblem).join("\n"));
    this.name = "DbuildError";
    this.problems = list;
    this.exitCode = exitCode;
  }
}

export function formatProblem(p: Problem): string {
  const head = p.where ? `${p.where}: ${p.message}` : p.message;
  return p.hint ? `${head}\n  hint: ${p.hint}` : head;
}

/** Exhaustiveness check for switches over tagged unions. */
export function unreachable(x: never): never {
  throw new Error(`unreachable: ${JSON.stringify(x)}`);
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A thrown error as one text: every problem of a DbuildError (later ones indented), else the message. */
export function problemText(e: unknown): string {
  return e instanceof DbuildError ? e.problems.map(formatProblem).join("\n  ") : errorMessage(e);
}
