/**
 * The state file of a VM started in the background (`dbuild run`, or the watch session's shell VM): it sits
 * next to the disk so `dbuild ssh DISK` can find the VM without a daemon.
 */
import { writeFileSync } from "node:fs";
import path from "node:path";

/** What `dbuild run` leaves next to a snapshot so `dbuild ssh NAME` can find the VM. */
export interface RunState {
  pid: number;
  disk: string;
  ip: string;
  sshHost: string;
  sshPort: number;
  /** Login user (absent in states written before it existed: root). */
  user?: string;
  vnc?: string;
  keyPath: string;
  runDir: string;
  startedAt: string;
}

export function statePath(image: string): string {
  const abs = path.resolve(image);
  return path.join(path.dirname(abs), `.${path.basename(abs)}.dbuild-vm.json`);
}

/** Write the state file of the VM running on `state.disk` (where statePath says). */
export function writeRunState(state: RunState): void {
  writeFileSync(statePath(state.disk), JSON.stringify(state, null, 2) + "\n");
}
