/**
 * Layer tests: after a node's image is published to the store and before its view switches (so before
 * any child builds on it), a throwaway copy-on-write VM of that image boots (a fresh boot: the layer
 * must survive a reboot), layers/NAME/test/ is copied in, and each test runs:
 *
 *   test/guest/NAME   in the VM as root (sudo -n for a non-root login user), cwd the copy of
 *                     test/guest/, env LAYER, STACK
 *   test/host/NAME    on the host, cwd test/host/, env LAYER, STACK and, to reach the VM:
 *                     DBUILD_SSH       an ssh command line as the login user: `$DBUILD_SSH 'cat /etc/motd'`
 *                     DBUILD_SSH_USER, DBUILD_SSH_HOST, DBUILD_SSH_PORT, DBUILD_SSH_KEY (key path)   its parts
 *                     DBUILD_HOST      where forwarded ports listen (127.0.0.1, or the guest IP on a bridge)
 *                     DBUILD_PORT_<n>  the host port forwarded to guest port n (layer.yaml test.ports)
 *
 * A test passes when it exits 0 and, if its output is TAP (it has a plan line `1..N` or `TAP version`),
 * when the TAP stream passes too (no `not ok` but TODO, the plan met, no `Bail out!`). Without a plan
 * line, output is only shown, never judged: a script that prints "ok" is not a TAP stream.
 * Every test runs even after one failed; the VM is then killed and its disk removed.
 */
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { Parser } from "tap-parser";
import type { PlanNode, PlanTests } from "../model/plan.js";
import type { Layer, Project } from "../project/types.js";
import type { BuildEvent, TapCounts } from "../report/events.js";
import { qemuImg } from "../store/qemu-img.js";
import type { Store } from "../store/store.js";
import type { NodeRecord, TestResult } from "../model/store.js";
import { errorMessage } from "../util/errors.js";
import { ensureProjectKey } from "../vm/keys.js";
import { projectVmOptions } from "../vm/options.js";
import { deviceSet, startVm } from "../vm/qemu.js";
import { qemuVersion } from "../vm/warm.js";
import { WarmStore } from "../store/warm.js";
import { bootAndSaveWarm, type WarmMode } from "./warm-start.js";
import { sshArgs } from "../vm/rsync.js";
import { shellQuote } from "../vm/ssh.js";
import type { Vm, VmUsage } from "../vm/types.js";
import { runHostProcess } from "./host.js";
import { loginFor, SEED_INSTANCE_ID } from "./login.js";
import { NodeLog } from "./node-log.js";
import { StepError } from "./step-error.js";
import type { Step } from "../report/events.js";

/** Where test/ is copied in the test VM. */
export const GUEST_TEST_DIR = "/tmp/dbuild-test";
/** Seconds one test may run unless layer.yaml test.timeout says otherwise. */
export const DEFAULT_TEST_TIMEOUT = 300;
/** Lines of a failed test's output carried in its event and in the node's failure. */
const OUTPUT_TAIL = 20;

export interface LayerTestRun {
  project: Project;
  layer: Layer;
  node: PlanNode;
  tests: PlanTests;
  store: Store;
  /** The published object to test (never written: the VM boots a COW child of it). */
  object: string;
  emit: (e: BuildEvent) => void;
  /** The node's step "test" reporting progress (booting, copying). */
  progress: (detail: string) => void;
  /** The test VM stopped: what it used (a `vm-usage` event of the node). */
  vmStopped: (pid: number, usage: VmUsage) => void;
  /** "cold" (--cold): no warm snapshot is saved. */
  warm?: WarmMode;
  signal: AbortSignal;
}

export interface LayerTestOutcome {
  ok: boolean;
  results: TestResult[];
  /** The test log (build/logs/STACK.test.log). */
  logPath: string;
  /** Failed tests: name, why, and the tail of their output. */
  failures: { name: string; message: string; output: string[] }[];
}

/** Test log beside the node's install log: a test-only run must not overwrite the install output. */
export function testLogPath(store: Store, stack: string): string {
  return store.logPath(stack).replace(/\.log$/, ".test.log");
}

