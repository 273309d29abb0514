/**
 * Throwaway VMs, as Demobuilder's utils/createsnap.sh, run.sh and ssh.sh: `dbuild snap`, `run`, `ssh`,
 * `shell`. Only wiring and printing here; the work is in vm/.
 */
import { spawn } from "node:child_process";
import { promises as fs, realpathSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import type { Command } from "commander";
import { loadProject } from "../../project/load.js";
import type { Project } from "../../project/types.js";
import { registerSnapshot } from "../../store/snapshots.js";
import { DbuildError } from "../../util/errors.js";
import type { ThrowawayVm } from "../../exec/throwaway.js";
import { pathExists, realPathOr } from "../../util/fs.js";
import type { RunState } from "../../vm/run-state.js";
import { projectRoot } from "../shared.js";

// What runs VMs (QEMU, keys, ssh2, the store) is loaded when a command here runs, not for every dbuild
// command: `dbuild plan` and `--help` never need it.
const vmModules = (): Promise<[typeof import("../../vm/keys.js"), typeof import("../../vm/run-state.js"), typeof import("../../vm/rsync.js")]> =>
  Promise.all([import("../../vm/keys.js"), import("../../vm/run-state.js"), import("../../vm/rsync.js")]);

function rootOf(cmd: Command): string {
  return path.resolve(projectRoot(cmd));
}

function runDirFor(image: string): string {
  const abs = path.resolve(image);
  return path.join(path.dirname(abs), `.${path.basename(abs)}.dbuild-vm`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}


function isInside(child: string, dir: string): boolean {
  const rel = path.relative(dir, child);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}


/** `build/STACK.qcow2`, `STACK.qcow2`, `STACK` or any path to an image: the file it names, resolved. */
export async function resolveStackImage(project: Project, arg: string): Promise<string> {
  const candidates = [path.resolve(arg)];
  const stack = path.basename(arg).replace(/\.qcow2$/, "");
  candidates.push(path.join(project.settings.buildDir, `${stack}.qcow2`));
  for (const c of candidates) {
    if (await pathExists(c)) {
      const st = await fs.stat(c);
      if (st.isFile()) return realpathSync(c);
    }
  }
  throw new DbuildError({
    reason: "no-image",
    where: arg,
    message: `no image for "${arg}" (looked for ${candidates.join(", ")})`,
    hint: `build the stack first: dbuild ${stack}`,
  });
}

/** A copy-on-write snapshot of a stack's image, backed by the immutable object (absolute path). */
export async function snap(project: Project, image: string, name: string, opts: { force?: boolean } = {}): Promise<string> {
  const backing = await resolveStackImage(project, image);
  const dst = path.resolve(name);
  if (isInside(realPathOr(path.dirname(dst)), realPathOr(project.settings.buildDir))) {
    throw new DbuildError({
      reason: "snap-in-build-dir",
      where: name,
      message: "snapshots cannot live inside the build dir (dbuild owns and garbage-collects it)",
      hint: "pick a path outside it, e.g. ./snap.qcow2",
    });
  }
  if ((await pathExists(dst)) && !opts.force) {
    throw new DbuildError({ reason: "exists", where: name, message: "file exists", hint: "remove it or pass --force" });
  }
  if (opts.force) await fs.rm(dst, { force: true });
  const [{ createChild }, { Store }] = await Promise.all([import("../../vm/image.js"), import("../../store/store.js")]);
  // Registered first: gc must never remove the object this snapshot is about to be backed by.
  await registerSnapshot(new Store(project.settings.buildDir), dst);
  await createChild(backing, dst);
  return dst;
}

function refuseBuildDirImage(project: Project, image: string): void {
  const real = realPathOr(image);
  const buildDir = realPathOr(project.settings.buildDir);
  if (isInside(real, buildDir) || isInside(path.resolve(image), path.resolve(project.settings.buildDir))) {
    throw new DbuildError({
      reason: "image-in-build-dir",
      where: image,
      message: "refusing to run an image from the build dir: other images may be backed by it and would be corrupted; create a snapshot with `dbuild snap`",
      hint: `dbuild snap ${path.relative(process.cwd(), path.resolve(image)) || image} snap.qcow2 && dbuild run snap.qcow2`,
    });
  }
}

function positiveInt(what: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new DbuildError({ reason: "bad-option", where: what, message: `"${v}" is not a positive whole number`, hint: `e.g. ${what} ${what === "--mem" ? 1024 : 2}` });
    return n;
  };
}

/** Run OpenSSH with our terminal; resolves with its exit status (255: ssh itself failed). */
function runOpenSsh(args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn("ssh", args, { stdio: "inherit" });
    // While ssh owns the terminal, Ctrl-C belongs to it (and to the remote side), not to us.
    const ignore = (): void => undefined;
    process.on("SIGINT", ignore);
    child.once("error", (e) => {
      process.off("SIGINT", ignore);
      reject(e);
    });
    child.once("exit", (code, sig) => {
      process.off("SIGINT", ignore);
      resolve(code ?? (sig ? 128 + (os.constants.signals[sig] ?? 0) : 255));
    });
  });
}

