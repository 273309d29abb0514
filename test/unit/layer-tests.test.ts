/**
 * Layer tests and secrets without VMs: where tests are found and which problems a project gets, the
 * test digest in the plan (and that test/ never enters a node key), TAP verdicts, the host test
 * environment, secret reading and masking, and how reporters show tests as children of their node.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { hostTestEnv, TapWatcher } from "../../src/exec/layer-tests.js";
import { MASK, readSecrets, secretMasker } from "../../src/exec/secrets.js";
import { makePlan } from "../../src/plan/planner.js";
import { loadProject } from "../../src/project/load.js";
import type { BuildEvent } from "../../src/report/events.js";
import { JunitReporter } from "../../src/report/junit.js";
import { renderPlanText } from "../../src/report/plan.js";
import { PlainReporter } from "../../src/report/reporters.js";
import { DbuildError } from "../../src/util/errors.js";
import { demoProject, exe, FakeStore, writeFixture, type Description, type Fixture } from "../helpers/fixture.js";

let fx: Fixture | undefined;
afterEach(async () => {
  await fx?.cleanup();
  fx = undefined;
});

const withTests = (extra: Description = {}): Description =>
  demoProject({
    "layers/web/layer.yaml": "test: {ports: [80, 443]}\n",
    "layers/web/test/guest/10-service": exe("#!/bin/sh\necho 1..1\necho ok 1\n"),
    "layers/web/test/guest/helpers.sh": "# sourced by the tests, not one\n",
    "layers/web/test/host/20-http": exe("#!/bin/sh\ncurl -s http://$DBUILD_HOST:$DBUILD_PORT_80/\n"),
    ...extra,
  });

async function problemsOf(desc: Description): Promise<string[]> {
  fx = await writeFixture(desc);
  try {
    await loadProject(fx.root);
  } catch (e) {
    if (e instanceof DbuildError) return e.problems.map((p) => `${p.where}: ${p.message}`);
    throw e;
  }
  return [];
}

describe("finding layer tests", () => {
  it("executables in test/guest/ and test/host/ are the tests, guest first, by name; other files are helpers", async () => {
    fx = await writeFixture(withTests());
    const p = await loadProject(fx.root);
    expect(p.layers.get("web")!.tests).toEqual({ dir: fx.path("layers/web/test"), guest: ["guest/10-service"], host: ["host/20-http"] });
    expect(p.layers.get("db")!.tests).toBeUndefined();
  });

  it("reports tests that do not say where they run, a test/ without tests, ports without host tests, test: without test/", async () => {
    expect(await problemsOf(withTests({ "layers/web/test/loose": exe("#!/bin/sh\n") }))).toEqual([
      "layers/web/test/loose: a test must say where it runs",
    ]);
    await fx?.cleanup();
    expect(await problemsOf(demoProject({ "layers/db/test/guest/notes.txt": "no executable\n" }))).toEqual([
      "layers/db/test: no tests found (a test is an executable file in test/guest/ or test/host/)",
    ]);
    await fx?.cleanup();
    expect(await problemsOf(demoProject({ "layers/db/layer.yaml": "test: {ports: [80]}\n", "layers/db/test/guest/t": exe("#!/bin/sh\n") }))).toEqual([
      "layers/db/layer.yaml:1:7: test.ports forwards guest ports for host tests, but there are none",
    ]);
    await fx?.cleanup();
    expect(await problemsOf(demoProject({ "layers/db/layer.yaml": "test: {timeout: 5}\n" }))).toEqual([
      "layers/db/layer.yaml:1:7: test: is set but layers/db/test/ does not exist",
    ]);
  });
});

describe("tests in the plan", () => {
  it("test files never enter a node key; their digest decides whether tests run; --no-test and forced runs", async () => {
    fx = await writeFixture(withTests({ "layers/micro/test/guest/boots": exe("#!/bin/sh\ntrue\n") }));
    const store = new FakeStore(path.join(fx.root, "build"));
    const plan = async (o: Parameters<typeof makePlan>[3] = {}) => makePlan(await loadProject(fx!.root), ["micro:web:openstack"], store, o);
    const first = await plan();
    store.publishAll(first);
    const web = first.nodes.find((n) => n.stack === "micro:web")!;
    expect(web.tests).toMatchObject({ names: ["guest/10-service", "host/20-http"], ports: [80, 443], passed: false, run: true });
    expect(web.steps.slice(-2)).toEqual(["test in a fresh VM: guest/10-service, host/20-http (ports 80, 443)", "publish"]);
    // Published but never tested: stale for its tests only.
    const untested = await plan();
    expect(untested.nodes.find((n) => n.stack === "micro:web")!.reasons[0]).toMatch(/tests have not passed on this image/);
    expect((await plan({ noTest: true })).nodes.every((n) => n.status === "fresh")).toBe(true);
    // A recorded pass makes it fresh; editing a test (base layer's too) changes no key, only the test digest.
    const passed = new Set(first.nodes.filter((n) => n.tests).map((n) => `${n.key} ${n.tests!.digest}`));
    store.testsPassed = (key, digest) => Promise.resolve(passed.has(`${key} ${digest}`));
    const fresh = await plan();
    expect(fresh.nodes.map((n) => n.status)).toEqual(["fresh", "fresh", "fresh"]);
    expect(renderPlanText(fresh)).toContain("tests: passed (guest/10-service, host/20-http)");
    await fx.write("layers/web/test/host/20-http", exe("#!/bin/sh\nexit 0\n"));
    await fx.write("layers/micro/test/guest/boots", exe("#!/bin/sh\nexit 0\n"));
    const edited = await plan();
    expect(edited.nodes.map((n) => n.key)).toEqual(first.nodes.map((n) => n.key));
    // The images are shown and stay: cached in the store, only their tests run (one VM each, no build).
    expect(edited.nodes.map((n) => [n.stack, n.status, n.source])).toEqual([["micro", "cached", "store"], ["micro:web", "cached", "store"], ["micro:web:openstack", "fresh", undefined]]);
    expect(edited.nodes[1]!.steps).toEqual(["test in a fresh VM: guest/10-service, host/20-http (ports 80, 443)"]);
    expect(renderPlanText(edited)).toContain("est: one test VM (boot + tests), no build");
    const forced = await plan({ forceTests: ["micro:web"] });
    expect(forced.nodes[1]!.tests!.run).toBe(true);
  });

  it("a rebuild (--force) reruns the tests on its new image; a held image is cached and only retested", async () => {
    fx = await writeFixture(withTests());
    const store = new FakeStore(path.join(fx.root, "build"));
    const plan = async (o: Parameters<typeof makePlan>[3] = {}) => makePlan(await loadProject(fx!.root), ["micro:web"], store, o);
    const first = await plan();
    store.publishAll(first);
    store.testsPassed = () => Promise.resolve(true);
    expect((await plan()).nodes.map((n) => n.status)).toEqual(["fresh", "fresh"]);
    const rebuilt = (await plan({ force: ["micro:web"] })).nodes[1]!;
    expect([rebuilt.status, rebuilt.forced, rebuilt.tests!.run]).toEqual(["stale", true, true]);
    expect((await plan({ force: ["micro:web"], noTest: true })).nodes[1]!.tests!.run).toBe(false);
    // Its tests failed: the record is held back and no view shows it.
    const web = first.nodes[1]!;
    store.records.set(web.key, { ...store.records.get(web.key)!, held: "its tests failed" });
    store.deleteView("micro:web");
    store.testsPassed = () => Promise.resolve(false);
    const held = (await plan()).nodes[1]!;
    expect([held.status, held.source, held.tests!.run]).toEqual(["cached", "store", true]);
    expect(held.reasons).toEqual(["its image is in the store but its tests failed: only the tests run again"]);
    expect(held.steps).toEqual(["test in a fresh VM: guest/10-service, host/20-http (ports 80, 443)", `re-link ${path.join("build", "micro:web.qcow2")} to the stored image`]);
  });
});

describe("TAP", () => {
  const verdict = (text: string) => {
    const t = new TapWatcher();
    t.write(text);
    return t.verdict();
  };
  it("judges TAP output and leaves other output to the exit code", () => {
    expect(verdict("1..2\nok 1 a\nok 2 b # SKIP no network\n")).toEqual({ tap: { count: 2, pass: 2, fail: 0, skip: 1, todo: 0 } });
    expect(verdict("1..2\nok 1 a\nnot ok 2 b\n").failed).toBe("TAP: not ok 2 b");
    expect(verdict("1..3\nok 1 a\n").failed).toMatch(/TAP: .*incorrect number of tests/);
    expect(verdict("1..2\nok 1 a\nBail out! no disk\n").failed).toBe("TAP: bailed out (no disk)");
    // a TODO point may fail without failing the stream
    expect(verdict("TAP version 13\n1..1\nnot ok 1 x # TODO later\n")).toEqual({ tap: { count: 1, pass: 0, fail: 1, skip: 0, todo: 1 } });
    // Without a plan line it is not TAP: "ok" is just a word
    expect(verdict("checking...\nok\nnot ok to see this\n")).toEqual({});
  });
});

describe("host test environment", () => {
  it("gives an ssh command, its parts, and one DBUILD_PORT_<n> per forwarded port", () => {
    const env = hostTestEnv({ user: "root", sshHost: "127.0.0.1", sshPort: 40022, forwarded: new Map([[80, { host: "127.0.0.1", port: 40080 }]]) }, "/p/keys/demo builder");
    expect(env.DBUILD_SSH).toMatch(/^ssh -i '\/p\/keys\/demo builder' -p 40022 .* root@127\.0\.0\.1$/);
    // An image whose login user is not root (ssh.user): that user, who has sudo.
    expect(hostTestEnv({ user: "debian", sshHost: "127.0.0.1", sshPort: 40022, forwarded: new Map() }, "/k").DBUILD_SSH).toMatch(/ debian@127\.0\.0\.1$/);
    expect(env).toMatchObject({ DBUILD_SSH_HOST: "127.0.0.1", DBUILD_SSH_PORT: "40022", DBUILD_SSH_KEY: "/p/keys/demo builder", DBUILD_HOST: "127.0.0.1", DBUILD_PORT_80: "40080" });
  });
});

describe("secrets", () => {
  it("are declared in demobuild.yaml and named by layers; an undeclared name is a project error", async () => {
    expect(await problemsOf(demoProject({ "layers/db/layer.yaml": "secrets: [token]\n" }))).toEqual([
      'layers/db/layer.yaml:1:11: secrets: "token" is not declared in demobuild.yaml',
    ]);
    await fx?.cleanup();
    fx = await writeFixture(demoProject({ "demobuild.yaml": "secrets:\n  token: {env: TOKEN}\n  conf: {file: ~/rhsm.conf}\n  rel: {file: keys/x}\n", "layers/db/layer.yaml": "secrets: [token, conf]\n" }));
    const p = await loadProject(fx.root);
    expect(p.settings.secrets).toEqual({
      token: { env: "TOKEN", where: "demobuild.yaml:2:10" },
      conf: { file: path.join(os.homedir(), "rhsm.conf"), where: "demobuild.yaml:3:9" },
      rel: { file: fx.path("keys/x"), where: "demobuild.yaml:4:8" },
    });
  });

  it("are read when a build needs them; every missing one is listed at once, with where it is declared", async () => {
    fx = await writeFixture(demoProject({ "demobuild.yaml": "secrets:\n  a: {env: DBUILD_UT_A}\n  b: {env: DBUILD_UT_B}\n  c: {file: c.txt}\n  d: {file: d.txt}\n", "d.txt": "file value\n" }));
    const p = await loadProject(fx.root);
    process.env.DBUILD_UT_A = "env value";
    delete process.env.DBUILD_UT_B;
    const ok = readSecrets(p, new Map([["a", ["web"]], ["d", ["db"]]]));
    expect(ok.get("a")!.toString()).toBe("env value");
    expect(ok.get("d")!.toString()).toBe("file value\n");
    try {
      readSecrets(p, new Map([["b", ["web"]], ["c", ["web", "db"]]]));
      throw new Error("expected an error");
    } catch (e) {
      expect(e).toBeInstanceOf(DbuildError);
      expect((e as DbuildError).exitCode).toBe(2);
      expect((e as DbuildError).problems.map((x) => `${x.where}: ${x.message}`)).toEqual([
        'demobuild.yaml:3:6: secret "b" (needed by layers/web): environment variable DBUILD_UT_B is not set',
        `demobuild.yaml:4:6: secret "c" (needed by layers/web, layers/db): file ${fx.path("c.txt")} does not exist`,
      ]);
    }
  });

  it("are masked in output, whole and (for a file) line by line", () => {
    const mask = secretMasker([Buffer.from("s3cr3t-token"), Buffer.from("[main]\nuser = alice\npassword = hunter22\n")]);
    expect(mask("token=s3cr3t-token; again s3cr3t-token")).toBe(`token=${MASK}; again ${MASK}`);
    expect(mask("password = hunter22")).toBe(MASK);
    expect(mask("a line with no secret")).toBe("a line with no secret");
    expect(secretMasker([])("x")).toBe("x");
  });
});

describe("reporters", () => {
  const done = (test: string, ok: boolean): BuildEvent => ({
    type: "test-done", time: 0, stack: "micro:web", test, ok, duration: 1.5, exitCode: ok ? 0 : 1,
    ...(ok ? { tap: { count: 2, pass: 2, fail: 0, skip: 0, todo: 0 } } : { message: "exit code 1", output: ["curl: connection refused"] }),
  });

  it("plain: each test under its node; a failure shows its output and the shell command", () => {
    let out = "";
    const r = new PlainReporter((s) => (out += s), false);
    r.event(done("guest/10-service", true));
    r.event(done("host/20-http", false));
    r.event({ type: "node-failed", time: 0, stack: "micro:web", step: "test", duration: 30, message: "1 of 2 test(s) failed: host/20-http", logTail: ["[host/20-http] exit code 1:", "  curl: connection refused"], logPath: "build/logs/micro:web.test.log", shell: "dbuild shell build/.dbuild/objects/abc.qcow2" });
    expect(out).toContain("micro:web:   ✓ test guest/10-service (1.5 s, TAP 2/2 ok)");
    expect(out).toContain("micro:web:   ✗ test host/20-http (1.5 s): exit code 1");
    expect(out).toContain("micro:web:     curl: connection refused");
    expect(out).toContain("  dbuild shell build/.dbuild/objects/abc.qcow2");
  });

  it("JUnit: one testcase per test, classname the stack, after its node's", async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-junit-"));
    const file = path.join(dir, "j.xml");
    const r = new JunitReporter(file);
    r.event(done("guest/10-service", true));
    r.event(done("host/20-http", false));
    r.event({ type: "node-done", time: 0, stack: "micro:web", duration: 40, image: "build/micro:web.qcow2" });
    r.close();
    const xml = await fs.readFile(file, "utf8");
    await fs.rm(dir, { recursive: true });
    const cases = [...xml.matchAll(/<testcase classname="([^"]+)" name="([^"]+)"/g)].map((m) => `${m[1]} ${m[2]}`);
    expect(cases).toEqual(["micro micro:web", "micro:web test guest/10-service", "micro:web test host/20-http"]);
    expect(xml).toContain('<failure message="exit code 1">curl: connection refused</failure>');
    expect(xml).toContain('tests="3" failures="1"');
  });
});
