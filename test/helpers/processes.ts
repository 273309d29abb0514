/** Process checks shared by the VM tests: is a pid alive, which QEMU processes belong to a directory. */
import { execFileSync } from "node:child_process";

export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** `pgrep -f MARKER` output ("" when nothing matches). */
export function pgrep(marker: string): string {
  try {
    return execFileSync("pgrep", ["-f", marker], { encoding: "utf8" }).trim();
  } catch {
    return "";
  }
}

/** `pid command` lines of the QEMU processes whose command line mentions `root`. */
export function qemuOf(root: string): string[] {
  try {
    return execFileSync("pgrep", ["-af", `qemu-system.*${root}`], { encoding: "utf8" }).trim().split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

/** SIGKILL every QEMU of `root` (test clean-up: a failed test must not leave VMs behind). */
export function killQemuOf(root: string): void {
  for (const line of qemuOf(root)) {
    try {
      process.kill(Number(line.split(" ")[0]), "SIGKILL");
    } catch {
      /* already gone */
    }
  }
}
