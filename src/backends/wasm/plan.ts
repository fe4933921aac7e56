/**
 * How the `wasm` backend splits a model between its threads (ranks), tensor-parallel style, and
 * the host-side packing of each rank's weight slice.
 *
 * Every rank owns a contiguous slice `[c0, c1)` of the inner channels (`d_inner`), cut in units
 * of whole SIMD lanes and, where the model allows, whole q8 blocks (see {@link maxRanks}), so
 * that the ranks' shares differ by one unit at most. It owns everything that is per channel: its
 * rows of `in_proj` (x and z of those channels), its conv taps and conv state, the SSM state of
 * its channels, and its columns of `out_proj`; Mamba-1 also its rows of `dt_proj`, `A` and `D`
 * and its columns of `x_proj`. It also owns a slice `[v0, v1)` of the vocabulary: those rows of
 * the embedding and the LM head.
 *
 * Mamba-2 is split by channels too, not by heads, so a rank may own part of a head: it touches
 * heads `[h0, h1)` = `[⌊c0/P⌋, ⌈c1/P⌉)` and holds the dt row of `in_proj`, dt bias, `A` and
 * `D` of each of them (a head cut between two ranks has its dt row computed by both), `D` per
 * channel with `D_has_hdim`, the gated norm's weights of its channels, and *all* the B/C rows
 * and conv taps (each rank computes a share of those rows and they are exchanged: see the
 * engine). Its SSM state is `[c1 − c0, N]` per sequence and layer, the rows `[c0, c1)` of the
 * public `[nheads·P, N]` layout; the SSD scan of a head's channels is independent of its other
 * channels, so a part of a head scans exactly like the whole head's rows.
 *
 * @module
 */

import type { MambaConfig } from "../../config.ts";
import { f16ArrayToF32, f32ArrayToF16 } from "../../half.ts";
import type { HostTensor, LayerWeights, ModelWeights } from "../../weights.ts";
import type { WasmWeights } from "./options.ts";

/** What one rank owns. */
export interface Shard {
  /** This rank (0 = the calling thread). */
  readonly rank: number;
  /** Number of ranks. */
  readonly ranks: number;
  /** First inner channel. */
  readonly c0: number;
  /** End inner channel (exclusive). */
  readonly c1: number;
  /** Mamba-2: first head touched, `⌊c0 / headdim⌋` (Mamba-1: 0). */
  readonly h0: number;
  /** Mamba-2: end of the heads touched, `⌈c1 / headdim⌉` (Mamba-1: 0). */
  readonly h1: number;
  /** First vocabulary row. */
  readonly v0: number;
  /** End vocabulary row (exclusive). */
  readonly v1: number;
}

/** Splits `n` units into `parts` near-equal runs; the later parts take the remainder. */
function split(n: number, parts: number, p: number): [number, number] {
  const base = Math.floor(n / parts);
  const extra = n % parts;
  const before = p - (parts - extra);
  const start = p * base + Math.max(0, before);
  return [start, start + base + (before >= 0 ? 1 : 0)];
}

/**
 * Channels per unit of the split: 32 where it divides `n` (a whole number of q8 blocks: every
 * rank's columns of `out_proj` are then whole blocks, quantized as on one thread), else 4 (SIMD
 * lanes), else 1. `n` is what a unit must divide: `d_inner` for Mamba-1, a head (`headdim`) for
 * Mamba-2, so that there are never fewer units than heads.
 */
function unitOf(cfg: MambaConfig): number {
  const n = cfg.arch === "mamba1" ? cfg.dInner : cfg.headdim;
  return n % 32 === 0 ? 32 : n % 4 === 0 ? 4 : 1;
}

/** Most ranks a config can use (one unit of channels each). */
export function maxRanks(cfg: MambaConfig): number {
  return cfg.dInner / unitOf(cfg);
}

