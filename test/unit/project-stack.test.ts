import { describe, expect, it } from "vitest";
import { closest, parseStack, prefixes } from "../../src/project/stack.js";
import type { Layer, LayerKind } from "../../src/project/types.js";
import type { Problem } from "../../src/util/errors.js";

const layer = (name: string, kind: LayerKind): Layer => ({ name, dir: `/p/layers/${name}`, kind, config: {}, hasInstall: true, installIsAddlayer: kind !== "base" });
const layers = new Map<string, Layer>(
  [layer("micro", "base"), layer("fedora", "base"), layer("web", "intermediate"), layer("db", "intermediate"), layer("openstack", "finalizing"), layer("vagrant", "finalizing")].map((l) => [l.name, l]),
);
const where = "targets/x";

function problems(stack: string): Problem[] {
  const r = parseStack(stack, layers, where);
  if (!Array.isArray(r)) throw new Error(`expected problems for ${stack}, got ${JSON.stringify(r)}`);
  for (const p of r) expect(p.where).toBe(where);
  return r;
}

describe("parseStack", () => {
  it("accepts base, base:intermediate..., and a finalizing layer last", () => {
    expect(parseStack("micro", layers, where)).toEqual({ elements: ["micro"] });
    expect(parseStack("micro:web:db", layers, where)).toEqual({ elements: ["micro", "web", "db"] });
    expect(parseStack("micro:web:openstack", layers, where)).toEqual({ elements: ["micro", "web", "openstack"] });
    expect(parseStack("micro:vagrant", layers, where)).toEqual({ elements: ["micro", "vagrant"] });
  });

  it("rejects an empty element and suggests the stack without it", () => {
    const [p, ...rest] = problems("micro::web");
    expect(rest).toEqual([]);
    expect(p!.reason).toBe("stack-empty-element");
    expect(p!.message).toContain("'::'");
    expect(p!.hint).toBe("did you mean micro:web?");
    expect(problems("micro:web:")[0]!.message).toContain("trailing");
    expect(problems(":micro")[0]!.message).toContain("leading");
    expect(problems("")[0]!.reason).toBe("empty-stack");
  });

  it("rejects an unknown layer and names the closest one", () => {
    const [p] = problems("micro:wbe");
    expect(p!.reason).toBe("unknown-layer");
    expect(p!.message).toContain('"wbe"');
    expect(p!.hint).toBe("did you mean web?");
    expect(problems("micro:openstak")[0]!.hint).toBe("did you mean openstack?");
    expect(problems("micro:zzzzzzzzzz")[0]!.hint).toMatch(/^create layers\/zzzzzzzzzz\//);
  });

  it("rejects a base in the middle", () => {
    const [p] = problems("micro:web:fedora");
    expect(p!.reason).toBe("stack-base-not-first");
    expect(p!.message).toContain("fedora");
  });

  it("rejects a stack that does not start with a base", () => {
    const [p] = problems("web:db");
    expect(p!.reason).toBe("stack-no-base");
    expect(p!.hint).toContain("fedora:web:db");
  });

  it("rejects a finalizing layer that is not last and suggests moving it", () => {
    const [p] = problems("micro:openstack:web");
    expect(p!.reason).toBe("stack-final-not-last");
    expect(p!.hint).toContain("micro:web:openstack");
  });

  it("rejects .. , / , whitespace and control characters", () => {
    expect(problems("micro:..")[0]!.reason).toBe("stack-dot");
    expect(problems("micro:.")[0]!.reason).toBe("stack-dot");
    expect(problems("micro:../../etc")[0]!.reason).toBe("stack-slash");
    expect(problems("micro/web")[0]!.reason).toBe("stack-slash");
    const sp = problems("micro: web")[0]!;
    expect(sp.reason).toBe("stack-bad-char");
    expect(sp.message).toContain("a space at position 7");
    expect(problems("micro:web\t")[0]!.message).toContain("a tab");
    expect(problems("micro:w\u0007eb")[0]!.message).toContain("control character (U+0007)");
    expect(problems("micro:web\n")[0]!.reason).toBe("stack-bad-char");
    expect(problems("micro:-web")[0]!.reason).toBe("stack-bad-name");
  });

  it("reports every bad element, not only the first", () => {
    const ps = problems("web::wbe:openstack:fedora");
    expect(ps.map((p) => p.reason)).toEqual(["stack-no-base", "stack-empty-element", "unknown-layer", "stack-final-not-last", "stack-base-not-first"]);
  });
});

describe("prefixes and closest", () => {
  it("lists every prefix, shortest first", () => {
    expect(prefixes("a:b:c")).toEqual(["a", "a:b", "a:b:c"]);
    expect(prefixes("a")).toEqual(["a"]);
  });
  it("suggests only plausible typos", () => {
    expect(closest("opnstack", ["openstack", "vagrant"])).toBe("openstack");
    expect(closest("x", ["openstack"])).toBeUndefined();
  });
});
