/**
 * The `webgpu` backend: the model's operations as WGSL compute kernels (`wgsl/`), recorded into
 * one command stream and submitted only when a result is read. Weights and recurrent states live
 * in GPU memory; activations are GPU buffers recycled through a pool.
 *
 * Activations are consumed: once passed to {@link WebGpuBackend.addNorm},
 * {@link WebGpuBackend.mixer}, {@link WebGpuBackend.lmHead} or {@link WebGpuBackend.read}, an
 * activation's buffer goes back to the pool (the model never uses one twice), which keeps a long
 * prefill within a few activations' worth of memory.
 *
 * @module
 */

import type { Backend, BackendInit, DecodeOptions, StateTensors } from "../../backend.ts";
import type { MambaConfig } from "../../config.ts";
import type { Sampler } from "../../sampling.ts";
import { BackendError } from "../../errors.ts";
import { stateLayout } from "../../state.ts";
import { type GpuContext, gpuContext } from "./device.ts";
import { type Buf, Recorder } from "./recorder.ts";
import {
  type Kernel,
  kernel,
  loadShaderSources,
  type ShaderDefs,
  type ShaderFile,
} from "./shaders.ts";
import { DecodePlan } from "./decode.ts";
import {
  defaultMatmulTile,
  encodeMatmul,
  f16MathFromEnv,
  type MatmulKernel,
  matmulKernelFromEnv,
  type MatmulOptions,
  type MatmulTile,
  matmulTileFromEnv,
} from "./matmul.ts";
import {
  type GpuLayer,
  type GpuMatrix,
  type GpuWeights,
  type MatrixPart,
  uploadWeights,
} from "./weights.ts";

/** An activation of the `webgpu` backend: `rows × cols` f32 values in a pooled GPU buffer. */
export interface GpuActivation {
  /** Rows (tokens). */
  readonly rows: number;
  /** Columns (features). */
  readonly cols: number;
  /** The buffer (`null` once consumed). */
  buf: Buf | null;
}

/** Freed states kept for reuse, per batch size. */
const STATE_POOL_PER_BATCH = 4;
/** Most bytes of freed states kept for reuse. */
const STATE_POOL_BYTES = 256 << 20;

/**
 * The recurrent state of a batch on the GPU: per layer conv and SSM buffers. A freed state's
 * arrays (and buffers) may come back in a later state: `conv` identifies the buffers.
 */
export interface GpuState {
  /** Sequences. */
  readonly batch: number;
  /** Per layer `[batch, convDim, dConv]`. */
  readonly conv: Buf[];
  /** Per layer `[batch, dInner, dState]` or `[batch, nheads, headdim, dState]`. */
  readonly ssm: Buf[];
  /** Set by {@link WebGpuBackend.freeState}. */
  freed: boolean;
}

/** Tuning knobs of the backend (tests use them to force a code path). */
export interface WebGpuOptions {
  /** Read f16 weights through `shader-f16` (when the device has it) instead of unpacking u32. */
  f16Native?: boolean;
  /** Mamba-1 sequences at least this long use the chunked (parallel) scan. Default 128. */
  chunkedScanMin?: number;
  /** Chunk length of the chunked Mamba-1 scan. Default 64. */
  scanChunk?: number;
  /** Largest batch·tokens handled by the matrix-vector kernel (more use the tiled matmul). */
  matvecMaxRows?: number;
  /** Upper bound, in bytes, of one mixer intermediate (longer prompts are processed in slabs). */
  slabBytes?: number;
  /** Fold RMSNorms into the matrix-vector kernels when decoding (default true). */
  fuseNorm?: boolean;
  /**
   * Kernel of the prefill products (see src/backends/webgpu/matmul.ts): `"tiled"` (default),
   * `"matmul128"` (the earlier 128×128 kernel) or `"simple"`; default also settable with
   * `MAMBA_WEBGPU_MATMUL`.
   */
  matmulKernel?: MatmulKernel;
  /**
   * Overrides of the tiled product's tile, for every product (tests, sweeps); default also
   * settable with `MAMBA_WEBGPU_MATMUL_TILE=bm=128,bn=64,…`.
   */
  matmulTile?: Partial<MatmulTile>;
  /**
   * Packed f16 arithmetic (f16 runs of K summed into f32) in the tiled products of f16 weights,
   * when the device has `shader-f16`. Default off, or on with `MAMBA_WEBGPU_F16_MATH=1`.
   */
  matmulF16Math?: boolean;
  /** Overrides of the matrix-vector kernel's split, for every product (tests, sweeps). */
  matvecShape?: Partial<MatvecShape>;
  /**
   * Decode products of at least this many rows of x use the skinny kernels (the register
   * product up to 16 rows, `wgsl/skinny_regs.wgsl`; `wgsl/skinny.wgsl` past it) instead of the
   * matrix-vector kernel. Above 32 rows the skinny kernel is the only choice. Default 3 for
   * models under 2048 wide, 33 from there. On the H200 (f16 whole calls, the scan step a kernel
   * of its own), mamba-130m: 4,635 → 5,093 tok/s at batch 4, 6,908 → 8,943 at 8, 8,781 → 12,674
   * at 12, and about even at 2–3 (mamba2-130m: 3,423 → 3,723 at 3, 2,598 → 2,656 at 2); at 1 the
   * matrix-vector kernel wins (1,490 against 1,291). mamba-1.4b at batch 16: 2,007 tok/s on the
   * matrix-vector kernel against 1,879.
   */
  skinnyMinRows?: number;
  /** Overrides of the skinny kernel's tile, for every product (tests, sweeps). */
  skinnyShape?: Partial<SkinnyShape>;
  /**
   * Mamba-1's separate scan step runs four lanes per (channel, sequence) when the state size
   * is a multiple of 4 (`scan_step_lanes`); false keeps one thread each (`scan_step`).
   */
  scanStepLanes?: boolean;
  /** Mamba-2's SSD step with vec4 loads and a one-barrier sum (`VEC`) when the sizes allow. */
  ssdStepVec?: boolean;
  /**
   * Fused decoding through the skinny kernel adds each block's output to the residual in
   * out_proj's epilogue, so the next in_proj reads one tensor rather than two in every
   * workgroup (default true; false keeps the add in in_proj's prologue).
   */
  residualInOutProj?: boolean;
  /**
   * The skinny kernel's workgroups start their walk along K at different chunks (default true),
   * so that they do not all read the same rows of x from the same L2 lines at the same moment.
   */
  skinnyRotate?: boolean;
  /**
   * Fused Mamba-1 decoding of a batch on the skinny kernels splits x_proj's reduction
   * (over d_inner) into this many parts, each a slice of workgroups of its own; the scan step
   * sums the parts while staging its sequence's row. x_proj has few outputs (dt_rank + 2·d_state),
   * so unsplit it runs on a handful of workgroups, each walking all of K. Default 4: on the H200
   * (mamba-130m f16) x_proj went from 182 to 140, 108, 172 µs a step at batch 16 with 1, 2, 4,
   * 8 parts (the scan step 209 → 214 µs), and the batch-64 step from 2,694 to 2,450 µs.
   */
  xProjSplit?: number;
  /**
   * Decode products of up to 16 rows of x that would run through the skinny kernel keep their
   * weights in registers instead (`wgsl/skinny_regs.wgsl`: no staging of W through workgroup
   * memory, no barrier along K), unless they take the residual in their prologue, split K (x_proj
   * through this kernel split in 4: 169 against ~105 µs a step), or have a vocabulary of rows
   * (the LM head: 196 against 89 µs a step; whole calls 13,989 against 15,387 tok/s). Default true:
   * on the H200 (mamba-130m f16, batch 16) the step went from 1,156 to 961 µs (in_proj + norm +
   * conv 447 → 331, out_proj + residual 296 → 214), mamba2-130m's from 1,207 to 979. At batch 64
   * (four tiles of x, each reading every weight) it was slower: 2,910 against 2,437 µs.
   */
  skinnyRegs?: boolean;
  /** Overrides of the register kernel's tile, for every product (tests, sweeps). */
  regsShape?: Partial<RegsShape>;
  /** The register kernel also for products of a vocabulary of rows (the LM head); default false. */
  regsLmHead?: boolean;
}

