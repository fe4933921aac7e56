/**
 * The `wasm` backend for Transformer models (GPT-NeoX): the same SIMD kernels as the Mamba path
 * (`matmul_*` GEMM / GEMV, `layernorm`, `add`) plus the attention kernels of
 * `rust_kernels/src/attention.rs`: tiled causal attention for prefill (no L×L matrix), decoding
 * split over slot ranges and merged (flash-decoding), the rotary embedding and the exact GELU.
 *
 * It computes on the calling thread, eagerly (each operation runs when called; `read` copies
 * out). The KV cache lives in wasm memory as `[batch, nKvHeads, capacity, headDim]` per layer and
 * doubles its capacity when it fills.
 *
 * @module
 */

import type {
  BlockNorm,
  KvTensors,
  TransformerBackend,
  TransformerBackendInit,
} from "../../backend.ts";
import { BackendError } from "../../errors.ts";
import { f16ArrayToF32, f32ArrayToF16 } from "../../half.ts";
import type { GptNeoXConfig } from "../../neox_config.ts";
import type { HostTensor } from "../../weights.ts";
import { Heap } from "./engine.ts";
import { F16_FINITE, f16AllFinite, WasmKernels } from "./kernels.ts";
import type { WasmOptions } from "./options.ts";

/** An activation: `rows × cols` float32 at `ptr` in wasm memory. */
export interface WasmTActivation {
  /** Byte offset in wasm memory. */
  readonly ptr: number;
  /** Rows (tokens). */
  readonly rows: number;
  /** Columns (features). */
  readonly cols: number;
}

/** A KV cache: per layer one block of keys and one of values in wasm memory. */
export interface WasmKv {
  /** Sequences. */
  readonly batch: number;
  /** Slots per sequence. */
  capacity: number;
  /** Per layer key blocks (0 while the capacity is 0). */
  k: number[];
  /** Per layer value blocks. */
  v: number[];
}

/** A matrix `[n, k]` in wasm memory. */
interface Mat {
  readonly dtype: "f32" | "f16";
  readonly ptr: number;
  readonly n: number;
  readonly k: number;
  readonly finite: boolean;
}

interface Norm {
  w: number;
  b: number;
}

interface Layer {
  norm: Norm;
  norm2: Norm;
  qkv: Mat;
  qkvBias: number;
  out: Mat;
  outBias: number;
  fc1: Mat;
  fc1Bias: number;
  fc2: Mat;
  fc2Bias: number;
}

/** Slots per split of a decoding step (each split is one partial of flash-decoding). */
const DECODE_SPLIT = 256;

/** The single-threaded WebAssembly backend of Transformer models. */
export class WasmTransformerBackend implements TransformerBackend<WasmTActivation, WasmKv> {
  /** Always `"wasm"`. */
  readonly name = "wasm" as const;
  readonly #cfg: GptNeoXConfig;
  readonly #k: WasmKernels;
  readonly #heap: Heap;
  readonly #layers: Layer[] = [];
  readonly #embedding: Mat;
  readonly #lmHead: Mat;
  readonly #normF: Norm;

