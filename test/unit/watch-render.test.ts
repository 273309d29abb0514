import { describe, expect, it } from "vitest";
import { WatchTextRenderer } from "../../src/cli/commands/watch.js";
import type { BuildEvent } from "../../src/report/events.js";
import type { WatchEvent } from "../../src/watch/events.js";

function render(events: Array<WatchEvent | BuildEvent>, verbose = false): string {
  let out = "";
  const r = new WatchTextRenderer((s) => (out += s), verbose, false);
  for (const e of events) r.event(e);
  return out.replace(/^\d\d:\d\d:\d\d /gm, "");
}

const t = 0;

describe("watch text output", () => {
  it("one status line per successful cycle, build events folded into it", () => {
    const out = render([
      { type: "watch-cycle", time: t, cycle: 2, changed: ["layers/web/target/install"], stacks: ["micro:web:openstack"], rebuilding: ["micro:web", "micro:web:openstack"] },
      { type: "build-start", time: t, stale: ["micro:web", "micro:web:openstack"], fresh: ["micro"], jobs: 2 },
      { type: "node-start", time: t, stack: "micro:web", layer: "web", kind: "intermediate", key: "k" },
      { type: "output", time: t, stack: "micro:web", stream: "stdout", line: "noise" },
      { type: "node-done", time: t, stack: "micro:web", duration: 3, image: "build/micro:web.qcow2" },
      { type: "watch-cycle-done", time: t, cycle: 2, outcome: "done", built: ["micro:web", "micro:web:openstack"], failed: [], duration: 6.24 },
    ]);
    expect(out).toBe("layers/web/target/install changed -> rebuilding micro:web, micro:web:openstack ... done in 6.2 s\n");
  });

  it("a failure: the status line, then step, exit code, log tail and log path", () => {
    const out = render([
      { type: "watch-cycle", time: t, cycle: 3, changed: ["layers/web/target/install", "layers/web/target/x"], stacks: ["micro:web"], rebuilding: ["micro:web"] },
      { type: "node-failed", time: t, stack: "micro:web", step: "install", duration: 2, message: "install failed", exitCode: 7, logTail: ["about to fail"], logPath: "build/logs/micro:web.log" },
      { type: "watch-cycle-done", time: t, cycle: 3, outcome: "failed", built: [], failed: ["micro:web"], duration: 2.5 },
    ]);
    const lines = out.split("\n");
    expect(lines[0]).toBe("layers/web/target/install and 1 more changed -> rebuilding micro:web ... FAILED after 2.5 s");
    expect(out).toContain("micro:web: FAILED in step install (exit code 7): install failed");
    expect(out).toContain("  about to fail");
    expect(out).toContain("full log: build/logs/micro:web.log");
    expect(out).toContain("still watching");
  });

  it("unchanged fingerprints print nothing unless verbose; a cancelled build says so", () => {
    const unchanged: WatchEvent = { type: "watch-unchanged", time: t, cycle: 4, changed: ["layers/web/target/install"], stacks: ["micro:web"] };
    expect(render([unchanged])).toBe("");
    expect(render([unchanged], true)).toContain("fingerprints unchanged");
    const out = render([
      { type: "watch-cycle", time: t, cycle: 5, changed: ["layers/web/a"], stacks: ["micro:web"], rebuilding: ["micro:web"] },
      { type: "watch-cycle-done", time: t, cycle: 5, outcome: "cancelled", built: [], failed: [], duration: 1 },
    ]);
    expect(out).toBe("layers/web/a changed -> rebuilding micro:web ... cancelled\n");
  });

  it("the shell line names dbuild ssh and the plain ssh command, and how the VM came up", () => {
    const shell = { type: "watch-shell", time: t, cycle: 1, stack: "micro:web", disk: "/tmp/d/micro:web.qcow2", pid: 1, sshHost: "127.0.0.1", sshPort: 4000, keyPath: "/k", user: "root", ssh: "ssh -p 4000 root@127.0.0.1" } as const;
    expect(render([{ ...shell, bootSeconds: 4.1, from: "boot" }])).toBe("shell on micro:web (up in 4.1 s, booted):  dbuild ssh /tmp/d/micro:web.qcow2\n  or: ssh -p 4000 root@127.0.0.1\n");
    expect(render([{ ...shell, bootSeconds: 1.2, from: "build VM" }])).toBe("shell on micro:web (up in 1.2 s, resumed from the build VM):  dbuild ssh /tmp/d/micro:web.qcow2\n  or: ssh -p 4000 root@127.0.0.1\n");
  });
});
