/**
 * Writes build/report.html: once when a build starts, again as nodes start and finish (at most every
 * few seconds, so a reader who reloads follows the build), and a last time when it ends. Also keeps the
 * recorded build (build/.dbuild/last-build.json) for `dbuild report` and the next report.
 *
 * Every write replaces the file atomically (a reload never sees half a page), and writes never overlap.
 * A write that fails is reported through `onError` and never fails the build.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { randomBytes } from "node:crypto";
import type { Plan } from "../model/plan.js";
import { errorMessage, unreachable } from "../util/errors.js";
import { BuildRecorder, lastBuildPath, loadTrace, ranAnything, saveTrace } from "./build-trace.js";
import { collectReport, type ReportStore } from "./collect.js";
import type { BuildEvent, Reporter } from "./events.js";
import { renderReportHtml } from "./html.js";
import type { BuildTrace, ReportData } from "./model.js";

export function reportPath(buildDir: string): string {
  return path.join(buildDir, "report.html");
}

export async function writeReportFile(file: string, data: ReportData): Promise<void> {
  const tmp = `${file}.tmp-${randomBytes(4).toString("hex")}`;
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(tmp, renderReportHtml(data));
  await fs.rename(tmp, file);
}

export interface ReportWriterOptions {
  root: string;
  store: ReportStore & { readonly internalDir: string };
  /** Default: build/report.html. */
  file?: string;
  onError: (message: string) => void;
  /** Least time between two writes during a build (default 2 s; longer when writes are slow). */
  intervalMs?: number;
}

export class ReportWriter implements Reporter {
  readonly recorder: BuildRecorder;
  readonly file: string;
  private plan: Plan | undefined;
  private timer: NodeJS.Timeout | undefined;
  private chain: Promise<void> = Promise.resolve();
  private lastWrite = 0;
  private lastCost = 0;
  private running = false;
  private readonly traceFile: string;

  constructor(private readonly o: ReportWriterOptions) {
    this.file = o.file ?? reportPath(o.store.buildDir);
    this.traceFile = lastBuildPath(o.store.internalDir);
    this.recorder = new BuildRecorder((e, t) => this.changed(e, t));
  }

  /** The plan of the build (or watch cycle) about to run; its statuses are from before the build. */
  setPlan(plan: Plan): void {
    this.plan = plan;
  }

  event(e: BuildEvent): void {
    this.recorder.event(e);
  }

  private changed(e: BuildEvent, t: BuildTrace): void {
    switch (e.type) {
      case "build-start":
        this.running = true;
        if (t.stale.length) this.schedule(0);
        break;
      case "node-start":
      case "node-done":
      case "node-failed":
        this.schedule();
        break;
      case "build-done":
        this.running = false;
        this.save(t);
        break;
      case "step":
      case "step-done":
      case "vm-usage":
      case "output":
      case "test-start":
      case "test-done":
      case "node-skipped":
      case "warning":
        // Shown by the next write; not worth one of their own.
        break;
      default:
        unreachable(e);
    }
  }

  /** Keeps the build as build/.dbuild/last-build.json; one with nothing to do keeps the last that did something. */
  private save(t: BuildTrace): void {
    if (!ranAnything(t)) return;
    try {
      saveTrace(this.traceFile, t);
    } catch (err) {
      this.o.onError(`could not record the build in ${this.traceFile}: ${errorMessage(err)}`);
    }
  }

  private schedule(delay?: number): void {
    if (this.timer || !this.plan) return;
    const interval = Math.max(this.o.intervalMs ?? 2000, this.lastCost * 5);
    const wait = delay ?? Math.max(0, this.lastWrite + interval - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.running) void this.enqueue(true);
    }, wait);
    this.timer.unref();
  }

  private enqueue(live: boolean): Promise<void> {
    this.chain = this.chain.then(() => this.write(live));
    return this.chain;
  }

  private async write(live: boolean): Promise<void> {
    const plan = this.plan;
    if (!plan) return;
    const t0 = Date.now();
    try {
      const current = this.recorder.trace();
      const trace = current && (live || ranAnything(current)) ? current : loadTrace(this.traceFile);
      const data = await collectReport({ root: this.o.root, plan, store: this.o.store, ...(trace ? { trace } : {}), live, planBeforeBuild: true });
      await writeReportFile(this.file, data);
    } catch (e) {
      this.o.onError(`could not write ${this.file}: ${errorMessage(e)}`);
    } finally {
      this.lastWrite = Date.now();
      this.lastCost = this.lastWrite - t0;
    }
  }

  /**
   * The final report of a build or watch cycle (after build-done, and after the pushes that run behind
   * it: the recorded build is saved again with them); resolves once it is written.
   */
  finish(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.running = false;
    const t = this.recorder.trace();
    if (t?.end !== undefined) this.save(t);
    return this.enqueue(false);
  }

  /** Resolves when no write is in progress or queued (before the process exits). */
  settled(): Promise<void> {
    return this.chain;
  }

  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}