/**
 * How the matrix-vector kernel splits the work: `team` lanes reduce over K for `rpt` rows at
 * once (sharing each load of x), with `unr` weight loads in flight per lane and row.
 */
export interface MatvecShape {
  /** Lanes per team (32…256). */
  team: number;
  /** Rows per team. */
  rpt: number;
  /** Loads in flight per lane and row. */
  unr: number;
  /** RMSNorm prologue: stage x·normW in workgroup memory (else read it from memory). */
  stage?: boolean;
}

/**
 * The tile of the skinny product (`wgsl/skinny.wgsl`): a workgroup computes `nt·tn` rows of W
 * by `mt·tm` rows of x, each thread `tn × tm` outputs, with `ks` slices of `nt·mt` threads
 * splitting K in chunks of `bk` columns staged through workgroup memory.
 */
export interface SkinnyShape {
  /** Rows of W per thread. */
  tn: number;
  /** Rows of x per thread. */
  tm: number;
  /** Threads along W's rows. */
  nt: number;
  /** Threads along x's rows. */
  mt: number;
  /** K slices per workgroup (nt·mt·ks ≤ 256 threads). */
  ks: number;
  /** Columns per staged chunk (a multiple of 8). */
  bk: number;
  /** 1: the next chunk is loaded into registers while this one is summed; 0: after. */
  pf: number;
}

/**
 * The default tile of the skinny product for `M` rows of x (a first guess from the kernel's
 * arithmetic, to be tuned on the H200 with `bench/webgpu_matvec_sweep.ts --kernel skinny`):
 * 4 rows of W per thread; 4 rows of x per thread up to 16 rows, 8 beyond; W tiles of 16 to 64
 * rows, the widest that still leaves 128 workgroups; the rest of the 256 threads split K; and
 * the longest chunk (8 to 32 columns) whose staging fits in `smemBytes` of workgroup memory;
 * the next chunk loaded while one is summed. Fields given in `over` are kept and the others
 * derived from them.
 */
export function defaultSkinnyShape(
  W: GpuMatrix,
  M: number,
  smemBytes: number,
  over: Partial<SkinnyShape> = {},
): SkinnyShape {
  const t = { ...measuredSkinnyTile(W, M), ...over };
  const shape = { tn: t.tn!, tm: t.tm!, nt: t.nt!, mt: t.mt!, ks: t.ks!, bk: t.bk!, pf: t.pf ?? 1 };
  // K slices fill the workgroup's 256 threads, unless given.
  if (!over.ks) shape.ks = Math.max(1, Math.min(shape.ks, Math.floor(256 / (shape.nt * shape.mt))));
  // Shorter chunks, then fewer slices, until the staging fits (sizes not forced by `over`).
  while (skinnyStageBytes(shape) > smemBytes) {
    if (!over.bk && shape.bk > 8) shape.bk /= 2;
    else if (!over.ks && shape.ks > 1) shape.ks--;
    else break;
  }
  return shape;
}

/**
 * The tile that measured fastest for each kind of product on the H200
 * (`bench/webgpu_matvec_sweep.ts --kernel skinny`, mamba-130m f16, batches 16 and 64; see
 * bench/RESULTS.md): the LM head (a vocabulary of rows), tiny products (x_proj), products that
 * shrink K to N (out_proj), and those that widen it (in_proj, 8–10k rows on the 1.4–2.8b
 * models: the LM head's 128-row tiles would leave them too few workgroups); up to 16 rows of x,
 * and more.
 */
function measuredSkinnyTile(W: GpuMatrix, M: number): Omit<SkinnyShape, "pf"> {
  const many = M > 16;
  if (W.N >= 32768) {
    return many
      ? { tn: 4, tm: 8, nt: 16, mt: 8, ks: 2, bk: 16 }
      : { tn: 8, tm: 4, nt: 16, mt: 4, ks: 2, bk: 8 };
  }
  if (W.N < 256) {
    return many
      ? { tn: 2, tm: 4, nt: 4, mt: 8, ks: 8, bk: 16 }
      : { tn: 2, tm: 4, nt: 4, mt: 2, ks: 16, bk: 32 };
  }
  if (W.K > W.N) {
    return many
      ? { tn: 4, tm: 8, nt: 4, mt: 4, ks: 8, bk: 16 }
      : { tn: 2, tm: 4, nt: 8, mt: 2, ks: 8, bk: 32 };
  }
  return many
    ? { tn: 2, tm: 4, nt: 8, mt: 16, ks: 2, bk: 32 }
    : { tn: 4, tm: 4, nt: 4, mt: 4, ks: 8, bk: 16 };
}

/**
 * The tile of the register product (`wgsl/skinny_regs.wgsl`): a workgroup computes `nc·tn` rows
 * of W by `mb` rows of x with `nc` groups of `kl` lanes; each lane holds `tn` rows of W and loads
 * `kp` pieces of each (8 f16 or 4 f32 columns a piece) per pass along K.
 */
export interface RegsShape {
  /** Rows of W per thread. */
  tn: number;
  /** Column groups per workgroup. */
  nc: number;
  /** Lanes along K per group (nc·kl ≤ 256 threads). */
  kl: number;
  /** Rows of x per workgroup. */
  mb: number;
  /** Pieces of each row of W a lane loads per pass. */
  kp: number;
}

/**
 * The default tile of the register product for `M` rows of x: 8 rows of W a thread, up to 8 rows
 * of x a workgroup, 32 lanes along K (64 past K = 1024), as many column groups (8 at most) as
 * still leave 128 workgroups, and one piece of each row a pass. Fields given in `over` are kept.
 * Measured on the H200 (`bench/webgpu_step_profile.ts --batch 16 --regs-tile …`, mamba-130m
 * f16; bench/RESULTS.md): 8 × 8 beat 4 × 16 (1,012 µs a step), 4 × 8 (993), 16 × 4 (976) and
 * 8 × 16 (1,269); more pieces a pass (all of K at once: 1,474) held more registers than they
 * hid latency; 16 lanes or a fixed 2 or 4 groups were slower.
 */
export function defaultRegsShape(
  W: GpuMatrix,
  M: number,
  over: Partial<RegsShape> = {},
): RegsShape {
  const tn = over.tn ?? 8;
  const mb = over.mb ?? Math.min(M, 8);
  const kl = over.kl ?? (W.K > 1024 ? 64 : 32);
  const mTiles = Math.ceil(M / mb);
  let nc = over.nc ?? 8;
  if (over.nc === undefined) {
    while (nc > 1 && (nc * kl > 256 || Math.ceil(W.N / (nc * tn)) * mTiles < 128)) nc /= 2;
  }
  return { tn, nc, kl, mb, kp: over.kp ?? 1 };
}

/** Workgroup memory for the skinny kernel's staging (one padded chunk of W and x per slice). */
function skinnyStageBytes(s: Omit<SkinnyShape, "pf">): number {
  return s.ks * (s.nt * s.tn + s.mt * s.tm) * (s.bk / 4 + 1) * 16;
}

/**
 * Options of {@link WebGpuBackend.matvec}: the product's operands as for the tiled product (rows
 * of x: the matrix-vector kernel takes at most 32, more go to the skinny kernel), and the
 * prologues and epilogues of decoding.
 */
export interface MatvecOptions extends MatmulOptions {
  /** RMSNorm prologue: scale weights and eps. */
  rms?: { weight: Buf; eps: number };
  /** Residual added to x first (`[M, K]`). */
  resIn?: Buf;
  /** Where workgroup 0 writes x (+ resIn) (`[M, K]`). */
  resOut?: Buf;
  /**
   * Epilogue: added to each output (laid out like `y`): the block's residual add. Skinny kernel
   * only (see {@link WebGpuBackend.usesSkinny}).
   */
  addRes?: Buf;
  /** Conv step epilogue on output columns `[lo, lo + C)` (decode, state of `M` sequences). */
  conv?: { state: Buf; weight: Buf; bias?: Buf; out: Buf; lo: number; C: number };
  /** Overrides of the kernel's shape (benchmarks sweep them; see {@link MatvecShape}). */
  shape?: Partial<MatvecShape>;
  /** Overrides of the skinny kernel's tile (see {@link SkinnyShape}). */
  tile?: Partial<SkinnyShape>;
  /** Force the skinny kernel (true) or the matrix-vector kernel (false); default by `M`. */
  skinny?: boolean;
  /**
   * Skinny kernel: split K into this many ranges (default 1), each writing its partial sums
   * `[M, yStride]` one after the other from `yOff` (no prologue or epilogue).
   */
  kSplit?: number;
}

