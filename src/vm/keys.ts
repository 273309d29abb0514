/** The project's SSH key (`keys/demobuilder`), created on first use as Demobuilder's utils/init.sh did. */
import { promises as fs } from "node:fs";
import path from "node:path";
import { loadExeca } from "../util/lazy.js";
import { DbuildError } from "../util/errors.js";
import { pathExists } from "../util/fs.js";

export interface ProjectKey {
  /** Private key path. */
  key: string;
  /** Public key path. */
  pub: string;
}


/**
 * Create `<root>/keys/demobuilder` (+ .pub) if missing. Safe against concurrent callers (two dbuild
 * processes, parallel nodes): a key is generated in a private temporary directory and linked into place
 * with link(2), which fails if another process won; the public key is then always derived from whichever
 * private key won, so the pair cannot mismatch.
 */
export async function ensureProjectKey(projectRoot: string): Promise<ProjectKey> {
  const dir = path.join(projectRoot, "keys");
  const key = path.join(dir, "demobuilder");
  const pub = `${key}.pub`;
  if ((await pathExists(key)) && (await pathExists(pub))) {
    await fs.chmod(key, 0o600); // ssh refuses a group/world-readable key (e.g. after a git checkout)
    return { key, pub };
  }
  await fs.mkdir(dir, { recursive: true });
  const tmp = await fs.mkdtemp(path.join(dir, ".keygen-"));
  try {
    if (!(await pathExists(key))) {
      const tkey = path.join(tmp, "demobuilder");
      await keygen(key, ["-q", "-t", "ed25519", "-N", "", "-C", "dbuild", "-f", tkey]);
      await fs.chmod(tkey, 0o600);
      try {
        await fs.link(tkey, key);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
    }
    await fs.chmod(key, 0o600);
    if (!(await pathExists(pub))) {
      const derived = (await keygen(key, ["-y", "-f", key])).trim();
      const tpub = path.join(tmp, "demobuilder.pub");
      await fs.writeFile(tpub, `${derived.split(" ").slice(0, 2).join(" ")} dbuild\n`, { mode: 0o644 });
      await fs.rename(tpub, pub);
    }
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
  return { key, pub };
}

async function keygen(key: string, args: string[]): Promise<string> {
  try {
    const execa = await loadExeca();
    return (await execa("ssh-keygen", args)).stdout;
  } catch (e) {
    throw new DbuildError({
      reason: "keygen-failed",
      where: key,
      message: `ssh-keygen failed: ${(e as Error).message}`,
      hint: "install openssh-client (ssh-keygen), or put a key pair at keys/demobuilder and keys/demobuilder.pub",
    });
  }
}