/** Feeds a test's stdout to a TAP parser; `verdict` says whether it was TAP and how it went. */
export class TapWatcher {
  private readonly parser: Parser;
  private results: Parser["results"] | undefined;
  private isTap = false;
  private bailedOut: string | undefined;
  private buf = "";

  constructor() {
    this.parser = new Parser((r) => (this.results = r));
    this.parser.on("bailout", (reason: string) => (this.bailedOut = reason || "Bail out!"));
  }

  write(d: Buffer | string): void {
    const text = this.buf + d.toString();
    const lines = text.split("\n");
    this.buf = lines.pop() ?? "";
    for (const l of lines) {
      if (/^\s*(1\.\.\d+|TAP version \d+)/.test(l)) this.isTap = true;
      this.parser.write(`${l}\n`);
    }
  }

  verdict(): { tap?: TapCounts; failed?: string } {
    if (this.buf) this.write("\n");
    this.parser.end();
    const r = this.results;
    if (!this.isTap || !r) return {};
    const tap = { count: r.count, pass: r.pass, fail: r.fail, skip: r.skip, todo: r.todo };
    if (this.bailedOut) return { tap, failed: `TAP: bailed out (${this.bailedOut})` };
    if (r.ok) return { tap };
    const points = r.failures.filter((f) => !f.tapError).map((f) => `not ok ${f.id ?? "?"}${f.name ? ` ${f.name}` : ""}`);
    const other = r.failures.filter((f) => f.tapError).map((f) => f.tapError!);
    return { tap, failed: `TAP: ${[...points, ...other].join("; ") || "failed"}` };
  }
}

/** A node's tests failed: the node fails with their output and a way into the image. */
export class TestsFailed extends StepError {
  constructor(
    message: string,
    readonly tail: string[],
    readonly logPath: string,
    readonly shell: string,
  ) {
    super("test", message);
  }
}

export interface TestGate {
  project: Project;
  layer: Layer;
  node: PlanNode;
  store: Store;
  /** The image to test: published to the store, not yet shown by the view (unless `shown`). */
  rec: NodeRecord;
  /** The view already shows this image (only its tests were left to run). */
  shown: boolean;
  setStep: (step: Step, detail?: string) => void;
  emit: (e: BuildEvent) => void;
  vmStopped: (pid: number, usage: VmUsage) => void;
  warm?: WarmMode;
  signal: AbortSignal;
}

/**
 * Tests gate the view. Runs the node's tests when the plan says they run; a pass is recorded for the
 * image (its object) and these tests, and the caller goes on to switch the view (true: tests ran). A
 * failure forgets any pass of these tests on the image, holds an image no view shows back in the store
 * (the next build reuses it and reruns only the tests) and throws TestsFailed. False: nothing to run.
 */
export async function testGate(g: TestGate): Promise<boolean> {
  const { node, layer, store, rec } = g;
  const tests = node.tests;
  if (!tests?.run || !layer.tests) return false;
  g.setStep("test", `${tests.names.length} test(s) in a fresh VM`);
  const out = await runLayerTests({
    project: g.project,
    layer,
    node,
    tests,
    store,
    object: rec.object,
    emit: g.emit,
    progress: (detail) => g.setStep("test", detail),
    vmStopped: g.vmStopped,
    ...(g.warm ? { warm: g.warm } : {}),
    signal: g.signal,
  });
  if (out.ok) {
    await store.recordTestPass({ key: node.key, stack: node.stack, object: rec.object, digest: tests.digest, passedAt: new Date().toISOString(), results: out.results });
    return true;
  }
  await store.forgetTestPass(node.key, tests.digest);
  if (!g.shown && rec.held === undefined) await store.hold(rec, "its tests failed");
  const names = out.failures.map((f) => f.name);
  const tail = out.failures.flatMap((f) => [`[${f.name}] ${f.message}:`, ...f.output.map((l) => `  ${l}`)]);
  throw new TestsFailed(`${names.length} of ${out.results.length} test(s) failed: ${names.join(", ")}`, tail, out.logPath, shellCommand(g.project, store.objectPath(rec.object)));
}

