/**
 * A full host disk during a node's build, from any source (QEMU's BLOCK_IO_ERROR nospace, ENOSPC from
 * Node or qemu-img), turned into the one error a user can act on: which file system is full (the build
 * dir's), how much is free, and how much this node had written when it stopped.
 */
import { promises as fs } from "node:fs";
import type { Store } from "../store/store.js";
import { DbuildError, errorMessage } from "../util/errors.js";
import { mib } from "../util/units.js";
import { StepError } from "./step-error.js";

/** A full host disk, as QEMU (BLOCK_IO_ERROR nospace), Node (ENOSPC) or qemu-img report it. */
export function isDiskFull(e: unknown): boolean {
  if (e instanceof DbuildError && e.problems[0]?.reason === "disk-full") return true;
  if ((e as NodeJS.ErrnoException | undefined)?.code === "ENOSPC") return true;
  return /No space left on device|ENOSPC|host file system holding .* is full/.test(errorMessage(e));
}

/**
 * The node's error, naming the build dir's file system, its free space and what the node had written in
 * `work` (a floor for what it needs). Its temporary files are removed by the caller; nothing was published.
 */
export async function diskFullError(e: unknown, store: Store, work: string[]): Promise<StepError> {
  let written = 0;
  for (const f of work) written += await fs.stat(f).then((st) => st.blocks * 512, () => 0);
  const free = await fs.statfs(store.buildDir).then((st) => st.bavail * st.bsize, () => undefined);
  const step = e instanceof StepError ? e.step : "install";
  const detail = e instanceof DbuildError ? (e.problems[0]?.message.split("\n").slice(1).join("\n") ?? "") : "";
  return new StepError(
    step,
    `no space left on the file system holding the build dir ${store.buildDir}` +
      `${free !== undefined ? ` (${mib(free)} free)` : ""}; this node had written ${mib(written)} when it stopped, ` +
      `so free at least that much more (plus what the layer still had to write), then build again. Nothing was published` +
      (detail ? `\n${detail}` : ""),
  );
}
