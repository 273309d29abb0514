/**
 * The module layering of src/, in ONE place. Data flows one way:
 *
 *   cli -> watch -> exec -> {cache, report, proxy, vm} -> {plan, store} -> model -> project -> util
 *
 * (roughly: the exact edges are LAYERS below, drawn in docs/architecture.md; e.g. exec does not import
 * plan, vm imports only project and util, proxy only util).
 *
 * LAYERS says, for each folder of src/, which other folders it may import (types included). Anything not
 * listed is an upward or sideways import and fails `npm test` (test/unit/architecture.test.ts runs this
 * config; `npm run deps` prints the same check). Any import cycle fails too, within a folder as well.
 * Commands (src/cli/commands/*) never import each other: what they share is src/cli/shared.ts.
 */
const LAYERS = {
  util: [],
  project: ["util"],
  model: ["project", "util"],
  plan: ["model", "project", "util"],
  store: ["model", "util"],
  vm: ["project", "util"],
  proxy: ["util"],
  cache: ["store", "model", "util"],
  report: ["plan", "model", "project", "util"],
  exec: ["cache", "proxy", "report", "store", "vm", "model", "project", "util"],
  watch: ["exec", "report", "plan", "store", "vm", "model", "project", "util"],
  cli: ["watch", "exec", "cache", "report", "plan", "store", "vm", "model", "project", "util"],
};

const layerRules = Object.entries(LAYERS).map(([layer, allowed]) => ({
  name: `layer-${layer}`,
  comment: `src/${layer} may import only ${allowed.length ? allowed.map((a) => `src/${a}`).join(", ") : "node and npm modules"} (see LAYERS in .dependency-cruiser.cjs)`,
  severity: "error",
  from: { path: `^src/${layer}/` },
  to: { path: "^src/", pathNot: `^src/(${[layer, ...allowed].join("|")})/` },
}));

module.exports = {
  forbidden: [
    {
      name: "no-cycle",
      comment: "an import cycle: modules that import each other cannot be read, tested or changed alone",
      severity: "error",
      from: {},
      to: { circular: true },
    },
    ...layerRules,
    {
      name: "no-command-to-command",
      comment: "a command imports another command: move what they share to src/cli/shared.ts",
      severity: "error",
      from: { path: "^src/cli/commands/" },
      to: { path: "^src/cli/commands/" },
    },
    {
      name: "no-shared-to-command",
      comment: "src/cli/shared.ts serves the commands and never imports one",
      severity: "error",
      from: { path: "^src/cli/shared" },
      to: { path: "^src/cli/(commands/|main)" },
    },
    {
      name: "no-unknown-folder",
      comment: "a new folder of src/ needs its place in LAYERS",
      severity: "error",
      from: { path: "^src/", pathNot: `^src/(${Object.keys(LAYERS).join("|")})/` },
      to: {},
    },
    {
      name: "not-to-unresolvable",
      comment: "an import the check cannot resolve is an import it cannot check",
      severity: "error",
      from: {},
      to: { couldNotResolve: true },
    },
  ],
  options: {
    // Type-only imports count: the plan <-> store cycle this check was written for was made of types.
    tsPreCompilationDeps: true,
    doNotFollow: { path: "node_modules" },
    exclude: { path: "^(dist|node_modules)/" },
  },
};
