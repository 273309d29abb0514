/**
 * Every non-detached QEMU this process started, so that none outlives it: on SIGINT, SIGTERM, an
 * uncaught error or a plain exit, each is SIGKILLed synchronously and its run directory removed.
 * Synchronous because `exit` handlers cannot await.
 */
import { rmSync } from "node:fs";

interface Entry {
  pid: number;
  dirs: string[];
}

const running = new Map<number, Entry>();
let installed = false;

export function registerVm(pid: number, dirs: string[]): void {
  running.set(pid, { pid, dirs });
}

export function unregisterVm(pid: number): void {
  running.delete(pid);
}

export function runningVmPids(): number[] {
  return [...running.keys()];
}

/** Kill every registered VM now (SIGKILL) and remove their run directories. */
export function killAllVms(): void {
  for (const e of running.values()) {
    try {
      process.kill(e.pid, "SIGKILL");
    } catch {
      // already gone
    }
    for (const d of e.dirs) {
      try {
        rmSync(d, { recursive: true, force: true });
      } catch {
        // best effort while exiting
      }
    }
  }
  running.clear();
}

function onSignal(sig: NodeJS.Signals): void {
  killAllVms();
  // If nobody else handles the signal, keep its default meaning: die by it (exit status 128+n).
  if (process.listenerCount(sig) === 1) {
    process.removeListener(sig, onSignal);
    process.kill(process.pid, sig);
  }
}

/** Idempotent. startVm calls it; the CLI may call it early too. */
export function installVmCleanupHandlers(): void {
  if (installed) return;
  installed = true;
  process.on("exit", killAllVms);
  process.on("uncaughtExceptionMonitor", killAllVms);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(sig, onSignal);
}
