/** qcow2 helpers over qemu-img: copy-on-write children and image metadata. */
import path from "node:path";
import { loadExeca } from "../util/lazy.js";
import { DbuildError } from "../util/errors.js";

export interface ImageInfo {
  filename: string;
  format: string;
  virtualSize: number;
  actualSize: number;
  /** Backing file exactly as recorded (may be relative to this image's directory). */
  backingFile?: string;
  /** Absolute path of the backing file. */
  backingFileResolved?: string;
  backingFormat?: string;
  /** This image then its backing chain, each entry's filename absolute. */
  chain: { filename: string; format: string; backingFile?: string }[];
}

interface QemuImgInfo {
  filename: string;
  format: string;
  "virtual-size": number;
  "actual-size"?: number;
  "backing-filename"?: string;
  "full-backing-filename"?: string;
  "backing-filename-format"?: string;
}

/**
 * Create `child` as a qcow2 overlay of `parent`. With `relativeBacking`, the recorded backing path is
 * relative to the child's directory (qemu resolves it from there, not from the cwd), so a tree of
 * images can be moved as a whole.
 */
export async function createChild(parent: string, child: string, opts: { relativeBacking?: boolean; signal?: AbortSignal } = {}): Promise<void> {
  const absParent = path.resolve(parent);
  const absChild = path.resolve(child);
  const backing = opts.relativeBacking ? path.relative(path.dirname(absChild), absParent) : absParent;
  try {
    const execa = await loadExeca();
    await execa("qemu-img", ["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, absChild], { cancelSignal: opts.signal });
  } catch (e) {
    if (opts.signal?.aborted) throw e;
    const err = e as { stderr?: string; message: string };
    throw new DbuildError({
      reason: "image-create-failed",
      where: absChild,
      message: `cannot create a copy-on-write image backed by ${absParent}: ${(err.stderr ?? err.message).trim()}`,
      hint: "check that the backing image exists and is a qcow2 file",
    });
  }
}

export async function imageInfo(file: string, opts: { signal?: AbortSignal } = {}): Promise<ImageInfo> {
  const abs = path.resolve(file);
  let out: string;
  try {
    // -U: read even while a running QEMU holds the image lock
    const execa = await loadExeca();
    out = (await execa("qemu-img", ["info", "-U", "--backing-chain", "--output=json", abs], { cancelSignal: opts.signal })).stdout;
  } catch (e) {
    if (opts.signal?.aborted) throw e;
    const err = e as { stderr?: string; message: string };
    throw new DbuildError({ reason: "image-unreadable", where: abs, message: `qemu-img info failed: ${(err.stderr ?? err.message).trim()}` });
  }
  const list = JSON.parse(out) as QemuImgInfo[];
  const top = list[0];
  if (!top) throw new DbuildError({ reason: "image-unreadable", where: abs, message: "qemu-img info returned nothing" });
  const chain = list.map((i, n) => ({
    filename: n === 0 ? abs : path.resolve(i.filename),
    format: i.format,
    backingFile: i["full-backing-filename"]
      ? path.resolve(i["full-backing-filename"])
      : i["backing-filename"]
        ? path.resolve(path.dirname(i.filename), i["backing-filename"])
        : undefined,
  }));
  return {
    filename: abs,
    format: top.format,
    virtualSize: top["virtual-size"],
    actualSize: top["actual-size"] ?? 0,
    backingFile: top["backing-filename"],
    backingFileResolved: chain[0]?.backingFile,
    backingFormat: top["backing-filename-format"],
    chain,
  };
}