/** Rows per team for `M` rows of x: a power of two, at most `max`, with M · rows ≤ 32 values. */
function rowsPerTeam(M: number, max: number): number {
  return Math.min(max, Math.max(1, 2 ** Math.floor(Math.log2(32 / M))));
}

/** The types of wgsl/product_io.wgsl's parameter block P, which every decode product takes. */
export const PRODUCT_PARAMS = "uuuuuuuuufuuuu";

/**
 * The values of wgsl/product_io.wgsl's parameter block P for the product of `part` of `W` with
 * options `o`; `ySplit`: elements between the partial sums of two ranges of K (the skinny
 * kernel's KSPLIT), else 0.
 */
function productParams(W: GpuMatrix, part: MatrixPart, o: MatvecOptions, ySplit = 0): number[] {
  return [
    o.M,
    part.n,
    W.K,
    W.stride,
    o.xStride,
    o.xOff,
    o.yStride,
    o.yOff,
    part.n0,
    o.rms?.eps ?? 0,
    W.K,
    o.conv?.lo ?? 0,
    o.conv?.C ?? 0,
    ySplit,
  ];
}

/**
 * The default split of a matrix-vector product (tuned on an H200 with
 * `bench/webgpu_matvec_sweep.ts`; see bench/RESULTS.md). Large matrices: 8 rows per team
 * (each load of x serves 8 rows), 2 loads in flight per row, and teams of 32 lanes for f16 rows
 * up to 4k columns, 128 beyond; f32 rows read x straight from memory and prefer 256 lanes
 * (128 beyond 4k columns), or 32 when x is staged in workgroup memory (RMSNorm prologue).
 * Small matrices keep one row per team, and widen the team (split K) until there are enough
 * workgroups to fill the GPU.
 */
export function defaultMatvecShape(
  W: GpuMatrix,
  M: number,
  rms = false,
): MatvecShape {
  const vec = W.f16 ? 8 : 4;
  if (W.N < 1024) {
    let team = 32;
    while (team < 256 && Math.ceil(W.N * team / 256) < 512 && W.K / (team * vec) >= 4) {
      team *= 2;
    }
    return { team, rpt: 1, unr: 4 };
  }
  if (rms && W.K >= 2048) {
    // Long rows: each workgroup only sums x² up front and reads (x + resIn)·normW from the
    // cache, rather than staging K floats in workgroup memory (2.8b in_proj 38.8 → 22.6 µs,
    // out_proj 33.4 → 20.1 µs f16, 96 → 27 µs f32 on the H200).
    return { team: W.K >= 4096 ? 256 : 64, rpt: rowsPerTeam(M, 8), unr: 2, stage: false };
  }
  let team = W.f16 ? (W.K >= 4096 ? 128 : 32) : rms ? 32 : W.K >= 4096 ? 128 : 256;
  while (team > 32 && team * vec > W.K) team /= 2;
  return { team, rpt: rowsPerTeam(M, W.K < 1024 ? 4 : 8), unr: 2 };
}

/** Size classes of the buffer pool: within 1/8 of a power of two, at least 4 KiB. */
function sizeClass(bytes: number): number {
  if (bytes <= 4096) return 4096;
  const e = Math.floor(Math.log2(bytes));
  const step = 2 ** Math.max(12, e - 3);
  return Math.ceil(bytes / step) * step;
}

const F32 = 4;

/** The WebGPU backend. Create it with {@link WebGpuBackend.create}. */
export class WebGpuBackend implements Backend<GpuActivation, GpuState> {
  /** Always `"webgpu"`. */
  readonly name = "webgpu" as const;
  /** The state lives on the GPU. */
  readonly hostState = false;
  /** The model's config. */
  readonly config: MambaConfig;
  /** The device context. */
  readonly ctx: GpuContext;
  /** The command recorder. */
  readonly rec: Recorder;
  /** The weights on the GPU. */
  readonly weights: GpuWeights;
  readonly #opt: Required<WebGpuOptions>;
  readonly #free = new Map<number, Buf[]>();
  readonly #plans = new Map<number, DecodePlan>();
  /** Buffers of freed states, by batch size, for {@link createState} to reuse. */
  readonly #statePool = new Map<number, { conv: Buf[]; ssm: Buf[]; bytes: number }[]>();
  #pooledStateBytes = 0;
  #disposed = false;

