/**
 * The remote image cache as executor hooks (`dbuild all --cache-from URL --cache-to URL`, or demobuild.yaml
 * `cache:`): pull a stale node before building it, push each node after it is published.
 */
import { cacheUrls, isUnreachable, RemoteCache } from "../cache/sync.js";
import type { Plan, PlanNode } from "../model/plan.js";
import type { NodeRecord } from "../model/store.js";
import type { Project } from "../project/types.js";
import type { BuildEvent } from "../report/events.js";
import type { Store } from "../store/store.js";
import { problemText } from "../util/errors.js";
import { mib } from "../util/units.js";
import type { BuildOptions } from "./executor.js";

export interface CacheHooks {
  hooks: Pick<BuildOptions, "tryPull" | "afterPublish">;
  /** Waits for the pushes still queued (they run behind the build). */
  drain(): Promise<void>;
}

/**
 * Hooks for the executor: pull a stale node from `from` before building it, push each node built to `to`.
 * A registry failure never fails the build: a failed pull builds the node, a failed push is a warning.
 * After the registry is found unreachable it is not asked again during this build.
 */
export function cacheHooks(
  project: Project,
  plan: Plan,
  store: Store,
  flags: { cacheFrom?: string; cacheTo?: string },
  emit: (e: BuildEvent) => void,
  signal: AbortSignal,
): CacheHooks {
  const urls = cacheUrls(flags, project.settings.cache);
  const warn = (stack: string | undefined, message: string): void => emit({ type: "warning", time: Date.now(), ...(stack ? { stack } : {}), message });
  const byStack = new Map(plan.nodes.map((n) => [n.stack, n]));
  const parentRecord = async (node: PlanNode): Promise<NodeRecord | undefined> =>
    node.parent ? store.record(byStack.get(node.parent)!.key) : undefined;
  const hooks: CacheHooks["hooks"] = {};
  if (urls.from) {
    const from = new RemoteCache(urls.from, store);
    let disabled = false;
    hooks.tryPull = async (node, sig) => {
      // An image for this key in the local store: the executor restores (or, view deleted, rebuilds) it.
      if (disabled || (await store.record(node.key))) return false;
      const step = (detail: string): void => emit({ type: "step", time: Date.now(), stack: node.stack, step: "pull", detail });
      let last = 0;
      try {
        const r = await from.pull(node, await parentRecord(node), {
          signal: sig,
          onProgress: (done, total) => {
            if (Date.now() - last < 1000) return;
            last = Date.now();
            step(`${mib(done)} of ${mib(total)}`);
          },
        });
        if (r.status === "pulled") {
          step(`pulled ${mib(r.bytes)} from ${from.client.ref.url}`);
          return true;
        }
        step(r.status === "miss" ? "not in the cache: building" : `cache not usable (${r.message}): building`);
        return false;
      } catch (e) {
        if (sig.aborted) throw e;
        warn(node.stack, `pull from ${urls.from} failed, building it instead:\n  ${problemText(e)}`);
        if (isUnreachable(e)) disabled = true;
        return false;
      }
    };
  }
  let queue: Promise<void> = Promise.resolve();
  let unreachable = false;
  let skipped = 0;
  if (urls.to) {
    const to = new RemoteCache(urls.to, store);
    hooks.afterPublish = (node, rec) => {
      // Queued, not awaited: a push must not hold back the node's children, nor fail the node.
      queue = queue.then(async () => {
        if (signal.aborted) return;
        if (unreachable) {
          skipped++;
          return;
        }
        // A step of its own after the node is done, so the timeline and the trace show where pushes ran.
        const t0 = Date.now();
        const done = (ok: boolean, detail: string): void => {
          const now = Date.now();
          emit({ type: "step-done", time: now, stack: node.stack, step: "push", duration: (now - t0) / 1000, ok, detail });
        };
        emit({ type: "step", time: t0, stack: node.stack, step: "push", detail: `to ${to.client.ref.url}` });
        try {
          const r = await to.push(rec, await parentRecord(node), { signal });
          done(true, r.existed ? `already in ${to.client.ref.url}` : `pushed ${mib(r.bytes)} to ${to.client.ref.url}`);
        } catch (e) {
          done(false, signal.aborted ? "interrupted" : "failed");
          if (signal.aborted) return;
          warn(node.stack, `push to ${urls.to} failed (the local build is unaffected):\n  ${problemText(e)}`);
          if (isUnreachable(e)) unreachable = true;
        }
      });
      return Promise.resolve();
    };
  }
  return {
    hooks,
    drain: async () => {
      await queue;
      if (skipped > 0) warn(undefined, `${skipped} more node(s) not pushed: ${urls.to ?? ""} is unreachable; run \`dbuild push\` later`);
    },
  };
}
