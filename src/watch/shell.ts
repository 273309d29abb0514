/**
 * --shell: a throwaway VM of a freshly built stack (src/exec/throwaway.ts). The VM belongs to this
 * process: it dies with it.
 */
import { realpathSync } from "node:fs";
import { startThrowawayVm } from "../exec/throwaway.js";
import type { Project } from "../project/types.js";
import type { Store } from "../store/store.js";
import { ensureProjectKey } from "../vm/keys.js";
import { sshArgs } from "../vm/rsync.js";
import { shellQuote } from "../vm/ssh.js";
import { loginFor } from "../exec/login.js";
import type { Handoff } from "../exec/handoff.js";

export interface ShellVm {
  stack: string;
  disk: string;
  pid: number;
  sshHost: string;
  sshPort: number;
  keyPath: string;
  /** Login user. */
  user: string;
  /** OpenSSH command line reaching the VM as its login user. */
  ssh: string;
  /** Seconds from snapshot to a working SSH. */
  bootSeconds: number;
  /** How the VM came up: the kept build VM resumed, the image's warm snapshot resumed, or a boot. */
  from: "build VM" | "warm snapshot" | "boot";
  stop(): Promise<void>;
}

export async function startShell(project: Project, store: Store, stack: string, signal: AbortSignal, handoff?: Handoff): Promise<ShellVm> {
  const t0 = Date.now();
  const { key } = await ensureProjectKey(project.root);
  // The build VM kept just before its poweroff (watch --shell), else the image's warm snapshot where one
  // exists (the image had a child built), else booted.
  const t = await startThrowawayVm({
    project,
    store,
    // The view is a link into the objects dir; back the snapshot by the object itself, so that a later
    // rebuild moving the view does not change what this VM sees.
    backing: realpathSync(store.viewPath(stack)),
    keyPath: key,
    login: loginFor(project, stack),
    diskName: `${stack}.qcow2`,
    tmpPrefix: "dbuild-watch-",
    signal,
    note: () => undefined,
    ...(handoff ? { handoff } : {}),
  });
  const user = t.vm.user;
  return {
    stack,
    disk: t.disk,
    pid: t.vm.pid,
    sshHost: t.vm.sshHost,
    sshPort: t.vm.sshPort,
    keyPath: key,
    user,
    // Interactive, and no host-key prompt for a VM that lives a few minutes.
    ssh: ["ssh", ...sshArgs({ port: t.vm.sshPort, keyPath: key, interactive: true }), `${user}@${t.vm.sshHost}`].map((a) => shellQuote(a)).join(" "),
    bootSeconds: (Date.now() - t0) / 1000,
    from: t.from,
    stop: () => t.stop(),
  };
}
