import * as path from "node:path";
import type { ProjectSettings } from "../project/types.js";
import type { VmOptions } from "./types.js";

/**
 * VmOptions for a VM of this project: accelerator, network, timeouts and the KVM-probe cache come
 * from the project settings; the caller says which disk, where its files go, and its size.
 */
export function projectVmOptions(
  s: ProjectSettings,
  o: Pick<VmOptions, "disk" | "keyPath" | "runDir" | "serialLog" | "mem" | "cpus"> & Partial<Pick<VmOptions, "vnc" | "detached" | "signal" | "user" | "seed">>,
): VmOptions {
  return {
    accelerator: s.accelerator,
    accelCacheFile: path.join(s.buildDir, ".dbuild", "accel.json"),
    network: s.network,
    bootTimeoutMs: s.timeouts.boot * 1000,
    ...o,
  };
}
