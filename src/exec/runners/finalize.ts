/**
 * A finalizing node: the same VM cycle as an intermediate node, then, once that image is published, the
 * layer's host `convert` writes the deliverable (openstack, vagrant, vsphere, raw, ...) from it.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { runHostScript } from "../host.js";
import { StepError } from "../step-error.js";
import type { Deliverable, NodeRunner, RunContext } from "./types.js";
import { vmCycleRunner } from "./vm-cycle.js";

export const finalizeRunner: NodeRunner = {
  buildImage: (ctx) => vmCycleRunner.buildImage(ctx),
  afterPublish: convertDeliverable,
};

async function convertDeliverable({ project, layer, node, store, log, setStep, signal, work }: RunContext, object: string): Promise<Deliverable> {
  const cfg = layer.config;
  const format = cfg.format ?? layer.name;
  const ext = cfg.extension ?? format;
  setStep("convert", `to ${format}`);
  const out = store.tmpPath(`${node.stack}.${ext}`);
  const workdir = store.tmpPath(`${node.stack}-convert`);
  work.push(out, workdir);
  await fs.mkdir(workdir, { recursive: true });
  const settings = node.settings;
  await runHostScript("convert", path.join(layer.dir, "convert"), {
    cwd: layer.dir,
    env: {
      ...layer.config.env,
      ...settings,
      LAYER: layer.name,
      STACK: node.stack,
      DBUILD_IMAGE: store.objectPath(object),
      DBUILD_OUTPUT: out,
      DBUILD_WORKDIR: workdir,
    },
    log,
    signal,
    timeoutMs: project.settings.timeouts.install * 1000,
  });
  try {
    await fs.access(out);
  } catch {
    throw new StepError("convert", `${layer.name}/convert finished but wrote nothing to DBUILD_OUTPUT`);
  }
  setStep("publish", "deliverable");
  const delivObject = await store.publishFile(out, node.key, ext);
  const rel = path.relative(store.buildDir, store.deliverablePath(layer.name, node.stack, ext));
  const vars: Record<string, string> = { ...settings, OUTPUT: path.join(store.buildDir, rel), STACK: node.stack, LAYER: layer.name };
  const next = cfg.next?.replace(/\{([A-Z_]+)\}/g, (m, k: string) => vars[k] ?? m);
  return { deliverable: { path: rel, object: delivObject }, ...(next ? { next } : {}) };
}
