/**
 * The `ref` backend: plain TypeScript, float32, one obvious loop per formula. It is the readable
 * specification the other backends are checked against, not a fast path.
 *
 * @module
 */

import type { Backend, BackendInit, StateTensors } from "../../backend.ts";
import type { MambaConfig } from "../../config.ts";
import { stateLayout, zeroStateTensors } from "../../state.ts";
import { mamba1Mixer } from "./mamba1.ts";
import { mamba2Mixer } from "./mamba2.ts";
import { layerNorm, linear, rmsNorm } from "./ops.ts";
import { type RefLayer, type RefNorm, refWeights } from "./weights.ts";

/** An activation of the reference backend: a `[rows, cols]` float32 matrix. */
export interface RefActivation {
  /** Number of rows (tokens). */
  rows: number;
  /** Number of columns (features). */
  cols: number;
  /** Row-major values. */
  data: Float32Array;
}

/** The reference backend. */
export class RefBackend implements Backend<RefActivation, StateTensors> {
  /** Always `"ref"`. */
  readonly name = "ref" as const;
  /** The state is computed in place in host memory. */
  readonly hostState = true;
  readonly #cfg: MambaConfig;
  readonly #w: ReturnType<typeof refWeights>;

  /** Widens the weights to float32. */
  constructor({ config, weights }: BackendInit) {
    this.#cfg = config;
    this.#w = refWeights(weights);
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
  ): { normed: RefActivation; residual: RefActivation } {
    const res = residual
      ? { ...hidden, data: hidden.data.map((v, i) => v + residual.data[i]) }
      : { ...hidden, data: hidden.data.slice() };
    const norm: RefNorm = layer === "final" ? this.#w.normF : this.#w.layers[layer].norm;
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
    return { normed: { ...res, data: out }, residual: res };
  }

  mixer(
    layer: number,
    x: RefActivation,
    batch: number,
    seqLen: number,
    state: StateTensors,
  ): RefActivation {
    const cfg = this.#cfg;
    const w: RefLayer = this.#w.layers[layer];
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

  read(a: RefActivation): Promise<Float32Array> {
    return Promise.resolve(a.data);
  }

  createState(batch: number): StateTensors {
    return zeroStateTensors(stateLayout(this.#cfg, batch));
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

  dispose(): void {}

  copyStateRows(
    src: StateTensors,
    srcRow: number,
    dst: StateTensors,
    dstRow: number,
    count: number,
  ): void {
    const one = stateLayout(this.#cfg, 1);
    const rowOf = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
    const copy = (from: Float32Array, to: Float32Array, row: number) =>
      to.set(from.subarray(srcRow * row, (srcRow + count) * row), dstRow * row);
    src.conv.forEach((a, i) => copy(a, dst.conv[i], rowOf(one.convShape)));
    src.ssm.forEach((a, i) => copy(a, dst.ssm[i], rowOf(one.ssmShape)));
  }
}