async function sshCommandArgs(o: { keyPath: string; port: number; user: string; host: string; command: string[]; tty: boolean }): Promise<string[]> {
  const [, , { sshArgs }] = await vmModules();
  return [...sshArgs({ keyPath: o.keyPath, port: o.port }), ...(o.tty ? ["-t"] : []), `${o.user}@${o.host}`, ...(o.command.length ? ["--", ...o.command] : [])];
}

export function registerVmCommands(program: Command): void {
  program
    .command("snap")
    .description("create a copy-on-write snapshot NAME of a stack's image, to run with `dbuild run`")
    .argument("<image>", "build/STACK.qcow2, STACK.qcow2 or STACK")
    .argument("<name>", "snapshot file to create, e.g. snap.qcow2")
    .option("-f, --force", "overwrite NAME if it exists")
    .action(async (image: string, name: string, o: { force?: boolean }, cmd: Command) => {
      const project = await loadProject(rootOf(cmd));
      const dst = await snap(project, image, name, o);
      const rel = path.relative(process.cwd(), dst);
      process.stdout.write(`${rel && !rel.startsWith("..") ? rel : dst}\n`);
    });

  program
    .command("run")
    .description("boot an image (a snapshot) in the background; prints QEMUPID=, IP=, SSH= (and VNC=) lines")
    .argument("<name>", "qcow2 image outside the build dir")
    .option("--vnc", "start a VNC server on 127.0.0.1")
    .option("--mem <MiB>", "memory (default: defaults.mem of demobuild.yaml)", positiveInt("--mem"))
    .option("--cpus <n>", "virtual CPUs (default: defaults.cpus)", positiveInt("--cpus"))
    .action(async (name: string, o: { vnc?: boolean; mem?: number; cpus?: number }, cmd: Command) => {
      const root = rootOf(cmd);
      const project = await loadProject(root);
      const [[{ ensureProjectKey }, { statePath, writeRunState }], { startVm }, { projectVmOptions }, { loginForImage, SEED_INSTANCE_ID }, { Store }] = await Promise.all([
        vmModules(),
        import("../../vm/qemu.js"),
        import("../../vm/options.js"),
        import("../../exec/login.js"),
        import("../../store/store.js"),
      ]);
      const image = path.resolve(name);
      if (!(await pathExists(image))) throw new DbuildError({ reason: "no-image", where: name, message: "no such file", hint: "create one with `dbuild snap STACK NAME`" });
      refuseBuildDirImage(project, image);
      // A snapshot made by other means (qemu-img create -b build/STACK.qcow2) is protected from gc too.
      await registerSnapshot(new Store(project.settings.buildDir), image);
      const sp = statePath(image);
      try {
        const prev = JSON.parse(await fs.readFile(sp, "utf8")) as RunState;
        if (alive(prev.pid)) {
          throw new DbuildError({ reason: "already-running", where: name, message: `already running (QEMUPID=${prev.pid})`, hint: `kill ${prev.pid} to stop it` });
        }
      } catch (e) {
        if (e instanceof DbuildError) throw e;
      }
      const { key } = await ensureProjectKey(root);
      const runDir = runDirFor(image);
      await fs.rm(runDir, { recursive: true, force: true });
      const s = project.settings;
      const login = await loginForImage(project, image);
      const vm = await startVm({
        ...projectVmOptions(s, { disk: image, mem: o.mem ?? s.defaults.mem, cpus: o.cpus ?? s.defaults.cpus, keyPath: key, serialLog: path.join(runDir, "serial.log"), runDir }),
        vnc: o.vnc ?? false,
        detached: true,
        user: login.user,
        ...(login.seed ? { seed: { instanceId: SEED_INSTANCE_ID } } : {}),
      });
      const state: RunState = {
        pid: vm.pid,
        disk: image,
        ip: vm.ip,
        sshHost: vm.sshHost,
        sshPort: vm.sshPort,
        user: vm.user,
        keyPath: key,
        runDir,
        startedAt: new Date().toISOString(),
      };
      if (vm.vncDisplay) state.vnc = vm.vncDisplay;
      writeRunState(state);
      const lines = [`QEMUPID=${vm.pid}`, `IP=${vm.ip}`, `SSH=${vm.sshHost}:${vm.sshPort}`];
      if (vm.vncDisplay) lines.push(`VNC=${vm.vncDisplay}`);
      process.stdout.write(lines.join("\n") + "\n");
    });

  program
    .command("ssh")
    .description("run a command (or a shell) in a VM started by `dbuild run NAME`, or at root@IP (bridge mode)")
    .argument("<target>", "snapshot NAME given to `dbuild run`, or USER@IP")
    .argument("[command...]", "command to run (default: an interactive shell)")
    .passThroughOptions()
    .action(async (target: string, command: string[], _o: unknown, cmd: Command) => {
      const root = rootOf(cmd);
      const [{ ensureProjectKey }, { statePath }] = await vmModules();
      let host: string;
      let port: number;
      let user = "root";
      let keyPath: string;
      const m = /^([^@/]+)@([^/]+)$/.exec(target);
      if (m && !(await pathExists(target))) {
        user = m[1]!;
        host = m[2]!;
        port = 22;
        keyPath = (await ensureProjectKey(root)).key;
      } else {
        const sp = statePath(target);
        let st: RunState;
        try {
          st = JSON.parse(await fs.readFile(sp, "utf8")) as RunState;
        } catch {
          throw new DbuildError({ reason: "not-running", where: target, message: "no VM was started from this image", hint: `dbuild run ${target}` });
        }
        if (!alive(st.pid)) {
          throw new DbuildError({ reason: "not-running", where: target, message: `the VM (QEMUPID=${st.pid}) is no longer running`, hint: `dbuild run ${target}` });
        }
        host = st.sshHost;
        port = st.sshPort;
        user = st.user ?? "root";
        keyPath = st.keyPath;
      }
      // `dbuild ssh NAME -- CMD`: the separator is ours, not part of the remote command.
      if (command[0] === "--") command = command.slice(1);
      const tty = command.length === 0;
      process.exitCode = await runOpenSsh(await sshCommandArgs({ keyPath, port, user, host, command, tty }));
    });

  program
    .command("shell")
    .description("boot a throwaway snapshot of a stack and open a shell in it; everything is removed on exit")
    .argument("<stack>", "STACK or build/STACK.qcow2")
    .option("--mem <MiB>", "memory (default: defaults.mem)", positiveInt("--mem"))
    .option("--cpus <n>", "virtual CPUs (default: defaults.cpus)", positiveInt("--cpus"))
    .action(async (stack: string, o: { mem?: number; cpus?: number }, cmd: Command) => {
      const root = rootOf(cmd);
      const project = await loadProject(root);
      const s = project.settings;
      const backing = await resolveStackImage(project, stack);
      const [[{ ensureProjectKey }], { installVmCleanupHandlers }, { startThrowawayVm }, { Store }, { loginForImage }] = await Promise.all([
        vmModules(),
        import("../../vm/registry.js"),
        import("../../exec/throwaway.js"),
        import("../../store/store.js"),
        import("../../exec/login.js"),
      ]);
      const { key } = await ensureProjectKey(root);
      installVmCleanupHandlers();
      let t: ThrowawayVm | undefined;
      const ac = new AbortController();
      const onSig = (): void => ac.abort(new Error("interrupted"));
      process.once("SIGINT", onSig);
      try {
        process.stderr.write(`starting ${path.basename(backing)} ...\n`);
        t = await startThrowawayVm({
          project,
          store: new Store(s.buildDir),
          backing,
          keyPath: key,
          ...(o.mem !== undefined ? { mem: o.mem } : {}),
          ...(o.cpus !== undefined ? { cpus: o.cpus } : {}),
          login: await loginForImage(project, backing),
          diskName: "snap.qcow2",
          tmpPrefix: "dbuild-shell-",
          signal: ac.signal,
          note: (m) => process.stderr.write(`warning: ${m}\n`),
        });
        if (t.resumed) process.stderr.write("resumed from the image's warm snapshot\n");
        process.off("SIGINT", onSig);
        process.exitCode = await runOpenSsh(await sshCommandArgs({ keyPath: key, port: t.vm.sshPort, user: t.vm.user, host: t.vm.sshHost, command: [], tty: true }));
      } catch (e) {
        if (!ac.signal.aborted) throw e;
        process.stderr.write("interrupted\n");
        process.exitCode = 130;
      } finally {
        process.off("SIGINT", onSig);
        await t?.stop();
      }
    });
}
