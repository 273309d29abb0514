import { execFileSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { buildRemoteCommand, shellQuote } from "../../src/vm/ssh.js";
import { sshArgs } from "../../src/vm/rsync.js";

/** Run a remote command line with the host's sh, as the guest's shell would. */
function sh(cmdline: string): string {
  return execFileSync("sh", ["-c", cmdline], { encoding: "utf8" });
}

describe("remote command lines", () => {
  it("quotes any string so sh gives it back unchanged", () => {
    for (const s of ["plain", "", "a b", "it's", "$HOME `id` \"q\" \\ * ?", "line1\nline2", "--", "é ü"]) {
      expect(sh(`printf %s ${shellQuote(s)}`)).toBe(s);
    }
  });

  it("passes env and cwd inside the command, since dropbear ignores env requests", () => {
    const line = buildRemoteCommand('printf "%s|%s|%s" "$A" "$B" "$(pwd)"', { env: { A: "x y", B: "$(echo no)'s" }, cwd: "/tmp" });
    expect(sh(line)).toBe("x y|$(echo no)'s|/tmp");
  });

  it("a missing cwd fails instead of running elsewhere", () => {
    expect(() => execFileSync("sh", ["-c", buildRemoteCommand("touch marker", { cwd: "/nonexistent-dir" })], { stdio: "pipe" })).toThrow();
  });

  it("rejects invalid variable names rather than building a broken command", () => {
    expect(() => buildRemoteCommand("true", { env: { "A-B": "1" } })).toThrow(/invalid environment variable name/);
  });

  it("without env or cwd the command is untouched", () => {
    expect(buildRemoteCommand("echo hi # comment")).toBe("echo hi # comment");
  });

  it("OpenSSH options never prompt and never store host keys", () => {
    const a = sshArgs({ keyPath: "/k", port: 2222 }).join(" ");
    expect(a).toContain("-p 2222");
    expect(a).toContain("BatchMode=yes");
    expect(a).toContain("UserKnownHostsFile=/dev/null");
    expect(a).toContain("StrictHostKeyChecking=no");
  });
});
