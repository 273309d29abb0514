/**
 * The guest's SSH host keys, read through the guest agent (virtio-serial: a channel no one on the network
 * can answer). SSH's first handshake presents a key over the network; in bridge mode anyone on the bridge
 * could answer in the guest's place, so the presented key must be one the guest itself holds.
 *
 * Reads OpenSSH's public keys (/etc/ssh/ssh_host_*_key.pub) and dropbear's key files
 * (/etc/dropbear/dropbear_*_host_key, whose public half is the first fields of the wire format). dropbear
 * -R makes a key on first use, so the check runs after the first handshake and before any command.
 */
import type { GuestAgent } from "./agent.js";

const OPENSSH = ["ed25519", "ecdsa", "rsa"].map((t) => `/etc/ssh/ssh_host_${t}_key.pub`);
const DROPBEAR = ["ed25519", "ecdsa", "rsa"].map((t) => `/etc/dropbear/dropbear_${t}_host_key`);

function sshString(b: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(b.length);
  return Buffer.concat([len, b]);
}

/** Split an SSH wire-format buffer into its length-prefixed fields. */
function fields(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let off = 0;
  while (off + 4 <= b.length) {
    const n = b.readUInt32BE(off);
    if (off + 4 + n > b.length) break;
    out.push(b.subarray(off + 4, off + 4 + n));
    off += 4 + n;
  }
  return out;
}

/** Public key blob (as SSH sends it) of a dropbear host key file, or undefined if unknown. */
export function dropbearPublicBlob(file: Buffer): Buffer | undefined {
  const f = fields(file);
  const type = f[0]?.toString("latin1");
  if (type === "ssh-ed25519" && f[1]?.length === 64) return Buffer.concat([sshString(f[0]!), sshString(f[1].subarray(32))]);
  if (type === "ssh-rsa" && f.length >= 3) return Buffer.concat([sshString(f[0]!), sshString(f[1]!), sshString(f[2]!)]);
  if (type?.startsWith("ecdsa-sha2-") && f.length >= 3) return Buffer.concat([sshString(f[0]!), sshString(f[1]!), sshString(f[2]!)]);
  return undefined;
}

/** Public key blob of an OpenSSH `.pub` line. */
export function opensshPublicBlob(line: string): Buffer | undefined {
  const m = /^\s*(\S+)\s+([A-Za-z0-9+/=]+)/.exec(line);
  return m ? Buffer.from(m[2]!, "base64") : undefined;
}

/** Host key blobs the guest holds (empty if the agent cannot read any of the usual files). */
export async function guestHostKeys(agent: GuestAgent, opts: { signal?: AbortSignal } = {}): Promise<Buffer[]> {
  const keys: Buffer[] = [];
  for (const p of OPENSSH) {
    const b = await agent.readFile(p, { signal: opts.signal }).catch(() => undefined);
    const k = b && opensshPublicBlob(b.toString("latin1"));
    if (k) keys.push(k);
  }
  for (const p of DROPBEAR) {
    const b = await agent.readFile(p, { signal: opts.signal }).catch(() => undefined);
    const k = b && dropbearPublicBlob(b);
    if (k) keys.push(k);
  }
  return keys;
}

/** One known_hosts line for OpenSSH (rsync, `dbuild ssh`), under a fixed alias (HostKeyAlias). */
export function knownHostsLine(alias: string, blob: Buffer): string {
  const type = fields(blob)[0]?.toString("latin1") ?? "ssh-ed25519";
  return `${alias} ${type} ${blob.toString("base64")}\n`;
}
