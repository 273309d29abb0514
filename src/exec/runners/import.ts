/**
 * A base node declared by `import: {from, sha256}` in layer.yaml: fetch (or reuse) the image, check its
 * digest, and convert it to a standalone qcow2. No VM, no host script.
 */
import { qemuImg } from "../../store/qemu-img.js";
import { userCacheDir } from "../../store/user-cache.js";
import { fetchImport } from "../host.js";
import { growDisk } from "./grow-disk.js";
import type { NodeRunner, RunContext } from "./types.js";

export const importRunner: NodeRunner = {
  async buildImage({ layer, tmpImage, setStep, signal }: RunContext): Promise<void> {
    const imp = layer.config.import;
    if (!imp) throw new Error(`layer ${layer.name} has no import`);
    setStep("import", imp.from);
    const file = await fetchImport(imp.from, imp.sha256, {
      layerDir: layer.dir,
      cacheDir: userCacheDir(),
      signal,
      progress: (d) => setStep("import", d),
    });
    // Converting (not copying) makes any input format a standalone qcow2 with no backing file.
    await qemuImg(["convert", "-O", "qcow2", file, tmpImage], signal);
    // The guest grows its partition and filesystem on its next boot (cloud-init growpart/resizefs).
    if (layer.config.disk !== undefined) await growDisk(tmpImage, layer.config.disk, "import", signal);
  },
};
