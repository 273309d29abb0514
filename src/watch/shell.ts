/**
 * --shell: a throwaway VM of a freshly built stack. Its disk is a copy-on-write snapshot in a
 * private temporary directory (never in the build dir: published objects are immutable and other
 * images are backed by them). The VM belongs to this process: it dies with it.
 */
import { promises as fs, realpathSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Project } from "../project/types.js";
import type { Store } from "../store/store.js";
import { ensureProjectKey } from "../vm/keys.js";
import { startImageVm } from "../exec/warm-start.js";
import { shellQuote } from "../vm/ssh.js";

export interface ShellVm {
  stack: string;
  disk: string;
  pid: number;
  sshHost: string;
  sshPort: number;
  keyPath: string;
  /** OpenSSH command line reaching the VM as root. */
  ssh: string;
  /** Seconds from snapshot to a working SSH. */
  bootSeconds: number;
  stop(): Promise<void>;
}

export async function startShell(project: Project, store: Store, stack: string, signal: AbortSignal): Promise<ShellVm> {
  const t0 = Date.now();
  // The view is a link into the objects dir; back the snapshot by the object itself, so that a later
  // rebuild moving the view does not change what this VM sees.
  const backing = realpathSync(store.viewPath(stack));
  const { key } = await ensureProjectKey(project.root);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-watch-"));
  const disk = path.join(dir, `${stack}.qcow2`);
  try {
    // Resumed from the image's warm snapshot where one exists (the image had a child built), else booted.
    const { vm } = await startImageVm({
      project,
      store,
      object: backing,
      disk,
      vm: { keyPath: key, serialLog: path.join(dir, "console.log"), runDir: path.join(dir, "run") },
      signal,
      note: () => undefined,
    });
    let stopped: Promise<void> | undefined;
    const user = "root";
    return {
      stack,
      disk,
      pid: vm.pid,
      sshHost: vm.sshHost,
      sshPort: vm.sshPort,
      keyPath: key,
      // Interactive: no BatchMode, and no host-key prompt for a VM that lives a few minutes.
      ssh: ["ssh", "-i", key, "-p", String(vm.sshPort), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", `${user}@${vm.sshHost}`]
        .map((a) => shellQuote(a))
        .join(" "),
      bootSeconds: (Date.now() - t0) / 1000,
      stop: () => {
        stopped ??= (async () => {
          await vm.kill();
          await fs.rm(dir, { recursive: true, force: true });
        })();
        return stopped;
      },
    };
  } catch (e) {
    await fs.rm(dir, { recursive: true, force: true });
    throw e;
  }
}
