/**
 * Layer tests against the real micro guest: a failing test keeps the image out of its view and blocks the
 * child; fixing the test reruns only the test; a recorded pass is not rerun; a host test reaches a
 * forwarded port; `dbuild test` reruns on demand; plan lists what would run.
 *
 * VM boots, in order: build svc + test svc (2), test svc again + build leaf (2), dbuild test (1); then build
 * plain + its test VM (saving the warm snapshot) + kid, resumed (3) = 8.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dbuild, stacksOf } from "../helpers/cli.js";
import { killQemuOf, qemuOf } from "../helpers/processes.js";
import { makeVmProject, type VmProject } from "../helpers/vmproject.js";

let p: VmProject;
const run = (...args: string[]) => dbuild(["--progress", "json", ...args], { cwd: p.root });
type Ev = Record<string, unknown> & { type: string };
const of = (events: Ev[], type: string, stack?: string): Ev[] => events.filter((e) => e.type === type && (stack === undefined || e.stack === stack));

// The guest test: TAP, one point per file the layer must leave behind after a reboot.
const guestTest = (file: string): string => `#!/bin/sh
echo 1..2
[ -f /etc/svc-marker ] && echo "ok 1 marker survives a reboot" || echo "not ok 1 marker survives a reboot"
[ -f ${file} ] && echo "ok 2 ${file} exists" || { echo "not ok 2 ${file} exists"; echo "no ${file} here: $(ls /srv/www)" >&2; }
`;

beforeAll(async () => {
  p = await makeVmProject("dbuild-e2e-tests-");
  await p.layer(
    "svc",
    [
      "echo marker > /etc/svc-marker",
      "mkdir -p /srv/www /etc/rc.d && echo served-by-svc > /srv/www/index.html",
      // a boot service: httpd on port 80 (the host test reaches it through the forwarded port)
      "printf '#!/bin/sh\\nhttpd -p 80 -h /srv/www\\n' > /etc/rc.d/S50httpd && chmod +x /etc/rc.d/S50httpd",
    ].join("\n"),
    { files: { "layer.yaml": "test: {ports: [80], timeout: 60}\n" } },
  );
  // The test looks for a file the layer never writes: it fails until "fixed".
  await p.write("layers/svc/test/guest/10-files", guestTest("/srv/www/missing.html"), 0o755);
  await p.write("layers/svc/test/guest/lib.txt", "a helper file, not a test\n");
  await p.write(
    "layers/svc/test/host/20-http",
    `#!/bin/sh
set -e
body=$(node -e 'fetch("http://" + process.env.DBUILD_HOST + ":" + process.env.DBUILD_PORT_80 + "/").then(async (r) => console.log(r.status, await r.text()))')
echo "got: $body"
case "$body" in "200 served-by-svc"*) ;; *) exit 1 ;; esac
# DBUILD_SSH runs commands in the test VM
[ "$($DBUILD_SSH cat /etc/svc-marker)" = marker ]
`,
    0o755,
  );
  await p.layer("leaf", "echo leaf > /etc/leaf");
  await p.target("micro:svc:leaf");
});

afterAll(async () => {
  killQemuOf(p.root);
  await p.cleanup();
});

describe("layer tests", () => {
  it("a failing test fails the node: the image stays in the store, the view does not switch, the child is not built", async () => {
    const junit = path.join(p.root, "junit.xml");
    const r = await run("all", "--junit", junit);
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(1);
    const failed = of(r.events, "node-failed", "micro:svc")[0]!;
    expect(failed.step).toBe("test");
    expect(String(failed.message)).toContain("1 of 2 test(s) failed: guest/10-files");
    // the failing test's output, and the command that opens a shell on that exact image
    expect((failed.logTail as string[]).join("\n")).toContain("not ok 2 /srv/www/missing.html exists");
    expect((failed.logTail as string[]).join("\n")).toContain("no /srv/www/missing.html here: index.html");
    const shell = String(failed.shell);
    expect(shell).toMatch(/^dbuild( -C \S+)? shell \S+\/\.dbuild\/objects\/[0-9a-f]{64}\.qcow2$/);
    const object = shell.split(" ").pop()!;
    await fs.access(path.isAbsolute(object) ? object : path.join(p.root, object));
    await expect(fs.lstat(path.join(p.root, "build", "micro:svc.qcow2"))).rejects.toThrow();
    expect(of(r.events, "node-skipped", "micro:svc:leaf")[0]?.reason).toBe("parent micro:svc failed");
    expect(stacksOf(r, "node-start")).not.toContain("micro:svc:leaf");
    // tests are children of the node: both ran (the host test passed, reaching port 80 and ssh)
    const done = of(r.events, "test-done", "micro:svc");
    expect(done.map((e) => [e.test, e.ok])).toEqual([["guest/10-files", false], ["host/20-http", true]]);
    expect(done[0]!.tap).toEqual({ count: 2, pass: 1, fail: 1, skip: 0, todo: 0 });
    expect(of(r.events, "output", "micro:svc").some((e) => e.test === "host/20-http" && String(e.line).includes("got: 200 served-by-svc"))).toBe(true);
    const xml = await fs.readFile(junit, "utf8");
    expect(xml).toContain('classname="micro:svc" name="test guest/10-files"');
    expect(xml).toMatch(/name="test guest\/10-files"[^>]*>\s*<failure message="TAP: not ok 2/);
    expect(xml).toMatch(/classname="micro:svc" name="test host\/20-http" time="[\d.]+"\/>/);
    expect(qemuOf(p.root)).toEqual([]);
  }, 300_000);

  it("plan lists the tests that would run (only the tests: the image is cached in the store)", async () => {
    const r = await dbuild(["plan", "--json"], { cwd: p.root });
    expect(r.code, r.stderr).toBe(0);
    const nodes = (JSON.parse(r.stdout) as { nodes: Array<Record<string, unknown> & { stack: string }> }).nodes;
    const svc = nodes.find((n) => n.stack === "micro:svc")!;
    expect([svc.status, svc.source]).toEqual(["cached", "store"]);
    expect(svc.tests).toMatchObject({ names: ["guest/10-files", "host/20-http"], ports: [80], passed: false, run: true });
    expect(svc.steps).toEqual(["test in a fresh VM: guest/10-files, host/20-http (ports 80)", "re-link build/micro:svc.qcow2 to the stored image"]);
    expect((svc.reasons as string[])[0]).toContain("its tests failed");
    const text = await dbuild(["plan"], { cwd: p.root });
    expect(text.stdout).toContain("run: test in a fresh VM: guest/10-files, host/20-http (ports 80)");
  });

  it("fixing the test (not the image) reruns only the test; then the child builds", async () => {
    await p.write("layers/svc/test/guest/10-files", guestTest("/srv/www/index.html"), 0o755);
    const r = await run("all");
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    const steps = of(r.events, "step", "micro:svc").map((e) => e.step);
    expect(steps).toContain("test");
    expect(steps).not.toContain("install");
    expect(steps).not.toContain("boot");
    expect(of(r.events, "node-done", "micro:svc")[0]?.testsOnly).toBe(true);
    expect(of(r.events, "test-done", "micro:svc").map((e) => e.ok)).toEqual([true, true]);
    expect(stacksOf(r, "node-done")).toEqual(["micro:svc", "micro:svc:leaf"]);
    await fs.access(path.join(p.root, "build", "micro:svc.qcow2"));
  }, 300_000);

  it("a recorded pass is not rerun; `dbuild test` reruns on demand; --no-test skips changed tests", async () => {
    const again = await run("all");
    expect(again.code).toBe(0);
    expect(stacksOf(again, "node-start")).toEqual([]);
    expect(of(again.events, "test-start")).toEqual([]);

    const t = await run("test", "micro:svc");
    expect(t.code, t.stderr + t.stdout.slice(-2000)).toBe(0);
    expect(stacksOf(t, "node-start")).toEqual(["micro:svc"]);
    expect(of(t.events, "test-done", "micro:svc").map((e) => e.ok)).toEqual([true, true]);

    // A changed test leaves the image cached (shown) with only its tests to run; --no-test leaves it be.
    await p.write("layers/svc/test/host/20-http", `${await fs.readFile(path.join(p.root, "layers/svc/test/host/20-http"), "utf8")}# changed\n`, 0o755);
    const plan = JSON.parse((await dbuild(["plan", "--json"], { cwd: p.root })).stdout) as { nodes: Array<{ stack: string; status: string; reasons: string[]; steps: string[] }> };
    const svc = plan.nodes.find((n) => n.stack === "micro:svc")!;
    expect(svc.status).toBe("cached");
    expect(svc.steps).toEqual(["test in a fresh VM: guest/10-files, host/20-http (ports 80)"]);
    expect(svc.reasons[0]).toMatch(/tests have not passed on this image/);
    expect(plan.nodes.find((n) => n.stack === "micro:svc:leaf")!.status).toBe("fresh");
    const skip = await run("all", "--no-test");
    expect(skip.code).toBe(0);
    expect(stacksOf(skip, "node-start")).toEqual([]);
  }, 300_000);
});

describe("the test VM's boot saves the new image's warm snapshot", () => {
  it("a tested layer's child resumes the snapshot its parent's test VM saved (no extra boot)", async () => {
    await p.layer("plain", "echo plain > /etc/plain");
    await p.write("layers/plain/test/guest/10-plain", "#!/bin/sh\necho 1..1\n[ \"$(cat /etc/plain)\" = plain ] && echo ok 1 || echo not ok 1\n", 0o755);
    await p.layer("kid", "echo kid > /etc/kid");
    await p.target("micro:plain:kid");
    const r = await run("build", "micro:plain:kid");
    expect(r.code, r.stderr + r.stdout.slice(-3000)).toBe(0);
    expect(of(r.events, "test-done", "micro:plain").map((e) => e.ok)).toEqual([true]);
    const object = path.basename(await fs.realpath(path.join(p.root, "build", "micro:plain.qcow2")));
    // The snapshot is the image's (.dbuild/warm/<object> links to it), and the child's build VM resumed it.
    const link = await fs.readlink(path.join(p.root, "build", ".dbuild", "warm", object));
    expect(link.startsWith(`${object}.`)).toBe(true);
    const boot = of(r.events, "step", "micro:plain:kid").filter((e) => e.step === "boot" && e.detail);
    expect(boot.map((e) => e.detail)).toEqual(["resumed"]);
    expect(qemuOf(p.root)).toEqual([]);
  }, 300_000);
});