/** The shards of `ranks` ranks. */
export function makeShards(cfg: MambaConfig, ranks: number): Shard[] {
  const out: Shard[] = [];
  const u = unitOf(cfg);
  for (let rank = 0; rank < ranks; rank++) {
    const [a, b] = split(cfg.dInner / u, ranks, rank);
    const c0 = a * u;
    const c1 = b * u;
    let h0 = 0, h1 = 0;
    if (cfg.arch === "mamba2") {
      h0 = Math.floor(c0 / cfg.headdim);
      h1 = Math.ceil(c1 / cfg.headdim);
    }
    const [q0, q1] = split(Math.ceil(cfg.paddedVocabSize / 4), ranks, rank);
    const v0 = Math.min(q0 * 4, cfg.paddedVocabSize);
    const v1 = Math.min(q1 * 4, cfg.paddedVocabSize);
    out.push({ rank, ranks, c0, c1, h0, h1, v0, v1 });
  }
  return out;
}

/** A matrix `[n, k]` of a rank, in host memory, before it is copied into wasm memory. */
export type HostMatrix =
  | { readonly dtype: "f32"; readonly n: number; readonly k: number; readonly data: Float32Array }
  | { readonly dtype: "f16"; readonly n: number; readonly k: number; readonly data: Uint16Array };

/** A matrix of a rank with the storage wanted in wasm memory. */
export interface PackedMatrix {
  /** The values as sliced. */
  readonly host: HostMatrix;
  /** Quantize to q8 when loading. */
  readonly q8: boolean;
}

/** One layer's slice of a rank (see the module doc for what each holds). */
export interface PackedLayer {
  /** Pre-norm weight `[dModel]` (every rank). */
  readonly norm: Float32Array;
  /** Pre-norm bias (LayerNorm). */
  readonly normBias?: Float32Array;
  /** M1 `[2nc, dModel]` (x, z); M2 `[2nc + 2GN + nh, dModel]` (z, x, B, C, dt of heads touched). */
  readonly inProj: PackedMatrix;
  /** Bias rows of `inProj`. */
  readonly inProjBias?: Float32Array;
  /** Conv taps `[convChannels, dConv]`: M1 its channels; M2 its x channels then all B, C. */
  readonly convW: Float32Array;
  /** Conv bias `[convChannels]`. */
  readonly convB?: Float32Array;
  /** M1: columns of `x_proj`, `[dtRank + 2N, nc]`. */
  readonly xProj?: PackedMatrix;
  /** M1: rows of `dt_proj`, `[nc, dtRank]`. */
  readonly dtProj?: PackedMatrix;
  /** dt bias: M1 `[nc]`, M2 `[nh]` (the heads touched, `h1 − h0`). */
  readonly dtBias: Float32Array;
  /** A = −exp(A_log): M1 `[nc, N]` row-major, M2 `[nh]`. */
  readonly A: Float32Array;
  /** D: M1 `[nc]`, M2 `[nh]` (`[nc]` with `D_has_hdim`). */
  readonly D: Float32Array;
  /** M2 gated-norm scale of its channels `[nc]`. */
  readonly gatedNorm?: Float32Array;
  /** Columns of `out_proj`, `[dModel, nc]`. */
  readonly outProj: PackedMatrix;
  /** `out_proj` bias `[dModel]` (every rank; added after the reduction). */
  readonly outBias?: Float32Array;
}

/** A rank's slice of what is not in a layer: the final norm, the LM head and the embedding. */
export interface PackedHead {
  /** Final norm weight. */
  readonly normF: Float32Array;
  /** Final norm bias (LayerNorm). */
  readonly normFBias?: Float32Array;
  /** Rows `[v0, v1)` of the LM head. */
  readonly lmHead: PackedMatrix;
  /** Rows `[v0, v1)` of the embedding, or null when tied to the LM head. */
  readonly embedding: PackedMatrix | null;
}

const f32Of = (t: HostTensor): Float32Array => t.dtype === "f32" ? t.data : f16ArrayToF32(t.data);

