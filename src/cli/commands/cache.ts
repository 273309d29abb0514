/**
 * The remote image cache on the command line: `dbuild push` and `dbuild pull`. (The pull-before-build and
 * push-after-publish hooks of `dbuild all --cache-from/--cache-to` are src/exec/cache-hooks.ts.)
 */
import type { Command } from "commander";
import pc from "picocolors";
import { makePlan } from "../../plan/planner.js";
import { loadProject } from "../../project/load.js";
import type { Project } from "../../project/types.js";
import { Store } from "../../store/store.js";
import { DbuildError, problemText } from "../../util/errors.js";
import { interruptController, lockBuildDir, NO_WAIT_FLAG, NO_WAIT_HELP, prepareBuildDir, projectRoot } from "../shared.js";
import { mib } from "../../util/units.js";

interface CacheCliOptions {
  wait?: boolean;
  cache?: string;
}

function cacheUrlFor(o: CacheCliOptions, project: Project, which: "from" | "to", cmd: string): string {
  const url = o.cache ?? project.settings.cache[which] ?? project.settings.cache[which === "from" ? "to" : "from"];
  if (!url) {
    throw new DbuildError({
      reason: "bad-option",
      where: `dbuild ${cmd}`,
      message: "no cache given",
      hint: `pass --cache oci://HOST[:PORT]/REPO, or set cache: {${which}: oci://...} in demobuild.yaml`,
    });
  }
  return url;
}

/**
 * `dbuild push`: every fresh node of the stacks, parents first. Stale nodes are not pushed (their image
 * is not what the inputs say). Exit 1 when a push failed.
 */
