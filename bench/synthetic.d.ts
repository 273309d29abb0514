// Types of bench/synthetic.js, for the tests that use it.
import type { BuildTrace } from "../src/report/model.js";

export function rng(seed: number): () => number;
export function generateProject(root: string, opts?: { layers?: number; targets?: number; files?: number }): number;
export function populateReportStore(
  root: string,
  opts?: { built?: number; staleShare?: number },
): Promise<{ nodes: number; stale: string[]; failed: string | undefined; built: string[]; trace: BuildTrace }>;
