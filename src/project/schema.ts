/**
 * zod schemas for demobuild.yaml and layers/NAME/layer.yaml. schema/*.json mirror these for editors;
 * test/unit/project-schema.test.ts keeps the two in step.
 */
import { z } from "zod";

const count = z.number().int().positive();
const seconds = z.number().positive();

/** A secret's name is also its file name in the guest (/run/dbuild/secrets/NAME). */
export const SECRET_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

const vmSize = z.strictObject({ mem: count.optional(), cpus: count.optional() });

// A Linux login name (useradd's default NAME_REGEX, plus root).
const sshSettings = z.strictObject({
  user: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, "expected a login name such as root or debian").optional(),
});

/** `disk:` a size with a unit (512M, 4G, 1T) or a number of GiB. */
export const diskSize = z.union([
  z.number().positive(),
  z.string().regex(/^[1-9][0-9]*(\.[0-9]+)?[MGT]$/, "expected a size such as 4G, 512M or 1T (or a number of GiB)"),
]);

export const projectYaml = z.strictObject({
  buildDir: z.string().min(1).optional(),
  defaults: vmSize.optional(),
  buildVm: vmSize.optional(),
  jobs: count.optional(),
  memoryBudget: count.optional(),
  timeouts: z
    .strictObject({ boot: seconds.optional(), install: seconds.optional(), shutdown: seconds.optional() })
    .optional(),
  network: z
    .strictObject({ mode: z.enum(["user", "bridge"]).optional(), bridge: z.string().min(1).optional() })
    .optional(),
  accelerator: z.enum(["auto", "kvm", "tcg"]).optional(),
  // off, or the user's own proxy. Absent: dbuild's package cache (src/proxy).
  proxy: z
    .string({ error: "expected off, or http://HOST:PORT of your own proxy" })
    .regex(/^(off|http:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}\/?)$/, "expected off, or http://HOST:PORT of your own proxy")
    .optional(),
  ssh: sshSettings.optional(),
  cache: z
    .strictObject({
      from: z.string().regex(/^oci:\/\/[^/\s]+\/\S+$/, "expected oci://HOST[:PORT]/REPO").optional(),
      to: z.string().regex(/^oci:\/\/[^/\s]+\/\S+$/, "expected oci://HOST[:PORT]/REPO").optional(),
    })
    .optional(),
  warm: z.strictObject({ enabled: z.boolean().optional(), maxMiB: count.optional() }).optional(),
  secrets: z
    .record(
      z.string().regex(SECRET_NAME, "expected a secret name: letters, digits, '.', '_', '-'"),
      z.union([
        z.strictObject({ env: z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "expected an environment variable name") }),
        z.strictObject({ file: z.string().min(1) }),
      ], { error: "expected {env: VARIABLE} or {file: PATH}" }),
    )
    .optional(),
});
export type ProjectYaml = z.infer<typeof projectYaml>;

const envValue = z.union([z.string(), z.number(), z.boolean()]).transform((v) => String(v));

export const layerYaml = z.strictObject({
  kind: z.enum(["base", "intermediate", "finalizing"]).optional(),
  description: z.string().optional(),
  mem: count.optional(),
  cpus: count.optional(),
  timeout: seconds.optional(),
  import: z
    .strictObject({
      from: z.string().min(1),
      // A digest of only digits would parse as a YAML number: ask for quotes rather than guessing.
      sha256: z.string({ error: "expected 64 hex digits in quotes" }).regex(/^[0-9a-f]{64}$/, "expected 64 lowercase hex digits"),
    })
    .optional(),
  format: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._+-]*$/, "expected a format name such as qcow2, openstack, vagrant")
    .optional(),
  extension: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9.]*$/, "expected a file extension without the dot, such as qcow2, box, ova")
    .optional(),
  next: z.string().min(1).optional(),
  ssh: sshSettings.optional(),
  disk: diskSize.optional(),
  env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, "expected an environment variable name"), envValue).optional(),
  // A string or a number (epoch: 2): either way it enters the key as text.
  epoch: z.union([z.string().min(1), z.number()]).transform((v) => String(v)).optional(),
  inputs: z.array(z.string().min(1, "expected a glob such as ../../utils/*.sh")).optional(),
  test: z
    .strictObject({
      ports: z.array(z.number().int().min(1).max(65535)).optional(),
      timeout: seconds.optional(),
    })
    .optional(),
  secrets: z.array(z.string().regex(SECRET_NAME, "expected a secret name from demobuild.yaml secrets:")).optional(),
});
export type LayerYaml = z.infer<typeof layerYaml>;
