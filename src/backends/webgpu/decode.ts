/**
 * Fused multi-step decoding on the GPU: one recorded step runs the whole model for every
 * sequence of the batch (with the residual add and the norms folded into the matrix-vector
 * kernels), picks the next token on the GPU and feeds it back, so that many steps go into one
 * submission and the host only reads the sampled ids back, a block at a time, with two blocks in
 * flight.
 *
 * Batches of `WebGpuOptions.skinnyMinRows` sequences and more run their products through
 * the skinny kernels (`wgsl/skinny_regs.wgsl` up to 16, `wgsl/skinny.wgsl` past it, with the
 * same prologues and epilogues); Mamba-1's scan step is a kernel of its own.
 *
 * @module
 */

import type { DecodeOptions } from "../../backend.ts";
import type { MambaConfig } from "../../config.ts";
import type { ResolvedSamplingOptions } from "../../sampling.ts";
import type { GpuState, WebGpuBackend } from "./backend.ts";
import type { Buf, Command } from "./recorder.ts";
import { GpuSampler, samplingKey, type StepSampling } from "./sampler.ts";

export { xoshiroSeedState } from "./sampler.ts";

const F32 = 4;

/** The buffers of fused decoding for one batch size, allocated once and reused. */
export class DecodePlan {
  /** Sequences. */
  readonly batch: number;
  readonly #be: WebGpuBackend;
  readonly #cfg: MambaConfig;
  /** Picks the next tokens on the GPU and runs the block loop (shared with every model). */
  readonly sampler: GpuSampler;
  /** Current token of each sequence (u32), fed by the next step. */
  readonly tok: Buf;
  readonly #hidden: Buf;
  readonly #res: [Buf, Buf];
  readonly #normed: Buf;
  readonly #a: Buf;
  readonly #b: Buf;
  readonly #c: Buf;
  readonly #d: Buf;
  /** Mamba-1: the partial sums x_proj's K is split into (1 if not; see the backend's xProjSplit). */
  readonly #xSplit: number = 1;
  /** `[batch, paddedVocab]` logits of the last step. */
  readonly logits: Buf;
  /** Steps captured per state buffers (a state's `conv` array: reused with its buffers). */
  #captured = new WeakMap<Buf[], Map<string, { body: Command[]; tails: Command[][] }>>();
  /** The sampler's output generation the captured tails write into. */
  #generation = -1;

  /** Steps per submission inside a block (see {@link GpuSampler.submitSteps}). */
  get submitSteps(): number {
    return this.sampler.submitSteps;
  }
  set submitSteps(n: number) {
    this.sampler.submitSteps = n;
  }

  /** Steps of a block's first submission (see {@link GpuSampler.firstSubmitSteps}). */
  get firstSubmitSteps(): number {
    return this.sampler.firstSubmitSteps;
  }
  set firstSubmitSteps(n: number) {
    this.sampler.firstSubmitSteps = n;
  }
  /** How much longer each block is than the one before (see {@link GpuSampler.blockGrowth}). */
  get blockGrowth(): number {
    return this.sampler.blockGrowth;
  }
  set blockGrowth(n: number) {
    this.sampler.blockGrowth = n;
  }
  /** Blocks in flight (see {@link GpuSampler.inFlight}). */
  get inFlight(): number {
    return this.sampler.inFlight;
  }
  set inFlight(n: number) {
    this.sampler.inFlight = n;
  }

  /** Allocates the buffers for `batch` sequences. */
  constructor(be: WebGpuBackend, batch: number) {
    this.#be = be;
    this.#cfg = be.config;
    this.batch = batch;
    const c = this.#cfg;
    const B = batch;
    const buf = (bytes: number, label: string) => be.rec.buffer(bytes, label);
    this.sampler = new GpuSampler(be, batch, c.paddedVocabSize);
    this.tok = this.sampler.tok;
    this.logits = this.sampler.logits;
    this.#hidden = buf(B * c.dModel * F32, "decode.hidden");
    this.#res = [buf(B * c.dModel * F32, "decode.res0"), buf(B * c.dModel * F32, "decode.res1")];
    this.#normed = buf(B * c.dModel * F32, "decode.normed");
    if (c.arch === "mamba1") {
      this.#a = buf(B * 2 * c.dInner * F32, "decode.xz");
      this.#b = buf(B * c.dInner * F32, "decode.u");
      this.#xSplit = be.xProjSplit(B);
      this.#c = buf(this.#xSplit * B * (c.dtRank + 2 * c.dState) * F32, "decode.xdbl");
      this.#d = buf(B * c.dInner * F32, "decode.y");
    } else {
      this.#a = buf(B * (c.dInner + c.convDim + c.nheads) * F32, "decode.zxbcdt");
      this.#b = buf(B * c.convDim * F32, "decode.xbc");
      this.#c = buf(B * c.dInner * F32, "decode.y");
      this.#d = buf(B * c.dInner * F32, "decode.g");
    }
  }

