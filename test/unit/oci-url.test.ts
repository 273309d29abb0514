import { describe, expect, it } from "vitest";
import { isLoopbackHost, parseOciUrl } from "../../src/cache/oci-url.js";
import { DbuildError } from "../../src/util/errors.js";

describe("parseOciUrl", () => {
  it("parses host, port and a nested repository", () => {
    expect(parseOciUrl("oci://registry.example.com/team/dbuild/cache")).toEqual({
      url: "oci://registry.example.com/team/dbuild/cache",
      host: "registry.example.com",
      port: undefined,
      authority: "registry.example.com",
      repo: "team/dbuild/cache",
      scheme: "https",
      origin: "https://registry.example.com",
    });
    const r = parseOciUrl("oci://Registry.Example.com:5443/a/b/");
    expect(r).toMatchObject({ host: "registry.example.com", port: 5443, authority: "registry.example.com:5443", repo: "a/b" });
    expect(r.origin).toBe("https://registry.example.com:5443");
  });

  it("uses plain http only for loopback hosts", () => {
    expect(parseOciUrl("oci://127.0.0.1:5000/dbuild").origin).toBe("http://127.0.0.1:5000");
    expect(parseOciUrl("oci://localhost:5000/dbuild").scheme).toBe("http");
    expect(parseOciUrl("oci://[::1]:5000/dbuild")).toMatchObject({ host: "::1", authority: "[::1]:5000", origin: "http://[::1]:5000" });
    expect(parseOciUrl("oci://10.0.0.1:5000/dbuild").scheme).toBe("https");
    expect(parseOciUrl("oci://localhost.example.com/dbuild").scheme).toBe("https");
    expect(parseOciUrl("oci://[2001:db8::1]/dbuild").origin).toBe("https://[2001:db8::1]");
    expect(isLoopbackHost("127.3.4.5")).toBe(true);
    expect(isLoopbackHost("128.0.0.1")).toBe(false);
  });

  it.each([
    ["https://registry.example.com/x", "not an oci:// URL"],
    ["oci://registry.example.com", "not an oci:// URL"],
    ["oci:///repo", "host is missing"],
    ["oci://registry.example.com/", "repository is missing"],
    ["oci://registry.example.com:0/x", "not a valid port"],
    ["oci://registry.example.com:99999/x", "not a valid port"],
    ["oci://registry.example.com:ab/x", "not a valid port"],
    ["oci://reg_istry/x", "not a valid host name"],
    ["oci://user:pw@registry.example.com/x", "credentials do not belong"],
    ["oci://registry.example.com/Team/x", 'component "Team"'],
    ["oci://registry.example.com/a//b", 'component ""'],
    ["oci://registry.example.com/a/-b", 'component "-b"'],
    ["oci://[::1/x", "unclosed"],
  ])("rejects %s", (url, text) => {
    let err: unknown;
    try {
      parseOciUrl(url);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DbuildError);
    const p = (err as DbuildError).problems[0]!;
    expect(p.reason).toBe("bad-cache-url");
    expect(p.where).toBe(url);
    expect(p.message).toContain(text);
    expect(p.hint).toContain("oci://HOST[:PORT]/REPO");
  });

  it("accepts separators the distribution spec allows", () => {
    expect(parseOciUrl("oci://r.io/a.b_c__d--e/f-1").repo).toBe("a.b_c__d--e/f-1");
  });
});
