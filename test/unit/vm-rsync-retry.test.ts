import { describe, expect, it } from "vitest";
import { sshRefusedEarly } from "../../src/vm/rsync.js";

describe("sshRefusedEarly (rsync retried only when nothing was copied)", () => {
  it("is true for a transport closed during the key exchange (seen in CI under load)", () => {
    const out =
      "kex_exchange_identification: Connection closed by remote host\r\nrsync: connection unexpectedly closed (0 bytes received so far) [sender]\nrsync error: error in rsync protocol data stream (code 12) at io.c(285) [sender=3.5.0]";
    expect(sshRefusedEarly(out)).toBe(true);
  });

  it("is false for a failure after the transfer started or unrelated to SSH", () => {
    expect(sshRefusedEarly("rsync: write failed on \"/tmp/x\": No space left on device (28)\nrsync error: error in file IO (code 11)")).toBe(false);
    expect(sshRefusedEarly("Connection reset by peer\nrsync: connection unexpectedly closed (52311 bytes received so far) [sender]")).toBe(false);
    expect(sshRefusedEarly("bash: rsync: command not found\nrsync: connection unexpectedly closed (0 bytes received so far) [sender]")).toBe(false);
  });
});