  /**
   * Records one step for every sequence: tok → model → logits → next tok (slot `slot`), by
   * replaying the step captured for this state and sampling setup.
   */
  encodeStep(state: GpuState, slot: number, s: StepSampling, vocab: number): void {
    const rec = this.#be.rec;
    if (this.#generation !== this.sampler.generation) {
      // The captured sampling tails write into an output buffer that was replaced.
      this.#captured = new WeakMap();
      this.#generation = this.sampler.generation;
    }
    const key = samplingKey(s, vocab);
    let byKey = this.#captured.get(state.conv);
    if (!byKey) this.#captured.set(state.conv, byKey = new Map());
    let step = byKey.get(key);
    if (!step) {
      if (byKey.size > 8) byKey.clear();
      byKey.set(key, step = { body: rec.capture(() => this.#encodeModel(state)), tails: [] });
    }
    rec.replay(step.body);
    step.tails[slot] ??= rec.capture(() => this.sampler.encodeSample(slot, s, vocab));
    rec.replay(step.tails[slot]);
  }

  /** Records the model part of a step (everything up to the logits). */
  #encodeModel(state: GpuState): void {
    const be = this.#be;
    const c = this.#cfg;
    const B = this.batch;
    const d = c.dModel;
    be.encodeEmbed(this.tok, B, this.#hidden);
    // With the residual added in out_proj's epilogue, the stream entering layer l is the
    // embedding (l = 0) or what out_proj of layer l − 1 wrote; in_proj only norms it.
    const resInOut = be.residualInOutProj(B);
    const stream = (l: number) => (l === 0 ? this.#hidden : this.#res[(l - 1) % 2]);
    for (let l = 0; l < c.nLayer; l++) {
      const w = be.weights.layers[l];
      const resIn = l > 0 && !resInOut ? this.#res[(l - 1) % 2] : undefined;
      const resOut = resInOut ? undefined : this.#res[l % 2];
      const m1 = c.arch === "mamba1";
      const inW = m1 ? 2 * c.dInner : c.dInner + c.convDim + c.nheads;
      // The conv step of every channel is folded into in_proj's epilogue.
      const conv = {
        state: state.conv[l],
        weight: w.convWeight,
        bias: w.convBias,
        out: this.#b,
        lo: m1 ? 0 : c.dInner,
        C: m1 ? c.dInner : c.convDim,
      };
      const x = resInOut ? stream(l) : this.#hidden;
      this.#normThen(w.norm.weight, w.norm.bias, resIn, resOut, x, (x, rms) =>
        be.matvec(w.inProj, {
          bias: w.inProjBias,
          x,
          xOff: 0,
          xStride: d,
          M: B,
          y: this.#a,
          yOff: 0,
          yStride: inW,
          conv,
          ...rms,
        }));
      const out = resInOut
        ? { y: this.#res[l % 2], addRes: stream(l) }
        : { y: this.#hidden, addRes: undefined };
      if (c.arch === "mamba1") this.#mamba1(l, state, out);
      else this.#mamba2(l, state, out);
    }
    const last = this.#res[(c.nLayer - 1) % 2];
    const V = c.paddedVocabSize;
    this.#normThen(
      be.weights.normF.weight,
      be.weights.normF.bias,
      resInOut ? undefined : last,
      undefined,
      resInOut ? last : this.#hidden,
      (x, rms) =>
        be.matvec(be.weights.lmHead, {
          x,
          xOff: 0,
          xStride: d,
          M: B,
          y: this.logits,
          yOff: 0,
          yStride: V,
          ...rms,
        }),
    );
  }

  /**
   * The block's norm before a matrix-vector product: folded into it (RMSNorm), or a separate
   * add + LayerNorm kernel.
   */
  #normThen(
    weight: Buf,
    bias: Buf | undefined,
    resIn: Buf | undefined,
    resOut: Buf | undefined,
    x: Buf,
    mv: (x: Buf, rms: { rms?: { weight: Buf; eps: number }; resIn?: Buf; resOut?: Buf }) => void,
  ): void {
    const c = this.#cfg;
    const be = this.#be;
    if (c.rmsNorm && be.canFuseRms(c.dModel, this.batch)) {
      mv(x, { rms: { weight, eps: c.normEps }, resIn, resOut });
      return;
    }
    const k = be.pipeline("add_norm", "add_norm", { HAS_RES: !!resIn, LAYER_NORM: !c.rmsNorm });
    const out = resOut ?? this.#res[(c.nLayer) % 2];
    be.rec.dispatch(
      k,
      "uuf",
      [this.batch, c.dModel, c.normEps],
      [x, resIn ?? null, weight, c.rmsNorm ? null : bias!, out, this.#normed],
      this.batch,
    );
    mv(this.#normed, {});
  }

  /** Records the rest of a Mamba-1 block; its out_proj writes `to.y` (plus `to.addRes`). */
  #mamba1(l: number, state: GpuState, to: { y: Buf; addRes?: Buf }): void {
    const be = this.#be;
    const c = this.#cfg;
    const B = this.batch;
    const w = be.weights.layers[l];
    const D = c.dInner;
    const xdw = c.dtRank + 2 * c.dState;
    const [xz, u, xdbl, y] = [this.#a, this.#b, this.#c, this.#d];
    // x_proj (its K split over more workgroups: the scan step adds the parts up), then the scan
    // step with dt_proj inside, as a kernel of its own.
    be.matvec(w.xProj!, {
      x: u,
      xOff: 0,
      xStride: D,
      M: B,
      y: xdbl,
      yOff: 0,
      yStride: xdw,
      kSplit: this.#xSplit,
    });
    be.scanStep(l, state.ssm[l], 0, B, u, xdbl, xz, y, this.#xSplit);
    be.matvec(w.outProj, {
      bias: w.outProjBias,
      x: y,
      xOff: 0,
      xStride: D,
      M: B,
      y: to.y,
      yOff: 0,
      yStride: c.dModel,
      addRes: to.addRes,
    });
  }

  #mamba2(l: number, state: GpuState, to: { y: Buf; addRes?: Buf }): void {
    const be = this.#be;
    const c = this.#cfg;
    const B = this.batch;
    const w = be.weights.layers[l];
    const { dInner, convDim, nheads: H, ngroups: G } = c;
    const inDim = dInner + convDim + H;
    const [zx, xbc, y, g] = [this.#a, this.#b, this.#c, this.#d];
    be.ssdStep(l, state.ssm[l], 0, B, zx, xbc, y);
    const out = {
      bias: w.outProjBias,
      x: y,
      xOff: 0,
      xStride: dInner,
      M: B,
      y: to.y,
      yOff: 0,
      yStride: c.dModel,
      addRes: to.addRes,
    };
    if (c.gatedNorm && !c.normBeforeGate && G === 1 && be.canFuseRms(dInner, B)) {
      be.matvec(w.outProj, { ...out, rms: { weight: w.gatedNorm!, eps: 1e-5 } });
      return;
    }
    if (c.gatedNorm) {
      be.rec.dispatch(
        be.pipeline("gated_norm", "gated_norm", { NORM_BEFORE_GATE: c.normBeforeGate }),
        "uuufuu",
        [B, dInner, dInner / G, 1e-5, inDim, 0],
        [y, c.normBeforeGate ? zx : null, w.gatedNorm!, g],
        B,
        G,
      );
      be.matvec(w.outProj, { ...out, x: g });
      return;
    }
    be.matvec(w.outProj, out);
  }

  /**
   * Feeds `tokens`, then samples and feeds back `n` tokens, yielding them in blocks
   * (`[batch][block length]`); per-row samplers and drains as {@link GpuSampler.run}.
   */
  run(
    state: GpuState,
    tokens: Int32Array,
    n: number,
    options: DecodeOptions,
  ): AsyncGenerator<number[][]> {
    return this.sampler.run(
      tokens,
      n,
      options,
      (slot, s, vocab) => this.encodeStep(state, slot, s, vocab),
    );
  }

  /**
   * Picks one token per row from given logits (`[batch, paddedVocab]`) with the GPU sampler, as
   * one decode step would (for tests). See {@link GpuSampler.sampleLogits}.
   */
  sampleLogits(
    logits: Float32Array,
    s: ResolvedSamplingOptions,
    options: { seed?: number; history?: readonly (readonly number[])[] } = {},
  ): Promise<number[]> {
    return this.sampler.sampleLogits(logits, s, options);
  }

  /** Frees the plan's buffers. */
  dispose(): void {
    this.sampler.dispose();
  }
}
