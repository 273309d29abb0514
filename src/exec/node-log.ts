/**
 * Per-node log: every line of install output (host or guest) goes to build/logs/STACK.log and, as
 * an `output` event, to the reporters. Keeps a tail in memory for failure summaries.
 */
import { createWriteStream, type WriteStream } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import type { BuildEvent } from "../report/events.js";

const TAIL = 20;

export class NodeLog {
  private stream: WriteStream | undefined;
  private readonly tail: string[] = [];
  private partial: Record<"stdout" | "stderr", string> = { stdout: "", stderr: "" };

  /** The layer test whose output this is (tags `output` events); see startTest. */
  private test: string | undefined;

  constructor(
    readonly file: string,
    private readonly stack: string,
    private readonly emit: (e: BuildEvent) => void,
    /** Applied to every output line before it is written or emitted (masks secret values). */
    private readonly mask: (line: string) => string = (l) => l,
  ) {}

  /** Write out a last line that has no newline yet. */
  flush(): void {
    for (const s of ["stdout", "stderr"] as const) {
      if (this.partial[s]) this.line(s, this.partial[s]);
      this.partial[s] = "";
    }
  }

  /** Output from now on belongs to this test (or to the node's steps again), and the tail starts empty. */
  startTest(name: string | undefined): void {
    this.flush();
    this.test = name;
    this.tail.length = 0;
  }

  async open(): Promise<void> {
    await fs.mkdir(path.dirname(this.file), { recursive: true });
    this.stream = createWriteStream(this.file, { flags: "w" });
  }

  /** A line dbuild itself writes (step headers, errors); masked like output. */
  note(raw: string): void {
    const line = this.mask(raw);
    this.stream?.write(`# ${line}\n`);
    this.remember(`# ${line}`);
  }

  /** Text masked as this log masks its lines (for a failure message that may quote output). */
  masked(text: string): string {
    return this.mask(text);
  }

  /** Raw output chunk from a process; split into lines for events and the tail. */
  chunk(stream: "stdout" | "stderr", data: Buffer | string): void {
    const text = this.partial[stream] + data.toString();
    const lines = text.split(/\r?\n/);
    this.partial[stream] = lines.pop() ?? "";
    for (const line of lines) this.line(stream, line);
  }

  private line(stream: "stdout" | "stderr", raw: string): void {
    const line = this.mask(raw);
    this.stream?.write(line + "\n");
    this.remember(line);
    this.emit({ type: "output", time: Date.now(), stack: this.stack, stream, line, ...(this.test ? { test: this.test } : {}) });
  }

  private remember(line: string): void {
    this.tail.push(line);
    if (this.tail.length > TAIL) this.tail.shift();
  }

  lastLines(): string[] {
    return [...this.tail];
  }

  async close(): Promise<void> {
    this.flush();
    const st = this.stream;
    this.stream = undefined;
    if (st) await new Promise<void>((resolve) => st.end(resolve));
  }
}
