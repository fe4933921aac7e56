/**
 * The prefill matrix products of the `webgpu` backend, `y = x · Wᵀ (+ bias, softplus)` for many
 * rows of x: which kernel and tile a product runs with, and recording it.
 *
 * - `tiled` (default, `wgsl/matmul_tiled.wgsl`): register micro-tiles, double-buffered
 *   workgroup memory, tile chosen per shape by {@link defaultMatmulTile}; optionally packed f16
 *   arithmetic for f16 weights ({@link MatmulTile.hk}).
 * - `matmul128` (`wgsl/matmul.wgsl`): the earlier 128×128-tile kernel, kept for comparison.
 * - `simple` (`wgsl/matmul.wgsl`): the generic kernel, for any K, offset and stride.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import type { Buf, Recorder } from "./recorder.ts";
import { kernel } from "./shaders.ts";
import type { GpuMatrix } from "./weights.ts";

/** A prefill product kernel (see the module's description). */
export type MatmulKernel = "tiled" | "matmul128" | "simple";

/**
 * The tile of `wgsl/matmul_tiled.wgsl`: a workgroup of `(bm/tm)·(bn/tn)` threads computes `bm`
 * rows of x by `bn` rows of W, each thread a `tm × tn` block, K advancing `bk` columns per
 * double-buffered stage.
 */
export interface MatmulTile {
  /** Rows of x per workgroup (a multiple of 32). */
  bm: number;
  /** Rows of W per workgroup (a multiple of 32). */
  bn: number;
  /** Rows of x per thread (4, 8, 12 or 16). */
  tm: number;
  /** Rows of W per thread (4, 8, 12 or 16). */
  tn: number;
  /** Columns of K per stage (a multiple of 4). */
  bk: number;
  /**
   * Packed f16 arithmetic (needs `shader-f16`): runs of `hk` columns of K are summed in f16,
   * each run then added into f32 (`hk` divides `bk`). 0: f32 arithmetic.
   */
  hk: number;
  /** f32 arithmetic: 1 unrolls the multiply over a stage's `bk` columns, 0 loops (default 1). */
  ur?: number;
  /**
   * Workgroup memory layout: 1 (default) per-thread rows, read at constant offsets from one
   * pointer a stage; 0 shared k-rows, an index (and bounds clamp) per read.
   */
  tr?: number;
}

/** Options of {@link encodeMatmul}; strides and offsets in f32 elements. */
export interface MatmulOptions {
  /** Bias added to each output. */
  bias?: Buf;
  /** Input rows. */
  x: Buf;
  /** Offset of x[0, 0]. */
  xOff: number;
  /** Distance between x rows. */
  xStride: number;
  /** Rows of x. */
  M: number;
  /** Output. */
  y: Buf;
  /** Offset of y[0, 0]. */
  yOff: number;
  /** Distance between y rows. */
  yStride: number;
  /** softplus on the outputs. */
  softplus?: boolean;
}

/** Workgroup memory of a tile's two stages, in bytes. */
export function matmulTileBytes(t: MatmulTile): number {
  const vec4 = t.hk ? 8 : 16;
  if (t.tr === 0) return 2 * t.bk * (t.bm + t.bn) / 4 * vec4;
  // Per-thread rows: bk·tm/4 vec4s and one of padding per thread row, likewise along n.
  const rows = (t.bm / t.tm) * (t.bk * t.tm / 4 + 1) + (t.bn / t.tn) * (t.bk * t.tn / 4 + 1);
  return 2 * rows * vec4;
}

/** Threads of a tile's workgroup. */
export function matmulTileThreads(t: MatmulTile): number {
  return (t.bm / t.tm) * (t.bn / t.tn);
}

/** Why `t` cannot run on a device with `smemBytes` of workgroup memory, or `undefined`. */
export function matmulTileProblem(t: MatmulTile, smemBytes: number): string | undefined {
  const int = (v: number) => Number.isInteger(v) && v > 0;
  if (![t.bm, t.bn, t.tm, t.tn, t.bk].every(int)) return "fields must be positive integers";
  if (t.bm % 32 || t.bn % 32) return "bm and bn must be multiples of 32";
  if (t.tm % 4 || t.tn % 4 || t.tm > 16 || t.tn > 16) return "tm and tn must be 4, 8, 12 or 16";
  if (t.bm % t.tm || t.bn % t.tn) return "tm must divide bm and tn divide bn";
  if (t.bk % 4) return "bk must be a multiple of 4";
  if (!Number.isInteger(t.hk) || t.hk < 0 || (t.hk && t.bk % t.hk)) {
    return "hk must be 0 or divide bk";
  }
  const nt = matmulTileThreads(t);
  if (nt < 32 || nt > 256) return `${nt} threads (32 to 256 allowed)`;
  const bytes = matmulTileBytes(t);
  if (bytes > smemBytes) return `${bytes} bytes of workgroup memory (${smemBytes} available)`;
  return undefined;
}

