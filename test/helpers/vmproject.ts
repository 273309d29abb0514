/**
 * A temporary dbuild project on top of the real micro guest: `micro` is a base layer importing the
 * cached test image (built once by ensureMicroImage), and the test key is the project key.
 */
import * as fs from "node:fs/promises";
import * as os from "node:os";
import * as path from "node:path";
import { ensureMicroImage } from "./micro.js";
import { repoRoot } from "./cli.js";
import { sha256File } from "../../src/util/digest.js";

export interface VmProject {
  root: string;
  /** Write (or overwrite) an intermediate layer whose install runs `script` (sh). */
  layer(name: string, script: string, opts?: { kind?: "intermediate" | "finalizing"; files?: Record<string, string> }): Promise<void>;
  target(stack: string, content?: string): Promise<void>;
  write(rel: string, content: string, mode?: number): Promise<void>;
  cleanup(): Promise<void>;
}

export async function makeVmProject(prefix = "dbuild-e2e-"): Promise<VmProject> {
  const micro = await ensureMicroImage();
  const root = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  const write = async (rel: string, content: string, mode = 0o644): Promise<void> => {
    const p = path.join(root, rel);
    await fs.mkdir(path.dirname(p), { recursive: true });
    await fs.writeFile(p, content);
    await fs.chmod(p, mode);
  };
  await fs.mkdir(path.join(root, "keys"), { recursive: true });
  await fs.copyFile(micro.key, path.join(root, "keys", "demobuilder"));
  await fs.chmod(path.join(root, "keys", "demobuilder"), 0o600);
  await fs.copyFile(micro.pubkey, path.join(root, "keys", "demobuilder.pub"));
  await write("utils/addlayer.sh", await fs.readFile(path.join(repoRoot, "utils", "addlayer.sh"), "utf8"), 0o755);
  await write(
    "layers/micro/layer.yaml",
    `kind: base\ndescription: the micro test guest, imported\nimport:\n  from: ${micro.image}\n  sha256: ${await sha256File(micro.image)}\n`,
  );
  await write("demobuild.yaml", "buildVm: {mem: 256, cpus: 1}\ntimeouts: {boot: 90, install: 300, shutdown: 30}\n");
  await fs.mkdir(path.join(root, "targets"), { recursive: true });
  return {
    root,
    write,
    async layer(name, script, opts = {}) {
      const dir = `layers/${name}`;
      await fs.rm(path.join(root, dir), { recursive: true, force: true });
      await write(`${dir}/target/install`, `#!/bin/sh\nset -e\n${script}\n`, 0o755);
      for (const [rel, content] of Object.entries(opts.files ?? {})) await write(`${dir}/${rel}`, content);
      if (opts.kind === "finalizing") {
        await write(`${dir}/layer.yaml`, "kind: finalizing\n");
      } else {
        await fs.symlink("../../utils/addlayer.sh", path.join(root, dir, "install"));
      }
    },
    async target(stack, content = "") {
      await write(`targets/${stack}`, content);
    },
    async cleanup() {
      await fs.rm(root, { recursive: true, force: true });
    },
  };
}
