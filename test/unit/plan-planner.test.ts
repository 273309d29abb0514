import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { loadProject } from "../../src/project/load.js";
import type { Project } from "../../src/project/types.js";
import { makePlan } from "../../src/plan/planner.js";
import type { Plan } from "../../src/model/plan.js";
import { whyDiff } from "../../src/plan/why.js";
import { planToJson, renderPlanDot, renderPlanText, renderWhy } from "../../src/report/plan.js";
import { runWhy } from "../../src/cli/commands/plan.js";
import { planAndPrint } from "../../src/cli/shared.js";
import { DbuildError } from "../../src/util/errors.js";
import { FORMAT_VERSION } from "../../src/plan/fingerprint.js";
import { FakeStore, demoProject, writeFixture } from "../helpers/fixture.js";
import type { Fixture } from "../helpers/fixture.js";

let fx: Fixture;
let project: Project;
let store: FakeStore;

beforeEach(async () => {
  fx = await writeFixture(demoProject());
  project = await loadProject(fx.root);
  store = new FakeStore(project.settings.buildDir);
});
afterEach(async () => {
  await fx.cleanup();
});

async function replan(stacks: "all" | string[] = "all"): Promise<Plan> {
  project = await loadProject(fx.root);
  return makePlan(project, stacks, store);
}
const reasons = (p: Plan): Record<string, string[]> => Object.fromEntries(p.nodes.filter((n) => n.status !== "fresh").map((n) => [n.stack, n.reasons]));

