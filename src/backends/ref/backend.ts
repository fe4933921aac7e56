/**
 * The `ref` backend: plain TypeScript, float32, one obvious loop per formula. It is the readable
 * specification the other backends are checked against, not a fast path.
 *
 * @module
 */

import type {
  Backend,
  BackendInit,
  BlockNorm,
  KvTensors,
  StateTensors,
  TransformerBackendInit,
  TransformerOps,
} from "../../backend.ts";
import type { MambaConfig } from "../../config.ts";
import { BackendError } from "../../errors.ts";
import type { GptNeoXConfig } from "../../neox_config.ts";
import { stateLayout, zeroStateTensors } from "../../state.ts";
import { attention, type RefKvLayer } from "./attention.ts";
import { mamba1Mixer } from "./mamba1.ts";
import { mamba2Mixer } from "./mamba2.ts";
import { gelu, layerNorm, linear, rmsNorm } from "./ops.ts";
import {
  type RefLayer,
  type RefNorm,
  type RefTransformerLayer,
  refTransformerWeights,
  refWeights,
} from "./weights.ts";

/** An activation of the reference backend: a `[rows, cols]` float32 matrix. */
export interface RefActivation {
  /** Number of rows (tokens). */
  rows: number;
  /** Number of columns (features). */
  cols: number;
  /** Row-major values. */
  data: Float32Array;
}

/** A KV cache of the reference backend: per layer `[batch, nKvHeads, capacity, headDim]`. */
export interface RefKv {
  /** Sequences. */
  readonly batch: number;
  /** Slots per sequence. */
  capacity: number;
  /** Per layer keys and values. */
  layers: RefKvLayer[];
}

/**
 * The reference backend, for Mamba models ({@link BackendInit}) and Transformer models
 * ({@link TransformerBackendInit}) alike: the embedding, norms and LM head are shared, the
 * mixer is Mamba's, attention and MLP the Transformer's.
 */
