/**
 * Which targets a change concerns: those whose stack contains the changed layer. A change outside
 * layers/NAME (a shared util a layer links to, demobuild.yaml) concerns every target.
 */
import * as path from "node:path";
import type { Project } from "../project/types.js";
import { DbuildError } from "../util/errors.js";

/** `layers/NAME/...` (project-relative) -> NAME. */
export function layerOfPath(rel: string): string | undefined {
  const parts = rel.split(path.sep);
  return parts[0] === "layers" && parts[1] ? parts[1] : undefined;
}

/**
 * Target stacks to replan for these project-relative paths, in targets/ order. `explicit` (--stack)
 * wins over the layer lookup.
 */
export function affectedStacks(project: Project, relPaths: readonly string[], explicit?: readonly string[]): string[] {
  if (explicit?.length) return [...new Set(explicit)];
  const layers = new Set<string>();
  let all = false;
  for (const p of relPaths) {
    const l = layerOfPath(p);
    if (l === undefined) all = true;
    else layers.add(l);
  }
  return project.targets
    .filter((t) => all || t.stack.split(":").some((l) => layers.has(l)))
    .map((t) => t.stack);
}

/** The same, but a user error when nothing would ever be built (watching a layer no target uses). */
export function requireAffected(project: Project, relPaths: readonly string[], explicit?: readonly string[]): string[] {
  const stacks = affectedStacks(project, relPaths, explicit);
  if (stacks.length) return stacks;
  const layers = [...new Set(relPaths.map(layerOfPath).filter((l): l is string => l !== undefined))];
  throw new DbuildError({
    reason: "no-target",
    where: relPaths.join(", "),
    message: `no stack in targets/ contains ${layers.length ? `layer ${layers.join(", ")}` : "these paths"}`,
    hint: `add a target (e.g. echo > targets/micro:${layers[0] ?? "LAYER"}) or pass --stack STACK`,
  });
}
