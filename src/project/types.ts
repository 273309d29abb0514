/**
 * The project model: what `project/` reads from demobuild.yaml, layers/ and targets/.
 * Knows nothing of QEMU or of the build graph.
 */

export type LayerKind = "base" | "intermediate" | "finalizing";
export type NetworkMode = "user" | "bridge";
export type Accelerator = "auto" | "kvm" | "tcg";
/**
 * How build VMs download packages: through dbuild's package cache (a caching proxy on the host for the
 * length of a build), straight (off), or through the user's own proxy (http://HOST:PORT).
 */
export type ProxySetting = { mode: "cache" } | { mode: "off" } | { mode: "own"; url: string };

/** demobuild.yaml, with defaults applied. All paths absolute. */
export interface ProjectSettings {
  /** Absolute path of the build dir (default `<root>/build`). */
  buildDir: string;
  /** Default MEM (MiB) and CPUS for finalized stacks; targets/ files override per stack. */
  defaults: { mem: number; cpus: number };
  /** VM size used while applying a layer (MiB, count). */
  buildVm: { mem: number; cpus: number };
  /** Max nodes built at once (default: number of cores). */
  jobs: number;
  /** Max total MEM (MiB) of VMs running at once. */
  memoryBudget: number;
  /** Seconds. */
  timeouts: { boot: number; install: number; shutdown: number };
  network: { mode: NetworkMode; bridge: string };
  accelerator: Accelerator;
  proxy: ProxySetting;
  /** Login user of build and throwaway VMs unless a layer of the stack says otherwise (default root). */
  ssh: { user: string };
  /** Optional remote cache URLs (oci://HOST[:PORT]/REPO). */
  cache: { from?: string; to?: string };
  /** Warm starts: build VMs resume from a RAM snapshot of their parent; snapshots use at most maxMiB. */
  warm: { enabled: boolean; maxMiB: number };
  /** Secrets layers may ask for, by name: where each value comes from (never the value itself). */
  secrets: Record<string, SecretSource>;
}

/**
 * Where a secret's value is read from when a build needs it: a host environment variable or a file
 * (absolute path, `~` expanded). `where` is its place in demobuild.yaml, for error messages.
 */
export type SecretSource = ({ env: string } | { file: string }) & { where: string };

/** layer.yaml `test:`. */
export interface LayerTestConfig {
  /** Guest TCP ports forwarded to the host for host-side tests (DBUILD_PORT_<n>). */
  ports?: number[];
  /** Seconds one test may run (default 300). */
  timeout?: number;
}

/**
 * A layer's tests, found in layers/NAME/test/: executables in test/guest/ run in a throwaway VM of the
 * new image, executables in test/host/ run on the host against it. Names are relative to test/
 * ("guest/10-user", "host/http"), in the order they run (guest first, then host, each by name).
 */
export interface LayerTests {
  /** Absolute path of layers/NAME/test. */
  dir: string;
  guest: string[];
  host: string[];
}

/** layers/NAME/layer.yaml, all optional. */
export interface LayerConfig {
  kind?: LayerKind;
  description?: string;
  /** VM memory / cpus while this layer is applied (override project buildVm). */
  mem?: number;
  cpus?: number;
  /** Install timeout, seconds. */
  timeout?: number;
  /** Base layers only: declarative import of an existing image instead of running `install`. */
  import?: { from: string; sha256: string };
  /** Finalizing layers only: deliverable format (openstack, vagrant, vsphere, raw, ...). Default: the layer name. */
  format?: string;
  /** Finalizing layers only: file extension of the deliverable (default: the format). */
  extension?: string;
  /** Finalizing layers only: the next step shown to the user; placeholders {OUTPUT} {NAME} {STACK} {MEM} {CPUS}. */
  next?: string;
  /**
   * Login user of this layer's image and of every image built on it (until a later layer sets another).
   * A non-root user gets the project key through the NoCloud seed and runs installs through sudo.
   */
  ssh?: { user?: string };
  /** Disk size (bytes, parsed from 4G/512M/number of GiB): a base is made this big, a child is grown to it. */
  disk?: number;
  /** Extra environment for the layer's install. */
  env?: Record<string, string>;
  /** Bumped by hand to give every image of the layer a new key (a forced rebuild everywhere). */
  epoch?: string;
  /** Base and finalizing layers: globs (relative to the layer dir) of extra host files their scripts read. */
  inputs?: string[];
  /** Tests of this layer's image (see LayerTests). */
  test?: LayerTestConfig;
  /** Names of demobuild.yaml `secrets:` this layer's install reads (from /run/dbuild/secrets/NAME). */
  secrets?: string[];
}

export interface Layer {
  name: string;
  /** Absolute path of layers/NAME. */
  dir: string;
  kind: LayerKind;
  config: LayerConfig;
  /** Absolute path of layer.yaml if present. */
  configFile?: string;
  /** True if `install` exists (file or symlink). */
  hasInstall: boolean;
  /** True if `install` is a symlink to utils/addlayer.sh (Demobuilder's marker of an intermediate layer). */
  installIsAddlayer: boolean;
  /** True if an executable `convert` exists: the host-side converter of a finalizing layer. */
  hasConvert?: boolean;
  /** True if `target/` exists (what a layer VM cycle rsyncs into the guest). */
  hasTarget?: boolean;
  /** How `kind` was decided, for messages: "layer.yaml", "convert", "addlayer", "install", "import". */
  kindFrom?: string;
  /** The layer's tests, when it has a test/ directory with any. */
  tests?: LayerTests;
}

export interface Target {
  /** File name = stack, e.g. `micro:web:openstack`. */
  stack: string;
  /** Absolute path of the targets/ file. */
  file: string;
  /** KEY=VALUE settings, in file order. */
  settings: Record<string, string>;
  /** 1-based line of each key, for error messages. */
  settingLines: Record<string, number>;
}

export interface Project {
  /** Absolute path of the project root (where demobuild.yaml / layers/ / targets/ live). */
  root: string;
  /** Absolute path of demobuild.yaml if present. */
  configFile?: string;
  settings: ProjectSettings;
  layers: Map<string, Layer>;
  targets: Target[];
}