/** The command that opens a shell on exactly this object (a throwaway snapshot of it; the object is not touched). */
function shellCommand(project: Project, objectPath: string): string {
  const rel = path.relative(process.cwd(), objectPath);
  const shown = rel && !rel.startsWith("..") ? rel : objectPath;
  const dir = path.resolve(process.cwd()) === project.root ? "" : ` -C ${project.root}`;
  return `dbuild${dir} shell ${shown}`;
}

/** Boot, copy, run every test, discard. Never throws for a failing test: the outcome says. */
export async function runLayerTests(run: LayerTestRun): Promise<LayerTestOutcome> {
  const { project, layer, node, tests, store, signal } = run;
  const s = project.settings;
  const log = new NodeLog(testLogPath(store, node.stack), node.stack, run.emit);
  await log.open();
  const step = (detail: string): void => {
    log.note(`test: ${detail}`);
    run.progress(detail);
  };
  const disk = `${store.tmpPath(`${node.stack}-test`)}.qcow2`;
  const runDir = `${disk}.run`;
  const results: TestResult[] = [];
  const failures: LayerTestOutcome["failures"] = [];
  let vm: Vm | undefined;
  let release: (() => Promise<void>) | undefined;
  try {
    const objectPath = store.objectPath(run.object);
    const keys = await ensureProjectKey(project.root);
    // The image of this very stack: it says who logs in, and whether the key comes through a NoCloud seed.
    const login = loginFor(project, node.stack);
    const opts = projectVmOptions(s, {
      disk,
      mem: layer.config.mem ?? s.buildVm.mem,
      cpus: layer.config.cpus ?? s.buildVm.cpus,
      keyPath: keys.key,
      serialLog: testLogPath(store, node.stack).replace(/\.log$/, ".console.log"),
      runDir,
      signal,
      user: login.user,
      ...(login.seed ? { seed: { instanceId: SEED_INSTANCE_ID } } : {}),
    });
    step(`booting a throwaway VM of ${path.basename(run.object)}`);
    try {
      // This fresh boot of the new image is also the one that saves its warm snapshot, which its
      // children's build VMs then resume (when the VM is a build VM's twin: no extra forwarded ports).
      const warm = new WarmStore(store.internalDir);
      const warmable = s.warm.enabled && s.network.mode === "user" && run.warm !== "cold" && !tests.ports.length && !(await warm.peek(run.object));
      const saving = warmable
        ? await bootAndSaveWarm({
            warm,
            want: { object: run.object, mem: opts.mem, cpus: opts.cpus, qemu: await qemuVersion(), devices: await deviceSet(opts) },
            objectPath,
            overlay: disk,
            vm: opts,
            signal,
            note: (m: string) => log.note(`warning: ${m}`),
            log: (m: string) => log.note(m),
          })
        : undefined;
      if (saving) {
        release = saving.release;
        vm = saving.vm;
        if (saving.installed) log.note("test: the boot saved the image's warm snapshot (its children's build VMs resume it)");
      } else {
        await qemuImg(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", path.relative(path.dirname(disk), objectPath), disk], signal);
        vm = await startVm({ ...opts, ...(tests.ports.length ? { forwardPorts: tests.ports } : {}) });
      }
    } catch (e) {
      throw new StepError("test", `the test VM did not boot (a fresh boot of the new image): ${errorMessage(e)}`);
    }
    log.note(`test VM up: pid ${vm.pid}, ssh ${vm.user}@${vm.sshHost}:${vm.sshPort}${login.seed ? " (key from the NoCloud seed)" : ""}`);
    const guest = tests.names.filter((n) => n.startsWith("guest/"));
    if (guest.length) {
      step(`copying test/ to ${GUEST_TEST_DIR}`);
      try {
        await vm.rsyncTo(path.join(layer.dir, "test"), GUEST_TEST_DIR, { signal });
      } catch (e) {
        throw new StepError("test", `copying test/ into the test VM failed: ${errorMessage(e)}`);
      }
    }
    const timeoutMs = (layer.config.test?.timeout ?? DEFAULT_TEST_TIMEOUT) * 1000;
    const baseEnv = { LAYER: layer.name, STACK: node.stack };
    const hostEnv = hostTestEnv(vm, keys.key);
    for (const name of tests.names) {
      signal.throwIfAborted();
      run.emit({ type: "test-start", time: Date.now(), stack: node.stack, test: name });
      log.note(`test ${name}`);
      log.startTest(name);
      const tap = new TapWatcher();
      const t0 = Date.now();
      let code: number | null;
      let killed: string | undefined;
      if (name.startsWith("guest/")) {
        const file = name.slice("guest/".length);
        try {
          const r = await vm.exec(`cd ${GUEST_TEST_DIR}/guest && ./${shellQuote(file)}`, {
            env: baseEnv,
            asRoot: true,
            onStdout: (d) => {
              tap.write(d);
              log.chunk("stdout", d);
            },
            onStderr: (d) => log.chunk("stderr", d),
            timeoutMs,
            signal,
          });
          code = r.code;
          if (code === null) killed = `killed by signal ${r.signal ?? "?"}`;
        } catch (e) {
          if (signal.aborted) throw e;
          code = null;
          killed = errorMessage(e);
        }
      } else {
        const r = await runHostProcess(path.join(layer.dir, "test", name), {
          cwd: path.join(layer.dir, "test", "host"),
          env: { ...baseEnv, ...hostEnv },
          log: {
            chunk: (stream: "stdout" | "stderr", d: Buffer | string) => {
              if (stream === "stdout") tap.write(d);
              log.chunk(stream, d);
            },
          },
          signal,
          timeoutMs,
        });
        signal.throwIfAborted();
        code = r.code;
        if (r.timedOut) killed = `timed out after ${timeoutMs / 1000} s`;
        else if (r.spawnError) killed = r.spawnError === "EACCES" ? "not executable" : "not found";
        else if (code === null) killed = `killed by signal ${r.signal ?? "?"}`;
      }
      const v = tap.verdict();
      log.flush();
      const duration = (Date.now() - t0) / 1000;
      const message = killed ?? (code !== 0 ? `exit code ${code}` : v.failed);
      const ok = message === undefined;
      const output = ok ? [] : tailOf(log);
      log.startTest(undefined);
      results.push({ name, ok, duration, exitCode: code, ...(v.tap ? { tap: v.tap } : {}), ...(message ? { message } : {}) });
      log.note(`test ${name}: ${ok ? "ok" : `FAILED (${message})`} in ${duration.toFixed(1)} s`);
      if (!ok) failures.push({ name, message: message, output });
      run.emit({ type: "test-done", time: Date.now(), stack: node.stack, test: name, ok, duration, exitCode: code, ...(v.tap ? { tap: v.tap } : {}), ...(message ? { message } : {}), ...(ok ? {} : { output }) });
    }
    return { ok: failures.length === 0, results, logPath: log.file, failures };
  } finally {
    // Throwaway: nothing of it is kept, so no clean shutdown is needed.
    if (vm) {
      await vm.kill();
      run.vmStopped(vm.pid, vm.usage());
    }
    await release?.();
    await log.close();
    await fs.rm(disk, { force: true });
    await fs.rm(runDir, { recursive: true, force: true });
  }
}

/** Lines the test printed (its tail), from the log that collected them. */
function tailOf(log: NodeLog): string[] {
  return log.lastLines().slice(-OUTPUT_TAIL);
}

/** What a host test needs to reach the VM. */
export function hostTestEnv(vm: Pick<Vm, "user" | "sshHost" | "sshPort" | "forwarded">, keyPath: string): Record<string, string> {
  const ssh = ["ssh", ...sshArgs({ keyPath, port: vm.sshPort }), `${vm.user}@${vm.sshHost}`].map(shellQuote).join(" ");
  const env: Record<string, string> = {
    DBUILD_SSH: ssh,
    DBUILD_SSH_USER: vm.user,
    DBUILD_SSH_HOST: vm.sshHost,
    DBUILD_SSH_PORT: String(vm.sshPort),
    DBUILD_SSH_KEY: keyPath,
    DBUILD_HOST: vm.sshHost,
  };
  for (const [guest, at] of vm.forwarded) {
    env[`DBUILD_PORT_${guest}`] = String(at.port);
    env.DBUILD_HOST = at.host;
  }
  return env;
}
