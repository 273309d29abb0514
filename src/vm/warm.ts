/**
 * Warm starts: save a running VM's RAM state next to the disk it was booted on, and resume another
 * VM from it instead of booting (measured under TCG: SSH 0.8-0.9 s after QEMU starts, against 9 s for
 * a boot). Knows nothing of layers or of the store: callers say where the files go.
 *
 * Saving, on a VM that booted on overlay B and is ready:
 *   stop -> blockdev-snapshot-sync (new writes go to a fresh overlay T over B; B is now frozen and
 *   flushed, and matches the RAM state) -> migrate "exec:cat > STATE" -> cont.
 * The VM then carries on, writing to T. Any number of later VMs resume from (B, STATE): each on its own
 * overlay over B, started with the same device set and MAC plus `-incoming "exec:cat STATE"`, then `cont`.
 * The guest clock stands still while the VM is stopped or saved, so it is set after each of those.
 */
import { execFile } from "node:child_process";
import { promises as fs } from "node:fs";
import { promisify } from "node:util";
import type { QmpClient } from "./qmp.js";
import type { Vm } from "./types.js";
import { sleep } from "../util/sleep.js";

/** The drive id QEMU gives the first `-drive if=virtio`. */
const DISK_ID = "virtio0";

interface MigrateInfo {
  status?: string;
  "error-desc"?: string;
}

/** Poll query-migrate until the migration (outgoing or incoming) is over; throws if it failed. */
async function waitMigration(qmp: QmpClient, what: string, signal?: AbortSignal): Promise<void> {
  for (;;) {
    const r = await qmp.execute<MigrateInfo>("query-migrate", undefined, { signal });
    if (r.status === "completed") return;
    if (r.status === "failed" || r.status === "cancelled") throw new Error(`${what} ${r.status}${r["error-desc"] ? `: ${r["error-desc"]}` : ""}`);
    await sleep(25, signal);
  }
}

/**
 * A VM started with `-incoming`: wait until QEMU has loaded the state, then run it. A state that does
 * not fit (other devices, other QEMU, truncated file) makes QEMU exit, which the caller sees as a
 * qemu-failed boot.
 */
export async function resumeIncoming(qmp: QmpClient, signal?: AbortSignal): Promise<void> {
  await waitMigration(qmp, "loading the RAM state", signal);
  await qmp.execute("cont", undefined, { signal });
}

export interface SavedState {
  /** Bytes of the state file. */
  stateBytes: number;
  /** Milliseconds the guest was stopped. */
  pausedMs: number;
}

/**
 * Freeze the VM's disk and RAM as a warm snapshot: from now on the VM writes to `overlay` (created by
 * QEMU over the disk it booted on), and `stateFile` holds the RAM. The VM is running again on return
 * (also when saving failed after the overlay was made: the caller then just has no state file).
 */
export async function saveWarmState(qmp: QmpClient, opts: { overlay: string; stateFile: string; signal?: AbortSignal }): Promise<SavedState> {
  const t0 = Date.now();
  await qmp.execute("stop", undefined, { signal: opts.signal });
  try {
    await qmp.execute("blockdev-snapshot-sync", { device: DISK_ID, "snapshot-file": opts.overlay, format: "qcow2", mode: "absolute-paths" }, { signal: opts.signal });
    const quoted = opts.stateFile.replace(/'/g, "'\\''");
    await qmp.execute("migrate", { uri: `exec:cat > '${quoted}'` }, { signal: opts.signal });
    await waitMigration(qmp, "saving the RAM state", opts.signal);
  } catch (e) {
    // A partial state is useless, and on a full disk it holds the space the build goes on needing.
    await fs.rm(opts.stateFile, { force: true });
    throw e;
  } finally {
    // After a migration the disk is handed over (inactive); cont takes it back. Always run the VM
    // again, so a failed save costs only the snapshot.
    await qmp.execute("cont", undefined, { timeoutMs: 10_000 }).catch(() => undefined);
  }
  const st = await fs.stat(opts.stateFile);
  return { stateBytes: st.size, pausedMs: Date.now() - t0 };
}

/**
 * Set the guest clock to the host's. It stood still while the VM was stopped or saved: a resumed guest
 * would otherwise be as far behind as the snapshot is old (make, TLS and apt care). Second precision,
 * rounded, so the error is at most half a second plus one SSH round trip.
 */
export async function setGuestClock(vm: Vm, signal?: AbortSignal): Promise<void> {
  const now = Math.round(Date.now() / 1000);
  const cmd = `date -u -s @${now} >/dev/null 2>&1 || sudo -n date -u -s @${now} >/dev/null`;
  const r = await vm.exec(cmd, { timeoutMs: 15_000, signal });
  if (r.code !== 0) throw new Error(`setting the guest clock failed (exit ${r.code ?? r.signal ?? "?"})`);
}

let versionMemo: Promise<string> | undefined;

/** `qemu-system-x86_64 --version`'s first line: a saved state only loads into the QEMU that wrote it. */
export function qemuVersion(): Promise<string> {
  versionMemo ??= promisify(execFile)("qemu-system-x86_64", ["--version"]).then((r) => r.stdout.split("\n")[0]?.trim() ?? "unknown");
  return versionMemo;
}