export class RefBackend
  implements Backend<RefActivation, StateTensors>, TransformerOps<RefActivation, RefKv> {
  /** Always `"ref"`. */
  readonly name = "ref" as const;
  /** The state is computed in place in host memory. */
  readonly hostState = true;
  readonly #cfg: MambaConfig | GptNeoXConfig;
  readonly #w: {
    embedding: Float32Array;
    layers: (RefLayer | RefTransformerLayer)[];
    normF: RefNorm;
    lmHead: Float32Array;
  };

  /** Widens the weights to float32. */
  constructor(init: BackendInit | TransformerBackendInit) {
    this.#cfg = init.config;
    this.#w = init.config.arch === "gpt_neox"
      ? refTransformerWeights((init as TransformerBackendInit).weights)
      : refWeights((init as BackendInit).weights);
  }

  /** The Mamba config; Mamba operations on a Transformer model are a bug of the caller. */
  get #mamba(): MambaConfig {
    const cfg = this.#cfg;
    if (cfg.arch === "gpt_neox") {
      throw new BackendError("ref: a Mamba operation on a GPT-NeoX model");
    }
    return cfg;
  }

  get #neox(): GptNeoXConfig {
    const cfg = this.#cfg;
    if (cfg.arch !== "gpt_neox") {
      throw new BackendError("ref: a Transformer operation on a Mamba model");
    }
    return cfg;
  }

  #tLayer(layer: number): RefTransformerLayer {
    if (this.#cfg.arch !== "gpt_neox") throw new BackendError("ref: not a Transformer model");
    return this.#w.layers[layer] as RefTransformerLayer;
  }

  embed(ids: Int32Array): RefActivation {
    const d = this.#cfg.dModel;
    const data = new Float32Array(ids.length * d);
    ids.forEach((id, r) => data.set(this.#w.embedding.subarray(id * d, id * d + d), r * d));
    return { rows: ids.length, cols: d, data };
  }

  addNorm(
    hidden: RefActivation,
    residual: RefActivation | null,
    layer: number | "final",
    which: BlockNorm = "mixer",
  ): { normed: RefActivation; residual: RefActivation } {
    const res = residual
      ? { ...hidden, data: hidden.data.map((v, i) => v + residual.data[i]) }
      : { ...hidden, data: hidden.data.slice() };
    return { normed: this.#normRows(res, layer, which), residual: res };
  }

  #normRows(res: RefActivation, layer: number | "final", which: BlockNorm): RefActivation {
    const norm: RefNorm = layer === "final"
      ? this.#w.normF
      : which === "mlp"
      ? this.#tLayer(layer).norm2
      : this.#w.layers[layer].norm;
    const out = new Float32Array(res.data.length);
    for (let r = 0; r < res.rows; r++) {
      if (this.#cfg.rmsNorm) {
        rmsNorm(res.data, norm.weight, out, r * res.cols, res.cols, this.#cfg.normEps);
      } else {
        layerNorm(
          res.data,
          norm.weight,
          norm.bias!,
          out,
          r * res.cols,
          res.cols,
          this.#cfg.normEps,
        );
      }
    }
    return { ...res, data: out };
  }

  mixer(
    layer: number,
    x: RefActivation,
    batch: number,
    seqLen: number,
    state: StateTensors,
  ): RefActivation {
    const cfg = this.#mamba;
    const w = this.#w.layers[layer] as RefLayer;
    const layout = stateLayout(cfg, batch);
    const convSize = layout.convShape.slice(1).reduce((a, b) => a * b, 1);
    const ssmSize = layout.ssmShape.slice(1).reduce((a, b) => a * b, 1);
    const out = new Float32Array(batch * seqLen * cfg.dModel);
    const mixer = cfg.arch === "mamba1" ? mamba1Mixer : mamba2Mixer;
    for (let b = 0; b < batch; b++) {
      const rows = x.data.subarray(b * seqLen * cfg.dModel, (b + 1) * seqLen * cfg.dModel);
      const conv = state.conv[layer].subarray(b * convSize, (b + 1) * convSize);
      const ssm = state.ssm[layer].subarray(b * ssmSize, (b + 1) * ssmSize);
      out.set(mixer(cfg, w, rows, seqLen, conv, ssm), b * seqLen * cfg.dModel);
    }
    return { rows: batch * seqLen, cols: cfg.dModel, data: out };
  }

  lmHead(x: RefActivation, batch: number, seqLen: number, lastOnly: boolean): RefActivation {
    const d = this.#cfg.dModel;
    let rows = x.data;
    if (lastOnly) {
      rows = new Float32Array(batch * d);
      for (let b = 0; b < batch; b++) {
        rows.set(x.data.subarray(((b + 1) * seqLen - 1) * d, (b + 1) * seqLen * d), b * d);
      }
    }
    const n = rows.length / d;
    const V = this.#cfg.paddedVocabSize;
    return { rows: n, cols: V, data: linear(rows, this.#w.lmHead, n, d, V) };
  }

  upload(data: Float32Array, rows: number, cols: number): RefActivation {
    return { rows, cols, data: data.slice(0, rows * cols) };
  }

  read(a: RefActivation): Promise<Float32Array> {
    return Promise.resolve(a.data);
  }

  createState(batch: number): StateTensors {
    return zeroStateTensors(stateLayout(this.#mamba, batch));
  }

  uploadState(s: StateTensors, host: StateTensors): void {
    s.conv.forEach((a, i) => a.set(host.conv[i]));
    s.ssm.forEach((a, i) => a.set(host.ssm[i]));
  }

  downloadState(s: StateTensors): Promise<StateTensors> {
    return Promise.resolve(s);
  }

  cloneState(s: StateTensors): StateTensors {
    return { conv: s.conv.map((a) => a.slice()), ssm: s.ssm.map((a) => a.slice()) };
  }

  freeState(): void {}

  // -------------------------------------------------------------------------------------------
  // Transformer operations

  norm(x: RefActivation, layer: number, which: BlockNorm): RefActivation {
    return this.#normRows(x, layer, which);
  }

  attention(
    layer: number,
    x: RefActivation,
    batch: number,
    seqLen: number,
    kv: RefKv,
    pos: number,
  ): RefActivation {
    const cfg = this.#neox;
    const w = this.#tLayer(layer);
    const qkvDim = (cfg.nHeads + 2 * cfg.nKvHeads) * cfg.headDim;
    const qkv = linear(x.data, w.qkv, x.rows, cfg.dModel, qkvDim, w.qkvBias);
    const att = attention(cfg, qkv, batch, seqLen, pos, kv.layers[layer], kv.capacity);
    const qDim = cfg.nHeads * cfg.headDim;
    return {
      rows: x.rows,
      cols: cfg.dModel,
      data: linear(att, w.out, x.rows, qDim, cfg.dModel, w.outBias),
    };
  }

  mlp(layer: number, x: RefActivation): RefActivation {
    const cfg = this.#neox;
    const w = this.#tLayer(layer);
    const h = linear(x.data, w.fc1, x.rows, cfg.dModel, cfg.intermediateSize, w.fc1Bias);
    for (let i = 0; i < h.length; i++) h[i] = gelu(h[i]);
    return {
      rows: x.rows,
      cols: cfg.dModel,
      data: linear(h, w.fc2, x.rows, cfg.intermediateSize, cfg.dModel, w.fc2Bias),
    };
  }

  add(a: RefActivation, b: RefActivation): RefActivation {
    return { ...a, data: a.data.map((v, i) => v + b.data[i]) };
  }

  createKv(batch: number): RefKv {
    const cfg = this.#neox;
    const layers = [];
    for (let i = 0; i < cfg.nLayer; i++) {
      layers.push({ k: new Float32Array(0), v: new Float32Array(0) });
    }
    return { batch, capacity: 0, layers };
  }

  reserveKv(kv: RefKv, length: number, limit = Infinity): void {
    if (length <= kv.capacity) return;
    const { nKvHeads, headDim } = this.#neox;
    const cap = Math.max(length, Math.min(Math.max(2 * kv.capacity, 16), limit));
    // Copy each (sequence, head) run of slots to its place in the larger cache.
    const grow = (old: Float32Array) => {
      const a = new Float32Array(kv.batch * nKvHeads * cap * headDim);
      for (let bg = 0; bg < kv.batch * nKvHeads; bg++) {
        a.set(
          old.subarray(bg * kv.capacity * headDim, (bg + 1) * kv.capacity * headDim),
          bg * cap * headDim,
        );
      }
      return a;
    };
    kv.layers = kv.layers.map((l) => ({ k: grow(l.k), v: grow(l.v) }));
    kv.capacity = cap;
  }

  uploadKv(kv: RefKv, host: KvTensors): void {
    this.reserveKv(kv, host.length);
    const { nKvHeads, headDim } = this.#neox;
    const n = host.length * headDim;
    kv.layers.forEach((l, i) => {
      for (let bg = 0; bg < kv.batch * nKvHeads; bg++) {
        l.k.set(host.k[i].subarray(bg * n, (bg + 1) * n), bg * kv.capacity * headDim);
        l.v.set(host.v[i].subarray(bg * n, (bg + 1) * n), bg * kv.capacity * headDim);
      }
    });
  }

  downloadKv(kv: RefKv, length: number): Promise<KvTensors> {
    const { nKvHeads, headDim } = this.#neox;
    const n = length * headDim;
    const take = (a: Float32Array) => {
      const out = new Float32Array(kv.batch * nKvHeads * n);
      for (let bg = 0; bg < kv.batch * nKvHeads; bg++) {
        out.set(a.subarray(bg * kv.capacity * headDim, bg * kv.capacity * headDim + n), bg * n);
      }
      return out;
    };
    return Promise.resolve({
      length,
      k: kv.layers.map((l) => take(l.k)),
      v: kv.layers.map((l) => take(l.v)),
    });
  }

  cloneKv(kv: RefKv): RefKv {
    return {
      batch: kv.batch,
      capacity: kv.capacity,
      layers: kv.layers.map((l) => ({ k: l.k.slice(), v: l.v.slice() })),
    };
  }

  freeKv(kv: RefKv): void {
    kv.layers = [];
    kv.capacity = 0;
  }

  dispose(): void {}

  copyStateRows(
    src: StateTensors,
    srcRow: number,
    dst: StateTensors,
    dstRow: number,
    count: number,
  ): void {
    const one = stateLayout(this.#mamba, 1);
    const rowOf = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
    const copy = (from: Float32Array, to: Float32Array, row: number) =>
      to.set(from.subarray(srcRow * row, (srcRow + count) * row), dstRow * row);
    src.conv.forEach((a, i) => copy(a, dst.conv[i], rowOf(one.convShape)));
    src.ssm.forEach((a, i) => copy(a, dst.ssm[i], rowOf(one.ssmShape)));
  }
}
