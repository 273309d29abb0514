/**
 * Children that must not outlive dbuild (QEMU, qemu-img, host scripts) are started under
 * `setpriv --pdeathsig KILL` (util-linux, Essential on Debian): the kernel SIGKILLs them when the dbuild
 * thread that spawned them dies, however it dies (SIGKILL and the OOM killer included).
 */
import { findOnPath } from "./fs.js";

let setprivPath: string | null | undefined;

/**
 * `[file, args]` that run `cmd args` so that it receives SIGKILL when this process dies. Without setpriv
 * (not a Debian-like host) the command runs as is: the pidfile reaper still catches leftovers.
 */
export function withParentDeathSignal(cmd: string, args: string[]): [string, string[]] {
  if (setprivPath === undefined) setprivPath = findOnPath("setpriv", ["/usr/bin", "/bin"]) ?? null;
  if (!setprivPath) return [cmd, args];
  // setpriv execs the command: the child's pid is QEMU's own.
  return [setprivPath, ["--pdeathsig", "KILL", "--", cmd, ...args]];
}

