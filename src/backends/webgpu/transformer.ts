/**
 * The `webgpu` backend for Transformer models (GPT-NeoX): the shared kernels of the Mamba path
 * (`embed`, `add_norm` with LayerNorm, the `matvec` / `matmul` products) plus the attention
 * kernels: `rotary_kv` (rotary embedding, keys and values into the cache), `attn_prefill`
 * (tiled causal attention, no L×L matrix), `attn_decode` (split over slot ranges and merged,
 * flash-decoding), `gelu` and `add`. Work is recorded and submitted when a result is read, as on
 * the Mamba path; the KV cache lives in GPU buffers (`[batch, nKvHeads, capacity, headDim]` per
 * layer) and doubles its capacity when it fills.
 *
 * Fused decoding ({@link WebGpuTransformerBackend.decodeTokens}) runs like the Mamba path's
 * `DecodePlan`: one step — embedding of the token picked on the GPU, the layers, the LM head —
 * is recorded once (its position lives in a GPU buffer that the step advances, and its attention
 * grid covers the cache's capacity) and replayed for every token, followed by the pick, through
 * the sampler shared with the Mamba path (`sampler.ts`); only the picked ids are read back, a
 * block at a time. A decoded layer is seven dispatches: add + LayerNorm (both norms of a
 * parallel block, and its pending residual sum, in one pass), qkv, attention split (with the
 * new token's rotary embedding and cache write, when every query head has its own KV head) and
 * merge, the output product, fc1 with GELU in its epilogue, fc2.
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
import type { ResolvedSamplingOptions } from "../../sampling.ts";
import type { HostTensor } from "../../weights.ts";
import { f32 } from "../ref/weights.ts";
import { type GpuContext, gpuContext } from "./device.ts";
import { type Buf, type Command, Recorder } from "./recorder.ts";
import {
  type Kernel,
  kernel,
  loadShaderSources,
  type ShaderDefs,
  type ShaderFile,
} from "./shaders.ts";
import { defaultMatvecShape, PRODUCT_PARAMS } from "./backend.ts";
import { GpuSampler, samplingKey } from "./sampler.ts";
import { type GpuMatrix, type GpuNorm, uploadF32, uploadMatrix } from "./weights.ts";

/** An activation: `rows × cols` f32 in a pooled GPU buffer (`null` once consumed). */
export interface GpuTActivation {
  /** Rows (tokens). */
  readonly rows: number;
  /** Columns (features). */
  readonly cols: number;
  /** The buffer. */
  buf: Buf | null;
  /**
   * A second addend not added yet ({@link WebGpuTransformerBackend.add} leaves the sum to the
   * next kernel that reads it: the next add + norm folds it in, anything else forms it first).
   */
  plus?: Buf | null;
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
/** Fewest slots a split of decoding attention takes (a lane each). */
const MIN_CHUNK = 64;
/** Most slots a split of decoding attention takes (its scores stay in workgroup memory). */
const MAX_CHUNK = 2048;
/** Workgroups decoding attention aims for (an H200 holds about 16 of 64 lanes per SM). */
const SPLIT_GROUPS = 2048;

/** The fused decoding buffers of one batch size. */
interface DecodeRun {
  /** Picks the next tokens and runs the block loop. */
  readonly sampler: GpuSampler;
  /** The position of the step being run (u32), advanced on the GPU at the end of each step. */
  readonly pos: Buf;
  /** The step recorded once and replayed, and what it was recorded for. */
  step?: { key: string; body: Command[] };
  /** The picks recorded per output slot, and the sampling setup they were recorded for. */
  tails?: { key: string; slots: Command[][] };
}

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
  readonly #decode = new Map<number, DecodeRun>();
  /**
   * The MLP norm of a parallel-residual block, computed with its attention norm (both read the
   * same residual) and handed out by the {@link norm} call that asks for it next.
   */
  #norm2: { of: GpuTActivation; buf: Buf; layer: number; normed: GpuTActivation } | null = null;
  /** While a fused decoding step is recorded: the GPU buffer that holds its position. */
  #stepPos: Buf | null = null;
  /** cos / sin of every position below `cap`, `[cap, rot/2]` each. */
  #rope: { buf: Buf; cap: number };
  #disposed = false;
  /**
   * Workgroups decoding attention aims for (its splits per head are this over the heads of the
   * batch, within the split length bounds). Tests lower it to cover long splits.
   */
  splitGroups: number = SPLIT_GROUPS;

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

