/**
 * How dbuild logs in to the image of a stack: which user, and whether the key has to be handed over
 * through a NoCloud seed because it is not (or no longer) in the image.
 */
import { realPathOr } from "../util/fs.js";
import path from "node:path";
import type { NodeKey } from "../model/plan.js";
import type { Project } from "../project/types.js";
import { Store } from "../store/store.js";
import { imageInfo } from "../vm/image.js";

export interface Login {
  user: string;
  /** Attach a NoCloud seed giving `user` the project key. */
  seed: boolean;
}

/** cloud-init treats every boot with this id as the same instance: per-instance modules run once. */
export const SEED_INSTANCE_ID = "dbuild-build";

/**
 * Login for the image of `stack` (the result of all its layers). The user is the `ssh.user` of the
 * stack's last layer that sets one, else demobuild.yaml's, else root. The key is in the image only when
 * a base's own install put it there for root and no finalizing layer has removed it since; an imported
 * image, a non-root user or a finalized image gets it through the seed (cloud-init).
 */
export function loginFor(project: Project, stack: string): Login {
  const names = stack.split(":");
  let user = project.settings.ssh.user;
  for (const n of names) {
    const u = project.layers.get(n)?.config.ssh?.user;
    if (u !== undefined) user = u;
  }
  const base = project.layers.get(names[0] ?? "");
  const imported = base?.config.import !== undefined;
  const finalized = names.some((n) => project.layers.get(n)?.kind === "finalizing");
  return { user, seed: user !== "root" || imported || finalized };
}

/**
 * Login for any image a user boots (a snapshot from `dbuild snap`, a build/STACK.qcow2 view): the first
 * store object in its backing chain names the stack through its record. An image dbuild did not build
 * gets the project's user, with a seed unless that user is root.
 */
export async function loginForImage(project: Project, image: string): Promise<Login> {
  const store = new Store(project.settings.buildDir);
  try {
    const info = await imageInfo(image);
    for (const f of info.chain) {
      const real = realPathOr(f.filename);
      if (path.dirname(real) !== realPathOr(store.objectsDir)) continue;
      const rec = await store.record(path.basename(real).split(".")[0] as NodeKey);
      if (rec) return loginFor(project, rec.stack);
    }
  } catch {
    // not an image we can read: fall through to the project's default
  }
  const user = project.settings.ssh.user;
  return { user, seed: user !== "root" };
}