/** Rows `[r0, r1)` of a `[n, k]` tensor; a copy when `copy`, else possibly a view. */
function rowRanges(
  t: HostTensor,
  k: number,
  ranges: readonly (readonly [number, number])[],
  copy: boolean,
): Float32Array | Uint16Array {
  const total = ranges.reduce((s, [a, b]) => s + (b - a), 0);
  if (ranges.length === 1 && !copy) {
    return t.data.subarray(ranges[0][0] * k, ranges[0][1] * k);
  }
  const out = t.dtype === "f32" ? new Float32Array(total * k) : new Uint16Array(total * k);
  let o = 0;
  for (const [a, b] of ranges) {
    (out as Float32Array).set((t.data as Float32Array).subarray(a * k, b * k), o);
    o += (b - a) * k;
  }
  return out;
}

/** Columns `[c0, c1)` of a `[n, k]` tensor (always a copy). */
function colRange(t: HostTensor, n: number, k: number, c0: number, c1: number) {
  const w = c1 - c0;
  const out = t.dtype === "f32" ? new Float32Array(n * w) : new Uint16Array(n * w);
  for (let r = 0; r < n; r++) {
    (out as Float32Array).set((t.data as Float32Array).subarray(r * k + c0, r * k + c1), r * w);
  }
  return out;
}

/** Converts a sliced matrix to the storage wanted. */
function matrix(
  data: Float32Array | Uint16Array,
  n: number,
  k: number,
  want: WasmWeights | undefined,
  quantizable: boolean,
): PackedMatrix {
  const isF32 = data instanceof Float32Array;
  if (want === "q8" && quantizable) {
    return {
      host: isF32 ? { dtype: "f32", n, k, data } : { dtype: "f16", n, k, data },
      q8: true,
    };
  }
  if (want === "f32" && !isF32) {
    return { host: { dtype: "f32", n, k, data: f16ArrayToF32(data) }, q8: false };
  }
  if (want === "f16" && isF32) {
    return { host: { dtype: "f16", n, k, data: f32ArrayToF16(data) }, q8: false };
  }
  return {
    host: isF32 ? { dtype: "f32", n, k, data } : { dtype: "f16", n, k, data: data as Uint16Array },
    q8: false,
  };
}

/** A vector slice as float32 (always a fresh array when `copy`). */
function vec(t: HostTensor, a: number, b: number, copy: boolean): Float32Array {
  if (t.dtype === "f32") return copy ? t.data.slice(a, b) : t.data.subarray(a, b);
  return f16ArrayToF32(t.data.subarray(a, b));
}

/**
 * Packs rank `s`'s slice of one layer. With `copy`, every array is a fresh copy (so that its
 * buffer can be transferred to a worker without touching the caller's weights).
 */
