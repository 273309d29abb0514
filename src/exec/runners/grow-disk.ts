/** `disk:` in layer.yaml: the size a node's disk is grown to (the guest grows its filesystem on boot). */
import type { Step } from "../../report/events.js";
import { qemuImg } from "../../store/qemu-img.js";
import { StepError } from "../step-error.js";

/** Grow a disk image to `bytes` (never shrinks: a filesystem may fill the old size). */
export async function growDisk(image: string, bytes: number, step: Step, signal: AbortSignal): Promise<void> {
  const info = JSON.parse(await qemuImg(["info", "--output=json", image], signal)) as { "virtual-size": number };
  const have = info["virtual-size"];
  if (bytes < have) {
    throw new StepError(step, `disk: ${mib(bytes)} MiB is smaller than the image's ${mib(have)} MiB; a disk can only grow (raise disk: in layer.yaml)`);
  }
  if (bytes > have) await qemuImg(["resize", "-q", image, String(bytes)], signal);
}

const mib = (n: number): string => (n / 1048576).toFixed(0);
