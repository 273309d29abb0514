/**
 * A base node built by the layer's host `install` script, which writes a standalone image to
 * DBUILD_OUTPUT (any format qemu-img reads; it is converted to qcow2 when it is not one).
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { qemuImg } from "../../store/qemu-img.js";
import { userCacheDir } from "../../store/user-cache.js";
import { errorMessage } from "../../util/errors.js";
import { ensureProjectKey } from "../../vm/keys.js";
import { runHostScript } from "../host.js";
import { hostSecretsDir } from "../secrets.js";
import { StepError } from "../step-error.js";
import type { NodeRunner, RunContext } from "./types.js";

export const baseInstallRunner: NodeRunner = {
  async buildImage(ctx: RunContext): Promise<void> {
    await runInstall(ctx);
    await checkOutput(ctx);
  },
};

async function runInstall({ project, layer, node, store, log, setStep, signal, tmpImage, proxy, countProxy, secrets }: RunContext): Promise<void> {
  const keys = await ensureProjectKey(project.root);
  const workdir = store.tmpPath(`${node.stack}-work`);
  await fs.mkdir(workdir, { recursive: true });
  const cache = path.join(userCacheDir(), "layers", layer.name);
  await fs.mkdir(cache, { recursive: true });
  setStep("install-host", "running install on the host");
  // Host scripts may send their downloads through the package cache too (DBUILD_PROXY, documented).
  const hostProxy = await proxy.forHost();
  // Secrets: files in a private in-memory directory (DBUILD_SECRETS), removed when the install ends.
  const hostSecrets = secrets.size ? await hostSecretsDir(secrets) : undefined;
  try {
    await runHostScript("install-host", path.join(layer.dir, "install"), {
      cwd: layer.dir,
      env: {
        ...layer.config.env,
        ...node.settings,
        LAYER: layer.name,
        STACK: node.stack,
        DBUILD_OUTPUT: tmpImage,
        DBUILD_PUBKEY: keys.pub,
        DBUILD_CACHE: cache,
        DBUILD_WORKDIR: workdir,
        DBUILD_PROJECT: project.root,
        ...(hostProxy ? { DBUILD_PROXY: hostProxy.url } : {}),
        ...(layer.config.disk !== undefined ? { DBUILD_DISK_SIZE: String(layer.config.disk) } : {}),
        ...(hostSecrets ? { DBUILD_SECRETS: hostSecrets.dir } : {}),
      },
      log,
      signal,
      timeoutMs: (layer.config.timeout ?? project.settings.timeouts.install) * 1000,
    });
    countProxy(hostProxy?.counters());
  } finally {
    await hostSecrets?.remove();
    await hostProxy?.close();
    await fs.rm(workdir, { recursive: true, force: true });
  }
}

/** A base image must stand alone; any other format than qcow2 is converted in place. */
async function checkOutput({ tmpImage, signal }: RunContext): Promise<void> {
  try {
    const info = JSON.parse(await qemuImg(["info", "--output=json", tmpImage], signal)) as { format?: string; "backing-filename"?: string };
    if (info["backing-filename"]) throw new StepError("install-host", `install wrote an image with a backing file (${info["backing-filename"]}); a base image must stand alone`);
    if (info.format !== "qcow2") {
      const conv = `${tmpImage}.conv`;
      await qemuImg(["convert", "-O", "qcow2", tmpImage, conv], signal);
      await fs.rename(conv, tmpImage);
    }
  } catch (e) {
    if (e instanceof StepError) throw e;
    throw new StepError("install-host", `install finished but wrote no usable image to DBUILD_OUTPUT (${errorMessage(e)})`);
  }
}
