/**
 * One runner per node kind, behind one interface. The executor (src/exec/executor.ts) owns what every
 * node shares: the scheduler slot, the remote-cache pull, restoring from the store, publishing, the record,
 * the events and the clean-up of temporary files. A runner only makes the node's image (and, for a
 * finalizing node, its deliverable).
 */
import type { PlanNode } from "../../model/plan.js";
import type { Layer, Project } from "../../project/types.js";
import type { ProxyCounters, Step } from "../../report/events.js";
import type { Store } from "../../store/store.js";
import type { VmUsage } from "../../vm/types.js";
import type { BuildProxy } from "../build-proxy.js";
import type { NodeLog } from "../node-log.js";
import type { WarmMode } from "../warm-start.js";
import type { HandoffRequest } from "../handoff.js";

export interface RunContext {
  project: Project;
  layer: Layer;
  node: PlanNode;
  store: Store;
  log: NodeLog;
  /** Moves the node to a step: logged, and emitted as a `step` event. */
  setStep: (step: Step, detail?: string) => void;
  /** Something went less well than it could without failing the node: logged, and a `warning` event. */
  warn: (message: string) => void;
  signal: AbortSignal;
  /** Where the runner writes the node's image (unpublished; removed by the executor unless published). */
  tmpImage: string;
  /** The parent's published image (object file name and absolute path); null for a base node. */
  parent: { object: string; path: string } | null;
  /** "cold" (--cold): build VMs boot instead of resuming the parent's warm snapshot. */
  warm: WarmMode;
  /** Temporary files and directories the executor removes when the node ends, whatever the outcome. */
  work: string[];
  /** The build's package cache (docs/proxy.md): a runner asks it for a listener of its own. */
  proxy: BuildProxy;
  /** What this node's downloads through the package cache came to (shown in its node-done event). */
  countProxy: (counters: ProxyCounters | undefined) => void;
  /** A build VM stopped (powered off or killed): its pid and what it used (a `vm-usage` event). */
  vmStopped: (pid: number, usage: VmUsage) => void;
  /** The layer's secrets (layer.yaml `secrets:`), by name: values never logged (the log masks them). */
  secrets: ReadonlyMap<string, Buffer>;
  /** `watch --shell`: leave the build VM's last state here for the shell (exec/handoff.ts). */
  handoff?: HandoffRequest;
}

/** What a finalizing node adds to its record. */
export interface Deliverable {
  /** Path relative to the build dir, and the store object holding the file. */
  deliverable: { path: string; object: string };
  /** The next step shown to the user, placeholders filled in. */
  next?: string;
}

export interface NodeRunner {
  /** Writes the node's image to `ctx.tmpImage`; throws a StepError naming the step that failed. */
  buildImage: (ctx: RunContext) => Promise<void>;
  /** After the image is published as `object` (finalizing nodes): makes and publishes the deliverable. */
  afterPublish?: (ctx: RunContext, object: string) => Promise<Deliverable>;
}
