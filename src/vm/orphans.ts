/**
 * QEMU must never outlive the dbuild that started it, even when dbuild dies by SIGKILL or the OOM killer
 * (no exit handler runs then). Two layers:
 *  - the kernel: build VMs run under `setpriv --pdeathsig KILL` (util-linux, Essential on Debian), so the
 *    kernel SIGKILLs QEMU when the dbuild thread that spawned it dies. QEMU 7.2 has no
 *    `-run-with exit-with-parent`.
 *  - a pidfile per VM (QEMU's own `-pidfile`): the next run, holding the build-dir lock, reaps whatever
 *    another crash path left behind. A pid is killed only if its command line is a QEMU started with that
 *    very pidfile, so a recycled pid is never hit.
 */
import { promises as fs, readFileSync } from "node:fs";
import path from "node:path";
import { sleep } from "../util/sleep.js";


/** The NUL-separated command line of a live process, or undefined. */
function cmdline(pid: number): string[] | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return raw.split("\0").filter((s, i, a) => s !== "" || i < a.length - 1);
  } catch {
    return undefined;
  }
}

/** True if `pid` is a QEMU process started with `-pidfile FILE`. */
export function isQemuWithPidfile(pid: number, file: string): boolean {
  const argv = cmdline(pid);
  if (!argv) return false;
  const i = argv.indexOf("-pidfile");
  return i >= 0 && argv[i + 1] === file && argv.some((a) => path.basename(a).startsWith("qemu-system"));
}

/**
 * SIGKILL every QEMU whose pidfile is in `dir` (verified by command line) and remove the pidfiles.
 * Call only while holding the build-dir lock: then no live dbuild owns those VMs.
 * Returns the pids killed.
 */
export async function reapOrphanVms(dir: string): Promise<number[]> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return [];
  }
  const killed: number[] = [];
  for (const n of names) {
    if (!n.endsWith(".pid")) continue;
    const file = path.join(dir, n);
    const pid = Number((await fs.readFile(file, "utf8").catch(() => "")).trim());
    if (Number.isInteger(pid) && pid > 1 && isQemuWithPidfile(pid, file)) {
      try {
        process.kill(pid, "SIGKILL");
        killed.push(pid);
      } catch {
        // exited meanwhile
      }
      // Wait until the kernel has torn it down: its disk must not be written while tmp/ is cleaned.
      // (A zombie has an empty command line and holds no files any more.)
      for (let i = 0; i < 100 && (cmdline(pid)?.length ?? 0) > 0; i++) await sleep(50);
    }
    await fs.rm(file, { force: true });
  }
  return killed;
}
