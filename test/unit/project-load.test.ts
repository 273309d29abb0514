import * as os from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadProject, parseTargetFile } from "../../src/project/load.js";
import { DbuildError } from "../../src/util/errors.js";
import type { Problem } from "../../src/util/errors.js";
import { addlayer, demoProject, exe, problemsOf, writeFixture } from "../helpers/fixture.js";
import type { Description, Fixture } from "../helpers/fixture.js";

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.cleanup();
  fx = undefined;
});

async function load(desc: Description) {
  fx = await writeFixture(desc);
  return loadProject(fx.root);
}

const loadProblems = (desc: Description): Promise<Problem[]> => problemsOf(() => load(desc));

describe("loadProject", () => {
  it("works on defaults without demobuild.yaml and finds every layer kind", async () => {
    const p = await load(demoProject({ "layers/.hidden/x": "x", "targets/README.md": "docs", "targets/.keep": "" }));
    expect(p.configFile).toBeUndefined();
    expect(p.settings.buildDir).toBe(path.join(p.root, "build"));
    expect(p.settings.defaults).toEqual({ mem: 1024, cpus: 1 });
    expect(p.settings.buildVm).toEqual({ mem: 512, cpus: 1 });
    expect(p.settings.jobs).toBe(os.availableParallelism());
    expect(p.settings.memoryBudget).toBe(Math.floor((os.totalmem() / 1024 / 1024) * 0.75));
    expect(p.settings.timeouts).toEqual({ boot: 300, install: 1800, shutdown: 60 });
    expect(p.settings.network).toEqual({ mode: "user", bridge: "virbr0" });
    expect(p.settings.accelerator).toBe("auto");
    expect(p.settings.cache).toEqual({});
    const kinds = Object.fromEntries([...p.layers.values()].map((l) => [l.name, l.kind]));
    expect(kinds).toEqual({ micro: "base", web: "intermediate", db: "intermediate", openstack: "finalizing", vagrant: "finalizing" });
    expect(p.layers.get("web")!.installIsAddlayer).toBe(true);
    expect(p.layers.get("openstack")!.hasConvert).toBe(true);
    expect(p.layers.get("openstack")!.config.format).toBe("qcow2");
    expect(p.targets.map((t) => t.stack)).toEqual(["micro:db:openstack", "micro:web:openstack", "micro:web:vagrant"]);
    expect(p.targets.find((t) => t.stack === "micro:web:vagrant")!.settings).toEqual({ CPUS: "2" });
    expect(p.targets.find((t) => t.stack === "micro:web:vagrant")!.settingLines).toEqual({ CPUS: 3 });
  });

  it("reads demobuild.yaml", async () => {
    const p = await load(
      demoProject({
        "demobuild.yaml": "buildDir: out\ndefaults: { mem: 2048 }\nbuildVm: { cpus: 2 }\njobs: 3\nmemoryBudget: 4096\ntimeouts: { boot: 30 }\nnetwork: { mode: bridge, bridge: br0 }\naccelerator: tcg\ncache: { from: oci://127.0.0.1:5000/dbuild }\n",
      }),
    );
    expect(p.settings.buildDir).toBe(path.join(p.root, "out"));
    expect(p.settings.defaults).toEqual({ mem: 2048, cpus: 1 });
    expect(p.settings.buildVm).toEqual({ mem: 512, cpus: 2 });
    expect(p.settings.jobs).toBe(3);
    expect(p.settings.memoryBudget).toBe(4096);
    expect(p.settings.timeouts).toEqual({ boot: 30, install: 1800, shutdown: 60 });
    expect(p.settings.network).toEqual({ mode: "bridge", bridge: "br0" });
    expect(p.settings.accelerator).toBe("tcg");
    expect(p.settings.cache).toEqual({ from: "oci://127.0.0.1:5000/dbuild" });
  });

  it("reports every problem of a broken project at once, YAML ones at file:line:col", async () => {
    const ps = await loadProblems(
      demoProject({
        "demobuild.yaml": "jobs: many\ndefaults:\n  mem: 1024\n  cpu: 2\nnetwork: { mode: bridged }\n",
        "layers/web/layer.yaml": "kind: intermediate\nmem: [1\n",
        "layers/db/layer.yaml": "kind: intermediate\nformat: qcow2\n",
        "layers/mystery/README": "what am I?\n",
        "layers/bad name/install": exe("#!/bin/sh\n"),
        "targets/micro:web:openstack": "MEM=2048\nthis is not a setting\nmem=1\nCPUS=two\nNAME='unterminated\n",
        "targets/micro:wbe": "",
        "targets/micro:openstack:web": "",
      }),
    );
    const got = ps.map((p) => `${p.where} [${p.reason}]`);
    expect(got).toEqual([
      "demobuild.yaml:1:7 [yaml-schema]",
      "demobuild.yaml:4:3 [yaml-schema]",
      "demobuild.yaml:5:18 [yaml-schema]",
      "layers/bad name [bad-layer-name]",
      "layers/db/layer.yaml:2:9 [layer-format-not-final]",
      "layers/mystery [unknown-layer-kind]",
      "layers/web/layer.yaml:3:1 [yaml-syntax]",
      "targets/micro:openstack:web [stack-final-not-last]",
      "targets/micro:wbe [unknown-layer]",
      "targets/micro:web:openstack:2 [target-bad-line]",
      "targets/micro:web:openstack:3 [target-bad-key]",
      "targets/micro:web:openstack:4 [target-bad-number]",
      "targets/micro:web:openstack:5 [target-bad-quote]",
    ]);
    const byReason = (r: string) => ps.find((p) => p.reason === r)!;
    expect(ps.find((p) => p.where === "demobuild.yaml:4:3")!.message).toBe('unknown key "defaults.cpu"');
    expect(byReason("unknown-layer").hint).toBe("did you mean web?");
    expect(byReason("unknown-layer-kind").hint).toContain("layers/mystery/layer.yaml with kind:");
    expect(byReason("target-bad-key").hint).toBe("setting names are upper case: MEM");
    // the error message itself lists them all, one `where: what` per problem
    const err = new DbuildError(ps);
    expect(err.message.split("\n").filter((l) => !l.startsWith("  hint:"))).toHaveLength(ps.length);
  });

  it("decides layer kinds: layer.yaml wins, then convert, addlayer symlink, import, executable install", async () => {
    const p = await load({
      "layers/a/install": addlayer(),
      "layers/a/layer.yaml": "kind: base\nimport: { from: /img.qcow2, sha256: " + "a0".repeat(32) + " }\n",
      "layers/b/install": { symlink: "/somewhere/else/addlayer.sh" },
      "layers/c/install": addlayer(),
      "layers/c/convert": exe("#!/bin/sh\n"),
      "layers/d/layer.yaml": "import: { from: /img.qcow2, sha256: " + "b1".repeat(32) + " }\n",
      "layers/e/install": exe("#!/bin/sh\n"),
      "layers/template/install": addlayer(),
    });
    expect(Object.fromEntries([...p.layers.values()].map((l) => [l.name, `${l.kind}/${l.kindFrom}`]))).toEqual({
      a: "base/layer.yaml",
      b: "intermediate/addlayer",
      c: "finalizing/convert",
      d: "base/import",
      e: "base/install",
      template: "intermediate/addlayer",
    });
  });

  it("asks for quotes around an all-digit sha256", async () => {
    const ps = await loadProblems({ "layers/x/layer.yaml": "import: { from: /i, sha256: " + "1".repeat(64) + " }\n" });
    expect(ps.map((p) => `${p.where}: ${p.message}`)).toEqual(["layers/x/layer.yaml:1:29: import.sha256: expected 64 hex digits in quotes"]);
  });

  it("explains a non-executable install", async () => {
    const ps = await loadProblems({ "layers/x/install": "#!/bin/sh\n" });
    expect(ps).toHaveLength(1);
    expect(ps[0]!.hint).toContain("chmod +x layers/x/install");
  });

  it("rejects a base layer in layer.yaml that has nothing to run", async () => {
    const ps = await loadProblems({ "layers/x/layer.yaml": "kind: base\n" });
    expect(ps.map((p) => p.reason)).toEqual(["base-without-install"]);
  });
});

describe("parseTargetFile", () => {
  it("reads KEY=VALUE lines, comments, blank lines and quotes", () => {
    const problems: Problem[] = [];
    const r = parseTargetFile("# c\n\nMEM=2048\r\nNAME=\"my vm\"\nX_1='a=b'\n  CPUS = 2  \nEMPTY=\n", "targets/t", problems);
    expect(problems).toEqual([]);
    expect(r.settings).toEqual({ MEM: "2048", NAME: "my vm", X_1: "a=b", CPUS: "2", EMPTY: "" });
    expect(r.settingLines).toEqual({ MEM: 3, NAME: 4, X_1: 5, CPUS: 6, EMPTY: 7 });
  });
  it("names file and line of bad lines", () => {
    const problems: Problem[] = [];
    parseTargetFile("MEM=1\n=x\n1X=2\n", "targets/t", problems);
    expect(problems.map((p) => p.where)).toEqual(["targets/t:2", "targets/t:3"]);
  });
});
