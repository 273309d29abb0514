/**
 * Read a YAML file, validate it with a zod schema, and turn every syntax or schema error into a
 * Problem at `file:line:col` (positions from the yaml package's node ranges).
 */
import { LineCounter, isMap, isPair, isScalar, isSeq, parseDocument } from "yaml";
import type { Document, Node as YamlNode } from "yaml";
import type { z } from "zod";
import type { Problem } from "../util/errors.js";

export interface YamlResult<T> {
  value?: T;
  problems: Problem[];
  /** Position of a path in the document (for problems found after schema validation). */
  locate: (path: readonly (string | number)[]) => string;
}

function nodeAt(doc: Document, path: readonly PropertyKey[]): { node?: YamlNode; keyNode?: YamlNode } {
  let cur: unknown = doc.contents;
  let keyNode: YamlNode | undefined;
  for (const seg of path) {
    if (isMap(cur)) {
      const pair = cur.items.find((p) => isPair(p) && isScalar(p.key) && String(p.key.value) === String(seg));
      if (!pair) return { node: cur };
      keyNode = pair.key as YamlNode;
      cur = pair.value ?? pair.key;
    } else if (isSeq(cur) && typeof seg === "number") {
      const item = cur.items[seg];
      if (item === undefined) return { node: cur };
      cur = item;
      keyNode = undefined;
    } else {
      break;
    }
  }
  return keyNode ? { node: cur as YamlNode, keyNode } : { node: cur as YamlNode };
}

export function parseYamlFile<S extends z.ZodType>(
  text: string,
  relFile: string,
  schema: S,
): YamlResult<z.output<S>> {
  const lc = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lc, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number | undefined): string => {
    if (offset === undefined) return relFile;
    const { line, col } = lc.linePos(offset);
    return `${relFile}:${line}:${col}`;
  };
  const locate = (path: readonly PropertyKey[], preferKey = false): string => {
    const { node, keyNode } = nodeAt(doc, path);
    const n = preferKey && keyNode ? keyNode : node;
    return at(n?.range?.[0] ?? 0);
  };
  const problems: Problem[] = [];
  for (const e of doc.errors) {
    problems.push({
      reason: "yaml-syntax",
      where: at(e.pos[0]),
      message: `YAML syntax: ${e.message.split("\n")[0] ?? e.message}`,
      hint: "fix the YAML syntax (indentation, quoting, duplicate keys)",
    });
  }
  if (problems.length) return { problems, locate };

  const data: unknown = doc.toJS() ?? {};
  const parsed = schema.safeParse(data);
  if (parsed.success) return { value: parsed.data, problems, locate };

  for (const issue of parsed.error.issues) {
    const path = issue.path;
    const dotted = path.map(String).join(".");
    if (issue.code === "unrecognized_keys") {
      for (const key of issue.keys) {
        problems.push({
          reason: "yaml-schema",
          where: locate([...path, key], true),
          message: `unknown key ${JSON.stringify(dotted ? `${dotted}.${key}` : key)}`,
          hint: "check the spelling; schema/ lists the allowed keys",
        });
      }
      continue;
    }
    problems.push({
      reason: "yaml-schema",
      where: locate(path),
      message: dotted ? `${dotted}: ${issue.message}` : issue.message,
      hint: "see schema/ for the allowed values",
    });
  }
  return { problems, locate };
}
