/** Picks the runner of a node: by kind, and for a base node by whether layer.yaml declares an import. */
import type { PlanNode } from "../../model/plan.js";
import type { Layer } from "../../project/types.js";
import { unreachable } from "../../util/errors.js";
import { baseInstallRunner } from "./base-install.js";
import { finalizeRunner } from "./finalize.js";
import { importRunner } from "./import.js";
import type { NodeRunner } from "./types.js";
import { vmCycleRunner } from "./vm-cycle.js";

export function runnerFor(node: PlanNode, layer: Layer): NodeRunner {
  switch (node.kind) {
    case "base":
      return layer.config.import ? importRunner : baseInstallRunner;
    case "intermediate":
      return vmCycleRunner;
    case "finalizing":
      return finalizeRunner;
    default:
      return unreachable(node.kind);
  }
}