describe("makePlan", () => {
  it("builds one node per stack prefix, shared prefixes once, parents first; JSON has the documented shape", async () => {
    const plan = await replan();
    const json = planToJson(plan) as { nodes: Record<string, unknown>[]; targets: string[] };
    expect(json.targets).toEqual(["micro:db:openstack", "micro:web:openstack", "micro:web:vagrant"]);
    expect(json.nodes.map((n) => [n.stack, n.layer, n.kind, n.parent, n.status, n.reasons, n.image])).toEqual([
      ["micro", "micro", "base", null, "stale", ["no image yet"], "build/micro.qcow2"],
      ["micro:db", "db", "intermediate", "micro", "stale", ["no image yet"], "build/micro:db.qcow2"],
      ["micro:db:openstack", "openstack", "finalizing", "micro:db", "stale", ["no image yet"], "build/micro:db:openstack.qcow2"],
      ["micro:web", "web", "intermediate", "micro", "stale", ["no image yet"], "build/micro:web.qcow2"],
      ["micro:web:openstack", "openstack", "finalizing", "micro:web", "stale", ["no image yet"], "build/micro:web:openstack.qcow2"],
      ["micro:web:vagrant", "vagrant", "finalizing", "micro:web", "stale", ["no image yet"], "build/micro:web:vagrant.qcow2"],
    ]);
    for (const n of json.nodes) expect(n.key).toMatch(/^[0-9a-f]{64}$/);
    const byStack = new Map(plan.nodes.map((n) => [n.stack, n]));
    expect(byStack.get("micro")!.targets).toEqual(json.targets);
    expect(byStack.get("micro:web")!.targets).toEqual(["micro:web:openstack", "micro:web:vagrant"]);
    expect(byStack.get("micro:web:openstack")!.settings).toEqual({ MEM: "2048", CPUS: "1", NAME: "micro:web:openstack" });
    expect(byStack.get("micro:web:vagrant")!.settings).toEqual({ MEM: "1024", CPUS: "2", NAME: "micro:web:vagrant" });
    expect(byStack.get("micro:web")!.settings).toEqual({});
    expect(byStack.get("micro")!.steps).toEqual(["run install on host", "publish"]);
    expect(byStack.get("micro:web:openstack")!.steps.at(-1)).toBe("convert to qcow2");
    expect(byStack.get("micro:web:vagrant")!.steps.at(-1)).toBe("convert to vagrant");
    expect(byStack.get("micro:web")!.steps[0]).toBe("COW child of micro");
    // a key is also a function of the parent key: same layer under different parents differs
    expect(byStack.get("micro:web:openstack")!.key).not.toBe(byStack.get("micro:db:openstack")!.key);
  });

  it("plans a prefix or a stack that is not a target file, validated like targets", async () => {
    const plan = await replan(["micro:web"]);
    expect(plan.nodes.map((n) => n.stack)).toEqual(["micro", "micro:web"]);
    expect(plan.targets).toEqual(["micro:web"]);
    const plan2 = await replan(["micro:db:vagrant", "all"]);
    expect(plan2.nodes.map((n) => n.stack)).toContain("micro:db:vagrant");
    expect(plan2.nodes.find((n) => n.stack === "micro:db:vagrant")!.settings).toEqual({ MEM: "1024", CPUS: "1", NAME: "micro:db:vagrant" });
    const err = (await replan(["micro:wbe", "micro::web"]).catch((e: unknown) => e)) as DbuildError;
    expect(err).toBeInstanceOf(DbuildError);
    expect(err.problems.map((p) => [p.where, p.reason, p.hint])).toEqual([
      ["command line", "unknown-layer", "did you mean web?"],
      ["command line", "stack-empty-element", "did you mean micro:web?"],
    ]);
  });

  it("is fresh after publishing; explains every kind of staleness in plain words", async () => {
    store.publishAll(await replan());
    const fresh = await replan();
    expect(fresh.nodes.every((n) => n.status === "fresh" && n.reasons.length === 0)).toBe(true);

    await fx.write("layers/web/target/install", { content: "#!/bin/sh\necho web 2\n", mode: 0o755 });
    expect(reasons(await replan())).toEqual({
      "micro:web": ["target/install changed"],
      "micro:web:openstack": ["parent micro:web is stale"],
      "micro:web:vagrant": ["parent micro:web is stale"],
    });
    await fx.write("layers/web/target/install", { content: "#!/bin/sh\necho web\n", mode: 0o755 });

    await fx.write("layers/db/target/new.txt", "n\n");
    await fx.remove("layers/db/target/install");
    await fx.write("targets/micro:web:openstack", "MEM=4096\nDISK=20\n");
    await fs.chmod(fx.path("layers/web/target/etc/httpd.conf"), 0o755);
    expect(reasons(await replan())).toEqual({
      "micro:db": ["file target/install removed", "file target/new.txt added"],
      "micro:db:openstack": ["parent micro:db is stale"],
      "micro:web": ["target/etc/httpd.conf became executable"],
      "micro:web:openstack": ["parent micro:web is stale", "DISK added in targets/micro:web:openstack", "MEM changed in targets/micro:web:openstack"],
      "micro:web:vagrant": ["parent micro:web is stale"],
    });
  });

  it("says when the view was deleted but the image for these inputs exists", async () => {
    const p = await replan();
    store.publishAll(p);
    store.deleteView("micro:web");
    const again = await replan();
    expect(reasons(again)).toEqual({ "micro:web": ["build/micro:web.qcow2 was deleted; the image for these inputs is in the store"] });
    const web = again.nodes.find((n) => n.stack === "micro:web")!;
    expect([web.status, web.source, web.steps]).toEqual(["cached", "store", ["re-link build/micro:web.qcow2 to the stored image (no VM)"]]);
    expect(planToJson(again)).toMatchObject({ nodes: expect.arrayContaining([expect.objectContaining({ stack: "micro:web", status: "cached", source: "store" })]) as unknown });
    const text = renderPlanText(again);
    expect(text).toContain("micro:web  cached (store)");
    expect(text).toContain("est: ~0s (re-link, no VM)");
    expect(text).toContain("1 of 6 images cached: 1 re-linked from the store, no VM");
    expect(text).not.toContain("last build");
    const out: string[] = [];
    await runWhy(fx.root, "micro:web", { write: (x) => out.push(x), color: false }, store);
    expect(out.join("")).toMatch(/^micro:web {2}cached \(store\) {2}key [0-9a-f]{12}$/m);
    expect(out.join("")).toContain("the build re-links build/micro:web.qcow2 to it, no VM runs");
    const forced: string[] = [];
    await runWhy(fx.root, "micro:web", { write: (x) => forced.push(x), color: false, force: ["micro:web"] }, store);
    expect(forced.join("")).toMatch(/^micro:web {2}stale {2}key/m);
    expect(forced.join("")).toContain("forced (--force): a VM rebuilds it whatever the store or a cache holds");
  });

  it("an edit built then reverted is cached from the store, not stale; a child under a rebuilt parent is stale", async () => {
    store.publishAll(await replan());
    await fx.write("layers/web/target/etc/httpd.conf", "Listen 81\n");
    store.publishAll(await replan());
    await fx.write("layers/web/target/etc/httpd.conf", "Listen 80\n");
    const reverted = await replan();
    const st = Object.fromEntries(reverted.nodes.map((n) => [n.stack, n.status]));
    expect(st).toEqual({ micro: "fresh", "micro:db": "fresh", "micro:db:openstack": "fresh", "micro:web": "cached", "micro:web:openstack": "cached", "micro:web:vagrant": "cached" });
    await fx.write("layers/micro/README", "v2\n");
    const edited = await replan();
    expect(edited.nodes.every((n) => n.status === "stale")).toBe(true);
  });

  it("--force makes the named node and its descendants stale whatever the store holds, and says so", async () => {
    store.publishAll(await replan());
    const project = await loadProject(fx.root);
    const p = await makePlan(project, "all", store, { force: ["micro:web"] });
    const forced = p.nodes.filter((n) => n.forced).map((n) => [n.stack, n.status, n.reasons[0]]);
    expect(forced).toEqual([
      ["micro:web", "stale", "forced (--force)"],
      ["micro:web:openstack", "stale", "forced (--force micro:web)"],
      ["micro:web:vagrant", "stale", "forced (--force micro:web)"],
    ]);
    expect(p.nodes.filter((n) => !n.forced).every((n) => n.status === "fresh")).toBe(true);
  });

  it("says when the parent was rebuilt since (parent fresh, child built on an older parent)", async () => {
    const p1 = await replan();
    store.publishAll(p1);
    await fx.write("layers/micro/README", "v2\n");
    const p2 = await replan();
    store.publish(p2.nodes.find((n) => n.stack === "micro")!);
    const r = reasons(await replan());
    expect(r["micro:web"]).toEqual(["parent micro was rebuilt"]);
    expect(r["micro:web:openstack"]).toEqual(["parent micro:web is stale"]);
    expect(r.micro).toBeUndefined();
  });

  it("caps long reason lists", async () => {
    store.publishAll(await replan());
    for (let i = 0; i < 12; i++) await fx.write(`layers/web/target/f${i}`, `${i}\n`);
    const r = reasons(await replan())["micro:web"]!;
    expect(r).toHaveLength(8);
    expect(r[7]).toBe("and 5 more changes (see dbuild why)");
  });
});

