/**
 * One rank of the `wasm` backend: a kernel instance (its own wasm memory) holding the rank's
 * weight slice and state slices, and the interpreter of the programs rank 0 writes into the
 * shared buffer. Rank 0 runs it on the calling thread, the other ranks in workers; all run the
 * same op list and meet only at the reductions:
 *
 * - Mamba-1, per layer: the `x_proj` partial sums (each rank multiplies its channels' columns),
 *   and the `out_proj` partial sums;
 * - Mamba-2, per layer: the gated RMSNorm's sums of squares, and the `out_proj` partial sums;
 * - the embedding (each rank writes the rows of the ids it owns) once per chunk.
 *
 * A reduction writes the rank's partial into its slot of the shared buffer, waits at the
 * barrier, and sums the slots of all ranks in rank order (so every rank holds bit-identical
 * results). Two reduction buffers alternate, so a slot is never rewritten before every rank has
 * read it. The residual stream and the norms are computed redundantly on every rank.
 *
 * Long sequences run in chunks of tokens through all layers (the state carries over), which
 * bounds the activations' memory.
 *
 * @module
 */

import type { MambaConfig } from "../../config.ts";
import {
  F16_FINITE,
  f16AllFinite,
  SCAN_INTERLEAVED,
  SCAN_SOFTPLUS,
  type WasmKernels,
} from "./kernels.ts";
import type { PackedHead, PackedLayer, PackedMatrix, Shard } from "./plan.ts";
import {
  align64,
  Barrier,
  OP,
  OP_WORDS,
  PRM,
  PRM_OFFSET,
  PROF,
  PROF_OFFSET,
  PROF_SLOTS,
} from "./shared.ts";

const Q8_BLOCK = 32;

/** A matrix `[n, k]` in wasm memory. */
interface Mat {
  readonly dtype: "f32" | "f16" | "q8";
  /** Weights (f32, u16 or i8). */
  readonly ptr: number;
  /** q8 scales `[n, ceil(k/32)]`. */
  readonly scales: number;
  readonly n: number;
  readonly k: number;
  /** Bytes of weights read per use. */
  readonly bytes: number;
  /** f16: no weight is ±inf or NaN, so the kernels may use their cheaper widening. */
  readonly finite?: boolean;
}

interface Layer {
  norm: number;
  normBias: number;
  inProj: Mat;
  inProjBias: number;
  convW: number;
  convB: number;
  xProj: Mat | null;
  dtProj: Mat | null;
  dtBias: number;
  A: number;
  D: number;
  gatedNorm: number;
  outProj: Mat;
  outBias: number;
}

interface RankState {
  ptr: number;
  bytes: number;
  batch: number;
}

/**
 * A first-fit free list over the kernel's bump allocator, so that states and scratch buffers can
 * be freed and reused.
 */
export class Heap {
  readonly #k: WasmKernels;
  readonly #sizes = new Map<number, number>();
  #free: { ptr: number; bytes: number }[] = [];

  constructor(k: WasmKernels) {
    this.#k = k;
  }

  alloc(bytes: number): number {
    const n = Math.max(64, align64(bytes));
    // The kernel allocator takes a u32: larger sizes would wrap.
    if (n >= 2 ** 32) throw new RangeError(`mamba wasm: cannot allocate ${bytes} bytes`);
    for (let i = 0; i < this.#free.length; i++) {
      const f = this.#free[i];
      if (f.bytes >= n) {
        const ptr = f.ptr;
        if (f.bytes === n) this.#free.splice(i, 1);
        else {
          f.ptr += n;
          f.bytes -= n;
        }
        this.#sizes.set(ptr, n);
        return ptr;
      }
    }
    // Addresses past 2 GiB come back from wasm as negative i32: read them unsigned.
    const ptr = this.#k.alloc(n) >>> 0;
    this.#sizes.set(ptr, n);
    return ptr;
  }

  free(ptr: number): void {
    const n = this.#sizes.get(ptr);
    if (n === undefined) return;
    this.#sizes.delete(ptr);
    this.#free.push({ ptr, bytes: n });
    this.#free.sort((a, b) => a.ptr - b.ptr);
    const merged: { ptr: number; bytes: number }[] = [];
    for (const f of this.#free) {
      const last = merged[merged.length - 1];
      if (last && last.ptr + last.bytes === f.ptr) last.bytes += f.bytes;
      else merged.push({ ...f });
    }
    this.#free = merged;
  }
}

/** Per-rank sizes and buffers of the current chunk capacity. */
interface Scratch {
  /** Rows the buffers hold. */
  rows: number;
  /** Logit rows the LM head buffer holds. */
  lmRows: number;
  /** Mixer buffers (see the mixers). */
  a: number;
  b: number;
  c: number;
  d: number;
  e: number;
  /** Partial sums (local) and the reduction's temporary. */
  part: number;
  tmp: number;
  /** LM head output `[lmRows, nv]`. */
  logits: number;
}

/**
 * Sums over the ranks of at least this many floats are split between the ranks (see
 * `RankEngine.#allreduce`): prefill's [rows, d_model] partials, not decode's few rows.
 */
export const SPLIT_SUM_MIN = 16384;

/** Runs one rank's share of the programs. */
export class RankEngine {
  readonly #k: WasmKernels;
  readonly #cfg: MambaConfig;
  readonly #s: Shard;
  readonly #sab: SharedArrayBuffer;
  readonly #barrier: Barrier;
  readonly #heap: Heap;
  readonly #layers: Layer[] = [];
  #normF = 0;
  #normFBias = 0;
  #lm: Mat | null = null;
  #emb: Mat | null = null;
  readonly #states = new Map<number, RankState>();
  /** Channels of this rank. */
  readonly #nc: number;
  /** M2 heads this rank touches (wholly or in part). */
  readonly #nh: number;
  /** Conv channels of this rank (M2: its x channels + all of B and C). */
  readonly #convCh: number;
  /** Floats of one sequence's SSM state slice. */
  readonly #ssmSz: number;
  /** Mamba-1 state and A stored 4-channel-interleaved. */
  readonly #inter: boolean;
  /** Row-major `[nc, N]` temporary for (de)interleaving a Mamba-1 state. */
  readonly #interTmp: number;
  /** A row of f32 for f16 → f32 embedding rows. */
  readonly #rowTmp: number;
  #sc: Scratch | null = null;
  /** Free activation buffers (`rows × dModel`) and the registers' buffers. */
  #pool: number[] = [];
  #regs = new Map<number, number>();
  #redUse = 0;
  #mem: Float32Array = new Float32Array(0);
  #pickVals = new Float32Array(0);
  #pickIdx = new Int32Array(0);
  /** Length-tracking views of the shared buffer (they follow its growth). */
  readonly #shF32: Float32Array;
  readonly #shI32: Int32Array;
  readonly #prm: Float64Array;
  /** This rank's profile slots while profiling, else null. */
  #pf: Float64Array | null = null;
  #last = 0;
  /** Bytes of weights this rank reads per decoded token (for the benchmark's accounting). */
  weightBytesPerToken = 0;
  /** Rank 0 only: where READ copies a register (rows in global order). */
  readOut: Float32Array | null = null;
  /**
   * Rank 0 only, for sampled fused decoding: picks the next token of each sequence from the
   * logits `[batch, paddedVocab]` into `out`.
   */
  sampleHook: ((logits: Float32Array, out: Int32Array) => void) | null = null;

