/** Host resources a VM needs to be unique: TCP ports for hostfwd, MAC addresses. */
import { randomBytes } from "node:crypto";
import net from "node:net";

/** Ports handed out by this process and not yet released: the kernel may offer them again meanwhile. */
const reserved = new Set<number>();

/** A TCP port free on `host` right now, not handed to another VM of this process. */
export async function freeTcpPort(host = "127.0.0.1"): Promise<number> {
  for (let i = 0; i < 20; i++) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer();
      srv.once("error", reject);
      srv.listen(0, host, () => {
        const addr = srv.address();
        srv.close(() => resolve(typeof addr === "object" && addr ? addr.port : 0));
      });
    });
    if (port && !reserved.has(port)) {
      reserved.add(port);
      return port;
    }
  }
  throw new Error("no free TCP port found");
}

export function releasePort(port: number): void {
  reserved.delete(port);
}

/** A random MAC in QEMU's locally administered 52:54:00 range: QEMU gives every VM the same one otherwise. */
export function randomMac(): string {
  return ["52", "54", "00", ...[...randomBytes(3)].map((b) => b.toString(16).padStart(2, "0"))].join(":");
}
