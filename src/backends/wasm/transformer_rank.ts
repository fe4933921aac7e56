/**
 * One rank of the `wasm` backend for Transformer models, and how the model is split between
 * ranks — tensor parallelism in the manner of Megatron-LM, over the same shared buffer, barrier
 * and op-program scheme as the Mamba ranks (`engine.ts`, `shared.ts`):
 *
 * - rank r owns the KV heads `[g0, g1)` (and their query heads): its rows of `query_key_value`,
 *   its columns of the attention output projection, and its part of every KV cache;
 * - the MLP columns `[i0, i1)`: its rows of the up projection, its columns of the down one;
 * - the vocabulary rows `[v0, v1)` of the embedding and the LM head.
 *
 * Per layer the ranks meet once or twice, to sum the partial outputs of attention and MLP (once
 * with a parallel residual: the two partials are added locally first, and a partial is summed
 * over the ranks only where it is used otherwise); the residual stream and the norms are
 * computed on every rank. Every rank runs the same program of ops (written into the
 * shared buffer by rank 0, which runs it too) and sums the partials in rank order, so all ranks
 * hold bit-identical activations.
 *
 * @module
 */

import type { GptNeoXConfig } from "../../neox_config.ts";
import type { TransformerWeights } from "../../neox_weights.ts";
import { f16ArrayToF32, f32ArrayToF16 } from "../../half.ts";
import type { HostTensor } from "../../weights.ts";
import { Heap } from "./engine.ts";
import { F16_FINITE, f16AllFinite, type WasmKernels } from "./kernels.ts";
import { align64, Barrier } from "./shared.ts";

/** What rank `rank` of `ranks` owns. */
export interface TShard {
  /** This rank. */
  readonly rank: number;
  /** Number of ranks. */
  readonly ranks: number;
  /** KV heads `[g0, g1)`. */
  readonly g0: number;
  /** End of the KV heads. */
  readonly g1: number;
  /** MLP columns `[i0, i1)`. */
  readonly i0: number;
  /** End of the MLP columns. */
  readonly i1: number;
  /** Vocabulary rows `[v0, v1)`. */
  readonly v0: number;
  /** End of the vocabulary rows. */
  readonly v1: number;
}

function split(n: number, parts: number, p: number): [number, number] {
  return [Math.floor((n * p) / parts), Math.floor((n * (p + 1)) / parts)];
}

/** The shards of `ranks` ranks (at most one per KV head). */
export function makeTShards(cfg: GptNeoXConfig, ranks: number): TShard[] {
  const out: TShard[] = [];
  for (let rank = 0; rank < ranks; rank++) {
    const [g0, g1] = split(cfg.nKvHeads, ranks, rank);
    const [i0, i1] = split(cfg.intermediateSize, ranks, rank);
    const [v0, v1] = split(cfg.paddedVocabSize, ranks, rank);
    out.push({ rank, ranks, g0, g1, i0, i1, v0, v1 });
  }
  return out;
}

/** A matrix slice in host memory, ready to copy into a rank (f32, or f16 bit patterns). */
export interface TMatrix {
  /** Element type. */
  readonly dtype: "f32" | "f16";
  /** Rows. */
  readonly n: number;
  /** Columns. */
  readonly k: number;
  /** Values. */
  readonly data: Float32Array | Uint16Array;
}

/** One layer's slice for one rank. */
export interface TLayerSlice {
  /** Pre-attention LayerNorm weight and bias. */
  norm: [Float32Array, Float32Array];
  /** Pre-MLP LayerNorm. */
  norm2: [Float32Array, Float32Array];
  /** Local `[q | k | v]` rows of this rank's heads. */
  qkv: TMatrix;
  /** Their bias. */
  qkvBias: Float32Array;
  /** Columns of the output projection for this rank's query heads. */
  out: TMatrix;
  /** Output bias (rank 0 only: the partial sums would add it once per rank). */
  outBias: Float32Array | null;
  /** Up projection rows `[i0, i1)`. */
  fc1: TMatrix;
  /** Their bias. */
  fc1Bias: Float32Array;
  /** Down projection columns `[i0, i1)`. */
  fc2: TMatrix;
  /** Down bias (rank 0 only). */
  fc2Bias: Float32Array | null;
}

/** The embedding, LM head and final norm slice of one rank. */
export interface THeadSlice {
  /** Embedding rows `[v0, v1)`. */
  embedding: TMatrix;
  /** LM head rows `[v0, v1)`. */
  lmHead: TMatrix;
  /** Final LayerNorm. */
  normF: [Float32Array, Float32Array];
}