describe("rendering", () => {
  it("prints a tree with marks, reasons, steps and estimates", async () => {
    const p = await replan();
    store.publishAll(p);
    store.durations.set("micro:web", 42);
    await fx.write("layers/web/target/install", { content: "#!/bin/sh\necho web 2\n", mode: 0o755 });
    const text = renderPlanText(await replan(["micro:web:openstack", "micro:db:openstack"]));
    expect(text).toBe(
      [
        "✓ micro  fresh  build/micro.qcow2",
        "├─ ✓ micro:db  fresh  build/micro:db.qcow2",
        "│  └─ ✓ micro:db:openstack (target)  fresh  build/micro:db:openstack.qcow2",
        "└─ ● micro:web  stale  build/micro:web.qcow2",
        "   │    why: target/install changed",
        "   │    run: COW child of micro → boot VM → rsync target/ → run target/install → cleanup → poweroff → publish",
        "   │    est: ~42s (last build)",
        "   └─ ● micro:web:openstack (target)  stale  build/micro:web:openstack.qcow2",
        "           why: parent micro:web is stale",
        "           run: COW child of micro:web → boot VM → rsync target/ → run target/install → cleanup → poweroff → publish → convert to qcow2",
        "           est: ~10s (last build)",
        "2 of 5 images stale; estimated 52s of build time, before parallelism",
        "",
      ].join("\n"),
    );
  });

  it("prints Graphviz with stale nodes styled", async () => {
    const p = await replan(["micro:web"]);
    store.publish(p.nodes[0]!);
    const dot = renderPlanDot(await replan(["micro:web"]));
    expect(dot).toMatch(/^digraph dbuild \{/);
    expect(dot).toContain('"micro" -> "micro:web";');
    expect(dot).toMatch(/"micro:web" \[label="web\\nintermediate · stale".*fillcolor="#ffe0a3".*peripheries=2\];/);
    expect(dot).not.toMatch(/"micro" \[[^\]]*ffe0a3/);
  });

  it("why lists inputs that differ, with short digests", async () => {
    store.publishAll(await replan());
    await fx.write("layers/web/target/install", { content: "#!/bin/sh\necho web 2\n", mode: 0o755 });
    await fx.write("layers/web/target/extra", "x\n");
    const plan = await replan();
    const node = plan.nodes.find((n) => n.stack === "micro:web")!;
    const rec = await store.currentRecord("micro:web");
    const diff = whyDiff(node, rec);
    expect(diff.map((d) => [d.input, d.change])).toEqual([
      ["file:target/extra", "added"],
      ["file:target/install", "changed"],
    ]);
    const text = renderWhy(node, diff, true);
    expect(text).toMatch(/^\+ file:target\/extra +[0-9a-f]{12}$/m);
    expect(text).toMatch(/^~ file:target\/install {2}[0-9a-f]{12}:x -> [0-9a-f]{12}:x$/m);
    expect(text).toContain("2 inputs differ from what build/micro:web.qcow2 was built from");

    const out: string[] = [];
    await runWhy(fx.root, "micro:web:openstack", { write: (s) => out.push(s), color: false }, store);
    expect(out.join("")).toMatch(/^~ parent +[0-9a-f]{12} -> [0-9a-f]{12}$/m);
  });

  it("planAndPrint prints JSON that parses and writes nothing but the stat cache", async () => {
    await new Promise((r) => setTimeout(r, 150)); // past the stat cache's racy window, so it is written
    const out: string[] = [];
    const plan = await planAndPrint(fx.root, "all", { json: true, write: (s) => out.push(s) }, () => store);
    const parsed = JSON.parse(out.join("")) as { nodes: { stack: string; status: string; parent: string | null }[] };
    expect(parsed.nodes.map((n) => n.stack)).toEqual(plan.nodes.map((n) => n.stack));
    expect(parsed.nodes[0]!.parent).toBeNull();
    const files = await fs.readdir(path.join(fx.root, "build"), { recursive: true });
    expect(files.sort()).toEqual([".dbuild", path.join(".dbuild", "statcache.json")]);
    await expect(planAndPrint(fx.root, "all", { json: true, dot: true }, store)).rejects.toThrow(/--json, --dot/);
  });
});

describe("node inputs", () => {
  it("are the flat manifest the key was computed from, built on demand and assignable", async () => {
    const { nodeKey } = await import("../../src/plan/fingerprint.js");
    const plan = await replan();
    for (const n of plan.nodes) expect(nodeKey(n.inputs)).toBe(n.key);
    const web = plan.nodes.find((n) => n.stack === "micro:web")!;
    expect(web.inputs).toMatchObject({ format: FORMAT_VERSION, kind: "intermediate", layer: "web", parent: plan.nodes[0]!.key, "link:install": "../../utils/addlayer.sh", "dir:target/etc": "dir" });
    expect(web.inputs["file:target/install"]).toMatch(/^[0-9a-f]{64}:x$/);
    expect(web.inputs["file:target/etc/httpd.conf"]).toMatch(/^[0-9a-f]{64}$/);
    expect(JSON.parse(JSON.stringify(web)).inputs).toEqual(web.inputs);
    web.inputs = { a: "b" };
    expect(web.inputs).toEqual({ a: "b" });
  });
});