  /**
   * An engine over kernel instance `k` for rank `shard`; the weights come next, one
   * {@link RankEngine.addLayer} per layer in order, then {@link RankEngine.setHead}.
   */
  constructor(
    k: WasmKernels,
    cfg: MambaConfig,
    shard: Shard,
    sab: SharedArrayBuffer,
    spin: number,
    block: boolean,
  ) {
    this.#k = k;
    this.#cfg = cfg;
    this.#s = shard;
    this.#sab = sab;
    this.#shF32 = new Float32Array(sab);
    this.#shI32 = new Int32Array(sab);
    this.#prm = new Float64Array(sab, PRM_OFFSET, 16);
    this.#barrier = new Barrier(sab, shard.ranks, spin, block);
    this.#heap = new Heap(k);
    this.#nc = shard.c1 - shard.c0;
    this.#nh = shard.h1 - shard.h0;
    const N = cfg.dState;
    this.#inter = cfg.arch === "mamba1" && N <= 256;
    if (cfg.arch === "mamba1") {
      this.#convCh = this.#nc;
      this.#ssmSz = (this.#inter ? Math.ceil(this.#nc / 4) * 4 : this.#nc) * N;
    } else {
      this.#convCh = this.#nc + 2 * cfg.ngroups * N;
      this.#ssmSz = this.#nc * N;
    }
    this.#interTmp = this.#inter ? this.#heap.alloc(Math.max(1, this.#nc * N) * 4) : 0;
    this.#rowTmp = this.#heap.alloc(cfg.dModel * 4);
  }