const f32 = (t: HostTensor): Float32Array => t.dtype === "f32" ? t.data : f16ArrayToF32(t.data);

function matrix(
  t: HostTensor,
  rows: readonly (readonly [number, number])[],
  cols: [number, number] | null,
  store: "f32" | "f16" | undefined,
): TMatrix {
  const k = t.shape[1];
  const [c0, c1] = cols ?? [0, k];
  const width = c1 - c0;
  const n = rows.reduce((a, [r0, r1]) => a + r1 - r0, 0);
  const dtype = store ?? t.dtype;
  const src = t.data;
  const dst = t.dtype === "f32" ? new Float32Array(n * width) : new Uint16Array(n * width);
  let o = 0;
  for (const [r0, r1] of rows) {
    for (let r = r0; r < r1; r++) {
      (dst as Float32Array).set((src as Float32Array).subarray(r * k + c0, r * k + c1), o);
      o += width;
    }
  }
  const data = dtype === t.dtype
    ? dst
    : dtype === "f32"
    ? f16ArrayToF32(dst as Uint16Array)
    : f32ArrayToF16(dst as Float32Array);
  return { dtype, n, k: width, data };
}

function rowsOf(t: HostTensor, ranges: readonly (readonly [number, number])[]): Float32Array {
  const v = f32(t);
  const out = new Float32Array(ranges.reduce((a, [r0, r1]) => a + r1 - r0, 0));
  let o = 0;
  for (const [r0, r1] of ranges) {
    out.set(v.subarray(r0, r1), o);
    o += r1 - r0;
  }
  return out;
}

/** Row ranges of this rank's q, k and v heads in the `[q | k | v]` projection. */
function qkvRows(cfg: GptNeoXConfig, s: TShard): [number, number][] {
  const hd = cfg.headDim;
  const group = cfg.nHeads / cfg.nKvHeads;
  const q = cfg.nHeads * hd;
  const kv = cfg.nKvHeads * hd;
  return [
    [s.g0 * group * hd, s.g1 * group * hd],
    [q + s.g0 * hd, q + s.g1 * hd],
    [q + kv + s.g0 * hd, q + kv + s.g1 * hd],
  ];
}

/** Slices layer `l` for shard `s`. */
export function sliceLayer(
  cfg: GptNeoXConfig,
  w: TransformerWeights,
  l: number,
  s: TShard,
  store: "f32" | "f16" | undefined,
): TLayerSlice {
  const L = w.layers[l];
  const hd = cfg.headDim;
  const group = cfg.nHeads / cfg.nKvHeads;
  const qkv = qkvRows(cfg, s);
  const d = cfg.dModel;
  const norm = (n: { weight: HostTensor; bias?: HostTensor }): [Float32Array, Float32Array] => [
    f32(n.weight).slice(),
    n.bias ? f32(n.bias).slice() : new Float32Array(d),
  ];
  return {
    norm: norm(L.norm),
    norm2: norm(L.norm2),
    qkv: matrix(L.qkv, qkv, null, store),
    qkvBias: L.qkvBias
      ? rowsOf(L.qkvBias, qkv)
      : new Float32Array(qkv.reduce((a, [x, y]) => a + y - x, 0)),
    out: matrix(L.out, [[0, d]], [s.g0 * group * hd, s.g1 * group * hd], store),
    outBias: s.rank === 0 && L.outBias ? f32(L.outBias).slice() : null,
    fc1: matrix(L.fc1, [[s.i0, s.i1]], null, store),
    fc1Bias: L.fc1Bias ? rowsOf(L.fc1Bias, [[s.i0, s.i1]]) : new Float32Array(s.i1 - s.i0),
    fc2: matrix(L.fc2, [[0, d]], [s.i0, s.i1], store),
    fc2Bias: s.rank === 0 && L.fc2Bias ? f32(L.fc2Bias).slice() : null,
  };
}

/** Slices the embedding, LM head and final norm for shard `s`. */
export function sliceHead(
  w: TransformerWeights,
  s: TShard,
  store: "f32" | "f16" | undefined,
): THeadSlice {
  const rows: [number, number][] = [[s.v0, s.v1]];
  const d = w.embedding.shape[1];
  return {
    embedding: matrix(w.embedding, rows, null, store),
    lmHead: matrix(w.lmHead, rows, null, store),
    normF: [
      f32(w.normF.weight).slice(),
      w.normF.bias ? f32(w.normF.bias).slice() : new Float32Array(d),
    ],
  };
}

