/**
 * --junit FILE: one <testcase> per node of the build (classname = the base layer, name = the stack),
 * failures with their step, exit code and log tail, skipped nodes as <skipped>; after each node, one
 * <testcase> per layer test it ran (classname = the stack, name = "test guest/NAME"). Written on close.
 */
import { writeFileSync } from "node:fs";
import { unreachable } from "../util/errors.js";
import type { BuildEvent, Reporter } from "./events.js";

interface Case {
  /** classname: the base layer for a node, the node's stack for one of its tests (its children). */
  classname: string;
  name: string;
  time: number;
  failure?: { message: string; body: string };
  skipped?: string;
}

// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL_CHARS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f]/g;

function esc(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&apos;" })[c]!)
    // XML 1.0 forbids most control characters; install output may contain them.
    .replace(CONTROL_CHARS, "");
}

const baseOf = (stack: string): string => stack.split(":")[0] ?? stack;

export class JunitReporter implements Reporter {
  private readonly cases: Case[] = [];
  /** Tests of a running node, written right after the node's own testcase. */
  private readonly tests = new Map<string, Case[]>();

  private flushTests(stack: string): void {
    this.cases.push(...(this.tests.get(stack) ?? []));
    this.tests.delete(stack);
  }
  private duration = 0;

  constructor(private readonly file: string) {}

  event(e: BuildEvent): void {
    switch (e.type) {
      case "node-done":
        this.cases.push({ classname: baseOf(e.stack), name: e.stack, time: e.duration });
        this.flushTests(e.stack);
        break;
      case "test-done":
        (this.tests.get(e.stack) ?? this.tests.set(e.stack, []).get(e.stack)!).push({
          classname: e.stack,
          name: `test ${e.test}`,
          time: e.duration,
          ...(e.ok ? {} : { failure: { message: e.message ?? "failed", body: (e.output ?? []).join("\n") } }),
        });
        break;
      case "node-failed":
        this.cases.push({
          classname: baseOf(e.stack),
          name: e.stack,
          time: e.duration,
          failure: {
            message: `failed in step ${e.step}${e.exitCode != null ? ` (exit code ${e.exitCode})` : ""}: ${e.message}`,
            body: [...e.logTail, `full log: ${e.logPath}`, ...(e.shell ? [`shell on the image: ${e.shell}`] : [])].join("\n"),
          },
        });
        this.flushTests(e.stack);
        break;
      case "node-skipped":
        this.cases.push({ classname: baseOf(e.stack), name: e.stack, time: 0, skipped: e.reason });
        break;
      case "build-done":
        this.duration = e.duration;
        break;
      case "build-start":
      case "node-start":
      case "step":
      case "step-done":
      case "vm-usage":
      case "output":
      case "test-start":
      case "warning":
        break;
      default:
        unreachable(e);
    }
  }

  close(): void {
    const failures = this.cases.filter((c) => c.failure).length;
    const skipped = this.cases.filter((c) => c.skipped).length;
    const lines = [
      `<?xml version="1.0" encoding="UTF-8"?>`,
      `<testsuites name="dbuild" tests="${this.cases.length}" failures="${failures}" skipped="${skipped}" time="${this.duration.toFixed(3)}">`,
      `  <testsuite name="dbuild" tests="${this.cases.length}" failures="${failures}" skipped="${skipped}" time="${this.duration.toFixed(3)}">`,
    ];
    for (const c of this.cases) {
      const head = `    <testcase classname="${esc(c.classname)}" name="${esc(c.name)}" time="${c.time.toFixed(3)}"`;
      if (c.failure) {
        lines.push(`${head}>`, `      <failure message="${esc(c.failure.message)}">${esc(c.failure.body)}</failure>`, `    </testcase>`);
      } else if (c.skipped) {
        lines.push(`${head}>`, `      <skipped message="${esc(c.skipped)}"/>`, `    </testcase>`);
      } else {
        lines.push(`${head}/>`);
      }
    }
    lines.push("  </testsuite>", "</testsuites>", "");
    writeFileSync(this.file, lines.join("\n"));
  }
}
