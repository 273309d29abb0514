/**
 * Stack names: `base:layer:...:final`. Each element names a directory under layers/, so an element
 * must never be able to escape layers/ or build/ (no `/`, no `..`, no whitespace or control characters).
 */
import type { Problem } from "../util/errors.js";
import type { Layer } from "./types.js";

/** A layer name as Demobuilder allows it; also what a stack element must look like. */
export const LAYER_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

export interface ParsedStack {
  elements: string[];
}

/** Edit distance counting a swap of neighbours as one edit (typos like "wbe" for "web"). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/** The closest known name, if it is close enough to be a plausible typo. */
export function closest(name: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = editDistance(name.toLowerCase(), c.toLowerCase());
    if (d < bestD || (d === bestD && best !== undefined && c < best)) {
      best = c;
      bestD = d;
    }
  }
  if (best === undefined) return undefined;
  return bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

function describeChar(ch: string): string {
  const code = ch.codePointAt(0) ?? 0;
  if (ch === " ") return "a space";
  if (ch === "\t") return "a tab";
  if (/\s/u.test(ch)) return `whitespace (U+${code.toString(16).toUpperCase().padStart(4, "0")})`;
  return `a control character (U+${code.toString(16).toUpperCase().padStart(4, "0")})`;
}

/**
 * Parse and validate a stack. `where` names its origin (`targets/FILE` or `command line`) for messages.
 * Returns every problem found, not only the first.
 */
export function parseStack(
  stack: string,
  layers: ReadonlyMap<string, Layer>,
  where: string,
): ParsedStack | Problem[] {
  const problems: Problem[] = [];
  const add = (reason: string, message: string, hint?: string): void => {
    problems.push(hint === undefined ? { reason, where, message } : { reason, where, message, hint });
  };

  if (stack.length === 0) {
    add("empty-stack", "the stack name is empty", "name a stack as base:layer:...:final, e.g. micro:web");
    return problems;
  }
  // eslint-disable-next-line no-control-regex
  const bad = /[\s\u0000-\u001f\u007f]/u.exec(stack);
  if (bad) {
    add(
      "stack-bad-char",
      `stack ${JSON.stringify(stack)} contains ${describeChar(bad[0])} at position ${bad.index + 1}`,
      "stack elements are layer names: letters, digits, '.', '_', '+', '-'; separate them with ':' only",
    );
    return problems;
  }
  if (stack.includes("/")) {
    add(
      "stack-slash",
      `stack ${JSON.stringify(stack)} contains '/': a layer name cannot contain a path`,
      "separate layers with ':' (e.g. micro:web), and name layers by their directory name under layers/",
    );
    return problems;
  }

  const elements = stack.split(":");
  // Only a problem's hint needs the list of names: thousands of valid stacks are parsed per plan.
  const names = (): string[] => [...layers.keys()];
  elements.forEach((el, i) => {
    const pos = `element ${i + 1} of ${JSON.stringify(stack)}`;
    if (el === "") {
      const fixed = elements.filter((e) => e !== "").join(":");
      add(
        "stack-empty-element",
        `${pos} is empty${i === 0 ? " (leading ':')" : i === elements.length - 1 ? " (trailing ':')" : " ('::')"}`,
        fixed ? `did you mean ${fixed}?` : "name a stack as base:layer:...:final",
      );
      return;
    }
    if (el === "." || el === "..") {
      add("stack-dot", `${pos} is ${JSON.stringify(el)}, which would escape layers/`, "use layer names only");
      return;
    }
    if (!LAYER_NAME.test(el)) {
      add(
        "stack-bad-name",
        `${pos} (${JSON.stringify(el)}) is not a valid layer name`,
        "a layer name starts with a letter or digit and contains only letters, digits, '.', '_', '+', '-'",
      );
      return;
    }
    const layer = layers.get(el);
    if (!layer) {
      const guess = closest(el, names());
      add(
        "unknown-layer",
        `${pos}: there is no layer ${JSON.stringify(el)} in layers/`,
        guess ? `did you mean ${guess}?` : `create layers/${el}/ or fix the name (known layers: ${names().sort().join(", ") || "none"})`,
      );
      return;
    }
    const last = i === elements.length - 1;
    if (i === 0 && layer.kind !== "base") {
      const bases = names().filter((n) => layers.get(n)?.kind === "base").sort();
      add(
        "stack-no-base",
        `a stack must start with a base layer, but ${JSON.stringify(el)} is ${layer.kind}`,
        bases.length ? `start the stack with a base layer, e.g. ${bases[0]}:${stack}` : "add a base layer (layers/NAME/install or layer.yaml with kind: base)",
      );
    } else if (i > 0 && layer.kind === "base") {
      add(
        "stack-base-not-first",
        `${pos}: base layer ${JSON.stringify(el)} can only be the first element`,
        `a stack has exactly one base, first; drop ${JSON.stringify(el)} or move it to the front`,
      );
    } else if (!last && layer.kind === "finalizing") {
      add(
        "stack-final-not-last",
        `${pos}: finalizing layer ${JSON.stringify(el)} can only be the last element`,
        `move ${JSON.stringify(el)} to the end: ${[...elements.slice(0, i), ...elements.slice(i + 1), el].join(":")}`,
      );
    }
  });
  return problems.length ? problems : { elements };
}

/** All prefixes of a (valid) stack, shortest first: a:b:c -> [a, a:b, a:b:c]. */
export function prefixes(stack: string): string[] {
  const els = stack.split(":");
  return els.map((_, i) => els.slice(0, i + 1).join(":"));
}

/** Parent prefix of a stack, or null for a single element. */
export function parentOf(stack: string): string | null {
  const i = stack.lastIndexOf(":");
  return i < 0 ? null : stack.slice(0, i);
}
