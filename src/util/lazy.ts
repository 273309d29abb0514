/**
 * Heavy dependencies loaded on first use. A no-op `dbuild all` or `dbuild plan` never starts a
 * process or a VM, and importing execa (~150 ms) and ssh2 (~60 ms) up front would be most of its time.
 */
export async function loadExeca(): Promise<typeof import("execa").execa> {
  return (await import("execa")).execa;
}

export async function loadSsh2(): Promise<typeof import("ssh2")> {
  return import("ssh2");
}
