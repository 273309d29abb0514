import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { basicAuthorization, dockerConfigPath, dockerCredentials, parseWwwAuthenticate, tokenUrl } from "../../src/cache/oci-auth.js";

describe("parseWwwAuthenticate", () => {
  it("parses a bearer challenge with quoted commas", () => {
    const h = 'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push"';
    expect(parseWwwAuthenticate(h)).toEqual([
      { scheme: "bearer", params: { realm: "https://auth.docker.io/token", service: "registry.docker.io", scope: "repository:samalba/my-app:pull,push" } },
    ]);
  });

  it("parses basic, unquoted values, escapes, spaces and several challenges", () => {
    expect(parseWwwAuthenticate('Basic realm="Registry Realm"')).toEqual([{ scheme: "basic", params: { realm: "Registry Realm" } }]);
    expect(parseWwwAuthenticate('Bearer realm=https://x/token , service = "reg" ,error="invalid_token"')).toEqual([
      { scheme: "bearer", params: { realm: "https://x/token", service: "reg", error: "invalid_token" } },
    ]);
    expect(parseWwwAuthenticate('Bearer realm="a\\"b"')[0]!.params.realm).toBe('a"b');
    expect(parseWwwAuthenticate('Basic realm="r", Bearer realm="https://t/token",service="s"')).toEqual([
      { scheme: "basic", params: { realm: "r" } },
      { scheme: "bearer", params: { realm: "https://t/token", service: "s" } },
    ]);
    expect(parseWwwAuthenticate("")).toEqual([]);
    expect(parseWwwAuthenticate("Negotiate")).toEqual([{ scheme: "negotiate", params: {} }]);
  });

  it("builds the token URL with service and one parameter per scope", () => {
    const c = parseWwwAuthenticate('Bearer realm="https://auth.example.com/token?x=1",service="reg.example.com",scope="repository:a:pull"')[0]!;
    expect(tokenUrl(c).href).toBe("https://auth.example.com/token?x=1&service=reg.example.com&scope=repository%3Aa%3Apull");
    const u = tokenUrl(c, "repository:a:pull,push repository:b:pull");
    expect(u.searchParams.getAll("scope")).toEqual(["repository:a:pull,push", "repository:b:pull"]);
    expect(() => tokenUrl({ scheme: "bearer", params: {} })).toThrow(/realm/);
  });
});

describe("docker config credentials", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "dbuild-auth-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("honours DOCKER_CONFIG, else HOME/.docker", () => {
    expect(dockerConfigPath({ DOCKER_CONFIG: "/etc/dc", HOME: "/home/u" })).toBe("/etc/dc/config.json");
    expect(dockerConfigPath({ HOME: "/home/u" })).toBe("/home/u/.docker/config.json");
  });

  it("reads auths entries in their various key spellings", async () => {
    const b64 = (s: string): string => Buffer.from(s).toString("base64");
    const path = join(dir, "config.json");
    await writeFile(
      path,
      JSON.stringify({
        auths: {
          "registry.example.com:5000": { auth: b64("alice:s3cr:et") },
          "https://other.example.com/v1/": { auth: b64("bob:pw") },
          "plain.example.com": { username: "carol", password: "x" },
          "empty.example.com": {},
        },
        credsStore: "desktop",
      }),
    );
    expect(await dockerCredentials("registry.example.com:5000", path)).toEqual({ username: "alice", password: "s3cr:et" });
    expect(await dockerCredentials("other.example.com", path)).toEqual({ username: "bob", password: "pw" });
    expect(await dockerCredentials("plain.example.com", path)).toEqual({ username: "carol", password: "x" });
    // host and host:port are different registries
    expect(await dockerCredentials("registry.example.com", path)).toBeUndefined();
    expect(await dockerCredentials("empty.example.com", path)).toBeUndefined();
    expect(await dockerCredentials("x", join(dir, "missing.json"))).toBeUndefined();
    await writeFile(join(dir, "bad.json"), "{not json");
    expect(await dockerCredentials("x", join(dir, "bad.json"))).toBeUndefined();
  });

  it("asks credential helpers: credHelpers first, then auths, then credsStore", async () => {
    const bin = join(dir, "bin");
    await mkdir(bin);
    // a helper following the docker protocol: server name on stdin, JSON on stdout, exit 1 when unknown
    const helper = (name: string, user: string): Promise<void> =>
      writeFile(
        join(bin, `docker-credential-${name}`),
        `#!/bin/sh\n[ "$1" = get ] || exit 2\nread server\ncase "$server" in\n  *.example.com*) printf '{"ServerURL":"%s","Username":"${user}","Secret":"s-%s"}' "$server" "$server";;\n  *) echo "credentials not found in native keychain"; exit 1;;\nesac\n`,
        { mode: 0o755 },
      );
    await helper("pass", "from-helper");
    await helper("desktop", "from-store");
    await writeFile(join(bin, "docker-credential-tok"), `#!/bin/sh\necho '{"Username":"<token>","Secret":"refresh"}'\n`, { mode: 0o755 });
    const path = join(dir, "helpers.json");
    await writeFile(
      path,
      JSON.stringify({
        auths: { "a.example.com": { auth: Buffer.from("file:pw").toString("base64") }, "b.example.com": {} },
        credHelpers: { "a.example.com": "pass", "t.example.com": "tok", "gone.example.com": "missing" },
        credsStore: "desktop",
      }),
    );
    const env = { PATH: `${bin}:/usr/bin:/bin` };
    expect(await dockerCredentials("a.example.com", path, { env })).toEqual({ username: "from-helper", password: "s-a.example.com" });
    expect(await dockerCredentials("b.example.com:5000", path, { env })).toEqual({ username: "from-store", password: "s-b.example.com:5000" });
    expect(await dockerCredentials("other.org", path, { env })).toBeUndefined();
    expect(await dockerCredentials("t.example.com", path, { env })).toBeUndefined();
    expect(await dockerCredentials("gone.example.com", path, { env })).toBeUndefined();
  });

  it("encodes Basic authorization", () => {
    expect(basicAuthorization({ username: "u", password: "p:w" })).toBe(`Basic ${Buffer.from("u:p:w").toString("base64")}`);
  });
});
