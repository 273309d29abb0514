/**
 * Host tools a build runs, checked before anything starts: a missing one is bad set-up (exit 2) named with
 * the Debian package that provides it, not a failure halfway through the first VM step.
 */
import type { Project } from "../project/types.js";
import { DbuildError, type Problem } from "../util/errors.js";
import { findOnPath } from "../util/fs.js";

/** command -> Debian package (scripts/setup.sh installs them all). */
const PACKAGE: Record<string, string> = {
  "qemu-img": "qemu-utils",
  "qemu-system-x86_64": "qemu-system-x86",
  rsync: "rsync",
  ssh: "openssh-client",
  "ssh-keygen": "openssh-client",
  flock: "util-linux",
};

/** Throws (exit 2) listing every tool a build of this project needs that is not on PATH. */
export function requireHostTools(project: Project): void {
  const needed = ["flock", "qemu-img"];
  if ([...project.layers.values()].some((l) => l.kind !== "base")) needed.push("qemu-system-x86_64", "rsync", "ssh", "ssh-keygen");
  const problems: Problem[] = needed
    .filter((c) => findOnPath(c) === undefined)
    .map((c) => ({
      reason: "missing-tool",
      where: `host tool ${c}`,
      message: `${c} is not on PATH (${process.env.PATH ?? ""})`,
      hint: `install it: apt-get install ${PACKAGE[c] ?? c} (or run scripts/setup.sh)`,
    }));
  if (problems.length) throw new DbuildError(problems, 2);
}