/**
 * The default tile for `M × N` outputs: 128×128 (8×8 per thread) while that gives at least 264
 * workgroups (two per SM of a 132-SM H200, so the last wave is not mostly idle), else 128×64
 * (8×4), else 64×64 (4×4), else 32×64 (4×4, 128 threads: narrow products such as Mamba-1's
 * x_proj, and short prompts); 8 columns of K per stage for 128×128 tiles, 16 for the others
 * (32 with `half`: f16 tiles take half the room), fewer until two stages fit in `smemBytes`. With `half`, f16 runs of 16 columns: each
 * run's conversion and addition into f32 costs TM·TN/4 instructions, which longer runs amortize
 * (worst logit error |got − want| / (1 + |want|) over the oracle's Mamba cases, every product
 * tiled: 1.0–1.5e-3, against 0.5–1.0e-3 with f16 weights and f32 arithmetic; lavapipe, runs
 * of 8 measured alike). Tuned on the H200 with `bench/webgpu_matmul_sweep.ts` (2026-11-29,
 * bench/RESULTS.md: 128×128 8×8 with 8 columns a stage was the best f32 tile over the 32 shapes,
 * at 0.90 of each shape's best on geometric mean, against 0.84 with 16). Fields given in `over`
 * are kept.
 */
export function defaultMatmulTile(
  M: number,
  N: number,
  smemBytes: number,
  half: boolean,
  over: Partial<MatmulTile> = {},
): MatmulTile {
  const groups = (bm: number, bn: number) => Math.ceil(M / bm) * Math.ceil(N / bn);
  const base = groups(128, 128) >= 264
    ? { bm: 128, bn: 128, tm: 8, tn: 8 }
    : groups(128, 64) >= 264
    ? { bm: 128, bn: 64, tm: 8, tn: 4 }
    : groups(64, 64) >= 264
    ? { bm: 64, bn: 64, tm: 4, tn: 4 }
    : { bm: 32, bn: 64, tm: 4, tn: 4 };
  // 128×128 tiles in f32 stage 8 columns of K (the H200 sweep's best tile for most shapes).
  const bk = half ? 32 : base.bm === 128 && base.bn === 128 ? 8 : 16;
  const t: MatmulTile = { ...base, bk, hk: half ? 16 : 0, ...over };
  if (over.bk === undefined) {
    while (t.bk > 4 && matmulTileBytes(t) > smemBytes) t.bk /= 2;
    if (t.hk > t.bk) t.hk = t.bk;
  }
  return t;
}

/** Whether `K` and the layout of x allow the vec4 kernels (`tiled`, `matmul128`). */
export function matmulVec4Ok(K: number, xOff: number, xStride: number): boolean {
  return K % 4 === 0 && xOff % 4 === 0 && xStride % 4 === 0;
}

/** An environment variable, or `undefined` when unset or not readable (no --allow-env). */
function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/** `MAMBA_WEBGPU_F16_MATH=1`: packed f16 arithmetic for products with f16 weights. */
export function f16MathFromEnv(): boolean {
  return /^(1|true|yes|on)$/i.test(env("MAMBA_WEBGPU_F16_MATH") ?? "");
}

/**
 * A kernel's name (`tiled`, `matmul128` or `simple`).
 *
 * @throws {BackendError} naming `what` for another value.
 */
export function parseMatmulKernel(text: string, what: string): MatmulKernel {
  if (text === "tiled" || text === "matmul128" || text === "simple") return text;
  throw new BackendError(`${what}: "${text}" is not one of tiled, matmul128, simple`);
}

/**
 * `MAMBA_WEBGPU_MATMUL=tiled|matmul128|simple`: the prefill product kernel (whole-model
 * benchmarks compare kernels with it).
 */
export function matmulKernelFromEnv(): MatmulKernel | undefined {
  const v = env("MAMBA_WEBGPU_MATMUL");
  return v === undefined ? undefined : parseMatmulKernel(v, "MAMBA_WEBGPU_MATMUL");
}

/**
 * Parses `bm=128,bn=64,tm=8,tn=4,bk=16,hk=0` (any subset of the fields) into a partial tile.
 *
 * @throws {BackendError} naming `what` for a field that is not one of the tile's, or not a
 * non-negative integer.
 */
