import { loadExeca } from "../util/lazy.js";
import { DbuildError } from "../util/errors.js";
import { withParentDeathSignal } from "../util/parent-death.js";

/** Run qemu-img; a failure becomes a DbuildError carrying its stderr. */
export async function qemuImg(args: string[], signal?: AbortSignal): Promise<string> {
  const execa = await loadExeca();
  const [file, argv] = withParentDeathSignal("qemu-img", args);
  const r = await execa(file, argv, { reject: false, cancelSignal: signal, stripFinalNewline: true });
  if (r.failed) {
    throw new DbuildError({
      reason: "qemu-img",
      where: `qemu-img ${args[0] ?? ""}`,
      message: (r.stderr || r.shortMessage || "failed").trim(),
      hint: r.code === "ENOENT" ? "install qemu-utils (apt-get install qemu-utils)" : undefined,
    }, 1);
  }
  return r.stdout;
}