/** The buffers a slice transfers to a worker. */
export function sliceBuffers(x: TLayerSlice | THeadSlice): ArrayBuffer[] {
  const out = new Set<ArrayBuffer>();
  const add = (v: unknown) => {
    if (v instanceof Float32Array || v instanceof Uint16Array) out.add(v.buffer as ArrayBuffer);
    else if (Array.isArray(v)) v.forEach(add);
    else if (v && typeof v === "object" && "data" in v) add((v as TMatrix).data);
  };
  Object.values(x).forEach(add);
  return [...out];
}

// ---------------------------------------------------------------------------------------------
// The shared buffer and the program

/** Float64 program parameters at byte 64 (after the control words of shared.ts). */
export const TPRM = {
  /** Number of ops. */
  NOPS: 0,
  /** Byte offset of the ops (Int32, {@link TOP_WORDS} per op). */
  OFF_OPS: 1,
  /** Byte offset of the token ids. */
  OFF_IDS: 2,
  /** Byte offset of the reduction region (2 buffers × ranks slots). */
  OFF_RED: 3,
  /** Bytes of one slot. */
  RED_SLOT: 4,
  /** Byte offset of the logits region. */
  OFF_LOGITS: 5,
  /** Byte offset of the staging region (KV upload / download, embedding rows). */
  OFF_STAGE: 6,
  /** Number of token ids. */
  NIDS: 7,
} as const;

/** Byte offset of the parameters. */
export const TPRM_OFFSET = 64;
/** Bytes before the first data region (control, parameters, error message). */
export const THEADER_BYTES = 4096;
/** Int32 words per op. */
export const TOP_WORDS = 10;

/** Op codes (arguments follow in the op's words; registers are small integers). */
export const TOP = {
  /** `(out)`: the embedding of the ids. */
  EMBED: 1,
  /** `(hidden, residual | -1, layer | -1, which, normedOut, residualOut)`. */
  ADDNORM: 2,
  /** `(x, layer, which, out)`: LayerNorm without consuming x. */
  NORM: 3,
  /** `(layer, x, out, batch, seqLen, kv, pos)`. */
  ATTN: 4,
  /** `(layer, x, out)`. */
  MLP: 5,
  /** `(a, b, out)`. */
  ADD: 6,
  /** `(x, batch, seqLen, lastOnly)`: logits into the logits region. */
  LMHEAD: 7,
  /** `(kv, batch)`. */
  KV_NEW: 8,
  /** `(kv, length, limit | -1)`. */
  KV_RESERVE: 9,
  /** `(kv)`. */
  KV_FREE: 10,
  /** `(dst, src, length)`. */
  KV_CLONE: 11,
  /** `(kv, length)`: from the staging region, `[layer][k, v][batch][nKvHeads][length][hd]`. */
  KV_UPLOAD: 12,
  /** `(kv, length)`: to the staging region, same layout. */
  KV_DOWNLOAD: 13,
  /** `(reg)`: frees a register. */
  FREE: 14,
} as const;

interface Mat {
  readonly dtype: "f32" | "f16";
  readonly ptr: number;
  readonly n: number;
  readonly k: number;
  readonly finite: boolean;
}

interface RankLayer {
  norm: [number, number];
  norm2: [number, number];
  qkv: Mat;
  qkvBias: number;
  out: Mat;
  outBias: number;
  fc1: Mat;
  fc1Bias: number;
  fc2: Mat;
  fc2Bias: number;
}

interface RankKv {
  batch: number;
  capacity: number;
  k: number[];
  v: number[];
}

/** Slots per split of a decoding step (each split is one partial of flash-decoding). */
const DECODE_SPLIT = 256;

/** One rank: its kernels, weight slice, registers and KV-cache parts; runs programs. */
export class TransformerRank {
  /** What this rank owns. */
  readonly shard: TShard;
  readonly #cfg: GptNeoXConfig;
  readonly #k: WasmKernels;
  readonly #heap: Heap;
  readonly #sab: SharedArrayBuffer;
  readonly #barrier: Barrier;
  readonly #layers: RankLayer[] = [];
  #embedding: Mat | null = null;
  #lmHead: Mat | null = null;
  #normF: [number, number] = [0, 0];
  readonly #regs = new Map<number, number>();
  readonly #kv = new Map<number, RankKv>();
  #red = 0;
  /** Local query heads, KV heads. */
  readonly #hq: number;
  readonly #hkv: number;

