/** Copy a local tree into the guest with rsync over OpenSSH (rsync is in every guest we build). */
import { RSYNC_NOISE_EXCLUDES } from "../util/editor-noise.js";
import { loadExeca } from "../util/lazy.js";
import { DbuildError } from "../util/errors.js";
import { sleep } from "../util/sleep.js";
import { shellQuote } from "./ssh.js";

export interface RsyncTarget {
  host: string;
  port: number;
  keyPath: string;
  username?: string;
  /** known_hosts holding the guest's verified host key under HOST_ALIAS; without it keys are not checked. */
  knownHosts?: string;
}

/** The name the verified key is filed under in a VM's known_hosts (the address may be reused). */
export const HOST_ALIAS = "dbuild-vm";

/**
 * The OpenSSH options used by rsync, `dbuild ssh` and the watch shell: never prompts unless `interactive`;
 * with a VM's known_hosts, only its verified host key is accepted.
 */
export function sshArgs(t: { port: number; keyPath: string; knownHosts?: string; interactive?: boolean }): string[] {
  const hostKeys = t.knownHosts
    ? ["-o", "StrictHostKeyChecking=yes", "-o", `UserKnownHostsFile=${t.knownHosts}`, "-o", `HostKeyAlias=${HOST_ALIAS}`]
    : ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"];
  return [
    "-i", t.keyPath,
    "-p", String(t.port),
    ...hostKeys,
    "-o", "LogLevel=ERROR",
    // Interactive (a shell for a person): may ask, e.g. for a key's passphrase.
    ...(t.interactive ? [] : ["-o", "BatchMode=yes"]),
    "-o", "IdentitiesOnly=yes",
    "-o", "ConnectTimeout=10",
  ];
}

/**
 * `rsync -rL --delete LOCAL/ root@HOST:REMOTE/`: the contents of localDir become the contents of
 * remoteDir (created with its parents); symlinks are copied as the files they point to.
 */
export async function rsyncTo(localDir: string, remoteDir: string, target: RsyncTarget, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<void> {
  const src = localDir.endsWith("/") ? localDir : `${localDir}/`;
  const dst = remoteDir.endsWith("/") ? remoteDir : `${remoteDir}/`;
  const host = target.host.includes(":") ? `[${target.host}]` : target.host;
  const e = ["ssh", ...sshArgs(target)].map(shellQuote).join(" ");
  const execa = await loadExeca();
  const attempt = () =>
    execa(
      "rsync",
      ["-rL", "--delete", ...RSYNC_NOISE_EXCLUDES, "-e", e, `--rsync-path=mkdir -p ${shellQuote(dst)} && rsync`, src, `${target.username ?? "root"}@${host}:${dst}`],
      { cancelSignal: opts.signal, timeout: opts.timeoutMs, reject: false, all: true, forceKillAfterDelay: 1000 },
    );
  let r = await attempt();
  // The SSH connection refused before any byte moved (a loaded guest's sshd/dropbear dropping a new
  // connection during the key exchange): nothing was copied, so trying again is safe.
  for (let retry = 1; retry <= 3 && r.failed && !r.isCanceled && !r.timedOut && sshRefusedEarly(String(r.all ?? "")); retry++) {
    await sleep(1000 * retry, opts.signal);
    r = await attempt();
  }
  if (r.isCanceled) throw opts.signal?.reason instanceof Error ? opts.signal.reason : new Error("rsync aborted");
  if (r.failed) {
    throw new DbuildError(
      {
        reason: "rsync-failed",
        where: localDir,
        message: `copying into the guest (${remoteDir}) failed${r.timedOut ? " (timed out)" : ` with exit code ${r.exitCode ?? r.signal ?? "?"}`}: ${String(r.all ?? "").trim().split("\n").slice(-5).join("\n")}`,
        hint: "check that the guest has rsync and enough disk space",
      },
      1,
    );
  }
}

/** rsync's output when its SSH transport was closed before the key exchange finished. */
export function sshRefusedEarly(output: string): boolean {
  return /kex_exchange_identification|Connection closed by remote host|Connection reset by peer/.test(output) && /0 bytes received so far/.test(output);
}
