// The one sha256 of a file: the streamed/async reader and the synchronous one a cold plan uses agree,
// whatever the size hint says.
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { createHash, randomBytes } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { sha256File, sha256FileSync, sha256Hex } from "../../src/util/digest.js";

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), "dbuild-digest-"));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const ref = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

describe("sha256 of files", () => {
  it("is the same from every reader, for empty, small and large files, with right or wrong size hints", async () => {
    for (const size of [0, 1, 4095, 65536, 65537, 300_000]) {
      const bytes = randomBytes(size);
      const f = path.join(dir, `f${size}`);
      await fs.writeFile(f, bytes);
      const want = ref(bytes);
      expect(sha256Hex(bytes)).toBe(want);
      expect(await sha256File(f)).toBe(want);
      expect(await sha256File(f, { size })).toBe(want);
      // A hint from an older stat (the file grew or shrank since) still reads the file to its end.
      for (const hint of [size, 0, 10, size * 2 + 1]) expect(sha256FileSync(f, hint)).toBe(want);
    }
    // The reused buffer never leaks bytes of a longer file into a shorter one.
    const short = path.join(dir, "short");
    await fs.writeFile(short, "abc");
    expect(sha256FileSync(short, 3)).toBe(ref(Buffer.from("abc")));
  });
});
