/**
 * The `webgpu` backend for Transformer models (GPT-NeoX): the shared kernels of the Mamba path
 * (`embed`, `add_norm` with LayerNorm, the `matvec` / `matmul` products) plus the attention
 * kernels: `rotary_kv` (rotary embedding, keys and values into the cache), `attn_prefill`
 * (tiled causal attention, no L×L matrix), `attn_decode` (split over slot ranges and merged,
 * flash-decoding), `gelu` and `add`. Work is recorded and submitted when a result is read, as on
 * the Mamba path; the KV cache lives in GPU buffers (`[batch, nKvHeads, capacity, headDim]` per
 * layer) and doubles its capacity when it fills.
 *
 * Fused decoding ({@link WebGpuTransformerBackend.decodeTokens}) records many steps — embedding
 * of the token picked on the GPU, the layers, the LM head, the pick — into few submissions and
 * reads back only the picked ids, a block at a time, through the sampler shared with the Mamba
 * path (`sampler.ts`).
 *
 * @module
 */

import type {
  BlockNorm,
  DecodeOptions,
  KvTensors,
  TransformerBackend,
  TransformerBackendInit,
} from "../../backend.ts";
import { BackendError } from "../../errors.ts";
import type { GptNeoXConfig } from "../../neox_config.ts";
import type { HostTensor } from "../../weights.ts";
import { f32 } from "../ref/weights.ts";
import { type GpuContext, gpuContext } from "./device.ts";
import { type Buf, Recorder } from "./recorder.ts";
import {
  type Kernel,
  kernel,
  loadShaderSources,
  type ShaderDefs,
  type ShaderFile,
} from "./shaders.ts";
import { defaultMatvecShape } from "./backend.ts";
import { GpuSampler } from "./sampler.ts";
import { type GpuMatrix, type GpuNorm, uploadF32, uploadMatrix } from "./weights.ts";

/** An activation: `rows × cols` f32 in a pooled GPU buffer (`null` once consumed). */
export interface GpuTActivation {
  /** Rows (tokens). */
  readonly rows: number;
  /** Columns (features). */
  readonly cols: number;
  /** The buffer. */
  buf: Buf | null;
}

/** A KV cache on the GPU. */
export interface GpuKv {
  /** Sequences. */
  readonly batch: number;
  /** Slots per sequence. */
  capacity: number;
  /** Per layer keys (empty while the capacity is 0). */
  k: Buf[];
  /** Per layer values. */
  v: Buf[];
  /** Set by freeKv. */
  freed: boolean;
}

interface Layer {
  norm: GpuNorm;
  norm2: GpuNorm;
  qkv: GpuMatrix;
  qkvBias?: Buf;
  out: GpuMatrix;
  outBias?: Buf;
  fc1: GpuMatrix;
  fc1Bias?: Buf;
  fc2: GpuMatrix;
  fc2Bias?: Buf;
}

const F32 = 4;
/** Slots per split of a decoding step. */
const SPLIT = 256;

/** Size classes of the buffer pool: within 1/8 of a power of two, at least 4 KiB. */
function sizeClass(bytes: number): number {
  if (bytes <= 4096) return 4096;
  const e = Math.floor(Math.log2(bytes));
  const step = 2 ** Math.max(12, e - 3);
  return Math.ceil(bytes / step) * step;
}

/** The WebGPU backend of Transformer models. Create it with {@link WebGpuTransformerBackend.create}. */
export class WebGpuTransformerBackend implements TransformerBackend<GpuTActivation, GpuKv> {
  /** Always `"webgpu"`. */
  readonly name = "webgpu" as const;
  /** The model's config. */
  readonly config: GptNeoXConfig;
  /** The device context. */
  readonly ctx: GpuContext;
  /** The command recorder. */
  readonly rec: Recorder;
  readonly #layers: Layer[];
  readonly #embedding: GpuMatrix;
  readonly #lmHead: GpuMatrix;
  readonly #normF: GpuNorm;
  readonly #free = new Map<number, Buf[]>();
  readonly #samplers = new Map<number, GpuSampler>();
  /** cos / sin of every position below `cap`, `[cap, rot/2]` each. */
  #rope: { buf: Buf; cap: number };
  #disposed = false;