  /** The buffer of `a`, its pending addend added first unless `settle` is false. */
  #use(a: GpuTActivation, what: string, settle = true): Buf {
    this.#alive();
    if (!a.buf) throw new BackendError(`${what}: this activation was already consumed`);
    if (settle && a.plus) {
      const n = a.rows * a.cols;
      const groups = Math.ceil(n / 256);
      this.rec.dispatch(
        this.#pipeline("add", "add"),
        "u",
        [n],
        [a.buf, a.plus],
        Math.min(groups, 65535),
        Math.ceil(groups / 65535),
      );
      this.#release(a.plus);
      a.plus = null;
    }
    return a.buf;
  }

  #consume(a: GpuTActivation): void {
    if (a.buf) this.#release(a.buf);
    if (a.plus) this.#release(a.plus);
    a.buf = null;
    a.plus = null;
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
    gelu = false,
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
        GELU: gelu,
        CONV_EPI: false,
        CONV_BIAS: false,
      });
      const rows = (256 / team) * rpt;
      for (const part of W.parts) {
        const groups = Math.ceil(part.n / rows);
        const gx = Math.min(groups, 65535);
        this.rec.dispatch(
          k,
          PRODUCT_PARAMS,
          [M, part.n, K, W.stride, xStride, xOff, W.N, 0, part.n0, 0, K, 0, 0, 0],
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
    if (gelu) {
      const n = M * W.N;
      const groups = Math.ceil(n / 256);
      this.rec.dispatch(
        this.#pipeline("gelu", "gelu"),
        "u",
        [n],
        [y],
        Math.min(groups, 65535),
        Math.ceil(groups / 65535),
      );
    }
  }

  /**
   * `resOut = x (+ x2) (+ res)`, `normed = LayerNorm(resOut)` with `n`, and with `second` also
   * its LayerNorm with a second norm's weights.
   */
  #norm(
    x: Buf,
    rows: number,
    cols: number,
    res: Buf | null,
    n: GpuNorm,
    resOut: Buf,
    normed: Buf,
    x2: Buf | null = null,
    second: { n: GpuNorm; normed: Buf } | null = null,
  ) {
    const k = this.#pipeline("add_norm", "add_norm", {
      HAS_RES: !!res,
      LAYER_NORM: true,
      HAS_RES2: !!x2,
      NORM2: !!second,
    });
    this.rec.dispatch(
      k,
      "uuf",
      [rows, cols, this.config.normEps],
      [
        x,
        res,
        n.weight,
        n.bias!,
        resOut,
        normed,
        x2,
        second?.n.weight ?? null,
        second?.n.bias ?? null,
        second?.normed ?? null,
      ],
      Math.min(rows, 65535),
    );
  }

  /** Drops an MLP norm computed ahead that nobody asked for. */
  #dropNorm2(): void {
    if (this.#norm2) this.#consume(this.#norm2.normed);
    this.#norm2 = null;
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
    // A pending second addend of `hidden` is summed here.
    const h = this.#use(hidden, "addNorm", false);
    const r = residual ? this.#use(residual, "addNorm") : null;
    this.#dropNorm2();
    const resOut = this.#act(hidden.rows, hidden.cols);
    const normed = this.#act(hidden.rows, hidden.cols);
    // A parallel-residual block's MLP norm reads the same residual: computed in the same pass.
    const both = this.config.parallelResidual && which === "mixer" && layer !== "final";
    const normed2 = both ? this.#act(hidden.rows, hidden.cols) : null;
    this.#norm(
      h,
      hidden.rows,
      hidden.cols,
      r,
      this.#normOf(layer, which),
      resOut.buf!,
      normed.buf!,
      hidden.plus ?? null,
      normed2 ? { n: this.#normOf(layer, "mlp"), normed: normed2.buf! } : null,
    );
    if (normed2) {
      this.#norm2 = { of: resOut, buf: resOut.buf!, layer: layer as number, normed: normed2 };
    }
    this.#consume(hidden);
    if (residual) this.#consume(residual);
    // Nothing reads the final residual: back to the pool at once (kept, it leaked a buffer a call).
    if (layer === "final") this.#consume(resOut);
    return { normed, residual: resOut };
  }

  norm(x: GpuTActivation, layer: number, which: BlockNorm): GpuTActivation {
    const ahead = this.#norm2;
    if (
      ahead && ahead.of === x && ahead.buf === x.buf && ahead.layer === layer && which === "mlp"
    ) {
      this.#norm2 = null;
      return ahead.normed;
    }
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
    // Inside a recorded decoding step the position comes from the GPU (the step is replayed).
    const stepPos = seqLen === 1 ? this.#stepPos : null;
    // Decoding with a KV head per query head: the split that holds the new slot writes it.
    const fuseRope = seqLen === 1 && nKvHeads === nHeads;
    if (!fuseRope) {
      this.rec.dispatch(
        this.#pipeline("rotary_kv", "rotary_kv", { POS_BUF: !!stepPos }),
        "uuuuuuuuu",
        [
          rows,
          seqLen,
          stepPos ? 0 : pos,
          nHeads,
          nKvHeads,
          hd,
          cfg.rotaryDim,
          kv.capacity,
          this.#rope.cap,
        ],
        [qkv, kv.k[layer], kv.v[layer], rope, stepPos],
        Math.min(rows, 65535),
        Math.ceil(rows / 65535),
      );
    }
    const att = this.#temp(rows * nHeads * hd * F32);
    const scale = 1 / Math.sqrt(hd);
    if (seqLen === 1) {
      const len = pos + 1;
      // A replayed step covers every length up to the capacity: its split count follows that.
      const nsplit = this.#splits(batch, stepPos ? kv.capacity : len);
      const part = this.#temp(batch * nHeads * nsplit * (hd + 2) * F32);
      const v4 = hd % 4 === 0;
      const lanes = v4 ? hd / 4 : hd;
      if (lanes > 256) throw new BackendError(`attention: head width ${hd} is too wide`);
      const wg = Math.max(64, 2 ** Math.ceil(Math.log2(lanes)));
      const defs = {
        HD: hd,
        V4: v4,
        WG: wg,
        MINCHUNK: MIN_CHUNK,
        MAXCHUNK: MAX_CHUNK,
        POS_BUF: !!stepPos,
        ROPE: fuseRope,
      };
      const values = [
        stepPos ? 0 : len,
        nHeads,
        nKvHeads,
        kv.capacity,
        nsplit,
        scale,
        cfg.rotaryDim,
        this.#rope.cap,
      ];
      this.rec.dispatch(
        this.#pipeline("attn_decode", "attn_split", defs),
        "uuuuufuu",
        values,
        [qkv, kv.k[layer], kv.v[layer], part, null, stepPos, fuseRope ? rope : null],
        nsplit,
        nHeads,
        batch,
      );
      this.rec.dispatch(
        this.#pipeline("attn_decode", "attn_merge", { ...defs, POS_BUF: false, ROPE: false }),
        "uuuuufuu",
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

  /**
   * Splits per head of decoding attention over up to `cap` slots: enough workgroups to fill
   * the GPU, a lane per slot at least, and at most {@link MAX_CHUNK} slots each.
   */
  #splits(batch: number, cap: number): number {
    const fill = Math.ceil(this.splitGroups / (batch * this.config.nHeads));
    const s = Math.min(fill, Math.ceil(cap / MIN_CHUNK));
    return Math.max(s, Math.ceil(cap / MAX_CHUNK), 1);
  }

  mlp(layer: number, x: GpuTActivation): GpuTActivation {
    const cfg = this.config;
    const xb = this.#use(x, "mlp");
    const L = this.#layers[layer];
    const h = this.#temp(x.rows * cfg.intermediateSize * F32);
    this.#linear(L.fc1, L.fc1Bias, xb, 0, cfg.dModel, x.rows, h, true);
    this.#consume(x);
    const out = this.#act(x.rows, cfg.dModel);
    this.#linear(L.fc2, L.fc2Bias, h, 0, cfg.intermediateSize, x.rows, out.buf!);
    this.#release(h);
    return out;
  }

  /** `a + b`, left pending in `a` (see {@link GpuTActivation.plus}); consumes `b`. */
  add(a: GpuTActivation, b: GpuTActivation): GpuTActivation {
    this.#use(a, "add");
    const bb = this.#use(b, "add");
    a.plus = bb;
    b.buf = null;
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
    const rope = this.#ropeFor(pos + n);
    let run = this.#decode.get(B);
    if (!run) {
      run = {
        sampler: new GpuSampler(this, B, this.config.paddedVocabSize),
        pos: this.rec.buffer(16, "decode.pos"),
      };
      this.#decode.set(B, run);
    }
    const r = run;
    // The recorded step holds the cache's and the rotary table's buffers.
    const key = `${kv.k[0]?.id}:${kv.v[0]?.id}:${kv.capacity}:${rope.id}`;
    let first = true;
    return r.sampler.run(tokens, n, options, (slot, s, vocab) => {
      if (first) {
        first = false;
        this.rec.write(r.pos, 0, Uint32Array.of(pos));
      }
      if (r.step?.key !== key) {
        r.step = { key, body: this.rec.capture(() => this.#encodeStep(r, B, pos, blocks)) };
      }
      this.rec.replay(r.step.body);
      // The picks write into the sampler's output buffer, replaced when a larger block needs it.
      const tailKey = `${samplingKey(s, vocab)}:${r.sampler.generation}`;
      if (r.tails?.key !== tailKey) r.tails = { key: tailKey, slots: [] };
      r.tails.slots[slot] ??= this.rec.capture(() => r.sampler.encodeSample(slot, s, vocab));
      this.rec.replay(r.tails.slots[slot]);
    }, progress);
  }

  /**
   * The dispatches of the fused decoding step of `batch` sequences as last recorded (the model
   * up to the logits, without the advance of the position, so that replaying them keeps timing
   * the same context), then the pick of the next token with sampling `s` (for profiles:
   * `bench/webgpu_neox_step_profile.ts`). Undefined before a fused decoding run of that batch.
   */
  decodeStepCommands(
    batch: number,
    s: ResolvedSamplingOptions,
    vocab: number,
  ): Command[] | undefined {
    const run = this.#decode.get(batch);
    if (!run?.step) return undefined;
    const body = run.step.body.filter((c) => !c.label.includes(":advance_pos:"));
    return [...body, ...this.rec.capture(() => run.sampler.encodeSample(0, s, vocab))];
  }

  /**
   * Records one decoding step (tok → logits, then the position advanced) whose attention reads
   * its position from `run.pos`, so that it can be replayed at every position.
   */
  #encodeStep(
    run: DecodeRun,
    B: number,
    pos: number,
    blocks: (hidden: GpuTActivation, position: number) => GpuTActivation,
  ): void {
    this.#stepPos = run.pos;
    try {
      const normed = blocks(this.#embedFrom(run.sampler.tok, B), pos);
      const x = this.#use(normed, "decodeTokens");
      this.#linear(this.#lmHead, undefined, x, 0, this.config.dModel, B, run.sampler.logits);
      this.#consume(normed);
      this.rec.dispatch(
        this.#pipeline("rotary_kv", "advance_pos", { POS_BUF: true }),
        "",
        [],
        [null, null, null, null, run.pos],
        1,
      );
    } finally {
      this.#stepPos = null;
    }
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
    for (const run of this.#decode.values()) run.sampler.dispose();
    this.#decode.clear();
    this.rec.dispose();
    this.#free.clear();
  }
}