  #mat(m: PackedMatrix): Mat {
    const r = this.#upMat(m);
    this.weightBytesPerToken += r.bytes;
    return r;
  }

  #vec(a: Float32Array | undefined): number {
    if (!a) return 0;
    this.weightBytesPerToken += a.length * 4;
    return this.#upVec(a);
  }

  /** Copies the next layer's slice into wasm memory. */
  addLayer(l: PackedLayer): void {
    const layer: Layer = {
      norm: this.#vec(l.norm),
      normBias: this.#vec(l.normBias),
      inProj: this.#mat(l.inProj),
      inProjBias: this.#vec(l.inProjBias),
      convW: this.#vec(l.convW),
      convB: this.#vec(l.convB),
      xProj: l.xProj ? this.#mat(l.xProj) : null,
      dtProj: l.dtProj ? this.#mat(l.dtProj) : null,
      dtBias: this.#vec(l.dtBias),
      A: 0,
      D: this.#vec(l.D),
      gatedNorm: this.#vec(l.gatedNorm),
      outProj: this.#mat(l.outProj),
      outBias: this.#vec(l.outBias),
    };
    if (this.#inter) {
      const nc = this.#nc;
      const N = this.#cfg.dState;
      layer.A = this.#heap.alloc(Math.ceil(nc / 4) * 4 * N * 4);
      const tmp = this.#upVec(l.A);
      this.#k.interleave4(tmp, layer.A, nc, N);
      this.#heap.free(tmp);
      this.weightBytesPerToken += l.A.length * 4;
    } else {
      layer.A = this.#vec(l.A);
    }
    this.#layers.push(layer);
  }

  /** Copies the final norm, LM head and embedding slices (after the last layer). */
  setHead(h: PackedHead): void {
    if (this.#layers.length !== this.#cfg.nLayer) {
      throw new Error(
        `wasm backend: ${this.#layers.length} layers loaded, ${this.#cfg.nLayer} expected`,
      );
    }
    this.#normF = this.#vec(h.normF);
    this.#normFBias = this.#vec(h.normFBias);
    this.#lm = this.#mat(h.lmHead);
    this.#emb = h.embedding ? this.#upMat(h.embedding) : this.#lm;
  }

  // ------------------------------------------------------------------------------------------
  // memory

  /** A view of the whole wasm memory (re-made only when the memory grew). */
  get #f32(): Float32Array {
    const buf = this.#k.memory.buffer;
    if (this.#mem.buffer !== buf) this.#mem = new Float32Array(buf);
    return this.#mem;
  }

  #upVec(a: Float32Array): number {
    const p = this.#heap.alloc(a.length * 4);
    this.#f32.set(a, p >>> 2);
    return p;
  }

  #upMat(m: PackedMatrix): Mat {
    const { n, k } = m.host;
    if (!m.q8) {
      if (m.host.dtype === "f32") {
        return { dtype: "f32", ptr: this.#upVec(m.host.data), scales: 0, n, k, bytes: n * k * 4 };
      }
      const p = this.#heap.alloc(n * k * 2);
      new Uint16Array(this.#k.memory.buffer).set(m.host.data, p >>> 1);
      const finite = f16AllFinite(m.host.data);
      return { dtype: "f16", ptr: p, scales: 0, n, k, bytes: n * k * 2, finite };
    }
    const nb = Math.ceil(k / Q8_BLOCK);
    const q = this.#heap.alloc(n * k);
    const scales = this.#heap.alloc(n * nb * 4);
    // Quantize row blocks through a bounded temporary (at the top of the bump heap).
    const rowsPer = Math.max(1, Math.floor((16 << 20) / (k * 4)));
    const mark = this.#k.mark();
    const tmp = this.#k.alloc(Math.min(n, rowsPer) * k * 4) >>> 0;
    const tmp16 = m.host.dtype === "f16" ? this.#k.alloc(Math.min(n, rowsPer) * k * 2) >>> 0 : 0;
    for (let r0 = 0; r0 < n; r0 += rowsPer) {
      const r1 = Math.min(n, r0 + rowsPer);
      const src = m.host.data.subarray(r0 * k, r1 * k);
      if (m.host.dtype === "f32") this.#f32.set(src as Float32Array, tmp >>> 2);
      else {
        new Uint16Array(this.#k.memory.buffer).set(src as Uint16Array, tmp16 >>> 1);
        this.#k.f16ToF32(tmp16, tmp, (r1 - r0) * k);
      }
      this.#k.quantizeQ8(tmp, q + r0 * k, scales + r0 * nb * 4, r1 - r0, k);
    }
    this.#k.reset(mark);
    return { dtype: "q8", ptr: q, scales, n, k, bytes: n * k + n * nb * 4 };
  }

  /** `Y[m, n] (+)= X[m, k] · Wᵀ` (all rows of W). */
  #matmul(
    w: Mat,
    x: number,
    ldx: number,
    y: number,
    ldy: number,
    m: number,
    acc = false,
    r0 = 0,
    r1 = w.n,
  ) {
    const e = this.#k.exports;
    const a = acc ? 1 : 0;
    if (r1 <= r0) return;
    if (w.dtype === "f32") e.matmul_f32(x, ldx, w.ptr, y, ldy, m, w.n, w.k, r0, r1, a);
    else if (w.dtype === "f16") {
      const flags = a | (w.finite ? F16_FINITE : 0);
      e.matmul_f16(x, ldx, w.ptr, y, ldy, m, w.n, w.k, r0, r1, flags);
    } else e.matmul_q8(x, ldx, w.ptr, w.scales, y, ldy, m, w.n, w.k, r0, r1, a);
  }

  /**
   * Mamba-2 `in_proj` on several ranks: every rank needs all of B and C (their rows are in every
   * rank's slice), but computing them all on each rank repeats 2·G·N rows of the product (256 of
   * 1804 per rank for mamba2-130m on two). Each rank computes its share of those rows and the
   * shares are swapped through the shared buffer. That is one more meeting of the ranks per
   * layer, which pays even for one token: decoding mamba2-130m on two threads measured 1.04×
   * (f16), 1.04–1.06× (q8), 1.05× (f32) against computing them all.
   */
  #inProjShared(
    w: Mat,
    x: number,
    out: number,
    Dl: number,
    rows: number,
    bc0: number,
    bc1: number,
  ) {
    const T = this.#s.ranks;
    const d = this.#cfg.dModel;
    const n = bc1 - bc0;
    const part = (r: number) => bc0 + Math.floor((r * n) / T);
    const slot = this.#prm[PRM.RED_SLOT];
    if (T === 1 || Math.ceil(n / T) * rows * 4 > slot) {
      this.#matmul(w, x, d, out, Dl, rows);
      return;
    }
    const me = this.#s.rank;
    const p0 = part(me), p1 = part(me + 1);
    this.#matmul(w, x, d, out, Dl, rows, false, 0, bc0);
    this.#matmul(w, x, d, out, Dl, rows, false, p0, p1);
    this.#matmul(w, x, d, out, Dl, rows, false, bc1, w.n);
    this.#lap(PROF.inProj);
    const base = this.#nextRed();
    const shared = this.#shF32;
    let mem = this.#f32;
    const mine = (base + me * slot) >>> 2;
    const wdt = p1 - p0;
    for (let r = 0; r < rows; r++) {
      const src = (out >>> 2) + r * Dl + p0;
      shared.set(mem.subarray(src, src + wdt), mine + r * wdt);
    }
    this.#lap(PROF.reduce);
    this.#barrier.arrive();
    this.#lap(PROF.wait);
    mem = this.#f32;
    for (let o = 0; o < T; o++) {
      if (o === me) continue;
      const q0 = part(o), q1 = part(o + 1), wo = q1 - q0;
      const theirs = (base + o * slot) >>> 2;
      for (let r = 0; r < rows; r++) {
        const dst = (out >>> 2) + r * Dl + q0;
        mem.set(shared.subarray(theirs + r * wo, theirs + (r + 1) * wo), dst);
      }
    }
    this.#lap(PROF.reduce);
  }

  /** Adds the vector `b` (`n`) to each of `m` rows of `y` (stride `ld`). */
  #addRows(y: number, ld: number, b: number, m: number, n: number) {
    for (let r = 0; r < m; r++) this.#k.add(y + r * ld * 4, b, y + r * ld * 4, n);
  }

  #ensureScratch(rows: number, lmRows: number): Scratch {
    const sc = this.#sc;
    if (sc && sc.rows >= rows && sc.lmRows >= lmRows) return sc;
    const R = Math.max(rows, sc?.rows ?? 0);
    const LR = Math.max(lmRows, sc?.lmRows ?? 0);
    if (sc) {
      for (const p of [sc.a, sc.b, sc.c, sc.d, sc.e, sc.part, sc.tmp, sc.logits]) {
        this.#heap.free(p);
      }
      for (const p of this.#pool) this.#heap.free(p);
      for (const p of this.#regs.values()) this.#heap.free(p);
      this.#pool = [];
      this.#regs.clear();
    }
    const cfg = this.#cfg;
    const nc = Math.max(this.#nc, 1);
    const N = cfg.dState;
    const GN = cfg.ngroups * N;
    const xd = cfg.dtRank + 2 * N;
    const f = (n: number) => this.#heap.alloc(Math.max(1, n) * 4);
    // A row of out_proj's partial and the gated norm's sum of squares after it (#gatedOut).
    const wide = Math.max(cfg.dModel + 1, xd, cfg.ngroups);
    const next: Scratch = cfg.arch === "mamba1"
      ? {
        rows: R,
        lmRows: LR,
        a: f(R * 2 * nc), // xz
        b: f(R * nc), // u
        c: f(R * xd), // x_dbl
        d: f(R * nc), // delta
        e: f(R * nc), // y
        part: f(R * wide),
        tmp: f(R * wide),
        logits: f(LR * (this.#s.v1 - this.#s.v0)),
      }
      : {
        rows: R,
        lmRows: LR,
        a: f(R * (2 * nc + 2 * GN + this.#nh)), // zxbcdt
        b: f(R * (nc + 2 * GN)), // xBC after the conv
        c: f(R * this.#nh), // clamped dt
        d: f(R * cfg.ngroups), // sums of squares
        e: f(R * nc), // y
        part: f(R * wide),
        tmp: f(R * wide),
        logits: f(LR * (this.#s.v1 - this.#s.v0)),
      };
    this.#sc = next;
    return next;
  }

  #regAlloc(reg: number): number {
    const sc = this.#sc!;
    const p = this.#pool.pop() ?? this.#heap.alloc(sc.rows * this.#cfg.dModel * 4);
    this.#regs.set(reg, p);
    return p;
  }

  #regTake(reg: number): number {
    const p = this.#regs.get(reg);
    if (p === undefined) throw new Error(`wasm backend: register ${reg} is not live`);
    this.#regs.delete(reg);
    return p;
  }

  #release(p: number): void {
    this.#pool.push(p);
  }

  /** While profiling: adds the time since the previous lap to slot `cat`. */
  #lap(cat: number): void {
    const pf = this.#pf;
    if (!pf) return;
    const t = performance.now();
    pf[cat] += t - this.#last;
    this.#last = t;
  }

  // ------------------------------------------------------------------------------------------
  // reductions through the shared buffer

  /** Byte offset of the next reduction buffer (rank r's slot at `+ r · RED_SLOT`). */
  #nextRed(): number {
    const prm = this.#prm;
    const buf = this.#redUse++ & 1;
    return prm[PRM.OFF_RED] + buf * this.#s.ranks * prm[PRM.RED_SLOT];
  }

  /**
   * `dst = Σ_ranks partial` (`count` floats), summed in rank order (the same bits on every rank
   * and at every size). Small sums (decode) are done whole by every rank after one barrier.
   * Large ones (prefill) are split: each rank sums its share of the columns over all the slots
   * into slot 0, and after a second barrier every rank copies slot 0. Every rank summing
   * everything would read T slots each, T² slot reads in all: at 16 threads, 200 MB per layer
   * and 256-token chunk of mamba2-130m.
   */
  #allreduce(partial: number, dst: number, count: number): void {
    const T = this.#s.ranks;
    if (T === 1) {
      if (partial !== dst) this.#f32.copyWithin(dst >>> 2, partial >>> 2, (partial >>> 2) + count);
      return;
    }
    const slot = this.#prm[PRM.RED_SLOT];
    const base = this.#nextRed();
    const shared = this.#shF32;
    let mem = this.#f32;
    shared.set(
      mem.subarray(partial >>> 2, (partial >>> 2) + count),
      (base + this.#s.rank * slot) >>> 2,
    );
    this.#lap(PROF.reduce);
    this.#barrier.arrive();
    this.#lap(PROF.wait);
    mem = this.#f32;
    if (count >= SPLIT_SUM_MIN) {
      // This rank's columns [a, b) (whole vec4s), accumulated in dst, then into slot 0.
      const quads = Math.ceil(count / 4);
      const a = Math.min(count, Math.floor((this.#s.rank * quads) / T) * 4);
      const b = Math.min(count, Math.floor(((this.#s.rank + 1) * quads) / T) * 4);
      if (b > a) {
        const n = b - a;
        const tmp = this.#sc!.tmp;
        const at = (dst >>> 2) + a;
        mem.set(shared.subarray((base >>> 2) + a, (base >>> 2) + b), at);
        for (let r = 1; r < T; r++) {
          const o = ((base + r * slot) >>> 2) + a;
          mem.set(shared.subarray(o, o + n), tmp >>> 2);
          this.#k.add(at * 4, tmp, at * 4, n);
        }
        shared.set(mem.subarray(at, at + n), (base >>> 2) + a);
      }
      this.#lap(PROF.reduce);
      this.#barrier.arrive();
      this.#lap(PROF.wait);
      mem = this.#f32;
      mem.set(shared.subarray(base >>> 2, (base >>> 2) + count), dst >>> 2);
      this.#lap(PROF.reduce);
      return;
    }
    mem.set(shared.subarray(base >>> 2, (base >>> 2) + count), dst >>> 2);
    const tmp = this.#sc!.tmp;
    for (let r = 1; r < T; r++) {
      const o = (base + r * slot) >>> 2;
      mem.set(shared.subarray(o, o + count), tmp >>> 2);
      this.#k.add(dst, tmp, dst, count);
    }
    this.#lap(PROF.reduce);
  }

  // ------------------------------------------------------------------------------------------
  // states

  #stateBytes(batch: number): number {
    const cfg = this.#cfg;
    return cfg.nLayer * batch * (this.#convCh * cfg.dConv + this.#ssmSz) * 4;
  }

  /** Byte offsets of layer `l`, sequence `b`'s conv and SSM slices. */
  #stPtr(st: RankState, l: number, b: number): [number, number] {
    const cfg = this.#cfg;
    const conv = this.#convCh * cfg.dConv;
    const layer = st.batch * (conv + this.#ssmSz);
    const base = st.ptr + l * layer * 4;
    return [base + b * conv * 4, base + (st.batch * conv + b * this.#ssmSz) * 4];
  }

  #state(id: number): RankState {
    const st = this.#states.get(id);
    if (!st) throw new Error(`wasm backend: state ${id} does not exist`);
    return st;
  }

  #stateNew(id: number, batch: number): void {
    const bytes = this.#stateBytes(batch);
    const ptr = this.#heap.alloc(bytes);
    new Uint8Array(this.#k.memory.buffer, ptr, bytes).fill(0);
    this.#states.set(id, { ptr, bytes, batch });
  }

  #stateFree(id: number): void {
    const st = this.#states.get(id);
    if (!st) return;
    this.#heap.free(st.ptr);
    this.#states.delete(id);
  }

  #stateClone(dst: number, src: number): void {
    const s = this.#state(src);
    const ptr = this.#heap.alloc(s.bytes);
    new Uint8Array(this.#k.memory.buffer).copyWithin(ptr, s.ptr, s.ptr + s.bytes);
    this.#states.set(dst, { ptr, bytes: s.bytes, batch: s.batch });
  }

  /** Copies `count` sequences of this rank's slice of `src` into `dst` (both layouts alike). */
  #stateCopyRows(dst: number, dstRow: number, src: number, srcRow: number, count: number): void {
    const s = this.#state(src);
    const d = this.#state(dst);
    const mem = new Uint8Array(this.#k.memory.buffer);
    const conv = this.#convCh * this.#cfg.dConv * 4;
    const ssm = this.#ssmSz * 4;
    for (let l = 0; l < this.#cfg.nLayer; l++) {
      const [sc, ss] = this.#stPtr(s, l, srcRow);
      const [dc, ds] = this.#stPtr(d, l, dstRow);
      mem.copyWithin(dc, sc, sc + count * conv);
      mem.copyWithin(ds, ss, ss + count * ssm);
    }
  }

  /**
   * Copies a state between this rank's memory and the staging area (public layout: per layer
   * conv `[B, convDim, dConv]` then SSM `[B, …]`), `up` = staging → rank.
   */
  #stateTransfer(id: number, stage: number, up: boolean): void {
    const cfg = this.#cfg;
    const st = this.#state(id);
    const B = st.batch;
    const { dConv, dInner, convDim, dState: N } = cfg;
    const ssmFull = cfg.arch === "mamba1" ? dInner * N : cfg.nheads * cfg.headdim * N;
    const shared = this.#shF32;
    const s = this.#s;
    const nc = this.#nc;
    const copy = (memPtr: number, stageFloat: number, n: number) => {
      if (n === 0) return;
      const mem = this.#f32;
      if (up) mem.set(shared.subarray(stageFloat, stageFloat + n), memPtr >>> 2);
      else shared.set(mem.subarray(memPtr >>> 2, (memPtr >>> 2) + n), stageFloat);
    };
    let o = stage >>> 2;
    for (let l = 0; l < cfg.nLayer; l++) {
      for (let b = 0; b < B; b++) {
        const [conv, ssm] = this.#stPtr(st, l, b);
        const cBase = o + b * convDim * dConv;
        copy(conv, cBase + s.c0 * dConv, nc * dConv);
        if (cfg.arch === "mamba2" && (up || s.rank === 0)) {
          const gn2 = 2 * cfg.ngroups * N;
          copy(conv + nc * dConv * 4, cBase + dInner * dConv, gn2 * dConv);
        }
        const sBase = o + B * convDim * dConv + b * ssmFull;
        if (cfg.arch === "mamba2" || !this.#inter) {
          copy(ssm, sBase + s.c0 * N, nc * N);
        } else if (up) {
          copy(this.#interTmp, sBase + s.c0 * N, nc * N);
          this.#k.interleave4(this.#interTmp, ssm, nc, N);
        } else {
          this.#k.deinterleave4(ssm, this.#interTmp, nc, N);
          copy(this.#interTmp, sBase + s.c0 * N, nc * N);
        }
      }
      o += B * (convDim * dConv + ssmFull);
    }
  }

  // ------------------------------------------------------------------------------------------
  // the interpreter

  /** Runs the program in the shared buffer (every rank calls this once per program). */
  run(): void {
    const prm = this.#prm;
    const nOps = prm[PRM.NOPS];
    const ops = new Int32Array(this.#sab, prm[PRM.OFF_OPS], nOps * OP_WORDS);
    this.#redUse = 0;
    const r = this.#s.rank;
    this.#pf = prm[PRM.PROFILE] && r < 16
      ? new Float64Array(this.#sab, PROF_OFFSET + r * PROF_SLOTS * 8, PROF_SLOTS)
      : null;
    const start = performance.now();
    this.#last = start;
    let i = 0;
    while (i < nOps) {
      const code = ops[i * OP_WORDS];
      if (code < OP.EMBED) {
        this.#stateOp(ops.subarray(i * OP_WORDS, (i + 1) * OP_WORDS));
        this.#lap(PROF.state);
        i++;
        continue;
      }
      let j = i;
      while (j < nOps && ops[j * OP_WORDS] >= OP.EMBED) j++;
      this.#computeSegment(ops, i, j, prm);
      i = j;
    }
    // Everyone done: rank 0 may read the logits and staged states.
    this.#barrier.arrive();
    this.#lap(PROF.wait);
    if (this.#pf) {
      this.#pf[PROF.total] += performance.now() - start;
      this.#pf[PROF.programs]++;
    }
  }

  #stateOp(op: Int32Array): void {
    switch (op[0]) {
      case OP.STATE_NEW:
        return this.#stateNew(op[1], op[2]);
      case OP.STATE_FREE:
        return this.#stateFree(op[1]);
      case OP.STATE_CLONE:
        return this.#stateClone(op[1], op[2]);
      case OP.STATE_UPLOAD:
        return this.#stateTransfer(op[1], op[2] * 64, true);
      case OP.STATE_DOWNLOAD:
        return this.#stateTransfer(op[1], op[2] * 64, false);
      case OP.DECODE:
        return this.#decode(op[1], op[2], op[3], op[4] !== 0);
      case OP.STATE_COPY_ROWS:
        return this.#stateCopyRows(op[1], op[2], op[3], op[4], op[5]);
      default:
        throw new Error(`wasm backend: unknown op ${op[0]}`);
    }
  }

  #computeSegment(ops: Int32Array, i0: number, i1: number, prm: Float64Array): void {
    const B = prm[PRM.BATCH];
    const L = prm[PRM.SEQLEN];
    const C = prm[PRM.CHUNK];
    let lmRows = 0;
    for (let i = i0; i < i1; i++) {
      if (ops[i * OP_WORDS] === OP.LMHEAD) lmRows = ops[i * OP_WORDS + 2] ? B : B * C;
    }
    this.#ensureScratch(B * C, Math.max(lmRows, 1));
    for (let t0 = 0; t0 < L; t0 += C) {
      const lc = Math.min(C, L - t0);
      for (let i = i0; i < i1; i++) {
        this.#computeOp(ops.subarray(i * OP_WORDS, (i + 1) * OP_WORDS), B, L, t0, lc, prm);
      }
      for (const p of this.#regs.values()) this.#release(p);
      this.#regs.clear();
    }
  }

  #computeOp(op: Int32Array, B: number, L: number, t0: number, lc: number, prm: Float64Array) {
    const rows = B * lc;
    switch (op[0]) {
      case OP.EMBED:
        this.#embed(op[1], new Int32Array(this.#sab, prm[PRM.OFF_IDS], B * L), B, L, t0, lc);
        return this.#lap(PROF.embed);
      case OP.ADDNORM:
        this.#addNorm(op[1], op[2], op[3], op[4], op[5], rows);
        return this.#lap(PROF.norm);
      case OP.MIXER: {
        const x = this.#regTake(op[2]);
        const st = this.#state(op[3]);
        const out = this.#regAlloc(op[4]);
        if (this.#cfg.arch === "mamba1") this.#mamba1(op[1], x, out, st, B, lc);
        else this.#mamba2(op[1], x, out, st, B, lc);
        this.#release(x);
        return;
      }
      case OP.LMHEAD:
        this.#lmHead(op[1], op[2] !== 0, B, L, t0, lc, prm);
        return this.#lap(PROF.lmHead);
      case OP.READ: {
        const p = this.#regs.get(op[1]);
        if (p === undefined) return; // the logits: rank 0's caller reads the shared buffer
        this.#regs.delete(op[1]);
        if (this.#s.rank === 0 && this.readOut) {
          const d = this.#cfg.dModel;
          const mem = this.#f32;
          for (let b = 0; b < B; b++) {
            const src = (p >>> 2) + b * lc * d;
            this.readOut.set(mem.subarray(src, src + lc * d), (b * L + t0) * d);
          }
        }
        this.#release(p);
        return;
      }
      case OP.UPLOAD: {
        // Rows of the global [B·L, dModel] activation staged by the host; this chunk's slice.
        const dst = this.#regAlloc(op[1]) >>> 2;
        const d = this.#cfg.dModel;
        const src = (op[2] * 64) >>> 2;
        const mem = this.#f32;
        const shared = this.#shF32;
        for (let b = 0; b < B; b++) {
          const from = src + (b * L + t0) * d;
          mem.set(shared.subarray(from, from + lc * d), dst + b * lc * d);
        }
        return this.#lap(PROF.embed);
      }
      default:
        throw new Error(`wasm backend: unknown op ${op[0]}`);
    }
  }

  /** Embeds tokens `[t0, t0 + lc)` of each of the `B` sequences of `ids` `[B, L]`. */
  #embed(out: number, ids: Int32Array, B: number, L: number, t0: number, lc: number): void {
    const d = this.#cfg.dModel;
    const dst = this.#regAlloc(out);
    const T = this.#s.ranks;
    const { v0, v1 } = this.#s;
    const base = T > 1 ? this.#nextRed() : 0;
    const shared = this.#shF32;
    const e = this.#emb!;
    for (let b = 0; b < B; b++) {
      for (let t = 0; t < lc; t++) {
        const id = ids[b * L + t0 + t];
        if (id < v0 || id >= v1) continue;
        const row = b * lc + t;
        const r = id - v0;
        let src: number;
        if (e.dtype === "f32") src = e.ptr + r * d * 4;
        else if (e.dtype === "f16") {
          this.#k.f16ToF32(e.ptr + r * d * 2, this.#rowTmp, d);
          src = this.#rowTmp;
        } else {
          const mem = this.#f32;
          const q = new Int8Array(this.#k.memory.buffer, e.ptr + r * d, d);
          const nb = Math.ceil(d / Q8_BLOCK);
          const sc = (e.scales >>> 2) + r * nb;
          const o = this.#rowTmp >>> 2;
          for (let i = 0; i < d; i++) mem[o + i] = q[i] * mem[sc + (i >> 5)];
          src = this.#rowTmp;
        }
        const mem = this.#f32;
        const vals = mem.subarray(src >>> 2, (src >>> 2) + d);
        if (T > 1) shared.set(vals, (base >>> 2) + row * d);
        else mem.set(vals, (dst >>> 2) + row * d);
      }
    }
    if (T > 1) {
      this.#lap(PROF.embed);
      this.#barrier.arrive();
      this.#lap(PROF.wait);
      this.#f32.set(shared.subarray(base >>> 2, (base >>> 2) + B * lc * d), dst >>> 2);
    }
  }

  #addNorm(h: number, r: number, layer: number, nOut: number, rOut: number, rows: number) {
    const cfg = this.#cfg;
    const hid = this.#regTake(h);
    const normed = this.#regAlloc(nOut);
    const w = layer < 0 ? this.#normF : this.#layers[layer].norm;
    const bias = layer < 0 ? this.#normFBias : this.#layers[layer].normBias;
    const d = cfg.dModel;
    const eps = cfg.normEps;
    if (r < 0) {
      if (cfg.rmsNorm) this.#k.rmsnorm(hid, w, normed, d, eps, rows);
      else this.#k.layernorm(hid, w, bias, normed, d, eps, rows);
      this.#regs.set(rOut, hid);
      return;
    }
    const res = this.#regTake(r);
    if (cfg.rmsNorm) this.#k.addRmsnorm(res, hid, w, normed, d, eps, rows);
    else this.#k.addLayernorm(res, hid, w, bias, normed, d, eps, rows);
    this.#release(hid);
    this.#regs.set(rOut, res);
  }

  #lmHead(
    x: number,
    lastOnly: boolean,
    B: number,
    L: number,
    t0: number,
    lc: number,
    prm: Float64Array,
  ) {
    const p = this.#regTake(x);
    const isLast = t0 + lc === L;
    if (lastOnly && !isLast) {
      this.#release(p);
      return;
    }
    const d = this.#cfg.dModel;
    const V = this.#cfg.paddedVocabSize;
    const { v0, v1 } = this.#s;
    const nv = v1 - v0;
    const sc = this.#sc!;
    const m = lastOnly ? B : B * lc;
    if (nv > 0) {
      if (lastOnly) this.#matmul(this.#lm!, p + (lc - 1) * d * 4, lc * d, sc.logits, nv, B);
      else this.#matmul(this.#lm!, p, d, sc.logits, nv, m);
      this.#lap(PROF.lmHead);
      const shared = this.#shF32;
      const mem = this.#f32;
      const off = prm[PRM.OFF_LOGITS] >>> 2;
      for (let j = 0; j < m; j++) {
        const g = lastOnly ? j : Math.floor(j / lc) * L + t0 + (j % lc);
        const src = (sc.logits >>> 2) + j * nv;
        shared.set(mem.subarray(src, src + nv), off + g * V + v0);
      }
    }
    this.#release(p);
  }

  /** Copies this rank's logits `[m, nv]` into columns `[v0, v1)` of the shared `[m, V]`. */
  #shareLogits(m: number, off: number): void {
    const V = this.#cfg.paddedVocabSize;
    const { v0, v1 } = this.#s;
    const nv = v1 - v0;
    const shared = this.#shF32;
    const mem = this.#f32;
    const src = this.#sc!.logits >>> 2;
    for (let j = 0; j < m; j++) {
      shared.set(mem.subarray(src + j * nv, src + (j + 1) * nv), (off >>> 2) + j * V + v0);
    }
  }

  /** Fused decoding (see `OP.DECODE`). */
  #decode(id: number, steps: number, vocab: number, sampled: boolean): void {
    const prm = this.#prm;
    const B = prm[PRM.BATCH];
    const st = this.#state(id);
    const cfg = this.#cfg;
    const d = cfg.dModel;
    const T = this.#s.ranks;
    const { v0, v1 } = this.#s;
    const nv = v1 - v0;
    const lim = Math.max(0, Math.min(nv, vocab - v0));
    const shared = new Int32Array(this.#sab, prm[PRM.OFF_IDS], B);
    const ids = shared.slice();
    const out = new Int32Array(this.#sab, prm[PRM.OFF_OUT], steps * B);
    const sc = this.#ensureScratch(B, B);
    // Internal registers of one step (above the backend's numbers; negative means "none").
    const E = 2 ** 30, R = E + 1, N = E + 2, M = E + 3;
    for (let step = 0; step < steps; step++) {
      this.#embed(E, ids, B, 1, 0, 1);
      this.#lap(PROF.embed);
      for (let l = 0; l < cfg.nLayer; l++) {
        if (l === 0) this.#addNorm(E, -1, 0, N, R, B);
        else this.#addNorm(M, R, l, N, R, B);
        this.#lap(PROF.norm);
        const x = this.#regTake(N);
        const o = this.#regAlloc(M);
        if (cfg.arch === "mamba1") this.#mamba1(l, x, o, st, B, 1);
        else this.#mamba2(l, x, o, st, B, 1);
        this.#release(x);
      }
      this.#addNorm(M, R, -1, N, R, B);
      this.#lap(PROF.norm);
      const x = this.#regTake(N);
      if (nv > 0) this.#matmul(this.#lm!, x, d, sc.logits, nv, B);
      this.#release(x);
      this.#release(this.#regTake(R));
      this.#lap(PROF.lmHead);
      if (sampled) {
        // Rank 0 samples from the gathered logits; everyone reads its picks.
        this.#shareLogits(B, prm[PRM.OFF_LOGITS]);
        this.#barrier.arrive();
        if (this.#s.rank === 0) {
          const V = cfg.paddedVocabSize;
          this.sampleHook!(new Float32Array(this.#sab, prm[PRM.OFF_LOGITS], B * V), shared);
        }
        this.#barrier.arrive();
        ids.set(shared);
      } else {
        // Argmax of each rank's slice, then the best across ranks (lowest id on ties).
        const mem = this.#f32;
        const vals = this.#pickVals.length === B
          ? this.#pickVals
          : (this.#pickVals = new Float32Array(B));
        const idx = this.#pickIdx.length === B
          ? this.#pickIdx
          : (this.#pickIdx = new Int32Array(B));
        idx.fill(-1);
        for (let b = 0; b < B; b++) {
          if (lim === 0) continue;
          const p = sc.logits + b * nv * 4;
          const i = this.#k.argmax(p, lim);
          vals[b] = mem[(p >>> 2) + i];
          idx[b] = v0 + i;
        }
        if (T === 1) ids.set(idx);
        else {
          const base = this.#nextRed();
          const slot = prm[PRM.RED_SLOT];
          const o = base + this.#s.rank * slot;
          this.#shF32.set(vals, o >>> 2);
          this.#shI32.set(idx, (o >>> 2) + B);
          this.#barrier.arrive();
          for (let b = 0; b < B; b++) {
            let best = -1;
            let bv = -Infinity;
            for (let r = 0; r < T; r++) {
              const q = base + r * slot;
              const ri = this.#shI32[(q >>> 2) + B + b];
              const rv = this.#shF32[(q >>> 2) + b];
              if (ri >= 0 && (best < 0 || rv > bv)) {
                best = ri;
                bv = rv;
              }
            }
            ids[b] = best;
          }
        }
      }
      if (this.#s.rank === 0) out.set(ids, step * B);
      this.#lap(PROF.lmHead);
    }
  }

  // ------------------------------------------------------------------------------------------
  // mixers

  /**
   * Mamba-1 on this rank's channels for `B` sequences of `lc` tokens (rows sequence-major):
   * `x` `[rows, dModel]` → `out` `[rows, dModel]` (reduced over the ranks).
   */
  #mamba1(layer: number, x: number, out: number, st: RankState, B: number, lc: number) {
    const cfg = this.#cfg;
    const k = this.#k;
    const w = this.#layers[layer];
    const sc = this.#sc!;
    const nc = this.#nc;
    const N = cfg.dState;
    const R = cfg.dtRank;
    const xd = R + 2 * N;
    const rows = B * lc;
    const d = cfg.dModel;
    const T = this.#s.ranks;
    // in_proj: xz [rows, 2nc] (x, then z, of this rank's channels).
    this.#matmul(w.inProj, x, d, sc.a, 2 * nc, rows);
    if (w.inProjBias) this.#addRows(sc.a, 2 * nc, w.inProjBias, rows, 2 * nc);
    this.#lap(PROF.inProj);
    // Causal conv + SiLU → u [rows, nc].
    for (let b = 0; b < B; b++) {
      const [conv] = this.#stPtr(st, layer, b);
      const r0 = b * lc;
      k.conv1dSeq(
        conv,
        sc.a + r0 * 2 * nc * 4,
        2 * nc,
        w.convW,
        w.convB,
        sc.b + r0 * nc * 4,
        nc,
        lc,
        cfg.dConv,
        0,
        nc,
        true,
      );
    }
    this.#lap(PROF.conv);
    // x_proj: partial over this rank's channels, reduced → x_dbl [rows, dtRank + 2N].
    const part = T > 1 ? sc.part : sc.c;
    this.#matmul(w.xProj!, sc.b, nc, part, xd, rows);
    this.#lap(PROF.xProj);
    this.#allreduce(part, sc.c, rows * xd);
    // dt_proj (this rank's rows) → delta [rows, nc] (bias and softplus in the scan).
    this.#matmul(w.dtProj!, sc.c, xd, sc.d, nc, rows);
    this.#lap(PROF.dtProj);
    // Selective scan with D skip and SiLU(z) gate → y [rows, nc].
    const flags = SCAN_SOFTPLUS | (this.#inter ? SCAN_INTERLEAVED : 0);
    for (let b = 0; b < B; b++) {
      const [, ssm] = this.#stPtr(st, layer, b);
      const r0 = b * lc;
      k.exports.selective_scan(
        ssm,
        sc.b + r0 * nc * 4,
        nc,
        sc.d + r0 * nc * 4,
        nc,
        w.A,
        sc.c + (r0 * xd + R) * 4,
        sc.c + (r0 * xd + R + N) * 4,
        xd,
        w.D,
        sc.a + (r0 * 2 * nc + nc) * 4,
        2 * nc,
        w.dtBias,
        sc.e + r0 * nc * 4,
        nc,
        lc,
        nc,
        N,
        1,
        0,
        nc,
        flags,
      );
    }
    this.#lap(PROF.scan);
    // out_proj: partial over this rank's channels, reduced → out [rows, dModel].
    const opart = T > 1 ? sc.part : out;
    this.#matmul(w.outProj, sc.e, nc, opart, d, rows);
    this.#lap(PROF.outProj);
    this.#allreduce(opart, out, rows * d);
    if (w.outBias) this.#addRows(out, d, w.outBias, rows, d);
  }

  /** Mamba-2 on this rank's channels (see {@link RankEngine.#mamba1} for the shapes). */
  #mamba2(layer: number, x: number, out: number, st: RankState, B: number, lc: number) {
    const cfg = this.#cfg;
    const k = this.#k;
    const w = this.#layers[layer];
    const sc = this.#sc!;
    const s = this.#s;
    const nc = this.#nc;
    const nh = this.#nh;
    const P = cfg.headdim;
    const N = cfg.dState;
    const G = cfg.ngroups;
    const GN = G * N;
    const Dl = 2 * nc + 2 * GN + nh;
    const Cc = nc + 2 * GN;
    const rows = B * lc;
    const d = cfg.dModel;
    const T = s.ranks;
    // in_proj → [z | x | B | C | dt] of this rank [rows, Dl].
    this.#inProjShared(w.inProj, x, sc.a, Dl, rows, 2 * nc, 2 * nc + 2 * GN);
    if (w.inProjBias) this.#addRows(sc.a, Dl, w.inProjBias, rows, Dl);
    this.#lap(PROF.inProj);
    // Causal conv + SiLU over [x | B | C] → xBC [rows, Cc].
    for (let b = 0; b < B; b++) {
      const [conv] = this.#stPtr(st, layer, b);
      const r0 = b * lc;
      k.conv1dSeq(
        conv,
        sc.a + (r0 * Dl + nc) * 4,
        Dl,
        w.convW,
        w.convB,
        sc.b + r0 * Cc * 4,
        Cc,
        lc,
        cfg.dConv,
        0,
        Cc,
        true,
      );
    }
    this.#lap(PROF.conv);
    // dt: softplus(dt + bias) in the kernel, unless dt_limit clamps it.
    let dt = sc.a + (2 * nc + 2 * GN) * 4;
    let lddt = Dl;
    let flags = SCAN_SOFTPLUS;
    let dtBias = w.dtBias;
    const [lo, hi] = cfg.dtLimit;
    if (lo > 0 || hi < Infinity) {
      const mem = this.#f32;
      const bias = mem.subarray(w.dtBias >>> 2, (w.dtBias >>> 2) + nh);
      for (let r = 0; r < rows; r++) {
        for (let h = 0; h < nh; h++) {
          const v = mem[(dt >>> 2) + r * Dl + h] + bias[h];
          const sp = v > 20 ? v : Math.log1p(Math.exp(v));
          mem[(sc.c >>> 2) + r * nh + h] = Math.min(Math.max(sp, lo), hi);
        }
      }
      dt = sc.c;
      lddt = nh;
      flags = 0;
      dtBias = 0;
    }
    // SSD recurrence per sequence → y [rows, nc], in runs of this rank's channels that share a
    // head's dt, A and D (a part of a head: the run's width is its `headdim`) or a B/C group
    // (whole heads). The state holds this rank's channels, [nc, N].
    const hpg = cfg.nheads / G;
    for (let b = 0; b < B; b++) {
      const [, ssm] = this.#stPtr(st, layer, b);
      const r0 = b * lc;
      for (let c = 0; c < nc;) {
        const gc = s.c0 + c;
        const h = Math.floor(gc / P);
        const g = Math.floor(h / hpg);
        let heads: number, width: number;
        if (gc % P !== 0 || s.c1 - gc < P) {
          heads = 1;
          width = Math.min(s.c1, (h + 1) * P) - gc;
        } else {
          heads = Math.min(Math.floor((s.c1 - gc) / P), (g + 1) * hpg - h);
          width = P;
        }
        const hl = h - s.h0;
        k.exports.ssd_scan(
          ssm + c * N * 4,
          sc.b + (r0 * Cc + c) * 4,
          Cc,
          dt + (r0 * lddt + hl) * 4,
          lddt,
          w.A + hl * 4,
          sc.b + (r0 * Cc + nc + g * N) * 4,
          sc.b + (r0 * Cc + nc + GN + g * N) * 4,
          Cc,
          cfg.dHasHdim ? 0 : w.D + hl * 4,
          dtBias ? dtBias + hl * 4 : 0,
          sc.e + (r0 * nc + c) * 4,
          nc,
          lc,
          heads,
          width,
          N,
          1,
          0,
          heads,
          flags,
        );
        c += heads * width;
      }
    }
    this.#lap(PROF.scan);
    const mem0 = this.#f32;
    if (cfg.dHasHdim) {
      const D = mem0.subarray(w.D >>> 2, (w.D >>> 2) + nc);
      for (let r = 0; r < rows; r++) {
        const yo = (sc.e >>> 2) + r * nc;
        const xo = (sc.b >>> 2) + r * Cc;
        for (let c = 0; c < nc; c++) mem0[yo + c] += D[c] * mem0[xo + c];
      }
    }
    // Gate: y·silu(z), or the gated RMSNorm whose sums of squares are reduced over the ranks.
    const gate = () => {
      for (let r = 0; r < rows; r++) {
        const y = sc.e + r * nc * 4;
        k.mulSilu(y, sc.a + r * Dl * 4, y, nc);
      }
    };
    if (!cfg.gatedNorm || !cfg.normBeforeGate) gate();
    if (cfg.gatedNorm && G === 1 && T > 1) {
      this.#gatedOut(w, out, rows, gate);
      return;
    }
    if (cfg.gatedNorm) {
      const gs = cfg.dInner / G;
      const part = T > 1 ? sc.part : sc.d;
      let mem = this.#f32;
      for (let r = 0; r < rows; r++) {
        for (let g = 0; g < G; g++) {
          const a = Math.max(s.c0, g * gs) - s.c0;
          const e = Math.min(s.c1, (g + 1) * gs) - s.c0;
          if (e <= a) {
            mem[(part >>> 2) + r * G + g] = 0;
            continue;
          }
          const y = sc.e + (r * nc + a) * 4;
          k.exports.matvec_f32(y, y, part + (r * G + g) * 4, 1, e - a, 0, 1, 0);
        }
      }
      this.#lap(PROF.gate);
      this.#allreduce(part, sc.d, rows * G);
      mem = this.#f32;
      const gw = mem.subarray(w.gatedNorm >>> 2, (w.gatedNorm >>> 2) + nc);
      for (let r = 0; r < rows; r++) {
        const yo = (sc.e >>> 2) + r * nc;
        for (let c = 0; c < nc;) {
          const g = Math.floor((s.c0 + c) / gs);
          const e = Math.min(nc, (g + 1) * gs - s.c0);
          const scale = 1 / Math.sqrt(mem[(sc.d >>> 2) + r * G + g] / gs + 1e-5);
          for (; c < e; c++) mem[yo + c] = mem[yo + c] * scale * gw[c];
        }
      }
      if (cfg.normBeforeGate) gate();
    }
    this.#lap(PROF.gate);
    // out_proj partial → reduced out [rows, dModel].
    const opart = T > 1 ? sc.part : out;
    this.#matmul(w.outProj, sc.e, nc, opart, d, rows);
    this.#lap(PROF.outProj);
    this.#allreduce(opart, out, rows * d);
    if (w.outBias) this.#addRows(out, d, w.outBias, rows, d);
  }

  /**
   * Mamba-2's gated RMSNorm of one group and out_proj over several ranks, with one sum over the
   * ranks instead of two: the norm's scale is one number a row, and out_proj is linear, so
   * out = scale · Σ_ranks W·(gw ⊙ v) with scale = 1/√(Σ_ranks Σ v² / d_inner + ε). Each rank's
   * out_proj partial goes into the sum with its Σ v² appended to each row's end. `gate` applies
   * y·silu(z) (here after the norm's sum when the norm comes before the gate; else done).
   */
  #gatedOut(w: Layer, out: number, rows: number, gate: () => void) {
    const cfg = this.#cfg;
    const k = this.#k;
    const sc = this.#sc!;
    const nc = this.#nc;
    const d = cfg.dModel;
    // Σ v² of this rank's channels, one a row, into sc.d.
    for (let r = 0; r < rows; r++) {
      const y = sc.e + r * nc * 4;
      k.exports.matvec_f32(y, y, sc.d + r * 4, 1, nc, 0, 1, 0);
    }
    let mem = this.#f32;
    const gw = mem.subarray(w.gatedNorm >>> 2, (w.gatedNorm >>> 2) + nc);
    for (let r = 0; r < rows; r++) {
      const yo = (sc.e >>> 2) + r * nc;
      for (let c = 0; c < nc; c++) mem[yo + c] *= gw[c];
    }
    if (cfg.normBeforeGate) gate();
    this.#lap(PROF.gate);
    // [rows, d] partial of out_proj, then the rows' Σ v²: one sum over the ranks.
    this.#matmul(w.outProj, sc.e, nc, sc.part, d, rows);
    mem = this.#f32;
    mem.copyWithin((sc.part >>> 2) + rows * d, sc.d >>> 2, (sc.d >>> 2) + rows);
    this.#lap(PROF.outProj);
    this.#allreduce(sc.part, sc.part, rows * (d + 1)); // (its scratch is sc.tmp)
    mem = this.#f32;
    for (let r = 0; r < rows; r++) {
      const scale = 1 / Math.sqrt(mem[(sc.part >>> 2) + rows * d + r] / cfg.dInner + 1e-5);
      const from = (sc.part >>> 2) + r * d;
      const to = (out >>> 2) + r * d;
      for (let j = 0; j < d; j++) mem[to + j] = mem[from + j] * scale;
    }
    if (w.outBias) this.#addRows(out, d, w.outBias, rows, d);
    this.#lap(PROF.reduce);
  }
}