export function parseMatmulTile(text: string, what: string): Partial<MatmulTile> {
  const t: Partial<MatmulTile> = {};
  for (const kv of text.split(",")) {
    const [k, v] = kv.split("=");
    const n = Number(v);
    if (
      !["bm", "bn", "tm", "tn", "bk", "hk", "ur", "tr"].includes(k) || !Number.isInteger(n) || n < 0
    ) {
      throw new BackendError(
        `${what}: bad field "${kv}" (bm, bn, tm, tn, bk, hk, ur, tr = integers)`,
      );
    }
    t[k as keyof MatmulTile] = n;
  }
  return t;
}

/** `MAMBA_WEBGPU_MATMUL_TILE=bm=128,bn=64,…`: overrides of the tiled product's tile. */
export function matmulTileFromEnv(): Partial<MatmulTile> | undefined {
  const v = env("MAMBA_WEBGPU_MATMUL_TILE");
  return v === undefined ? undefined : parseMatmulTile(v, "MAMBA_WEBGPU_MATMUL_TILE");
}

/**
 * Records `y[m, yOff + n…] = x[m, xOff…] · Wᵀ (+ bias)` for `o.M` rows with `kernel` (tile
 * `tile` for `tiled`), over every row range of W. Falls back to `simple` when K or x's layout
 * rules out the vec4 kernels, or (for `matmul128`) the product is smaller than one tile.
 *
 * @throws {BackendError} when the tile cannot run (see {@link matmulTileProblem}).
 */
export function encodeMatmul(
  rec: Recorder,
  W: GpuMatrix,
  o: MatmulOptions,
  kind: MatmulKernel,
  tile: MatmulTile,
): void {
  const K = W.K;
  const vec4 = matmulVec4Ok(K, o.xOff, o.xStride);
  const common = { F16: W.f16, BIAS: !!o.bias, SOFTPLUS: !!o.softplus };
  const params = (part: { n: number; n0: number }) => [
    o.M,
    part.n,
    K,
    W.stride,
    o.xStride,
    o.xOff,
    o.yStride,
    o.yOff,
    part.n0,
  ];
  if (kind === "tiled" && vec4) {
    const why = matmulTileProblem(tile, rec.ctx.maxWorkgroupStorage);
    if (why) throw new BackendError(`matmul tile ${JSON.stringify(tile)}: ${why}`);
    if (tile.hk && !rec.ctx.shaderF16) {
      throw new BackendError("matmul tile: f16 arithmetic (hk > 0) needs shader-f16");
    }
    const nt = matmulTileThreads(tile);
    const k = kernel(rec.device, "matmul_tiled", "matmul_tiled", {
      BM: tile.bm,
      BN: tile.bn,
      TMV: tile.tm / 4,
      TNV: tile.tn / 4,
      BK: tile.bk,
      NT: nt,
      LOADS: Math.ceil((tile.bm + tile.bn) * tile.bk / 16 / nt),
      KLOOP: tile.ur === 0,
      TR: tile.tr !== 0,
      HALF: tile.hk > 0,
      HK: tile.hk,
      KCH: tile.hk ? tile.bk / tile.hk : 0,
      ...common,
    });
    for (const part of W.parts) {
      rec.dispatch(
        k,
        "uuuuuuuuu",
        params(part),
        [part.buf, o.x, o.y, o.bias ?? null],
        Math.ceil(part.n / tile.bn),
        Math.ceil(o.M / tile.bm),
      );
    }
    return;
  }
  if (kind === "matmul128" && vec4 && o.M >= 128 && W.N >= 128) {
    const k = kernel(rec.device, "matmul", "matmul128", { TM: 1, TN: 1, BK: 1, ...common });
    for (const part of W.parts) {
      rec.dispatch(
        k,
        "uuuuuuuuu",
        params(part),
        [null, null, o.y, o.bias ?? null, part.buf, o.x],
        Math.ceil(part.n / 128),
        Math.ceil(o.M / 128),
      );
    }
    return;
  }
  const big = o.M >= 128 && W.N >= 128;
  const TM = big ? 8 : 4;
  const k = kernel(rec.device, "matmul", "matmul", { TM, TN: TM, BK: big ? 8 : 16, ...common });
  const BM = 16 * TM;
  for (const part of W.parts) {
    rec.dispatch(
      k,
      "uuuuuuuuu",
      params(part),
      [part.buf, o.x, o.y, o.bias ?? null],
      Math.ceil(part.n / BM),
      Math.ceil(o.M / BM),
    );
  }
}