  private constructor(
    config: MambaConfig,
    ctx: GpuContext,
    rec: Recorder,
    weights: GpuWeights,
    opt: WebGpuOptions,
  ) {
    this.config = config;
    this.ctx = ctx;
    this.rec = rec;
    this.weights = weights;
    this.#opt = {
      f16Native: opt.f16Native ?? false,
      chunkedScanMin: opt.chunkedScanMin ?? 128,
      scanChunk: opt.scanChunk ?? 64,
      matvecMaxRows: opt.matvecMaxRows ?? 16,
      slabBytes: opt.slabBytes ?? 512 << 20,
      fuseNorm: opt.fuseNorm ?? true,
      matmulKernel: opt.matmulKernel ?? matmulKernelFromEnv() ?? "tiled",
      matmulTile: opt.matmulTile ?? matmulTileFromEnv() ?? {},
      matmulF16Math: opt.matmulF16Math ?? f16MathFromEnv(),
      matvecShape: opt.matvecShape ?? {},
      skinnyMinRows: opt.skinnyMinRows ?? (config.dModel < 2048 ? 3 : 33),
      skinnyShape: opt.skinnyShape ?? {},
      scanStepLanes: opt.scanStepLanes ?? true,
      ssdStepVec: opt.ssdStepVec ?? true,
      residualInOutProj: opt.residualInOutProj ?? true,
      skinnyRotate: opt.skinnyRotate ?? true,
      xProjSplit: opt.xProjSplit ?? 4,
      skinnyRegs: opt.skinnyRegs ?? true,
      regsShape: opt.regsShape ?? {},
      regsLmHead: opt.regsLmHead ?? false,
    };
  }

  /**
   * Uploads the weights and compiles nothing yet (pipelines are compiled on first use and shared
   * by every model of the process).
   *
   * @throws {BackendError} when WebGPU or an adapter is missing.
   */
  static async create(init: BackendInit, options: WebGpuOptions = {}): Promise<WebGpuBackend> {
    const [ctx] = await Promise.all([gpuContext(), loadShaderSources()]);
    const rec = new Recorder(ctx);
    const weights = uploadWeights(rec, init.weights);
    rec.flush();
    await ctx.device.queue.onSubmittedWorkDone();
    rec.checkErrors();
    return new WebGpuBackend(init.config, ctx, rec, weights, options);
  }

  // ---------------------------------------------------------------- buffers

  /** A pooled buffer of at least `bytes` bytes. Contents are undefined. */
  temp(bytes: number): Buf {
    const size = sizeClass(bytes);
    const list = this.#free.get(size);
    const b = list?.pop();
    return b ?? this.rec.buffer(size, "activation");
  }

  /** Returns a pooled buffer (later GPU work may reuse it; the queue keeps the order). */
  release(b: Buf): void {
    let list = this.#free.get(b.size);
    if (!list) this.#free.set(b.size, list = []);
    list.push(b);
  }

  #act(rows: number, cols: number): GpuActivation {
    return { rows, cols, buf: this.temp(rows * cols * F32) };
  }

  /** Why this backend can no longer compute (see {@link Backend.lostReason}). */
  get lostReason(): string | undefined {
    return this.rec.lostReason;
  }

  #alive(): void {
    if (this.#disposed) throw new BackendError("the webgpu backend was disposed");
    this.rec.throwIfLost();
  }

  #use(a: GpuActivation, what: string): Buf {
    this.#alive();
    if (!a.buf) throw new BackendError(`${what}: this activation was already consumed`);
    return a.buf;
  }

  #consume(a: GpuActivation): void {
    if (a.buf) this.release(a.buf);
    a.buf = null;
  }

  /** The compiled pipeline of `entry` in `wgsl/<file>.wgsl` specialised with `defs`. */
  pipeline(file: ShaderFile, entry: string, defs: ShaderDefs = {}): Kernel {
    return kernel(this.ctx.device, file, entry, defs);
  }

  // ---------------------------------------------------------------- Backend

  embed(ids: Int32Array): GpuActivation {
    this.#alive();
    const d = this.config.dModel;
    const idBuf = this.temp(ids.length * 4);
    this.rec.write(idBuf, 0, ids);
    const out = this.#act(ids.length, d);
    this.encodeEmbed(idBuf, ids.length, out.buf!);
    this.release(idBuf);
    return out;
  }

  /** Records the embedding gather of `rows` ids held in `ids` into `out` (`[rows, dModel]`). */
  encodeEmbed(ids: Buf, rows: number, out: Buf): void {
    const E = this.weights.embedding;
    const k = this.pipeline("embed", "embed", { F16: E.f16 });
    for (const part of E.parts) {
      this.rec.dispatch(
        k,
        "uuuuu",
        [rows, E.K, part.n0, part.n0 + part.n, E.stride],
        [ids, part.buf, out],
        Math.ceil(E.K / 64),
        Math.min(rows, 65535),
      );
    }
  }

  addNorm(
    hidden: GpuActivation,
    residual: GpuActivation | null,
    layer: number | "final",
  ): { normed: GpuActivation; residual: GpuActivation } {
    const cfg = this.config;
    const h = this.#use(hidden, "addNorm");
    const r = residual ? this.#use(residual, "addNorm") : null;
    const norm = layer === "final" ? this.weights.normF : this.weights.layers[layer].norm;
    const resOut = this.#act(hidden.rows, hidden.cols);
    const normed = this.#act(hidden.rows, hidden.cols);
    const k = this.pipeline("add_norm", "add_norm", { HAS_RES: !!r, LAYER_NORM: !cfg.rmsNorm });
    this.rec.dispatch(
      k,
      "uuf",
      [hidden.rows, hidden.cols, cfg.normEps],
      [h, r, norm.weight, cfg.rmsNorm ? null : norm.bias!, resOut.buf!, normed.buf!],
      Math.min(hidden.rows, 65535),
    );
    this.#consume(hidden);
    if (residual) this.#consume(residual);
    // Nothing reads the final residual: back to the pool at once (kept, it leaked a buffer a call).
    if (layer === "final") this.#consume(resOut);
    return { normed, residual: resOut };
  }

  /**
   * Records `y[m, yOff + n…] = x[m, xOff…] · Wᵀ (+ bias)` for `M` rows: the matrix-vector kernel
   * for few rows, the tiled matmul for many. Strides and offsets are in f32 elements.
   */
  linear(
    W: GpuMatrix,
    bias: Buf | undefined,
    x: Buf,
    xOff: number,
    xStride: number,
    M: number,
    y: Buf,
    yOff: number,
    yStride: number,
    softplus = false,
  ): void {
    if (M <= this.#opt.matvecMaxRows) {
      this.matvec(W, { bias, x, xOff, xStride, M, y, yOff, yStride, softplus });
      return;
    }
    this.matmul(W, { bias, x, xOff, xStride, M, y, yOff, yStride, softplus });
  }

  /** The tiled product's tile for `M` rows of x (see {@link defaultMatmulTile}). */
  matmulTile(W: GpuMatrix, M: number, over: Partial<MatmulTile> = {}): MatmulTile {
    const o = { ...this.#opt.matmulTile, ...over };
    // f16 arithmetic when asked for, and then the tile that suits it.
    const half = o.hk !== undefined
      ? o.hk > 0
      : W.f16 && this.#opt.matmulF16Math && this.ctx.shaderF16;
    return defaultMatmulTile(M, W.N, this.ctx.maxWorkgroupStorage, half, o);
  }

  /**
   * Records the product of {@link linear} for many rows of x with the tiled kernel (or
   * {@link WebGpuOptions.matmulKernel}); `kernel` and `tile` override them (benchmarks).
   */
  matmul(
    W: GpuMatrix,
    o: MatmulOptions & { kernel?: MatmulKernel; tile?: Partial<MatmulTile> },
  ): void {
    this.#alive();
    const kind = o.kernel ?? this.#opt.matmulKernel;
    encodeMatmul(this.rec, W, o, kind, this.matmulTile(W, o.M, o.tile));
  }

  /**
   * Records Mamba-2's SSD step for `batch` sequences (from `sOff` of the state): dt from
   * `zx`'s dt columns, the state update from `xbc`'s x, B and C, and y (gated by `zx`'s z
   * unless the norm gates). The vec4 form when the sizes allow it.
   */
  ssdStep(layer: number, ssm: Buf, sOff: number, batch: number, zx: Buf, xbc: Buf, y: Buf) {
    const c = this.config;
    const w = this.weights.layers[layer];
    const { dInner, convDim, nheads: H, headdim: P, dState: N, ngroups: G } = c;
    const gate = !c.gatedNorm || !c.normBeforeGate;
    const [dtMin, dtMax] = c.dtLimit;
    const vec = this.#opt.ssdStepVec && N % 4 === 0 && dInner % 4 === 0;
    const TP = vec ? 16 : 4;
    const inDim = dInner + convDim + H;
    const dtCap = Math.min(dtMax, 3e38);
    const params = [H, P, N, G, batch, inDim, dInner + convDim, convDim, dtMin, dtCap, sOff];
    this.rec.dispatch(
      this.pipeline("ssd_step", "ssd_step", { TP, GATE: gate, D_HDIM: c.dHasHdim, VEC: vec }),
      "uuuuuuuuffu",
      params,
      [zx, xbc, w.dtBias, w.A, w.D, ssm, y, vec ? xbc : null],
      Math.ceil(P / TP),
      H,
      batch,
    );
  }

  /**
   * Records Mamba-1's selective-scan step for `batch` sequences (from `sOff` of the state):
   * dt_proj + softplus over `xdbl`'s first `dtRank` columns, the state update from `u` and
   * `xdbl`'s B and C, and `y = (⟨h, C⟩ + D·u) · silu(z)` with z the second half of `xz`. With
   * `xSplit` > 1, `xdbl` holds that many partial sums of x_proj (`[xSplit, batch, row]`, see
   * {@link MatvecOptions.kSplit}), added up here.
   */
  scanStep(
    layer: number,
    ssm: Buf,
    sOff: number,
    batch: number,
    u: Buf,
    xdbl: Buf,
    xz: Buf,
    y: Buf,
    xSplit = 1,
  ): void {
    const c = this.config;
    const w = this.weights.layers[layer];
    const D = c.dInner;
    const N = c.dState;
    const lanes = this.#opt.scanStepLanes && N % 4 === 0;
    if (xSplit > 1 && !lanes) {
      throw new BackendError("scanStep: x_proj's partial sums need the four-lane scan step");
    }
    const xdw = c.dtRank + 2 * N;
    this.rec.dispatch(
      this.pipeline(
        "selective_scan",
        lanes ? "scan_step_lanes" : "scan_step",
        {
          NS: N,
          ...(xSplit > 1 ? { XS: xSplit, XDW: xdw } : {}),
          ...(lanes ? { DTL: Math.ceil(c.dtRank / 4), NSL: N / 4 } : {}),
        },
      ),
      "uuuuuuuuuuuu",
      [D, 1, batch, c.dtRank, xdw, 2 * D, D, sOff, 1, 1, w.dtProj!.stride, batch * xdw],
      [u, null, xdbl, xz, w.A, w.D, ssm, y, w.dtProj!.parts[0].buf, w.dtBias],
      Math.ceil(D / 64),
      batch,
    );
  }

  /**
   * Whether {@link matvec} should fold an RMSNorm prologue for `M` rows of `K` columns: every
   * workgroup re-reads and re-reduces the whole vector, which is cheap with several rows per
   * team (measured on an H200, f16 2.8b in_proj with the conv epilogue: 28.5 µs fused against
   * 17.8 µs + an 11 µs add + norm kernel split).
   */
  canFuseRms(K: number, M: number): boolean {
    // Unstaged, every row of x is read again per weight load: fine for a few rows, not 16.
    // The skinny kernel stages x a chunk at a time and gathers Σx² on the way: any M.
    return this.#opt.fuseNorm && K % 8 === 0 &&
      (this.usesSkinny(M) || M <= 4 || this.#rmsFits(K, M));
  }

  /**
   * Whether fused decoding of `M` sequences adds the residual in out_proj's epilogue (skinny
   * kernel, RMSNorm folded into the products; see {@link WebGpuOptions.residualInOutProj}).
   */
  residualInOutProj(M: number): boolean {
    return this.#opt.residualInOutProj && this.config.rmsNorm && this.usesSkinny(M) &&
      this.canFuseRms(this.config.dModel, M);
  }

  /**
   * Whether a skinny product of `W` with `M` rows of x may keep its weights in registers
   * ({@link WebGpuOptions.skinnyRegs}; the caller also checks the prologue and the split).
   */
  usesRegs(W: GpuMatrix, M: number): boolean {
    return this.#opt.skinnyRegs && M <= 16 && (W.N < 32768 || this.#opt.regsLmHead);
  }

  /** Whether {@link matvec} runs `M` rows of x through the skinny kernel. */
  usesSkinny(M: number): boolean {
    return M > 32 || M >= this.#opt.skinnyMinRows;
  }

  /**
   * How many parts fused Mamba-1 decoding of `M` sequences splits x_proj's K into
   * ({@link WebGpuOptions.xProjSplit}): 1 unless the batch runs the separate four-lane scan step
   * through the skinny kernel, and x_proj's weights are one part.
   */
  xProjSplit(M: number): number {
    const c = this.config;
    const n = this.#opt.xProjSplit;
    if (!Number.isSafeInteger(n) || n < 1 || n > 64) {
      throw new BackendError(`xProjSplit must be an integer from 1 to 64, got ${n}`);
    }
    const w = this.weights.layers[0]?.xProj;
    if (n === 1 || c.arch !== "mamba1" || !w || w.parts.length !== 1) return 1;
    if (!this.usesSkinny(M)) return 1;
    return this.#opt.scanStepLanes && c.dState % 4 === 0 ? n : 1;
  }

  /** Whether the RMSNorm prologue can stage x in workgroup memory. */
  #rmsFits(K: number, M: number): boolean {
    return M * K * 4 <= this.ctx.maxWorkgroupStorage - 15 * 1024;
  }

  /** The default split of a matrix-vector product: see {@link defaultMatvecShape}. */
  matvecShape(W: GpuMatrix, M: number, rms = false): MatvecShape {
    return defaultMatvecShape(W, M, rms);
  }

  /** The skinny kernel's tile for `M` rows of x (see {@link defaultSkinnyShape}). */
  skinnyShape(W: GpuMatrix, M: number, over: Partial<SkinnyShape> = {}): SkinnyShape {
    return defaultSkinnyShape(W, M, this.ctx.maxWorkgroupStorage - 1024, {
      ...this.#opt.skinnyShape,
      ...over,
    });
  }

  /**
   * Records `y = pro(x) · Wᵀ` with epilogues for a few rows of x (decode): the matrix-vector
   * kernel (see wgsl/matvec.wgsl) for up to {@link WebGpuOptions.skinnyMinRows} rows, the
   * skinny kernels (wgsl/skinny_regs.wgsl, wgsl/skinny.wgsl) for more.
   */
  matvec(W: GpuMatrix, o: MatvecOptions): void {
    if (o.skinny ?? this.usesSkinny(o.M)) {
      this.#skinny(W, o);
      return;
    }
    if ((o.kSplit ?? 1) !== 1) {
      throw new BackendError("matvec: only the skinny kernel splits K (kSplit)");
    }
    if (o.addRes) throw new BackendError("matvec: the residual epilogue needs the skinny kernel");
    const K = W.K;
    const vec = W.f16 ? 8 : 4;
    const xvec = K % vec === 0 && o.xOff % 4 === 0 && o.xStride % 4 === 0;
    if (o.rms && !xvec) throw new BackendError("matvec: RMSNorm prologue needs K % 8 == 0");
    const native = W.f16 && this.#opt.f16Native && this.ctx.shaderF16;
    const { team, rpt, unr, stage: staged } = {
      ...this.matvecShape(W, o.M, !!o.rms),
      ...this.#opt.matvecShape,
      ...o.shape,
    };
    // Staging x in workgroup memory needs it to fit.
    const stage = staged !== false && this.#rmsFits(K, o.M);
    if (o.M * rpt > 32) throw new BackendError("matvec: at most 32 values per team");
    const k = this.pipeline("matvec", "matvec", {
      MB: o.M,
      RPT: rpt,
      NV: o.M * rpt,
      NR: Math.ceil(o.M * rpt / 8),
      UNR: unr,
      WG: 256,
      TEAM: team,
      F16: W.f16 && !native,
      F16NATIVE: native,
      HALF: W.f16,
      ...this.#productIoDefs(o, xvec),
      RMS_STAGE: !!o.rms && stage,
      XS4: o.rms && stage ? o.M * K / 4 : 1,
    });
    const rows = (256 / team) * rpt;
    for (const part of W.parts) {
      const groups = Math.ceil(part.n / rows);
      const gx = Math.min(groups, 65535);
      this.rec.dispatch(
        k,
        PRODUCT_PARAMS,
        productParams(W, part, o),
        [part.buf, ...this.#productIoBindings(o)],
        gx,
        Math.ceil(groups / gx),
      );
    }
  }

  /**
   * The defines of `wgsl/product_io.wgsl` (the bindings and conv step the decode products share)
   * for a product with options `o`; `xvec`: x read as vec4s.
   */
  #productIoDefs(o: MatvecOptions, xvec: boolean): ShaderDefs {
    const dConv = this.config.dConv;
    return {
      XVEC: xvec,
      PRO_RMS: !!o.rms,
      PRO_ADD: !!o.resIn,
      RES_OUT: !!o.resOut,
      BIAS: !!o.bias,
      SOFTPLUS: !!o.softplus,
      ADD_RES: !!o.addRes,
      CONV_EPI: !!o.conv,
      CONV_BIAS: !!o.conv?.bias,
      ...(o.conv ? { CK: dConv, CKM: dConv - 1 } : {}),
    };
  }

  /** Bindings 2 to 11 of `wgsl/product_io.wgsl`, in order (`null`: left out). */
  #productIoBindings(o: MatvecOptions): (Buf | null)[] {
    const c = o.conv;
    return [
      o.x,
      o.y,
      o.bias ?? null,
      o.resIn ?? null,
      o.rms?.weight ?? null,
      o.resOut ?? null,
      c?.state ?? null,
      c?.weight ?? null,
      c?.bias ?? null,
      c?.out ?? null,
    ];
  }

  /** The skinny tiled product (see wgsl/skinny.wgsl and {@link SkinnyShape}). */
  #skinny(W: GpuMatrix, o: MatvecOptions): void {
    const K = W.K;
    const xvec = K % 4 === 0 && o.xOff % 4 === 0 && o.xStride % 4 === 0;
    if ((o.rms || o.resIn || o.resOut) && !xvec) {
      throw new BackendError("matvec: the RMSNorm prologue and residual need K % 4 == 0");
    }
    const split = o.kSplit ?? 1;
    if (!Number.isSafeInteger(split) || split < 1) {
      throw new BackendError(`matvec: kSplit must be a positive integer, got ${split}`);
    }
    if (
      split > 1 && (o.rms || o.resIn || o.resOut || o.addRes || o.conv || o.bias ||
        o.softplus || W.parts.length > 1)
    ) {
      throw new BackendError("matvec: a split K takes no prologue or epilogue and one part");
    }
    if (this.usesRegs(W, o.M) && split === 1 && !o.resIn && !o.resOut && xvec) {
      this.#skinnyRegs(W, o);
      return;
    }
    const sh = this.skinnyShape(W, o.M, o.tile);
    const { tn, tm, nt, mt, ks, bk, pf } = sh;
    const T = nt * mt;
    const name = `skinny tile ${JSON.stringify(sh)} (WebGpuOptions.skinnyShape)`;
    if (![tn, tm, nt, mt, ks, bk].every((v) => Number.isInteger(v) && v >= 1)) {
      throw new BackendError(`${name}: every field must be a positive integer`);
    }
    if (T * ks > 256) throw new BackendError(`${name}: more than 256 threads`);
    if (bk % 8 !== 0) throw new BackendError(`${name}: bk must be a multiple of 8`);
    if (pf !== 0 && pf !== 1) throw new BackendError(`${name}: pf must be 0 or 1`);
    const NV = tn * tm;
    const BM = mt * tm;
    const vec = W.f16 ? 8 : 4;
    const WR = Math.ceil(nt * tn * bk / vec / T);
    const XR = Math.ceil(BM * bk / 4 / T);
    const limit = this.ctx.maxWorkgroupStorage - BM * 4;
    const stage = skinnyStageBytes(sh) / 16;
    const rmsSum = o.rms ? Math.ceil(ks * XR * T / 4) : 0;
    // Partial sums per thread per round of the final reduction: as many as fit in what the
    // staging takes anyway (or 16 KiB).
    let RV = NV;
    while (RV > 1 && (NV % RV !== 0 || ks * T * (RV + 1) * 4 > Math.max(stage * 16, 16384))) RV--;
    const SM = Math.max(stage, rmsSum, Math.ceil(ks * T * (RV + 1) / 4));
    if (SM * 16 > limit) {
      throw new BackendError(
        `${name}: needs ${SM * 16} bytes of workgroup memory, the device has ${limit + BM * 4}`,
      );
    }
    const k = this.pipeline("skinny", "skinny", {
      TN: tn,
      TM: tm,
      NT: nt,
      MT: mt,
      KS: ks,
      BK: bk,
      NV,
      RV,
      NRR: NV / RV,
      WR,
      XR,
      SM,
      PREFETCH: pf === 1,
      ROTATE: this.#opt.skinnyRotate,
      F16: W.f16,
      ...this.#productIoDefs(o, xvec),
      KSPLIT: split > 1 ? split : false,
    });
    this.#dispatchSkinny(k, W, o, nt * tn, BM, split);
  }

  /** The register product (see wgsl/skinny_regs.wgsl and {@link RegsShape}): x 4-aligned. */
  #skinnyRegs(W: GpuMatrix, o: MatvecOptions): void {
    const sh = defaultRegsShape(W, o.M, this.#opt.regsShape);
    const { tn, nc, kl, mb, kp } = sh;
    const name = `register tile ${JSON.stringify(sh)} (WebGpuOptions.regsShape)`;
    if (![tn, nc, kl, mb, kp].every((v) => Number.isInteger(v) && v >= 1)) {
      throw new BackendError(`${name}: every field must be a positive integer`);
    }
    if (nc * kl > 256) throw new BackendError(`${name}: more than 256 threads`);
    const NV = tn * mb;
    // Floats of workgroup memory for the final sums: rounds of RV values a thread (a multiple of
    // tn dividing NV), as many as fit in 32 KiB; lanes padded to an odd stride, groups so that
    // group g's lane q starts g·tn banks on (the reads of a round then hit distinct banks).
    const budget = Math.min(this.ctx.maxWorkgroupStorage - mb * 4 - 256, 32768) / 4;
    const layout = (rv: number) => {
      const rvp = rv % 2 === 1 ? rv : rv + 1;
      const cs = kl * rvp + (((tn - kl * rvp) % 32) + 32) % 32;
      return { rv, rvp, cs, rs: Math.max(nc * cs, o.rms ? kl * (mb + 1) : 0) };
    };
    let lay = layout(tn);
    for (let rv = tn; rv <= NV; rv += tn) {
      if (NV % rv === 0 && layout(rv).rs <= budget) lay = layout(rv);
    }
    if (lay.rs > budget) {
      throw new BackendError(`${name}: needs ${lay.rs * 4} bytes of workgroup memory`);
    }
    const k = this.pipeline("skinny_regs", "skinny_regs", {
      TN: tn,
      NC: nc,
      KL: kl,
      MB: mb,
      KP: kp,
      NV,
      RV: lay.rv,
      NRR: NV / lay.rv,
      RVP: lay.rvp,
      CS: lay.cs,
      RS: lay.rs,
      F16: W.f16,
      ...this.#productIoDefs(o, true),
    });
    this.#dispatchSkinny(k, W, o, nc * tn, mb, 1);
  }

  /**
   * Dispatches a skinny kernel (both take one parameter block and the same bindings) over each
   * part of W: tiles of `bn` rows of W by `bm` rows of x, `split` ranges of K.
   */
  #dispatchSkinny(
    k: Kernel,
    W: GpuMatrix,
    o: MatvecOptions,
    bn: number,
    bm: number,
    split: number,
  ): void {
    for (const part of W.parts) {
      this.rec.dispatch(
        k,
        PRODUCT_PARAMS,
        productParams(W, part, o, o.M * o.yStride),
        [part.buf, ...this.#productIoBindings(o), o.addRes ?? null],
        Math.ceil(part.n / bn),
        Math.ceil(o.M / bm),
        split,
      );
    }
  }

  mixer(
    layer: number,
    x: GpuActivation,
    batch: number,
    seqLen: number,
    state: GpuState,
  ): GpuActivation {
    const cfg = this.config;
    const xb = this.#use(x, "mixer");
    if (state.freed) throw new BackendError("mixer: the state was freed");
    if (state.batch !== batch) {
      throw new BackendError(`mixer: state holds ${state.batch} sequences, not ${batch}`);
    }
    const rows = batch * seqLen;
    const out = this.#act(rows, cfg.dModel);
    // Widest intermediate per token, to bound one slab.
    const width = cfg.arch === "mamba1"
      ? Math.max(2 * cfg.dInner, cfg.dtRank + 2 * cfg.dState)
      : Math.max(
        cfg.dInner + cfg.convDim + cfg.nheads,
        Math.ceil(cfg.nheads * cfg.headdim * cfg.dState / this.#ssdChunk()),
      );
    const cap = Math.min(this.#opt.slabBytes, this.ctx.maxBinding);
    const maxRows = Math.max(1, Math.floor(cap / (width * F32)));
    const run = cfg.arch === "mamba1" ? this.#mamba1.bind(this) : this.#mamba2.bind(this);
    if (rows <= maxRows) {
      run(layer, xb, 0, batch, seqLen, 0, state, out.buf!);
    } else {
      // One sequence at a time, in slabs (a multiple of the SSD chunk).
      const q = this.#ssdChunk();
      const slab = Math.max(q, Math.floor(maxRows / q) * q);
      for (let b = 0; b < batch; b++) {
        for (let t0 = 0; t0 < seqLen; t0 += slab) {
          const L = Math.min(slab, seqLen - t0);
          run(layer, xb, b * seqLen + t0, 1, L, b, state, out.buf!);
        }
      }
    }
    this.#consume(x);
    return out;
  }

  #ssdChunk(): number {
    return this.config.arch === "mamba2" ? Math.min(64, this.config.chunkSize) : 1;
  }

  /** Mamba-1 over `batch` sequences of `L` tokens from input row `row0`, state index `sOff`. */
  #mamba1(
    layer: number,
    x: Buf,
    row0: number,
    batch: number,
    L: number,
    sOff: number,
    state: GpuState,
    out: Buf,
  ): void {
    const cfg = this.config;
    const w: GpuLayer = this.weights.layers[layer];
    const { dModel, dInner: D, dState: N, dtRank } = cfg;
    const R = batch * L;
    const xdw = dtRank + 2 * N;
    const xz = this.temp(R * 2 * D * F32);
    this.linear(w.inProj, w.inProjBias, x, row0 * dModel, dModel, R, xz, 0, 2 * D);
    const u = this.temp(R * D * F32);
    this.#conv(w, xz, 0, 2 * D, D, batch, L, sOff, state.conv[layer], u);
    const xdbl = this.temp(R * xdw * F32);
    this.linear(w.xProj!, undefined, u, 0, D, R, xdbl, 0, xdw);
    const y = this.temp(R * D * F32);
    const sig = "uuuuuuuuuuuu";
    const defs = { NS: N };
    const dtStride = w.dtProj!.stride;
    if (L === 1) {
      this.scanStep(layer, state.ssm[layer], sOff, batch, u, xdbl, xz, y);
    } else {
      const delta = this.temp(R * D * F32);
      this.linear(w.dtProj!, w.dtBias, xdbl, 0, xdw, R, delta, 0, D, true);
      if (L < this.#opt.chunkedScanMin) {
        const k = this.pipeline("selective_scan", "scan_seq", defs);
        this.rec.dispatch(
          k,
          sig,
          [D, L, batch, dtRank, xdw, 2 * D, D, sOff, 1, 1, dtStride, 0],
          [u, delta, xdbl, xz, w.A, w.D, state.ssm[layer], y],
          Math.ceil(D / 64),
          batch,
        );
      } else {
        const Q = this.#opt.scanChunk;
        const nC = Math.ceil(L / Q);
        const chunkH = this.temp(batch * nC * D * N * F32);
        const chunkSum = this.temp(batch * nC * D * F32);
        const p = [D, L, batch, dtRank, xdw, 2 * D, D, sOff, Q, nC, dtStride, 0];
        const k1 = this.pipeline("selective_scan", "scan_chunk_local", defs);
        this.rec.dispatch(
          k1,
          sig,
          p,
          [u, delta, xdbl, null, w.A, null, null, null, null, null, chunkH, chunkSum],
          Math.ceil(D / 64),
          nC,
          batch,
        );
        const k2 = this.pipeline("selective_scan", "scan_chunk_pass", defs);
        this.rec.dispatch(
          k2,
          sig,
          p,
          [null, null, null, null, w.A, null, state.ssm[layer], null, null, null, chunkH, chunkSum],
          Math.ceil(D * N / 64),
          batch,
        );
        const k3 = this.pipeline("selective_scan", "scan_chunk_out", defs);
        this.rec.dispatch(
          k3,
          sig,
          p,
          [u, delta, xdbl, xz, w.A, w.D, null, y, null, null, chunkH],
          Math.ceil(D / 64),
          nC,
          batch,
        );
        this.release(chunkH);
        this.release(chunkSum);
      }
      this.release(delta);
    }
    this.linear(w.outProj, w.outProjBias, y, 0, D, R, out, row0 * dModel, dModel);
    for (const b of [xz, u, xdbl, y]) this.release(b);
  }

  /** Causal conv + SiLU of `batch × L` rows of `src` (columns from `off`), updating `conv`. */
  #conv(
    w: GpuLayer,
    src: Buf,
    off: number,
    stride: number,
    C: number,
    batch: number,
    L: number,
    sOff: number,
    conv: Buf,
    out: Buf,
  ): void {
    const K = this.config.dConv;
    const defs = { BIAS: !!w.convBias };
    const p = [C, K, L, batch, stride, off, sOff];
    const binds = [src, conv, w.convWeight, w.convBias ?? null, out];
    if (L === 1) {
      this.rec.dispatch(
        this.pipeline("conv1d", "conv_step", defs),
        "uuuuuuu",
        p,
        binds,
        Math.ceil(C / 64),
        batch,
      );
      return;
    }
    this.rec.dispatch(
      this.pipeline("conv1d", "conv_seq", defs),
      "uuuuuuu",
      p,
      binds,
      Math.ceil(C / 64),
      Math.min(batch * L, 65535),
    );
    this.rec.dispatch(
      this.pipeline("conv1d", "conv_state", defs),
      "uuuuuuu",
      p,
      [src, conv],
      Math.ceil(C / 64),
      batch,
    );
  }

  /** Mamba-2 over `batch` sequences of `L` tokens from input row `row0`, state index `sOff`. */
  #mamba2(
    layer: number,
    x: Buf,
    row0: number,
    batch: number,
    L: number,
    sOff: number,
    state: GpuState,
    out: Buf,
  ): void {
    const cfg = this.config;
    const w: GpuLayer = this.weights.layers[layer];
    const { dModel, dInner, dState: N, nheads: H, headdim: P, ngroups: G, convDim } = cfg;
    const R = batch * L;
    const inDim = dInner + convDim + H;
    const zx = this.temp(R * inDim * F32);
    this.linear(w.inProj, w.inProjBias, x, row0 * dModel, dModel, R, zx, 0, inDim);
    const xbc = this.temp(R * convDim * F32);
    this.#conv(w, zx, dInner, inDim, convDim, batch, L, sOff, state.conv[layer], xbc);
    const y = this.temp(R * dInner * F32);
    const gate = !cfg.gatedNorm || !cfg.normBeforeGate;
    const [dtMin, dtMax] = cfg.dtLimit;
    const dHdim = cfg.dHasHdim;
    if (L === 1) {
      this.ssdStep(layer, state.ssm[layer], sOff, batch, zx, xbc, y);
    } else {
      const Q = this.#ssdChunk();
      const nC = Math.ceil(L / Q);
      const PT = Math.ceil(P / 16);
      const NB = Math.ceil(N / 16);
      const tiled = PT <= 8 && NB <= 8;
      const defs = {
        Q,
        EPT: Math.ceil(Q * Q / 256),
        PT: Math.min(PT, 8),
        NB: Math.min(NB, 8),
        TI_: Math.ceil(Q / 16),
        GATE: gate,
        D_HDIM: dHdim,
      };
      const dt = this.temp(R * H * F32);
      const cum = this.temp(R * H * F32);
      const cb = this.temp(batch * nC * G * Q * Q * F32);
      const chunkS = this.temp(batch * nC * H * P * N * F32);
      const sig = "uuuuuuuuuuffu";
      const p = [
        H,
        P,
        N,
        G,
        batch,
        L,
        nC,
        inDim,
        dInner + convDim,
        convDim,
        dtMin,
        Math.min(dtMax, 3e38),
        sOff,
      ];
      const S = state.ssm[layer];
      const d = (entry: string, binds: (Buf | null)[], gx: number, gy: number, gz: number) =>
        this.rec.dispatch(this.pipeline("ssd_chunked", entry, defs), sig, p, binds, gx, gy, gz);
      const _ = null;
      d("ssd_dt_cumsum", [zx, _, w.dtBias, w.A, _, _, _, dt, cum], Math.ceil(H / 64), nC, batch);
      d("ssd_chunk_cb", [_, xbc, _, _, _, _, _, _, _, cb], nC, G, batch);
      d(
        tiled ? "ssd_chunk_state2" : "ssd_chunk_state",
        [_, xbc, _, _, _, _, _, dt, cum, _, chunkS],
        nC,
        H,
        batch,
      );
      d(
        "ssd_state_pass",
        [_, _, _, _, _, S, _, _, cum, _, chunkS],
        Math.ceil(P * N / 64),
        H,
        batch,
      );
      d(
        tiled ? "ssd_chunk_out2" : "ssd_chunk_out",
        [gate ? zx : _, xbc, _, _, w.D, _, y, dt, cum, cb, chunkS],
        nC,
        H,
        batch,
      );
      for (const b of [dt, cum, cb, chunkS]) this.release(b);
    }
    let g = y;
    if (cfg.gatedNorm) {
      g = this.temp(R * dInner * F32);
      const k = this.pipeline("gated_norm", "gated_norm", { NORM_BEFORE_GATE: cfg.normBeforeGate });
      this.rec.dispatch(
        k,
        "uuufuu",
        [R, dInner, dInner / G, 1e-5, inDim, 0],
        [y, cfg.normBeforeGate ? zx : null, w.gatedNorm!, g],
        Math.min(R, 65535),
        G,
      );
    }
    this.linear(w.outProj, w.outProjBias, g, 0, dInner, R, out, row0 * dModel, dModel);
    for (const b of new Set([zx, xbc, y, g])) this.release(b);
  }

  lmHead(x: GpuActivation, batch: number, seqLen: number, lastOnly: boolean): GpuActivation {
    const cfg = this.config;
    const xb = this.#use(x, "lmHead");
    const d = cfg.dModel;
    const V = cfg.paddedVocabSize;
    const rows = lastOnly ? batch : batch * seqLen;
    if (rows * V * F32 > this.ctx.maxBinding) {
      throw new BackendError(
        `lmHead: ${rows} rows of ${V} logits exceed the device's largest binding; ` +
          `use prefill (last logits only) or shorter inputs`,
      );
    }
    const out = this.#act(rows, V);
    const xStride = lastOnly ? seqLen * d : d;
    const xOff = lastOnly ? (seqLen - 1) * d : 0;
    this.linear(this.weights.lmHead, undefined, xb, xOff, xStride, rows, out.buf!, 0, V);
    this.#consume(x);
    return out;
  }

  upload(data: Float32Array, rows: number, cols: number): GpuActivation {
    this.#alive();
    const out = this.#act(rows, cols);
    this.rec.write(out.buf!, 0, data.subarray(0, rows * cols));
    return out;
  }

  async read(a: GpuActivation): Promise<Float32Array> {
    const b = this.#use(a, "read");
    const bytes = await this.rec.read(b, 0, a.rows * a.cols * F32);
    this.#consume(a);
    return new Float32Array(bytes);
  }

  /**
   * Fused decoding (see {@link Backend.decodeTokens}): every step runs on the GPU, the next token
   * is picked there and fed back, and the ids come back a block at a time with two blocks in
   * flight. When the consumer stops early, the state has also consumed the tokens of the blocks
   * already submitted (at most two blocks more than were yielded).
   */
  decodeTokens(
    state: GpuState,
    tokens: Int32Array,
    n: number,
    options: DecodeOptions,
  ): AsyncGenerator<number[][]> {
    this.#alive();
    if (state.freed) throw new BackendError("decodeTokens: the state was freed");
    if (tokens.length !== state.batch) {
      throw new BackendError(`decodeTokens: ${tokens.length} tokens for ${state.batch} sequences`);
    }
    return this.decodePlan(state.batch).run(state, tokens, n, options);
  }

  async pickTokens(
    logits: GpuActivation,
    samplers: readonly Sampler[],
    vocab: number,
    history?: readonly (readonly number[])[],
  ): Promise<number[] | undefined> {
    const b = this.#use(logits, "pickTokens");
    const ids = await this.decodePlan(logits.rows).sampler.pick(b, samplers, vocab, history);
    if (ids) this.#consume(logits);
    return ids;
  }

  /**
   * {@link decodeTokens} picks with {@link DecodeOptions.samplers} when given: every row with
   * its own options and random stream, on the GPU.
   */
  readonly rowSamplers = true;

  /** The fused-decoding buffers for `batch` sequences (made once per batch size). */
  decodePlan(batch: number): DecodePlan {
    let plan = this.#plans.get(batch);
    if (!plan) this.#plans.set(batch, plan = new DecodePlan(this, batch));
    return plan;
  }

  /**
   * Times `reps` back-to-back matrix-vector products (`M` rows of x) with weight `W` on the GPU
   * (for benchmarks): seconds per product, from timestamp queries when the device has them,
   * else from the wall clock. The bytes moved per product are `W`'s plus x's and y's.
   */
  async timeMatvec(
    W: GpuMatrix,
    reps: number,
    M = 1,
    f16Native = this.#opt.f16Native,
  ): Promise<{ seconds: number; bytes: number }> {
    const saved = this.#opt.f16Native;
    this.#opt.f16Native = f16Native;
    try {
      return await this.#timeMatvec(W, reps, M);
    } finally {
      this.#opt.f16Native = saved;
    }
  }

  async #timeMatvec(
    W: GpuMatrix,
    reps: number,
    M: number,
  ): Promise<{ seconds: number; bytes: number }> {
    const x = this.temp(M * W.K * F32);
    const y = this.temp(M * W.N * F32);
    this.rec.clear(x);
    const run = () => {
      for (let i = 0; i < reps; i++) {
        this.matvec(W, { x, xOff: 0, xStride: W.K, M, y, yOff: 0, yStride: W.N });
      }
    };
    run(); // warm-up (pipeline compilation)
    await this.rec.read(y, 0, 4);
    let seconds: number;
    if (this.rec.startTiming(1)) {
      run();
      const [t] = await this.rec.stopTiming();
      seconds = t / reps;
    } else {
      const t0 = performance.now();
      run();
      await this.rec.read(y, 0, 4);
      seconds = (performance.now() - t0) / 1000 / reps;
    }
    this.release(x);
    this.release(y);
    let bytes = M * (W.K + W.N) * F32;
    for (const p of W.parts) bytes += p.buf.size;
    return { seconds, bytes };
  }

  // ---------------------------------------------------------------- state

  #stateSizes(batch: number): [number, number] {
    const l = stateLayout(this.config, batch);
    const n = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);
    return [n(l.convShape), n(l.ssmShape)];
  }

  createState(batch: number): GpuState {
    this.#alive();
    // A freed state's buffers, zeroed, when there are some: the bind groups and the decode
    // steps captured for them are reused too (a server makes and frees a state per request).
    const kept = this.#statePool.get(batch)?.pop();
    if (kept) {
      this.#pooledStateBytes -= kept.bytes;
      for (const b of [...kept.conv, ...kept.ssm]) this.rec.clear(b);
      return { batch, conv: kept.conv, ssm: kept.ssm, freed: false };
    }
    const [c, s] = this.#stateSizes(batch);
    const conv: Buf[] = [];
    const ssm: Buf[] = [];
    for (let i = 0; i < this.config.nLayer; i++) {
      conv.push(this.rec.buffer(c * F32, `conv_state.${i}`));
      ssm.push(this.rec.buffer(s * F32, `ssm_state.${i}`));
    }
    return { batch, conv, ssm, freed: false };
  }

  uploadState(s: GpuState, host: StateTensors): void {
    this.#alive();
    for (let i = 0; i < this.config.nLayer; i++) {
      this.rec.write(s.conv[i], 0, host.conv[i]);
      this.rec.write(s.ssm[i], 0, host.ssm[i]);
    }
  }

  async downloadState(s: GpuState): Promise<StateTensors> {
    this.#alive();
    const [c, n] = this.#stateSizes(s.batch);
    const L = this.config.nLayer;
    const per = (c + n) * F32;
    const all = this.temp(L * per);
    for (let i = 0; i < L; i++) {
      this.rec.copy(s.conv[i], 0, all, i * per, c * F32);
      this.rec.copy(s.ssm[i], 0, all, i * per + c * F32, n * F32);
    }
    const bytes = await this.rec.read(all, 0, L * per);
    this.release(all);
    const f = new Float32Array(bytes);
    const conv: Float32Array[] = [];
    const ssm: Float32Array[] = [];
    for (let i = 0; i < L; i++) {
      conv.push(f.slice(i * (c + n), i * (c + n) + c));
      ssm.push(f.slice(i * (c + n) + c, (i + 1) * (c + n)));
    }
    return { conv, ssm };
  }

  cloneState(s: GpuState): GpuState {
    const t = this.createState(s.batch);
    for (let i = 0; i < this.config.nLayer; i++) {
      this.rec.copy(s.conv[i], 0, t.conv[i], 0, s.conv[i].size);
      this.rec.copy(s.ssm[i], 0, t.ssm[i], 0, s.ssm[i].size);
    }
    return t;
  }

  freeState(s: GpuState): void {
    if (s.freed) return;
    s.freed = true;
    const bytes = [...s.conv, ...s.ssm].reduce((n, b) => n + b.size, 0);
    const list = this.#statePool.get(s.batch) ?? [];
    if (
      !this.#disposed && list.length < STATE_POOL_PER_BATCH &&
      this.#pooledStateBytes + bytes <= STATE_POOL_BYTES
    ) {
      this.#statePool.set(s.batch, list);
      list.push({ conv: s.conv, ssm: s.ssm, bytes });
      this.#pooledStateBytes += bytes;
      return;
    }
    for (const b of [...s.conv, ...s.ssm]) this.rec.destroy(b);
  }

  /** Copies rows of one state into another on the GPU (see {@link Backend.copyStateRows}). */
  copyStateRows(src: GpuState, srcRow: number, dst: GpuState, dstRow: number, count: number) {
    this.#alive();
    if (src.freed || dst.freed) throw new BackendError("copyStateRows: a state was freed");
    const [c, n] = this.#stateSizes(1);
    for (let i = 0; i < this.config.nLayer; i++) {
      const rc = c * F32;
      const rn = n * F32;
      this.rec.copy(src.conv[i], srcRow * rc, dst.conv[i], dstRow * rc, count * rc);
      this.rec.copy(src.ssm[i], srcRow * rn, dst.ssm[i], dstRow * rn, count * rn);
    }
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const p of this.#plans.values()) p.dispose();
    this.#plans.clear();
    this.rec.dispose();
    this.#free.clear();
    this.#statePool.clear();
  }
}