  private constructor(
    config: GptNeoXConfig,
    ctx: GpuContext,
    rec: Recorder,
    w: TransformerBackendInit["weights"],
  ) {
    this.config = config;
    this.ctx = ctx;
    this.rec = rec;
    const mat = (t: HostTensor, label: string) => uploadMatrix(rec, t, label);
    const vec = (
      t: HostTensor | undefined,
      label: string,
    ) => (t ? uploadF32(rec, f32(t), label) : undefined);
    const norm = (n: { weight: HostTensor; bias?: HostTensor }, label: string): GpuNorm => ({
      weight: vec(n.weight, `${label}.weight`)!,
      bias: vec(n.bias, `${label}.bias`),
    });
    this.#layers = w.layers.map((l, i) => {
      const p = `layers.${i}`;
      return {
        norm: norm(l.norm, `${p}.norm`),
        norm2: norm(l.norm2, `${p}.norm2`),
        qkv: mat(l.qkv, `${p}.qkv`),
        qkvBias: vec(l.qkvBias, `${p}.qkv.bias`),
        out: mat(l.out, `${p}.out`),
        outBias: vec(l.outBias, `${p}.out.bias`),
        fc1: mat(l.fc1, `${p}.fc1`),
        fc1Bias: vec(l.fc1Bias, `${p}.fc1.bias`),
        fc2: mat(l.fc2, `${p}.fc2`),
        fc2Bias: vec(l.fc2Bias, `${p}.fc2.bias`),
      };
    });
    this.#embedding = mat(w.embedding, "embedding");
    this.#lmHead = w.lmHead === w.embedding ? this.#embedding : mat(w.lmHead, "lm_head");
    this.#normF = norm(w.normF, "norm_f");
    this.#rope = { buf: rec.buffer(16, "rope"), cap: 0 };
  }

  /**
   * Uploads the weights (f32, or f16 as stored).
   *
   * @throws {BackendError} when WebGPU or an adapter is missing.
   */
  static async create(init: TransformerBackendInit): Promise<WebGpuTransformerBackend> {
    const [ctx] = await Promise.all([gpuContext(), loadShaderSources()]);
    const rec = new Recorder(ctx);
    const be = new WebGpuTransformerBackend(init.config, ctx, rec, init.weights);
    rec.flush();
    await ctx.device.queue.onSubmittedWorkDone();
    rec.checkErrors();
    return be;
  }

  /** Why this backend can no longer compute, once its device is lost. */
  get lostReason(): string | undefined {
    return this.rec.lostReason;
  }

  // ---------------------------------------------------------------- buffers

  #temp(bytes: number): Buf {
    const size = sizeClass(bytes);
    return this.#free.get(size)?.pop() ?? this.rec.buffer(size, "activation");
  }

  #release(b: Buf): void {
    let list = this.#free.get(b.size);
    if (!list) this.#free.set(b.size, list = []);
    list.push(b);
  }

  #act(rows: number, cols: number): GpuTActivation {
    return { rows, cols, buf: this.#temp(rows * cols * F32) };
  }

  #alive(): void {
    if (this.#disposed) throw new BackendError("the webgpu backend was disposed");
    this.rec.throwIfLost();
  }

  #use(a: GpuTActivation, what: string): Buf {
    this.#alive();
    if (!a.buf) throw new BackendError(`${what}: this activation was already consumed`);
    return a.buf;
  }

  #consume(a: GpuTActivation): void {
    if (a.buf) this.#release(a.buf);
    a.buf = null;
  }

  /** The compiled pipeline of `entry` in `wgsl/<file>.wgsl` specialised with `defs`. */
  pipeline(file: ShaderFile, entry: string, defs: ShaderDefs = {}): Kernel {
    return kernel(this.ctx.device, file, entry, defs);
  }

  #pipeline(file: ShaderFile, entry: string, defs: ShaderDefs = {}): Kernel {
    return this.pipeline(file, entry, defs);
  }

  // ---------------------------------------------------------------- shared kernels

  /**
   * `y[m, yOff + n] = x[m, xOff + …] · Wᵀ + bias` for `M` rows (strides and offsets in floats):
   * the Mamba path's matrix-vector kernel for up to 16 rows, its tiled matmul beyond.
   */
  #linear(
    W: GpuMatrix,
    bias: Buf | undefined,
    x: Buf,
    xOff: number,
    xStride: number,
    M: number,
    y: Buf,
  ): void {
    const K = W.K;
    if (M <= 16) {
      const vec = W.f16 ? 8 : 4;
      // The Mamba path's split of the same product (no prologue or epilogue here).
      const { team, rpt, unr } = defaultMatvecShape(W, M);
      const k = this.#pipeline("matvec", "matvec", {
        MB: M,
        RPT: rpt,
        NV: M * rpt,
        NR: Math.ceil(M * rpt / 8),
        UNR: unr,
        WG: 256,
        TEAM: team,
        F16: W.f16,
        F16NATIVE: false,
        HALF: W.f16,
        XVEC: K % vec === 0 && xOff % 4 === 0 && xStride % 4 === 0,
        PRO_RMS: false,
        RMS_STAGE: false,
        PRO_ADD: false,
        RES_OUT: false,
        XS4: 1,
        BIAS: !!bias,
        SOFTPLUS: false,
        CONV_EPI: false,
        CONV_BIAS: false,
        SCAN_EPI: false,
        NS: 0,
      });
      const rows = (256 / team) * rpt;
      for (const part of W.parts) {
        const groups = Math.ceil(part.n / rows);
        const gx = Math.min(groups, 65535);
        this.rec.dispatch(
          k,
          "uuuuuuuufuuuuuuuuu",
          [part.n, K, W.stride, xStride, xOff, W.N, 0, part.n0, 0, K, 0, 0, 0, 0, 0, 0, 0, 0],
          [part.buf, x, y, bias ?? null],
          gx,
          Math.ceil(groups / gx),
        );
      }
      return;
    }
    const big = M >= 128 && W.N >= 128;
    const TM = big ? 8 : 4;
    const k = this.#pipeline("matmul", "matmul", {
      TM,
      TN: TM,
      BK: big ? 8 : 16,
      F16: W.f16,
      BIAS: !!bias,
      SOFTPLUS: false,
    });
    const BM = 16 * TM;
    for (const part of W.parts) {
      this.rec.dispatch(
        k,
        "uuuuuuuuu",
        [M, part.n, K, W.stride, xStride, xOff, W.N, 0, part.n0],
        [part.buf, x, y, bias ?? null],
        Math.ceil(part.n / BM),
        Math.ceil(M / BM),
      );
    }
  }

  #norm(x: Buf, rows: number, cols: number, res: Buf | null, n: GpuNorm, resOut: Buf, normed: Buf) {
    const k = this.#pipeline("add_norm", "add_norm", { HAS_RES: !!res, LAYER_NORM: true });
    this.rec.dispatch(
      k,
      "uuf",
      [rows, cols, this.config.normEps],
      [x, res, n.weight, n.bias!, resOut, normed],
      Math.min(rows, 65535),
    );
  }

  #normOf(layer: number | "final", which: BlockNorm): GpuNorm {
    if (layer === "final") return this.#normF;
    return which === "mlp" ? this.#layers[layer].norm2 : this.#layers[layer].norm;
  }

  embed(ids: Int32Array): GpuTActivation {
    this.#alive();
    const idBuf = this.#temp(ids.length * 4);
    this.rec.write(idBuf, 0, ids);
    const out = this.#embedFrom(idBuf, ids.length);
    this.#release(idBuf);
    return out;
  }

  /** The embedding of `rows` token ids held (u32) in a GPU buffer. */
  #embedFrom(ids: Buf, rows: number): GpuTActivation {
    const out = this.#act(rows, this.config.dModel);
    const E = this.#embedding;
    const k = this.#pipeline("embed", "embed", { F16: E.f16 });
    for (const part of E.parts) {
      this.rec.dispatch(
        k,
        "uuuuu",
        [rows, E.K, part.n0, part.n0 + part.n, E.stride],
        [ids, part.buf, out.buf!],
        Math.ceil(E.K / 64),
        Math.min(rows, 65535),
      );
    }
    return out;
  }

  addNorm(
    hidden: GpuTActivation,
    residual: GpuTActivation | null,
    layer: number | "final",
    which: BlockNorm = "mixer",
  ): { normed: GpuTActivation; residual: GpuTActivation } {
    const h = this.#use(hidden, "addNorm");
    const r = residual ? this.#use(residual, "addNorm") : null;
    const resOut = this.#act(hidden.rows, hidden.cols);
    const normed = this.#act(hidden.rows, hidden.cols);
    this.#norm(
      h,
      hidden.rows,
      hidden.cols,
      r,
      this.#normOf(layer, which),
      resOut.buf!,
      normed.buf!,
    );
    this.#consume(hidden);
    if (residual) this.#consume(residual);
    return { normed, residual: resOut };
  }

  norm(x: GpuTActivation, layer: number, which: BlockNorm): GpuTActivation {
    const xb = this.#use(x, "norm");
    const copy = this.#temp(x.rows * x.cols * F32);
    const normed = this.#act(x.rows, x.cols);
    this.#norm(xb, x.rows, x.cols, null, this.#normOf(layer, which), copy, normed.buf!);
    this.#release(copy);
    return normed;
  }

  /** Makes the rotary table cover positions below `n`. */
  #ropeFor(n: number): Buf {
    const { rotaryDim, rotaryBase } = this.config;
    if (n <= this.#rope.cap) return this.#rope.buf;
    const cap = Math.max(n, 2 * this.#rope.cap, 256);
    const half = rotaryDim / 2;
    const tab = new Float32Array(Math.max(4, 2 * cap * half));
    for (let i = 0; i < half; i++) {
      // float32 like the reference: inv_freq, then the angle.
      const invFreq = Math.fround(1 / Math.fround(rotaryBase ** Math.fround((2 * i) / rotaryDim)));
      for (let p = 0; p < cap; p++) {
        const angle = Math.fround(p * invFreq);
        tab[p * half + i] = Math.cos(angle);
        tab[(cap + p) * half + i] = Math.sin(angle);
      }
    }
    this.rec.destroy(this.#rope.buf);
    this.#rope = { buf: uploadF32(this.rec, tab, "rope"), cap };
    return this.#rope.buf;
  }

  attention(
    layer: number,
    x: GpuTActivation,
    batch: number,
    seqLen: number,
    kv: GpuKv,
    pos: number,
  ): GpuTActivation {
    const cfg = this.config;
    const { nHeads, nKvHeads, headDim: hd } = cfg;
    const xb = this.#use(x, "attention");
    if (kv.freed) throw new BackendError("attention: the KV cache was freed");
    if (kv.capacity < pos + seqLen) throw new BackendError("attention: KV cache not reserved");
    const L = this.#layers[layer];
    const rows = batch * seqLen;
    const rowLen = (nHeads + 2 * nKvHeads) * hd;
    const qkv = this.#temp(rows * rowLen * F32);
    this.#linear(L.qkv, L.qkvBias, xb, 0, cfg.dModel, rows, qkv);
    this.#consume(x);
    const rope = this.#ropeFor(pos + seqLen);
    this.rec.dispatch(
      this.#pipeline("rotary_kv", "rotary_kv"),
      "uuuuuuuuu",
      [rows, seqLen, pos, nHeads, nKvHeads, hd, cfg.rotaryDim, kv.capacity, this.#rope.cap],
      [qkv, kv.k[layer], kv.v[layer], rope],
      Math.min(rows, 65535),
      Math.ceil(rows / 65535),
    );
    const att = this.#temp(rows * nHeads * hd * F32);
    const scale = 1 / Math.sqrt(hd);
    if (seqLen === 1) {
      const len = pos + 1;
      const nsplit = Math.ceil(len / SPLIT);
      const part = this.#temp(batch * nHeads * nsplit * (hd + 2) * F32);
      const defs = { HD: hd, SPLIT };
      const values = [len, nHeads, nKvHeads, kv.capacity, nsplit, scale];
      this.rec.dispatch(
        this.#pipeline("attn_decode", "attn_split", defs),
        "uuuuuf",
        values,
        [qkv, kv.k[layer], kv.v[layer], part, null],
        nsplit,
        nHeads,
        batch,
      );
      this.rec.dispatch(
        this.#pipeline("attn_decode", "attn_merge", defs),
        "uuuuuf",
        values,
        [null, null, null, part, att],
        nHeads,
        batch,
      );
      this.#release(part);
    } else {
      const BK = Math.max(1, Math.min(32, Math.floor(4096 / hd)));
      this.rec.dispatch(
        this.#pipeline("attn_prefill", "attn_prefill", { HD: hd, BK }),
        "uuuuuf",
        [seqLen, pos, nHeads, nKvHeads, kv.capacity, scale],
        [qkv, kv.k[layer], kv.v[layer], att],
        Math.ceil(seqLen / 64),
        nHeads,
        batch,
      );
    }
    this.#release(qkv);
    const out = this.#act(rows, cfg.dModel);
    this.#linear(L.out, L.outBias, att, 0, nHeads * hd, rows, out.buf!);
    this.#release(att);
    return out;
  }

  mlp(layer: number, x: GpuTActivation): GpuTActivation {
    const cfg = this.config;
    const xb = this.#use(x, "mlp");
    const L = this.#layers[layer];
    const h = this.#temp(x.rows * cfg.intermediateSize * F32);
    this.#linear(L.fc1, L.fc1Bias, xb, 0, cfg.dModel, x.rows, h);
    this.#consume(x);
    const n = x.rows * cfg.intermediateSize;
    const groups = Math.ceil(n / 256);
    this.rec.dispatch(
      this.#pipeline("gelu", "gelu"),
      "u",
      [n],
      [h],
      Math.min(groups, 65535),
      Math.ceil(groups / 65535),
    );
    const out = this.#act(x.rows, cfg.dModel);
    this.#linear(L.fc2, L.fc2Bias, h, 0, cfg.intermediateSize, x.rows, out.buf!);
    this.#release(h);
    return out;
  }

  add(a: GpuTActivation, b: GpuTActivation): GpuTActivation {
    const ab = this.#use(a, "add");
    const bb = this.#use(b, "add");
    const n = a.rows * a.cols;
    const groups = Math.ceil(n / 256);
    this.rec.dispatch(
      this.#pipeline("add", "add"),
      "u",
      [n],
      [ab, bb],
      Math.min(groups, 65535),
      Math.ceil(groups / 65535),
    );
    this.#consume(b);
    return a;
  }

  lmHead(x: GpuTActivation, batch: number, seqLen: number, lastOnly: boolean): GpuTActivation {
    const xb = this.#use(x, "lmHead");
    const d = this.config.dModel;
    const V = this.config.paddedVocabSize;
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
    this.#linear(this.#lmHead, undefined, xb, xOff, xStride, rows, out.buf!);
    this.#consume(x);
    return out;
  }

  async read(a: GpuTActivation): Promise<Float32Array> {
    const b = this.#use(a, "read");
    const bytes = await this.rec.read(b, 0, a.rows * a.cols * F32);
    this.#consume(a);
    return new Float32Array(bytes);
  }

  /**
   * Fused decoding (see {@link TransformerOps.decodeTokens}): every step — embedding of the
   * token picked on the GPU, the layers at position `pos + step`, the LM head, the next pick —
   * is recorded without a read-back; the ids come back a block at a time.
   */
  decodeTokens(
    kv: GpuKv,
    pos: number,
    tokens: Int32Array,
    n: number,
    options: DecodeOptions,
    blocks: (hidden: GpuTActivation, position: number) => GpuTActivation,
    progress: { steps: number },
  ): AsyncGenerator<number[][]> {
    this.#alive();
    const B = tokens.length;
    if (kv.batch !== B) {
      throw new BackendError(`decodeTokens: ${B} tokens for ${kv.batch} sequences`);
    }
    if (kv.capacity < pos + n) throw new BackendError("decodeTokens: KV cache not reserved");
    // The rotary table for every position of the run, before any step is recorded.
    this.#ropeFor(pos + n);
    let smp = this.#samplers.get(B);
    if (!smp) {
      smp = new GpuSampler(this, B, this.config.paddedVocabSize);
      this.#samplers.set(B, smp);
    }
    const sampler = smp;
    const d = this.config.dModel;
    let step = 0;
    return sampler.run(tokens, n, options, (slot, s, vocab) => {
      const normed = blocks(this.#embedFrom(sampler.tok, B), pos + step++);
      const x = this.#use(normed, "decodeTokens");
      this.#linear(this.#lmHead, undefined, x, 0, d, B, sampler.logits);
      this.#consume(normed);
      sampler.encodeSample(slot, s, vocab);
    }, progress);
  }

  // ---------------------------------------------------------------- KV cache

  /** Bytes of one layer's keys (or values) at capacity `cap`. */
  #layerBytes(kv: GpuKv, cap: number): number {
    return kv.batch * this.config.nKvHeads * cap * this.config.headDim * F32;
  }

  createKv(batch: number): GpuKv {
    this.#alive();
    return { batch, capacity: 0, k: [], v: [], freed: false };
  }

  reserveKv(kv: GpuKv, length: number, limit = Infinity): void {
    this.#alive();
    if (kv.freed) throw new BackendError("reserveKv: the KV cache was freed");
    if (length <= kv.capacity) return;
    const cap = Math.max(length, Math.min(Math.max(2 * kv.capacity, 16), limit));
    const bytes = this.#layerBytes(kv, cap);
    if (bytes > Math.min(this.ctx.maxBinding, this.ctx.maxBuffer)) {
      throw new BackendError(
        `a KV cache of ${cap} slots × ${kv.batch} sequences needs ${bytes} bytes per layer, more ` +
          `than the device's largest binding (${this.ctx.maxBinding}); lower maxContext or the batch`,
      );
    }
    const hd = this.config.headDim;
    const runs = kv.batch * this.config.nKvHeads;
    const grow = (old: Buf | undefined, label: string) => {
      const b = this.rec.buffer(bytes, label);
      if (old) {
        // Each (sequence, head) run of slots moves to its place in the larger cache.
        for (let r = 0; r < runs; r++) {
          this.rec.copy(
            old,
            r * kv.capacity * hd * F32,
            b,
            r * cap * hd * F32,
            kv.capacity * hd * F32,
          );
        }
        this.rec.destroy(old);
      }
      return b;
    };
    const n = this.config.nLayer;
    kv.k = Array.from({ length: n }, (_, i) => grow(kv.k[i], `kv.k.${i}`));
    kv.v = Array.from({ length: n }, (_, i) => grow(kv.v[i], `kv.v.${i}`));
    kv.capacity = cap;
  }

  uploadKv(kv: GpuKv, host: KvTensors): void {
    this.reserveKv(kv, host.length);
    const hd = this.config.headDim;
    const n = host.length * hd;
    const runs = kv.batch * this.config.nKvHeads;
    for (let i = 0; i < this.config.nLayer; i++) {
      for (let r = 0; r < runs; r++) {
        this.rec.write(kv.k[i], r * kv.capacity * hd * F32, host.k[i].subarray(r * n, (r + 1) * n));
        this.rec.write(kv.v[i], r * kv.capacity * hd * F32, host.v[i].subarray(r * n, (r + 1) * n));
      }
    }
  }

  async downloadKv(kv: GpuKv, length: number): Promise<KvTensors> {
    this.#alive();
    const hd = this.config.headDim;
    const L = this.config.nLayer;
    const runs = kv.batch * this.config.nKvHeads;
    const per = runs * length * hd;
    if (length === 0) {
      const empty = () => Array.from({ length: L }, () => new Float32Array(0));
      return { length, k: empty(), v: empty() };
    }
    const all = this.#temp(2 * L * per * F32);
    for (let i = 0; i < L; i++) {
      for (let r = 0; r < runs; r++) {
        const src = r * kv.capacity * hd * F32;
        const size = length * hd * F32;
        this.rec.copy(kv.k[i], src, all, ((2 * i) * per + r * length * hd) * F32, size);
        this.rec.copy(kv.v[i], src, all, ((2 * i + 1) * per + r * length * hd) * F32, size);
      }
    }
    const f = new Float32Array(await this.rec.read(all, 0, 2 * L * per * F32));
    this.#release(all);
    const k: Float32Array[] = [];
    const v: Float32Array[] = [];
    for (let i = 0; i < L; i++) {
      k.push(f.slice(2 * i * per, (2 * i + 1) * per));
      v.push(f.slice((2 * i + 1) * per, (2 * i + 2) * per));
    }
    return { length, k, v };
  }

  cloneKv(kv: GpuKv, length: number): GpuKv {
    const c = this.createKv(kv.batch);
    if (kv.capacity === 0 || length === 0) return c;
    this.reserveKv(c, length);
    const hd = this.config.headDim;
    const runs = kv.batch * this.config.nKvHeads;
    for (let i = 0; i < this.config.nLayer; i++) {
      for (let r = 0; r < runs; r++) {
        const size = length * hd * F32;
        this.rec.copy(kv.k[i], r * kv.capacity * hd * F32, c.k[i], r * c.capacity * hd * F32, size);
        this.rec.copy(kv.v[i], r * kv.capacity * hd * F32, c.v[i], r * c.capacity * hd * F32, size);
      }
    }
    return c;
  }

  freeKv(kv: GpuKv): void {
    if (kv.freed) return;
    kv.freed = true;
    for (const b of [...kv.k, ...kv.v]) this.rec.destroy(b);
    kv.k = [];
    kv.v = [];
    kv.capacity = 0;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const smp of this.#samplers.values()) smp.dispose();
    this.#samplers.clear();
    this.rec.dispose();
    this.#free.clear();
  }
}
