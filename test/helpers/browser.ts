/**
 * Headless Chromium (Debian's `chromium`, installed by scripts/setup.sh test) driven by puppeteer-core,
 * to open build/report.html the way a reader does: from file://, no server, no network.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import puppeteer, { type Browser, type Page } from "puppeteer-core";

export const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

/** Where tests leave screenshots for a person to look at ($DBUILD_TEST_ARTIFACTS, else a tmp dir). */
export function artifactDir(): string {
  return process.env.DBUILD_TEST_ARTIFACTS ?? path.join(os.tmpdir(), "dbuild-test-artifacts");
}

export interface OpenReport {
  browser: Browser;
  page: Page;
  /** Uncaught page errors and console errors (a working report has none). */
  errors: string[];
  /** Requests for anything but the file itself (a self-contained report makes none). */
  requests: string[];
  close(): Promise<void>;
}

/** Opens the report and waits until the viewer says everything is drawn. */
export async function openReport(file: string, opts: { hash?: string; width?: number; height?: number; timeoutMs?: number } = {}): Promise<OpenReport> {
  const browser = await puppeteer.launch({ executablePath: chromiumPath, headless: true, args: ["--no-sandbox"] });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: opts.width ?? 1400, height: opts.height ?? 1000 });
    const errors: string[] = [];
    const requests: string[] = [];
    const url = `file://${path.resolve(file)}`;
    page.on("pageerror", (e) => errors.push(String(e)));
    page.on("console", (m) => {
      if (m.type() === "error") errors.push(m.text());
    });
    page.on("request", (r) => {
      if (r.url().split("#")[0] !== url) requests.push(r.url());
    });
    await page.goto(url + (opts.hash ?? ""));
    await page.waitForFunction(`document.documentElement.dataset.rendered === "1"`, { timeout: opts.timeoutMs ?? 120_000 });
    return { browser, page, errors, requests, close: () => browser.close() };
  } catch (e) {
    await browser.close();
    throw e;
  }
}

/** A screenshot of the page as shown; returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  await fs.mkdir(artifactDir(), { recursive: true });
  const file = path.join(artifactDir(), `${name}.png`);
  await page.screenshot({ path: file });
  return file;
}

/** The report's data, read from the page file without a browser. */
export async function reportData(file: string): Promise<import("../../src/report/model.js").ReportData> {
  const html = await fs.readFile(file, "utf8");
  const m = /<script id="dbuild-data" type="application\/json">(.*?)<\/script>/s.exec(html);
  if (!m?.[1]) throw new Error(`${file} has no report data`);
  return JSON.parse(m[1]) as import("../../src/report/model.js").ReportData;
}

// The helpers below hand the page an expression to evaluate: the tests are compiled without the DOM
// library (src/ must not see its types), so no browser-side function is written in TypeScript here.

/** Evaluates a JavaScript expression in the page. */
export function inPage<T>(page: Page, expression: string): Promise<T> {
  return page.evaluate(expression) as Promise<T>;
}

const q = (sel: string): string => `document.querySelector(${JSON.stringify(sel)})`;

/** textContent of the first element matching `sel` (null: no such element). */
export function text(page: Page, sel: string): Promise<string | null> {
  return inPage(page, `${q(sel)}?.textContent ?? null`);
}

export function attr(page: Page, sel: string, name: string): Promise<string | null> {
  return inPage(page, `${q(sel)}?.getAttribute(${JSON.stringify(name)}) ?? null`);
}

export function isHidden(page: Page, sel: string): Promise<boolean | null> {
  return inPage(page, `${q(sel)}?.hidden ?? null`);
}

export function hasClass(page: Page, sel: string, cls: string): Promise<boolean | null> {
  return inPage(page, `${q(sel)}?.classList.contains(${JSON.stringify(cls)}) ?? null`);
}

/** graph node stack -> data-status, as drawn. */
export function drawnStatuses(page: Page): Promise<Record<string, string>> {
  return inPage(page, `Object.fromEntries([...document.querySelectorAll("g.node")].map((g) => [g.getAttribute("data-stack"), g.getAttribute("data-status")]))`);
}

/** timeline row stack -> the steps of its segments, as drawn. */
export function drawnSteps(page: Page): Promise<Record<string, string[]>> {
  return inPage(
    page,
    `Object.fromEntries([...document.querySelectorAll(".row")].map((r) => [r.getAttribute("data-stack"), [...r.querySelectorAll(".seg")].map((s) => s.getAttribute("data-step"))]))`,
  );
}