  private constructor(
    cfg: GptNeoXConfig,
    k: WasmKernels,
    store: "f32" | "f16" | undefined,
    init: TransformerBackendInit,
  ) {
    this.#cfg = cfg;
    this.#k = k;
    this.#heap = new Heap(k);
    const w = init.weights;
    const mat = (t: HostTensor) => this.#upMat(t, store);
    const vec = (t: HostTensor | undefined) => (t ? this.#upVec(t) : 0);
    const norm = (n: { weight: HostTensor; bias?: HostTensor }) => ({
      w: vec(n.weight),
      b: vec(n.bias),
    });
    for (const l of w.layers) {
      this.#layers.push({
        norm: norm(l.norm),
        norm2: norm(l.norm2),
        qkv: mat(l.qkv),
        qkvBias: vec(l.qkvBias),
        out: mat(l.out),
        outBias: vec(l.outBias),
        fc1: mat(l.fc1),
        fc1Bias: vec(l.fc1Bias),
        fc2: mat(l.fc2),
        fc2Bias: vec(l.fc2Bias),
      });
    }
    this.#embedding = mat(w.embedding);
    this.#lmHead = w.lmHead === w.embedding ? this.#embedding : mat(w.lmHead);
    this.#normF = norm(w.normF);
  }

  /**
   * Compiles the kernels and copies the weights into wasm memory (`options.weights`: `"f32"` or
   * `"f16"`, default as loaded; `threads` is not used yet: one thread computes).
   *
   * @throws {BackendError} when WebAssembly is unavailable or `weights` is `"q8"`.
   */
  static async create(
    init: TransformerBackendInit,
    options: WasmOptions = {},
  ): Promise<WasmTransformerBackend> {
    if (options.weights === "q8") {
      throw new BackendError('wasm backend: weights "q8" is not supported for Transformer models');
    }
    let k: WasmKernels;
    try {
      k = WasmKernels.fromModule(await WasmKernels.compile());
    } catch (e) {
      throw new BackendError(`wasm backend: cannot load the kernels: ${(e as Error).message}`);
    }
    return new WasmTransformerBackend(init.config, k, options.weights, init);
  }

  get #f32(): Float32Array {
    return new Float32Array(this.#k.memory.buffer);
  }

  #upVec(t: HostTensor): number {
    const data = t.dtype === "f32" ? t.data : f16ArrayToF32(t.data);
    const p = this.#heap.alloc(data.length * 4);
    this.#f32.set(data, p >>> 2);
    return p;
  }

  #upMat(t: HostTensor, store: "f32" | "f16" | undefined): Mat {
    const [n, k] = t.shape;
    const dtype = store ?? t.dtype;
    if (dtype === "f32") {
      const data = t.dtype === "f32" ? t.data : f16ArrayToF32(t.data);
      const p = this.#heap.alloc(data.length * 4);
      this.#f32.set(data, p >>> 2);
      return { dtype, ptr: p, n, k, finite: true };
    }
    const bits = t.dtype === "f16" ? t.data : f32ArrayToF16(t.data);
    const p = this.#heap.alloc(bits.length * 2);
    new Uint16Array(this.#k.memory.buffer).set(bits, p >>> 1);
    return { dtype, ptr: p, n, k, finite: f16AllFinite(bits) };
  }

  #alloc(rows: number, cols: number): WasmTActivation {
    return { ptr: this.#heap.alloc(rows * cols * 4), rows, cols };
  }

  #free(a: WasmTActivation): void {
    this.#heap.free(a.ptr);
  }

  /** `y = x · Wᵀ + bias` over all rows of `x`. */
  #linear(x: WasmTActivation, w: Mat, bias: number): WasmTActivation {
    const y = this.#alloc(x.rows, w.n);
    const e = this.#k.exports;
    if (w.dtype === "f32") {
      e.matmul_f32(x.ptr, x.cols, w.ptr, y.ptr, w.n, x.rows, w.n, w.k, 0, w.n, 0);
    } else {
      const flags = w.finite ? F16_FINITE : 0;
      e.matmul_f16(x.ptr, x.cols, w.ptr, y.ptr, w.n, x.rows, w.n, w.k, 0, w.n, flags);
    }
    if (bias) {
      for (let r = 0; r < x.rows; r++) {
        this.#k.add(y.ptr + r * w.n * 4, bias, y.ptr + r * w.n * 4, w.n);
      }
    }
    return y;
  }

  #normRows(x: WasmTActivation, n: Norm): WasmTActivation {
    const out = this.#alloc(x.rows, x.cols);
    this.#k.layernorm(x.ptr, n.w, n.b, out.ptr, x.cols, this.#cfg.normEps, x.rows);
    return out;
  }

  #normOf(layer: number | "final", which: BlockNorm): Norm {
    if (layer === "final") return this.#normF;
    return which === "mlp" ? this.#layers[layer].norm2 : this.#layers[layer].norm;
  }

  embed(ids: Int32Array): WasmTActivation {
    const d = this.#cfg.dModel;
    const out = this.#alloc(ids.length, d);
    const e = this.#embedding;
    ids.forEach((id, r) => {
      const dst = out.ptr + r * d * 4;
      if (e.dtype === "f32") {
        const f = this.#f32;
        f.copyWithin(dst >>> 2, (e.ptr >>> 2) + id * d, (e.ptr >>> 2) + (id + 1) * d);
      } else this.#k.f16ToF32(e.ptr + id * d * 2, dst, d);
    });
    return out;
  }

  addNorm(
    hidden: WasmTActivation,
    residual: WasmTActivation | null,
    layer: number | "final",
    which: BlockNorm = "mixer",
  ): { normed: WasmTActivation; residual: WasmTActivation } {
    let res = hidden;
    if (residual) {
      this.#k.add(residual.ptr, hidden.ptr, residual.ptr, hidden.rows * hidden.cols);
      this.#free(hidden);
      res = residual;
    }
    return { normed: this.#normRows(res, this.#normOf(layer, which)), residual: res };
  }

  norm(x: WasmTActivation, layer: number, which: BlockNorm): WasmTActivation {
    return this.#normRows(x, this.#normOf(layer, which));
  }

  attention(
    layer: number,
    x: WasmTActivation,
    batch: number,
    seqLen: number,
    kv: WasmKv,
    pos: number,
  ): WasmTActivation {
    const cfg = this.#cfg;
    const { nHeads, nKvHeads, headDim: hd, rotaryDim } = cfg;
    const L = this.#layers[layer];
    const qkv = this.#linear(x, L.qkv, L.qkvBias);
    this.#free(x);
    const qDim = nHeads * hd;
    const kvDim = nKvHeads * hd;
    const rowLen = qDim + 2 * kvDim;
    const e = this.#k.exports;
    // Rotary on the q and k heads (side by side at the start of each row).
    if (rotaryDim > 0) {
      const half = rotaryDim / 2;
      const tab = this.#heap.alloc(2 * seqLen * half * 4);
      const f = this.#f32;
      for (let t = 0; t < seqLen; t++) {
        for (let i = 0; i < half; i++) {
          const invFreq = Math.fround(
            1 / Math.fround(cfg.rotaryBase ** Math.fround((2 * i) / rotaryDim)),
          );
          const angle = Math.fround((pos + t) * invFreq);
          f[(tab >>> 2) + t * half + i] = Math.cos(angle);
          f[(tab >>> 2) + (seqLen + t) * half + i] = Math.sin(angle);
        }
      }
      for (let b = 0; b < batch; b++) {
        e.rotary(
          qkv.ptr + b * seqLen * rowLen * 4,
          rowLen,
          seqLen,
          nHeads + nKvHeads,
          hd,
          rotaryDim,
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
      for (let g = 0; g < nKvHeads; g++) {
        const slot0 = ((b * nKvHeads + g) * cap + pos) * hd;
        for (let t = 0; t < seqLen; t++) {
          const src = (qkv.ptr >>> 2) + (b * seqLen + t) * rowLen + qDim + g * hd;
          f.copyWithin(kBase + slot0 + t * hd, src, src + hd);
          f.copyWithin(vBase + slot0 + t * hd, src + kvDim, src + kvDim + hd);
        }
      }
    }
    const att = this.#alloc(batch * seqLen, qDim);
    const scale = 1 / Math.sqrt(hd);
    const seqBytes = nKvHeads * cap * hd * 4;
    const len = pos + seqLen;
    const splits = seqLen === 1 ? Math.ceil(len / DECODE_SPLIT) : 1;
    let acc = 0;
    let ml = 0;
    if (splits > 1) {
      acc = this.#heap.alloc(splits * qDim * 4);
      ml = this.#heap.alloc(splits * nHeads * 2 * 4);
    }
    for (let b = 0; b < batch; b++) {
      const q = qkv.ptr + b * seqLen * rowLen * 4;
      const kb = kv.k[layer] + b * seqBytes;
      const vb = kv.v[layer] + b * seqBytes;
      const out = att.ptr + b * seqLen * qDim * 4;
      if (splits === 1) {
        e.attn_rows(
          q,
          rowLen,
          out,
          qDim,
          seqLen,
          pos,
          kb,
          vb,
          cap,
          nHeads,
          nKvHeads,
          hd,
          scale,
          0,
          len,
          0,
        );
        continue;
      }
      // Decoding over a long cache: one partial per slot range, then their merge. (The ranges
      // are independent: this is where ranks would each take some.)
      for (let s = 0; s < splits; s++) {
        const j0 = s * DECODE_SPLIT;
        const j1 = Math.min(len, j0 + DECODE_SPLIT);
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
          nHeads,
          nKvHeads,
          hd,
          scale,
          j0,
          j1,
          ml + s * nHeads * 8,
        );
      }
      e.attn_merge(acc, ml, splits, nHeads, hd, out, hd);
    }
    if (splits > 1) {
      this.#heap.free(acc);
      this.#heap.free(ml);
    }
    this.#free(qkv);
    const y = this.#linear(att, L.out, L.outBias);
    this.#free(att);
    return y;
  }

  mlp(layer: number, x: WasmTActivation): WasmTActivation {
    const L = this.#layers[layer];
    const h = this.#linear(x, L.fc1, L.fc1Bias);
    this.#free(x);
    this.#k.exports.gelu(h.ptr, h.ptr, h.rows * h.cols);
    const y = this.#linear(h, L.fc2, L.fc2Bias);
    this.#free(h);
    return y;
  }

  add(a: WasmTActivation, b: WasmTActivation): WasmTActivation {
    this.#k.add(a.ptr, b.ptr, a.ptr, a.rows * a.cols);
    this.#free(b);
    return a;
  }

  lmHead(x: WasmTActivation, batch: number, seqLen: number, lastOnly: boolean): WasmTActivation {
    let rows = x;
    if (lastOnly && seqLen > 1) {
      const d = x.cols;
      rows = this.#alloc(batch, d);
      const f = this.#f32;
      for (let b = 0; b < batch; b++) {
        const src = (x.ptr >>> 2) + ((b + 1) * seqLen - 1) * d;
        f.copyWithin((rows.ptr >>> 2) + b * d, src, src + d);
      }
      this.#free(x);
    }
    const y = this.#linear(rows, this.#lmHead, 0);
    this.#free(rows);
    return y;
  }

  read(a: WasmTActivation): Promise<Float32Array> {
    const p = a.ptr >>> 2;
    const out = this.#f32.slice(p, p + a.rows * a.cols);
    this.#free(a);
    return Promise.resolve(out);
  }

  // -------------------------------------------------------------------------------------------
  // KV cache

  #slotFloats(kv: WasmKv, cap: number): number {
    return kv.batch * this.#cfg.nKvHeads * cap * this.#cfg.headDim;
  }

  createKv(batch: number): WasmKv {
    const n = this.#cfg.nLayer;
    return { batch, capacity: 0, k: new Array(n).fill(0), v: new Array(n).fill(0) };
  }

  reserveKv(kv: WasmKv, length: number, limit = Infinity): void {
    if (length <= kv.capacity) return;
    const cap = Math.max(length, Math.min(Math.max(2 * kv.capacity, 16), limit));
    const { nKvHeads, headDim: hd } = this.#cfg;
    const grow = (old: number) => {
      const p = this.#heap.alloc(this.#slotFloats(kv, cap) * 4);
      if (old) {
        const f = this.#f32;
        for (let bg = 0; bg < kv.batch * nKvHeads; bg++) {
          const src = (old >>> 2) + bg * kv.capacity * hd;
          f.copyWithin((p >>> 2) + bg * cap * hd, src, src + kv.capacity * hd);
        }
        this.#heap.free(old);
      }
      return p;
    };
    kv.k = kv.k.map(grow);
    kv.v = kv.v.map(grow);
    kv.capacity = cap;
  }

  uploadKv(kv: WasmKv, host: KvTensors): void {
    this.reserveKv(kv, host.length);
    const { nKvHeads, headDim: hd } = this.#cfg;
    const n = host.length * hd;
    const f = this.#f32;
    for (let i = 0; i < kv.k.length; i++) {
      for (let bg = 0; bg < kv.batch * nKvHeads; bg++) {
        f.set(host.k[i].subarray(bg * n, (bg + 1) * n), (kv.k[i] >>> 2) + bg * kv.capacity * hd);
        f.set(host.v[i].subarray(bg * n, (bg + 1) * n), (kv.v[i] >>> 2) + bg * kv.capacity * hd);
      }
    }
  }

  downloadKv(kv: WasmKv, length: number): Promise<KvTensors> {
    const { nKvHeads, headDim: hd } = this.#cfg;
    const n = length * hd;
    const f = this.#f32;
    const take = (p: number) => {
      const out = new Float32Array(kv.batch * nKvHeads * n);
      for (let bg = 0; bg < kv.batch * nKvHeads; bg++) {
        const src = (p >>> 2) + bg * kv.capacity * hd;
        out.set(f.subarray(src, src + n), bg * n);
      }
      return out;
    };
    return Promise.resolve({ length, k: kv.k.map(take), v: kv.v.map(take) });
  }

  cloneKv(kv: WasmKv, length: number): WasmKv {
    const c = this.createKv(kv.batch);
    if (kv.capacity === 0) return c;
    this.reserveKv(c, Math.max(length, 1));
    const { nKvHeads, headDim: hd } = this.#cfg;
    const f = this.#f32;
    const copy = (src: number, dst: number) => {
      for (let bg = 0; bg < kv.batch * nKvHeads; bg++) {
        const s = (src >>> 2) + bg * kv.capacity * hd;
        f.copyWithin((dst >>> 2) + bg * c.capacity * hd, s, s + length * hd);
      }
    };
    kv.k.forEach((p, i) => copy(p, c.k[i]));
    kv.v.forEach((p, i) => copy(p, c.v[i]));
    return c;
  }

  freeKv(kv: WasmKv): void {
    for (const p of [...kv.k, ...kv.v]) if (p) this.#heap.free(p);
    kv.k = kv.k.map(() => 0);
    kv.v = kv.v.map(() => 0);
    kv.capacity = 0;
  }

  dispose(): void {
    // The instance and its memory go with the last reference to this backend.
  }
}