  /** A rank over kernels `k` and the shared buffer `sab`. */
  constructor(
    k: WasmKernels,
    cfg: GptNeoXConfig,
    shard: TShard,
    sab: SharedArrayBuffer,
    spin: number,
    block: boolean,
  ) {
    this.#k = k;
    this.#cfg = cfg;
    this.shard = shard;
    this.#sab = sab;
    this.#heap = new Heap(k);
    this.#barrier = new Barrier(sab, shard.ranks, spin, block);
    this.#hkv = shard.g1 - shard.g0;
    this.#hq = this.#hkv * (cfg.nHeads / cfg.nKvHeads);
  }

  get #f32(): Float32Array {
    return new Float32Array(this.#k.memory.buffer);
  }

  #vec(a: Float32Array | null): number {
    if (!a) return 0;
    const p = this.#heap.alloc(a.length * 4);
    this.#f32.set(a, p >>> 2);
    return p;
  }

  #mat(m: TMatrix): Mat {
    const p = this.#heap.alloc(m.data.length * (m.dtype === "f32" ? 4 : 2));
    if (m.dtype === "f32") this.#f32.set(m.data as Float32Array, p >>> 2);
    else new Uint16Array(this.#k.memory.buffer).set(m.data as Uint16Array, p >>> 1);
    const finite = m.dtype === "f32" || f16AllFinite(m.data as Uint16Array);
    return { dtype: m.dtype, ptr: p, n: m.n, k: m.k, finite };
  }

  /** Copies a layer slice into this rank's memory. */
  addLayer(s: TLayerSlice): void {
    this.#layers.push({
      norm: [this.#vec(s.norm[0]), this.#vec(s.norm[1])],
      norm2: [this.#vec(s.norm2[0]), this.#vec(s.norm2[1])],
      qkv: this.#mat(s.qkv),
      qkvBias: this.#vec(s.qkvBias),
      out: this.#mat(s.out),
      outBias: this.#vec(s.outBias),
      fc1: this.#mat(s.fc1),
      fc1Bias: this.#vec(s.fc1Bias),
      fc2: this.#mat(s.fc2),
      fc2Bias: this.#vec(s.fc2Bias),
    });
  }

  /** Copies the embedding, LM head and final norm slice. */
  setHead(h: THeadSlice): void {
    this.#embedding = this.#mat(h.embedding);
    this.#lmHead = this.#mat(h.lmHead);
    this.#normF = [this.#vec(h.normF[0]), this.#vec(h.normF[1])];
  }

  /** Bytes of weights in this rank's memory. */
  get weightBytes(): number {
    let n = 0;
    const m = (x: Mat | null) => x ? x.n * x.k * (x.dtype === "f32" ? 4 : 2) : 0;
    for (const l of this.#layers) n += m(l.qkv) + m(l.out) + m(l.fc1) + m(l.fc2);
    return n + m(this.#embedding) + (this.#lmHead === this.#embedding ? 0 : m(this.#lmHead));
  }

  // -------------------------------------------------------------------------------------------

  #reg(id: number): number {
    const p = this.#regs.get(id);
    if (p === undefined) throw new Error(`register ${id} is not live`);
    return p;
  }

  #regNew(id: number, floats: number): number {
    const p = this.#heap.alloc(floats * 4);
    this.#regs.set(id, p);
    return p;
  }

  #regFree(id: number): void {
    const p = this.#regs.get(id);
    if (p === undefined) return;
    this.#regs.delete(id);
    this.#partial.delete(id);
    this.#heap.free(p);
  }

  /**
   * Registers that hold this rank's partial sum (attention or MLP output before the sum over
   * ranks), by id, with their length. Partials of a parallel residual are added locally, so
   * the ranks meet once per layer there; any other use sums the ranks first ({@link #full}).
   */
  readonly #partial = new Map<number, number>();

  #setPartial(id: number, ptr: number, floats: number): void {
    this.#regs.set(id, ptr);
    this.#partial.set(id, floats);
  }

  /** Register `id` as the full sum over ranks (summing the partials now if it is one). */
  #full(id: number): number {
    const p = this.#reg(id);
    const floats = this.#partial.get(id);
    if (floats === undefined) return p;
    this.#partial.delete(id);
    this.#allreduce(p, p, floats);
    return p;
  }

  /** `y = x · Wᵀ (+ bias)` for `m` rows. */
  #linear(w: Mat, x: number, m: number, y: number, bias: number): void {
    const e = this.#k.exports;
    if (w.dtype === "f32") e.matmul_f32(x, w.k, w.ptr, y, w.n, m, w.n, w.k, 0, w.n, 0);
    else e.matmul_f16(x, w.k, w.ptr, y, w.n, m, w.n, w.k, 0, w.n, w.finite ? F16_FINITE : 0);
    if (bias) {
      for (let r = 0; r < m; r++) {
        this.#k.add(y + r * w.n * 4, bias, y + r * w.n * 4, w.n);
      }
    }
  }

  /** Sums `floats` values of every rank's `partial` into `dst` (in rank order, on every rank). */
  #allreduce(partial: number, dst: number, floats: number): void {
    const T = this.shard.ranks;
    if (T === 1) {
      if (partial !== dst) this.#f32.copyWithin(dst >>> 2, partial >>> 2, (partial >>> 2) + floats);
      return;
    }
    const prm = new Float64Array(this.#sab, TPRM_OFFSET, 16);
    const slot = prm[TPRM.RED_SLOT];
    const base = prm[TPRM.OFF_RED] + this.#red * T * slot;
    this.#red ^= 1;
    const shared = new Float32Array(this.#sab);
    const mem = this.#f32;
    shared.set(
      mem.subarray(partial >>> 2, (partial >>> 2) + floats),
      (base + this.shard.rank * slot) >>> 2,
    );
    this.#barrier.arrive();
    const d = dst >>> 2;
    mem.set(shared.subarray(base >>> 2, (base >>> 2) + floats), d);
    for (let r = 1; r < T; r++) {
      const o = (base + r * slot) >>> 2;
      for (let i = 0; i < floats; i++) mem[d + i] += shared[o + i];
    }
  }

  #norms(layer: number, which: number): [number, number] {
    if (layer < 0) return this.#normF;
    return which === 1 ? this.#layers[layer].norm2 : this.#layers[layer].norm;
  }

  /** Runs the program in the shared buffer. */
  run(): void {
    const prm = new Float64Array(this.#sab, TPRM_OFFSET, 16);
    const nOps = prm[TPRM.NOPS];
    const ops = new Int32Array(this.#sab, prm[TPRM.OFF_OPS], nOps * TOP_WORDS);
    for (let i = 0; i < nOps; i++) {
      this.#op(ops.subarray(i * TOP_WORDS, (i + 1) * TOP_WORDS), prm);
    }
    // Nobody leaves before everyone is done with the shared regions of this program.
    this.#barrier.arrive();
    // Activations do not outlive their program (an unused residual, say).
    for (const id of [...this.#regs.keys()]) this.#regFree(id);
  }

  #op(o: Int32Array, prm: Float64Array): void {
    const cfg = this.#cfg;
    const d = cfg.dModel;
    switch (o[0]) {
      case TOP.EMBED:
        return this.#embed(o[1], prm);
      case TOP.ADDNORM: {
        const [h, r, layer, which, nOut, rOut] = [o[1], o[2], o[3], o[4], o[5], o[6]];
        const rows = o[7];
        const hp = this.#full(h);
        let res = hp;
        if (r >= 0) {
          res = this.#full(r);
          this.#k.add(res, hp, res, rows * d);
          this.#regFree(h);
          this.#regs.delete(r);
        } else this.#regs.delete(h);
        this.#regs.set(rOut, res);
        const [w, b] = this.#norms(layer, which);
        this.#k.layernorm(res, w, b, this.#regNew(nOut, rows * d), d, cfg.normEps, rows);
        return;
      }
      case TOP.NORM: {
        const [x, layer, which, out, rows] = [o[1], o[2], o[3], o[4], o[5]];
        const [w, b] = this.#norms(layer, which);
        this.#k.layernorm(this.#full(x), w, b, this.#regNew(out, rows * d), d, cfg.normEps, rows);
        return;
      }
      case TOP.ATTN:
        return this.#attention(o[1], o[2], o[3], o[4], o[5], o[6], o[7]);
      case TOP.MLP:
        return this.#mlp(o[1], o[2], o[3], o[4]);
      case TOP.ADD: {
        const [a, b, out, rows] = [o[1], o[2], o[3], o[4]];
        // Two partials add up locally (a parallel residual's attention and MLP); otherwise
        // both are summed over the ranks first.
        const both = this.#partial.has(a) && this.#partial.has(b);
        const ap = both ? this.#reg(a) : this.#full(a);
        this.#k.add(ap, both ? this.#reg(b) : this.#full(b), ap, rows * d);
        this.#partial.delete(b);
        this.#regFree(b);
        this.#regs.delete(a);
        if (both) this.#setPartial(out, ap, this.#partial.get(a)!);
        else this.#regs.set(out, ap);
        this.#partial.delete(a);
        return;
      }
      case TOP.LMHEAD:
        return this.#lmHeadOp(o[1], o[2], o[3], o[4] === 1, prm);
      case TOP.KV_NEW:
        this.#kv.set(o[1], { batch: o[2], capacity: 0, k: [], v: [] });
        return;
      case TOP.KV_RESERVE:
        return this.#reserve(this.#kvOf(o[1]), o[2], o[3] < 0 ? Infinity : o[3]);
      case TOP.KV_FREE: {
        const kv = this.#kv.get(o[1]);
        if (!kv) return;
        for (const p of [...kv.k, ...kv.v]) this.#heap.free(p);
        this.#kv.delete(o[1]);
        return;
      }
      case TOP.KV_CLONE:
        return this.#clone(o[1], o[2], o[3]);
      case TOP.KV_UPLOAD:
      case TOP.KV_DOWNLOAD:
        return this.#transfer(this.#kvOf(o[1]), o[2], o[0] === TOP.KV_UPLOAD, prm);
      case TOP.FREE:
        return this.#regFree(o[1]);
      default:
        throw new Error(`unknown op ${o[0]}`);
    }
  }

  #kvOf(id: number): RankKv {
    const kv = this.#kv.get(id);
    if (!kv) throw new Error(`KV cache ${id} does not exist`);
    return kv;
  }

  /** Each rank copies the rows of its vocabulary slice to the stage; then all read them all. */
  #embed(out: number, prm: Float64Array): void {
    const d = this.#cfg.dModel;
    const nIds = prm[TPRM.NIDS];
    const ids = new Int32Array(this.#sab, prm[TPRM.OFF_IDS], nIds);
    const dst = this.#regNew(out, nIds * d);
    const e = this.#embedding!;
    const { v0, v1, ranks } = this.shard;
    const shared = new Float32Array(this.#sab);
    const stage = prm[TPRM.OFF_STAGE] >>> 2;
    for (let r = 0; r < nIds; r++) {
      const id = ids[r];
      if (id < v0 || id >= v1) continue;
      const to = ranks > 1 ? 0 : dst + r * d * 4;
      let src: number;
      if (e.dtype === "f32") src = e.ptr + (id - v0) * d * 4;
      else {
        src = ranks > 1 ? this.#scratch(d) : to;
        this.#k.f16ToF32(e.ptr + (id - v0) * d * 2, src, d);
      }
      const mem = this.#f32;
      if (ranks > 1) shared.set(mem.subarray(src >>> 2, (src >>> 2) + d), stage + r * d);
      else if (src !== to) mem.copyWithin(to >>> 2, src >>> 2, (src >>> 2) + d);
    }
    if (ranks > 1) {
      this.#barrier.arrive();
      this.#f32.set(shared.subarray(stage, stage + nIds * d), dst >>> 2);
      // The stage is reused by the next op only after everyone copied it.
      this.#barrier.arrive();
    }
  }

  #scratchPtr = 0;
  #scratchFloats = 0;

  #scratch(floats: number): number {
    if (floats > this.#scratchFloats) {
      if (this.#scratchPtr) this.#heap.free(this.#scratchPtr);
      this.#scratchPtr = this.#heap.alloc(floats * 4);
      this.#scratchFloats = floats;
    }
    return this.#scratchPtr;
  }

  #attention(
    layer: number,
    x: number,
    out: number,
    batch: number,
    seqLen: number,
    kvId: number,
    pos: number,
  ): void {
    const cfg = this.#cfg;
    const hd = cfg.headDim;
    const hq = this.#hq;
    const hkv = this.#hkv;
    const d = cfg.dModel;
    const rows = batch * seqLen;
    const L = this.#layers[layer];
    const kv = this.#kvOf(kvId);
    const e = this.#k.exports;
    const qDim = hq * hd;
    const kvDim = hkv * hd;
    const rowLen = qDim + 2 * kvDim;
    const xp = this.#full(x);
    const partial = this.#heap.alloc(rows * d * 4);
    if (hkv > 0) {
      const qkv = this.#heap.alloc(rows * rowLen * 4);
      this.#linear(L.qkv, xp, rows, qkv, L.qkvBias);
      if (cfg.rotaryDim > 0) {
        const half = cfg.rotaryDim / 2;
        const tab = this.#heap.alloc(2 * seqLen * half * 4);
        const f = this.#f32;
        for (let t = 0; t < seqLen; t++) {
          for (let i = 0; i < half; i++) {
            // float32 like the reference: inv_freq, then the angle.
            const invFreq = Math.fround(
              1 / Math.fround(cfg.rotaryBase ** Math.fround((2 * i) / cfg.rotaryDim)),
            );
            const angle = Math.fround((pos + t) * invFreq);
            f[(tab >>> 2) + t * half + i] = Math.cos(angle);
            f[(tab >>> 2) + (seqLen + t) * half + i] = Math.sin(angle);
          }
        }
        for (let b = 0; b < batch; b++) {
          e.rotary(
            qkv + b * seqLen * rowLen * 4,
            rowLen,
            seqLen,
            hq + hkv,
            hd,
            cfg.rotaryDim,
            tab,
            tab + seqLen * half * 4,
          );
        }
        this.#heap.free(tab);
      }
      // New keys and values into their slots.
      const cap = kv.capacity;
      const f = this.#f32;
      const kBase = kv.k[layer] >>> 2;
      const vBase = kv.v[layer] >>> 2;
      for (let b = 0; b < batch; b++) {
        for (let g = 0; g < hkv; g++) {
          const slot0 = ((b * hkv + g) * cap + pos) * hd;
          for (let t = 0; t < seqLen; t++) {
            const src = (qkv >>> 2) + (b * seqLen + t) * rowLen + qDim + g * hd;
            f.copyWithin(kBase + slot0 + t * hd, src, src + hd);
            f.copyWithin(vBase + slot0 + t * hd, src + kvDim, src + kvDim + hd);
          }
        }
      }
      const att = this.#heap.alloc(rows * qDim * 4);
      const scale = 1 / Math.sqrt(hd);
      const seqBytes = hkv * cap * hd * 4;
      const len = pos + seqLen;
      const splits = seqLen === 1 ? Math.ceil(len / DECODE_SPLIT) : 1;
      const acc = splits > 1 ? this.#heap.alloc(splits * qDim * 4) : 0;
      const ml = splits > 1 ? this.#heap.alloc(splits * hq * 2 * 4) : 0;
      for (let b = 0; b < batch; b++) {
        const q = qkv + b * seqLen * rowLen * 4;
        const kb = kv.k[layer] + b * seqBytes;
        const vb = kv.v[layer] + b * seqBytes;
        const o = att + b * seqLen * qDim * 4;
        if (splits === 1) {
          e.attn_rows(q, rowLen, o, qDim, seqLen, pos, kb, vb, cap, hq, hkv, hd, scale, 0, len, 0);
          continue;
        }
        // Decoding over a long cache: one partial per slot range, then their merge.
        for (let s = 0; s < splits; s++) {
          const j0 = s * DECODE_SPLIT;
          const j1 = Math.min(len, j0 + DECODE_SPLIT);
          const mlS = ml + s * hq * 8;
          e.attn_rows(
            q,
            rowLen,
            acc + s * qDim * 4,
            qDim,
            1,
            pos,
            kb,
            vb,
            cap,
            hq,
            hkv,
            hd,
            scale,
            j0,
            j1,
            mlS,
          );
        }
        e.attn_merge(acc, ml, splits, hq, hd, o, hd);
      }
      if (acc) this.#heap.free(acc);
      if (ml) this.#heap.free(ml);
      this.#heap.free(qkv);
      this.#linear(L.out, att, rows, partial, L.outBias);
      this.#heap.free(att);
    } else {
      this.#f32.fill(0, partial >>> 2, (partial >>> 2) + rows * d);
    }
    this.#regFree(x);
    this.#setPartial(out, partial, rows * d);
  }

  #mlp(layer: number, x: number, out: number, rows: number): void {
    const d = this.#cfg.dModel;
    const L = this.#layers[layer];
    const width = L.fc1.n;
    const xp = this.#full(x);
    const h = this.#heap.alloc(Math.max(1, rows * width) * 4);
    this.#linear(L.fc1, xp, rows, h, L.fc1Bias);
    this.#regFree(x);
    this.#k.exports.gelu(h, h, rows * width);
    const partial = this.#heap.alloc(rows * d * 4);
    this.#linear(L.fc2, h, rows, partial, L.fc2Bias);
    this.#heap.free(h);
    this.#setPartial(out, partial, rows * d);
  }

  /** Each rank writes the logits of its vocabulary slice into the shared logits region. */
  #lmHeadOp(x: number, batch: number, seqLen: number, lastOnly: boolean, prm: Float64Array) {
    const d = this.#cfg.dModel;
    const V = this.#cfg.paddedVocabSize;
    const xp = this.#full(x);
    const rows = lastOnly ? batch : batch * seqLen;
    let src = xp;
    if (lastOnly && seqLen > 1) {
      src = this.#heap.alloc(batch * d * 4);
      const f = this.#f32;
      for (let b = 0; b < batch; b++) {
        const from = (xp >>> 2) + ((b + 1) * seqLen - 1) * d;
        f.copyWithin((src >>> 2) + b * d, from, from + d);
      }
    }
    const w = this.#lmHead!;
    const y = this.#heap.alloc(Math.max(1, rows * w.n) * 4);
    if (w.n > 0) this.#linear(w, src, rows, y, 0);
    if (src !== xp) this.#heap.free(src);
    this.#regFree(x);
    const shared = new Float32Array(this.#sab);
    const base = prm[TPRM.OFF_LOGITS] >>> 2;
    const mem = this.#f32;
    for (let r = 0; r < rows; r++) {
      shared.set(
        mem.subarray((y >>> 2) + r * w.n, (y >>> 2) + (r + 1) * w.n),
        base + r * V + this.shard.v0,
      );
    }
    this.#heap.free(y);
  }

  #reserve(kv: RankKv, length: number, limit: number): void {
    if (length <= kv.capacity) return;
    const cap = Math.max(length, Math.min(Math.max(2 * kv.capacity, 16), limit));
    const hd = this.#cfg.headDim;
    const runs = kv.batch * this.#hkv;
    const grow = (old: number | undefined) => {
      const p = this.#heap.alloc(Math.max(1, runs * cap * hd) * 4);
      if (old !== undefined) {
        const f = this.#f32;
        for (let r = 0; r < runs; r++) {
          const src = (old >>> 2) + r * kv.capacity * hd;
          f.copyWithin((p >>> 2) + r * cap * hd, src, src + kv.capacity * hd);
        }
        this.#heap.free(old);
      }
      return p;
    };
    const n = this.#cfg.nLayer;
    kv.k = Array.from({ length: n }, (_, i) => grow(kv.k[i]));
    kv.v = Array.from({ length: n }, (_, i) => grow(kv.v[i]));
    kv.capacity = cap;
  }

  #clone(dst: number, src: number, length: number): void {
    const s = this.#kvOf(src);
    const c: RankKv = { batch: s.batch, capacity: 0, k: [], v: [] };
    this.#kv.set(dst, c);
    if (s.capacity === 0 || length === 0) return;
    this.#reserve(c, length, Infinity);
    const hd = this.#cfg.headDim;
    const f = this.#f32;
    const runs = s.batch * this.#hkv;
    const copy = (from: number, to: number) => {
      for (let r = 0; r < runs; r++) {
        const o = (from >>> 2) + r * s.capacity * hd;
        f.copyWithin((to >>> 2) + r * c.capacity * hd, o, o + length * hd);
      }
    };
    s.k.forEach((p, i) => copy(p, c.k[i]));
    s.v.forEach((p, i) => copy(p, c.v[i]));
  }

  /**
   * KV cache ↔ staging region, in the public layout `[layer][k, v][batch][nKvHeads][length][hd]`
   * (each rank its heads).
   */
  #transfer(kv: RankKv, length: number, up: boolean, prm: Float64Array): void {
    if (up) this.#reserve(kv, length, Infinity);
    const cfg = this.#cfg;
    const hd = cfg.headDim;
    const shared = new Float32Array(this.#sab);
    const stage = prm[TPRM.OFF_STAGE] >>> 2;
    const per = kv.batch * cfg.nKvHeads * length * hd;
    const mem = this.#f32;
    for (let l = 0; l < cfg.nLayer; l++) {
      for (let part = 0; part < 2; part++) {
        const p = part === 0 ? kv.k[l] : kv.v[l];
        for (let b = 0; b < kv.batch; b++) {
          for (let g = 0; g < this.#hkv; g++) {
            const pub = stage + (2 * l + part) * per +
              ((b * cfg.nKvHeads + this.shard.g0 + g) * length) * hd;
            const mine = (p >>> 2) + (b * this.#hkv + g) * kv.capacity * hd;
            if (up) mem.set(shared.subarray(pub, pub + length * hd), mine);
            else shared.set(mem.subarray(mine, mine + length * hd), pub);
          }
        }
      }
    }
  }
}

/** Bytes of the staging region for a KV transfer of `length` slots of `batch` sequences. */
export function kvStageBytes(cfg: GptNeoXConfig, batch: number, length: number): number {
  return align64(2 * cfg.nLayer * batch * cfg.nKvHeads * length * cfg.headDim * 4);
}
