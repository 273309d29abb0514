import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { JunitReporter } from "../../src/report/junit.js";

describe("junit reporter", () => {
  it("writes one testcase per node with failures and skips", async () => {
    const file = path.join(await fs.mkdtemp(path.join(os.tmpdir(), "junit-")), "r.xml");
    const r = new JunitReporter(file);
    r.event({ type: "node-done", time: 0, stack: "micro", duration: 1.5, image: "build/micro.qcow2" });
    r.event({ type: "node-failed", time: 0, stack: "micro:bad", step: "install", duration: 2, message: "target/install exited with code 3", exitCode: 3, logTail: ["oops <&>"], logPath: "build/logs/micro:bad.log" });
    r.event({ type: "node-skipped", time: 0, stack: "micro:bad:x", reason: "parent micro:bad failed" });
    r.event({ type: "build-done", time: 0, ok: false, built: ["micro"], failed: ["micro:bad"], skipped: ["micro:bad:x"], duration: 4, interrupted: false });
    r.close();
    const xml = await fs.readFile(file, "utf8");
    expect(xml).toContain('tests="3" failures="1" skipped="1"');
    expect(xml).toContain('<testcase classname="micro" name="micro" time="1.500"/>');
    expect(xml).toContain('message="failed in step install (exit code 3): target/install exited with code 3">oops &lt;&amp;&gt;');
    expect(xml).toContain('<skipped message="parent micro:bad failed"/>');
  });
});