export async function runPush(root: string, stacks: "all" | string[], o: CacheCliOptions, out: (s: string) => void): Promise<number> {
  const project = await loadProject(root);
  const url = cacheUrlFor(o, project, "to", "push");
  const { isUnreachable, RemoteCache } = await import("../../cache/sync.js");
  const store = new Store(project.settings.buildDir);
  const cache = new RemoteCache(url, store);
  const plan = await makePlan(project, stacks, store);
  const intr = interruptController();
  let pushed = 0;
  let existed = 0;
  let failed = 0;
  let stale = 0;
  let untested = 0;
  let bytes = 0;
  const t0 = Date.now();
  try {
    for (const node of plan.nodes) {
      if (intr.signal.aborted) return 130;
      // Fresh, or cached in the store (its view shows another build): either way the image for these inputs is here.
      const rec = node.status !== "stale" ? await store.record(node.key) : undefined;
      if (!rec) {
        stale++;
        out(`${node.stack}: stale here, not pushed (build it first)\n`);
        continue;
      }
      // A puller trusts a pushed image's tests: only images whose tests passed here go (none held back).
      if (node.tests?.run) {
        untested++;
        out(`${node.stack}: its tests have not passed here, not pushed (dbuild test ${node.stack} first)\n`);
        continue;
      }
      const parent = rec.parentKey ? await store.record(rec.parentKey) : undefined;
      const t = Date.now();
      try {
        const r = await cache.push(rec, parent, { signal: intr.signal });
        if (r.existed) {
          existed++;
          out(`${node.stack}: already in the cache\n`);
        } else {
          pushed++;
          bytes += r.bytes;
          out(`${node.stack}: pushed ${mib(r.bytes)} in ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
        }
      } catch (e) {
        if (intr.signal.aborted) return 130;
        failed++;
        process.stderr.write(`${pc.red("error")} ${node.stack}: push failed: ${problemText(e)}\n`);
        // The rest would fail the same way (after their retries): say so once and stop.
        if (isUnreachable(e)) {
          process.stderr.write(`nothing local was changed; the remaining nodes were not pushed\n`);
          break;
        }
      }
    }
  } finally {
    intr.dispose();
  }
  out(`pushed ${pushed} (${mib(bytes)}, ${((Date.now() - t0) / 1000).toFixed(1)} s), already there ${existed}, stale ${stale}${untested ? `, untested ${untested}` : ""}${failed ? `, FAILED ${failed}` : ""} -> ${cache.client.ref.url}\n`);
  return failed ? 1 : 0;
}

/**
 * `dbuild pull`: every node stale here but in the cache, parents first; a pulled node is fresh with no VM
 * booted. A node the cache does not have (or that was built over another parent image) is left stale
 * for `dbuild all`. Exit 1 when a pull failed (unreachable registry, corrupt blob).
 */
export async function runPull(root: string, stacks: "all" | string[], o: CacheCliOptions, out: (s: string) => void): Promise<number> {
  const project = await loadProject(root);
  const url = cacheUrlFor(o, project, "from", "pull");
  const { isUnreachable, RemoteCache } = await import("../../cache/sync.js");
  const store = new Store(project.settings.buildDir);
  const release = await lockBuildDir(store, { wait: o.wait ?? true });
  const intr = interruptController();
  let pulled = 0;
  let fresh = 0;
  let missing = 0;
  let failed = 0;
  let bytes = 0;
  const t0 = Date.now();
  try {
    await prepareBuildDir(store);
    const cache = new RemoteCache(url, store);
    const plan = await makePlan(project, stacks, store);
    const byStack = new Map(plan.nodes.map((n) => [n.stack, n]));
    for (const node of plan.nodes) {
      if (intr.signal.aborted) return 130;
      if (node.status === "fresh") {
        fresh++;
        continue;
      }
      const stored = await store.record(node.key);
      if (stored && node.tests?.run) {
        // Held back by failed tests, or not tested since: `dbuild all` tests it before showing it.
        missing++;
        out(`${node.stack}: in the local store, but its tests have not passed on it: \`dbuild all\` runs them\n`);
        continue;
      }
      if (stored) {
        // Edit, revert: the image is still in the store; point the view back (as `dbuild all` would).
        await store.commit(stored);
        out(`${node.stack}: restored from the local store\n`);
        fresh++;
        continue;
      }
      const parentNode = node.parent ? byStack.get(node.parent) : undefined;
      const parent = parentNode ? await store.record(parentNode.key) : undefined;
      if (parentNode && !parent) {
        missing++;
        out(`${node.stack}: not pulled: its parent ${parentNode.stack} is not here\n`);
        continue;
      }
      const t = Date.now();
      try {
        const r = await cache.pull(node, parent, { signal: intr.signal });
        if (r.status === "pulled") {
          pulled++;
          bytes += r.bytes;
          out(`${node.stack}: pulled ${mib(r.bytes)} in ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
        } else {
          missing++;
          out(`${node.stack}: ${r.status === "miss" ? "not in the cache" : `not pulled: ${r.message}`}\n`);
        }
      } catch (e) {
        if (intr.signal.aborted) return 130;
        failed++;
        process.stderr.write(`${pc.red("error")} ${node.stack}: pull failed: ${problemText(e)}\n`);
        if (isUnreachable(e)) break;
      }
    }
  } finally {
    intr.dispose();
    await store.cleanTmp().catch(() => undefined);
    await release().catch(() => undefined);
  }
  out(
    `pulled ${pulled} (${mib(bytes)}, ${((Date.now() - t0) / 1000).toFixed(1)} s), fresh ${fresh}, left to build ${missing + failed}${failed ? `, FAILED ${failed}` : ""} <- ${url}\n`,
  );
  return failed ? 1 : 0;
}

export function registerCacheCommands(program: Command): void {
  const write = (s: string): void => void process.stdout.write(s);
  program
    .command("push")
    .description("push every fresh node of the stacks to an OCI cache (parents first)")
    .argument("[stacks...]", "stacks, or `all` (default: every target)")
    .option("--cache <url>", "oci://HOST[:PORT]/REPO (default: demobuild.yaml cache.to, else cache.from)")
    .action(async (stacks: string[], o: CacheCliOptions, cmd: Command) => {
      process.exitCode = await runPush(projectRoot(cmd), stackArg(stacks), o, write);
    });
  program
    .command("pull")
    .option(NO_WAIT_FLAG, NO_WAIT_HELP)
    .description("pull every node that is stale here but in the OCI cache (parents first; no VM)")
    .argument("[stacks...]", "stacks, or `all` (default: every target)")
    .option("--cache <url>", "oci://HOST[:PORT]/REPO (default: demobuild.yaml cache.from, else cache.to)")
    .action(async (stacks: string[], o: CacheCliOptions, cmd: Command) => {
      process.exitCode = await runPull(projectRoot(cmd), stackArg(stacks), o, write);
    });
}

function stackArg(stacks: string[]): "all" | string[] {
  return stacks.length === 0 || (stacks.length === 1 && stacks[0] === "all") ? "all" : stacks;
}