export function packLayer(
  cfg: MambaConfig,
  l: LayerWeights,
  s: Shard,
  want: WasmWeights | undefined,
  copy: boolean,
): PackedLayer {
  const { dModel, dInner, dState: N, dConv, dtRank, ngroups: G } = cfg;
  const nc = s.c1 - s.c0;
  const opt = (t: HostTensor | undefined, a: number, b: number) =>
    t ? vec(t, a, b, copy) : undefined;
  const norm = vec(l.norm.weight, 0, dModel, copy);
  const normBias = opt(l.norm.bias, 0, dModel);
  const outProj = matrix(colRange(l.outProj, dModel, dInner, s.c0, s.c1), dModel, nc, want, true);
  const outBias = opt(l.outProjBias, 0, dModel);
  if (cfg.arch === "mamba1") {
    const inRanges = [[s.c0, s.c1], [dInner + s.c0, dInner + s.c1]] as const;
    const A = vec(l.aLog, s.c0 * N, s.c1 * N, true).map((v) => -Math.exp(v));
    return {
      norm,
      normBias,
      inProj: matrix(rowRanges(l.inProj, dModel, inRanges, true), 2 * nc, dModel, want, true),
      inProjBias: l.inProjBias ? concat(l.inProjBias, inRanges) : undefined,
      convW: vec(l.convWeight, s.c0 * dConv, s.c1 * dConv, copy),
      convB: opt(l.convBias, s.c0, s.c1),
      xProj: matrix(
        colRange(l.xProj!, dtRank + 2 * N, dInner, s.c0, s.c1),
        dtRank + 2 * N,
        nc,
        want,
        false,
      ),
      dtProj: matrix(
        rowRanges(l.dtProjWeight!, dtRank, [[s.c0, s.c1]], copy),
        nc,
        dtRank,
        want,
        false,
      ),
      dtBias: vec(l.dtBias, s.c0, s.c1, copy),
      A,
      D: vec(l.d, s.c0, s.c1, copy),
      outProj,
      outBias,
    };
  }
  const GN = G * N;
  const inRanges = [
    [s.c0, s.c1], // z
    [dInner + s.c0, dInner + s.c1], // x
    [2 * dInner, 2 * dInner + 2 * GN], // B, C
    [2 * dInner + 2 * GN + s.h0, 2 * dInner + 2 * GN + s.h1], // dt
  ] as const;
  const convRanges = [[s.c0, s.c1], [dInner, dInner + 2 * GN]] as const;
  const convW = rowRanges(l.convWeight, dConv, convRanges, true);
  return {
    norm,
    normBias,
    inProj: matrix(
      rowRanges(l.inProj, dModel, inRanges, true),
      2 * nc + 2 * GN + (s.h1 - s.h0),
      dModel,
      want,
      true,
    ),
    inProjBias: l.inProjBias ? concat(l.inProjBias, inRanges) : undefined,
    convW: convW instanceof Float32Array ? convW : f16ArrayToF32(convW),
    convB: l.convBias ? concat(l.convBias, convRanges) : undefined,
    dtBias: vec(l.dtBias, s.h0, s.h1, copy),
    A: vec(l.aLog, s.h0, s.h1, true).map((v) => -Math.exp(v)),
    D: cfg.dHasHdim ? vec(l.d, s.c0, s.c1, copy) : vec(l.d, s.h0, s.h1, copy),
    gatedNorm: opt(l.gatedNorm, s.c0, s.c1),
    outProj,
    outBias,
  };
}

/** Packs rank `s`'s slice of the final norm, the LM head and the embedding (see {@link packLayer}). */
export function packHead(
  cfg: MambaConfig,
  w: ModelWeights,
  s: Shard,
  want: WasmWeights | undefined,
  copy: boolean,
): PackedHead {
  const dModel = cfg.dModel;
  const nv = s.v1 - s.v0;
  const vocabRows = (t: HostTensor) =>
    matrix(rowRanges(t, dModel, [[s.v0, s.v1]], copy), nv, dModel, want, true);
  const lmHead = vocabRows(w.lmHead);
  return {
    normF: vec(w.normF.weight, 0, dModel, copy),
    normFBias: w.normF.bias ? vec(w.normF.bias, 0, dModel, copy) : undefined,
    lmHead,
    embedding: w.embedding === w.lmHead ? null : vocabRows(w.embedding),
  };
}

/** Concatenated ranges of a vector, as float32. */
function concat(t: HostTensor, ranges: readonly (readonly [number, number])[]): Float32Array {
  const all = f32Of(t);
  const out = new Float32Array(ranges.reduce((s, [a, b]) => s + (b - a), 0));
  let o = 0;
  for (const [a, b] of ranges) {
    out.set(all.subarray(a, b), o);
    o += b - a;
  }
  return out;
}

/** The buffers of a packed layer or head (to transfer them to a worker). */
export function packedBuffers(p: PackedLayer | PackedHead): ArrayBuffer[] {
  const set = new Set<ArrayBuffer>();
  for (const v of Object.values(p)) {
    if (v instanceof Float32Array || v instanceof Uint16Array) set.add(v.buffer as ArrayBuffer);
    else if (v && typeof v === "object" && "host" in v) {
      set.add((v as PackedMatrix).host.data.buffer as ArrayBuffer);
    }
  }
  return [...set];
}
