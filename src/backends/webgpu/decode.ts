/**
 * Fused multi-step decoding on the GPU: one recorded step runs the whole model for every
 * sequence of the batch (with the residual add and the norms folded into the matrix-vector
 * kernels), picks the next token on the GPU and feeds it back, so that many steps go into one
 * submission and the host only reads the sampled ids back, a block at a time, with two blocks in
 * flight.
 *
 * @module
 */

import type { DecodeOptions } from "../../backend.ts";
import type { MambaConfig } from "../../config.ts";
import { BackendError } from "../../errors.ts";
import type { ResolvedSamplingOptions, Sampler } from "../../sampling.ts";
import type { GpuState, WebGpuBackend } from "./backend.ts";
import type { Buf, Command } from "./recorder.ts";

const F32 = 4;
const ARGMAX_CHUNKS = 64;
const SAMPLE_SIG = "uuuuuuuufffffu";
/** u32 words per row of the per-row sampling buffer (`ROW_WORDS` in sample.wgsl). */
const ROW_WORDS = 12;

/** Seeds xoshiro128** exactly as `new Xoshiro128(seed)` of src/rng.ts does. */
export function xoshiroSeedState(seed: number): Uint32Array {
  const mag = Math.abs(seed) % (Number.MAX_SAFE_INTEGER + 1);
  const lo = mag >>> 0;
  const hi = Math.floor(mag / 0x100000000) >>> 0;
  const st = { s: (lo ^ Math.imul(hi, 0x632be5ab) ^ (seed < 0 ? 0x5bd1e995 : 0)) | 0 };
  const next = () => {
    st.s = (st.s + 0x9e3779b9) | 0;
    let z = st.s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  const s = Uint32Array.from([next(), next(), next(), next()]);
  if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1;
  return s;
}

/** A run whose rows each pick with their own sampler (options and stream in `#rowRng`). */
interface RowsSampling {
  readonly rows: true;
  /** Whether some row has a repetition penalty (the `seen` bitmap is kept). */
  readonly penalty: boolean;
}

/** The buffers of fused decoding for one batch size, allocated once and reused. */
export class DecodePlan {
  /** Sequences. */
  readonly batch: number;
  readonly #be: WebGpuBackend;
  readonly #cfg: MambaConfig;
  /** Current token of each sequence (u32), fed by the next step. */
  readonly tok: Buf;
  readonly #hidden: Buf;
  readonly #res: [Buf, Buf];
  readonly #normed: Buf;
  readonly #a: Buf;
  readonly #b: Buf;
  readonly #c: Buf;
  readonly #d: Buf;
  /** `[batch, paddedVocab]` logits of the last step. */
  readonly logits: Buf;
  readonly #partial: Buf;
  readonly #rng: Buf;
  /** Per row: a xoshiro128** state and the sampling options (see sample.wgsl, ROWS). */
  readonly #rowRng: Buf;
  readonly #uni: Buf;
  readonly #seen: Buf;
  readonly #work: Buf;
  readonly #words: number;
  #out: Buf | null = null;
  #staging: GPUBuffer[] = [];
  #maxBlock = 0;
  #busy = false;
  /**
   * Steps per submission inside a block: encoding costs the host about as much as the GPU
   * spends on a small model's step, so the GPU must not wait for a whole block to be encoded.
   */
  submitSteps = 4;
  /**
   * Blocks in flight: the next is encoded while the host waits for the oldest. More would keep
   * the GPU fed through longer host stalls, but a consumer that stops early wastes them.
   */
  inFlight = 2;
  #captured = new WeakMap<GpuState, Map<string, { body: Command[]; tails: Command[][] }>>();

  /** Allocates the buffers for `batch` sequences. */
  constructor(be: WebGpuBackend, batch: number) {
    this.#be = be;
    this.#cfg = be.config;
    this.batch = batch;
    const c = this.#cfg;
    const B = batch;
    const buf = (bytes: number, label: string) => be.rec.buffer(bytes, label);
    this.tok = buf(B * 4, "decode.tok");
    this.#hidden = buf(B * c.dModel * F32, "decode.hidden");
    this.#res = [buf(B * c.dModel * F32, "decode.res0"), buf(B * c.dModel * F32, "decode.res1")];
    this.#normed = buf(B * c.dModel * F32, "decode.normed");
    if (c.arch === "mamba1") {
      this.#a = buf(B * 2 * c.dInner * F32, "decode.xz");
      this.#b = buf(B * c.dInner * F32, "decode.u");
      this.#c = buf(B * (c.dtRank + 2 * c.dState) * F32, "decode.xdbl");
      this.#d = buf(B * c.dInner * F32, "decode.y");
    } else {
      this.#a = buf(B * (c.dInner + c.convDim + c.nheads) * F32, "decode.zxbcdt");
      this.#b = buf(B * c.convDim * F32, "decode.xbc");
      this.#c = buf(B * c.dInner * F32, "decode.y");
      this.#d = buf(B * c.dInner * F32, "decode.g");
    }
    const V = c.paddedVocabSize;
    this.logits = buf(B * V * F32, "decode.logits");
    this.#partial = buf(B * ARGMAX_CHUNKS * 8, "decode.partial");
    this.#rng = buf(16, "decode.rng");
    this.#rowRng = buf(B * ROW_WORDS * 4, "decode.rowRng");
    this.#uni = buf(B * F32, "decode.uniform");
    this.#words = Math.ceil(V / 32);
    this.#seen = buf(B * this.#words * 4, "decode.seen");
    this.#work = buf(B * V * F32, "decode.work");
  }

  /**
   * Records one step for every sequence: tok → model → logits → next tok (slot `slot`), by
   * replaying the step captured for this state and sampling setup.
   */
  encodeStep(
    state: GpuState,
    slot: number,
    s: ResolvedSamplingOptions | RowsSampling,
    vocab: number,
  ): void {
    const rec = this.#be.rec;
    const key = JSON.stringify(
      "rows" in s
        ? ["rows", s.penalty, vocab]
        : [s.greedy, s.temperature, s.topK, s.topP, s.minP, s.repetitionPenalty, vocab],
    );
    let byKey = this.#captured.get(state);
    if (!byKey) this.#captured.set(state, byKey = new Map());
    let step = byKey.get(key);
    if (!step) {
      if (byKey.size > 8) byKey.clear();
      byKey.set(key, step = { body: rec.capture(() => this.#encodeModel(state)), tails: [] });
    }
    rec.replay(step.body);
    step.tails[slot] ??= rec.capture(() => this.#sample(slot, s, vocab));
    rec.replay(step.tails[slot]);
  }

  /** Records the model part of a step (everything up to the logits). */
  #encodeModel(state: GpuState): void {
    const be = this.#be;
    const c = this.#cfg;
    const B = this.batch;
    const d = c.dModel;
    be.encodeEmbed(this.tok, B, this.#hidden);
    for (let l = 0; l < c.nLayer; l++) {
      const w = be.weights.layers[l];
      const resIn = l > 0 ? this.#res[(l - 1) % 2] : undefined;
      const resOut = this.#res[l % 2];
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
      this.#normThen(w.norm.weight, w.norm.bias, resIn, resOut, (x, rms) =>
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
      if (c.arch === "mamba1") this.#mamba1(l, state);
      else this.#mamba2(l, state);
    }
    const resIn = this.#res[(c.nLayer - 1) % 2];
    const V = c.paddedVocabSize;
    this.#normThen(
      be.weights.normF.weight,
      be.weights.normF.bias,
      resIn,
      undefined,
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
    mv: (x: Buf, rms: { rms?: { weight: Buf; eps: number }; resIn?: Buf; resOut?: Buf }) => void,
  ): void {
    const c = this.#cfg;
    const be = this.#be;
    if (c.rmsNorm && be.canFuseRms(c.dModel, this.batch)) {
      mv(this.#hidden, { rms: { weight, eps: c.normEps }, resIn, resOut });
      return;
    }
    const k = be.pipeline("add_norm", "add_norm", { HAS_RES: !!resIn, LAYER_NORM: !c.rmsNorm });
    const out = resOut ?? this.#res[(c.nLayer) % 2];
    be.rec.dispatch(
      k,
      "uuf",
      [this.batch, c.dModel, c.normEps],
      [this.#hidden, resIn ?? null, weight, c.rmsNorm ? null : bias!, out, this.#normed],
      this.batch,
    );
    mv(this.#normed, {});
  }

  #mamba1(l: number, state: GpuState): void {
    const be = this.#be;
    const c = this.#cfg;
    const B = this.batch;
    const w = be.weights.layers[l];
    const D = c.dInner;
    const xdw = c.dtRank + 2 * c.dState;
    const [xz, u, xdbl, y] = [this.#a, this.#b, this.#c, this.#d];
    be.matvec(w.xProj!, { x: u, xOff: 0, xStride: D, M: B, y: xdbl, yOff: 0, yStride: xdw });
    if (c.dState <= 32) {
      // dt_proj + softplus, with the selective-scan step in its epilogue.
      be.matvec(w.dtProj!, {
        bias: w.dtBias,
        x: xdbl,
        xOff: 0,
        xStride: xdw,
        M: B,
        y,
        yOff: 0,
        yStride: D,
        scan: {
          NS: c.dState,
          A: w.A,
          D: w.D,
          ssm: state.ssm[l],
          xdbl,
          z: xz,
          zStride: 2 * D,
          zOff: D,
          bcStride: xdw,
          bOff: c.dtRank,
          u,
          uStride: D,
        },
      });
    } else {
      be.rec.dispatch(
        be.pipeline("selective_scan", "scan_step", { NS: c.dState }),
        "uuuuuuuuuuu",
        [D, 1, B, c.dtRank, xdw, 2 * D, D, 0, 1, 1, w.dtProj!.stride],
        [u, null, xdbl, xz, w.A, w.D, state.ssm[l], y, w.dtProj!.parts[0].buf, w.dtBias],
        Math.ceil(D / 64),
        B,
      );
    }
    be.matvec(w.outProj, {
      bias: w.outProjBias,
      x: y,
      xOff: 0,
      xStride: D,
      M: B,
      y: this.#hidden,
      yOff: 0,
      yStride: c.dModel,
    });
  }

  #mamba2(l: number, state: GpuState): void {
    const be = this.#be;
    const c = this.#cfg;
    const B = this.batch;
    const w = be.weights.layers[l];
    const { dInner, convDim, nheads: H, headdim: P, dState: N, ngroups: G } = c;
    const inDim = dInner + convDim + H;
    const [zx, xbc, y, g] = [this.#a, this.#b, this.#c, this.#d];
    const gate = !c.gatedNorm || !c.normBeforeGate;
    const TP = 4;
    const [dtMin, dtMax] = c.dtLimit;
    be.rec.dispatch(
      be.pipeline("ssd_step", "ssd_step", { TP, GATE: gate, D_HDIM: c.dHasHdim }),
      "uuuuuuuuffu",
      [H, P, N, G, B, inDim, dInner + convDim, convDim, dtMin, Math.min(dtMax, 3e38), 0],
      [zx, xbc, w.dtBias, w.A, w.D, state.ssm[l], y],
      Math.ceil(P / TP),
      H,
      B,
    );
    const out = {
      bias: w.outProjBias,
      x: y,
      xOff: 0,
      xStride: dInner,
      M: B,
      y: this.#hidden,
      yOff: 0,
      yStride: c.dModel,
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

  #sample(slot: number, s: ResolvedSamplingOptions | RowsSampling, vocab: number): void {
    const be = this.#be;
    const B = this.batch;
    const V = this.#cfg.paddedVocabSize;
    if ("rows" in s) {
      // Every row's options and stream are in #rowRng; the uniform block only shapes the work.
      const params = [V, vocab, B, slot, 0, ARGMAX_CHUNKS, 0, 0, 1, 1, 1, 0, 1, this.#words];
      be.rec.dispatch(
        be.pipeline("sample", "rng_draw", { ROWS: true }),
        SAMPLE_SIG,
        params,
        [null, null, null, null, this.#rowRng, this.#uni],
        1,
      );
      be.rec.dispatch(
        be.pipeline("sample", "sample_rows", { ROWS: true }),
        SAMPLE_SIG,
        params,
        [this.logits, this.tok, this.#out!, null, this.#rowRng, this.#uni, this.#seen, this.#work],
        B,
      );
      return;
    }
    const penalty = s.repetitionPenalty !== 1;
    const chunk = Math.ceil(vocab / ARGMAX_CHUNKS);
    const flags = (s.greedy ? 1 : 0) | (penalty ? 2 : 0) | (s.topP < 1 ? 4 : 0) |
      (s.minP > 0 ? 8 : 0);
    const params = [
      V,
      vocab,
      B,
      slot,
      chunk,
      ARGMAX_CHUNKS,
      s.topK,
      flags,
      s.temperature > 0 ? 1 / s.temperature : 1,
      s.temperature,
      s.topP,
      s.minP > 0 ? Math.log(s.minP) : 0,
      s.repetitionPenalty,
      this.#words,
    ];
    const out = this.#out!;
    if (s.greedy && !penalty) {
      be.rec.dispatch(
        be.pipeline("sample", "argmax_partial"),
        SAMPLE_SIG,
        params,
        [this.logits, null, null, this.#partial],
        ARGMAX_CHUNKS,
        B,
      );
      be.rec.dispatch(
        be.pipeline("sample", "argmax_final"),
        SAMPLE_SIG,
        params,
        [null, this.tok, out, this.#partial],
        1,
      );
      return;
    }
    if (!s.greedy) {
      be.rec.dispatch(
        be.pipeline("sample", "rng_draw"),
        SAMPLE_SIG,
        params,
        [null, null, null, null, this.#rng, this.#uni],
        1,
      );
    }
    be.rec.dispatch(
      be.pipeline("sample", "sample_rows"),
      SAMPLE_SIG,
      params,
      [
        this.logits,
        this.tok,
        out,
        null,
        null,
        this.#uni,
        this.#seen,
        this.#work,
      ],
      B,
    );
  }

  #ensureBlock(maxBlock: number): void {
    if (maxBlock <= this.#maxBlock) return;
    const be = this.#be;
    if (this.#out) be.rec.destroy(this.#out);
    for (const s of this.#staging) s.destroy();
    const bytes = Math.max(16, maxBlock * this.batch * 4);
    this.#out = be.rec.buffer(bytes, "decode.out");
    this.#staging = [0, 1, 2].map(() =>
      be.rec.device.createBuffer({
        size: bytes,
        usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      })
    );
    this.#maxBlock = maxBlock;
    // The captured sampling tails write into the old output buffer: record them again.
    this.#captured = new WeakMap();
  }

  /**
   * Feeds `tokens`, then samples and feeds back `n` tokens, yielding them in blocks
   * (`[batch][block length]`).
   */
  async *run(
    state: GpuState,
    tokens: Int32Array,
    n: number,
    options: DecodeOptions,
  ): AsyncGenerator<number[][]> {
    if (this.#busy) throw new BackendError("decodeTokens: this batch size is already decoding");
    const B = this.batch;
    const samplers = options.samplers;
    if (samplers && samplers.length !== B) {
      throw new BackendError(`decodeTokens: ${samplers.length} samplers for ${B} sequences`);
    }
    this.#busy = true;
    const be = this.#be;
    const vocab = Math.min(
      options.sampling.vocabSize ?? this.#cfg.paddedVocabSize,
      this.#cfg.paddedVocabSize,
    );
    // Per-row samplers, unless they all reduce to plain argmax (the fast greedy kernels).
    const perRow =
      samplers && samplers.some((r) => !r.options.greedy || r.options.repetitionPenalty !== 1)
        ? this.#writeRows(samplers)
        : null;
    const s: ResolvedSamplingOptions | RowsSampling = perRow ??
      (samplers ? { ...options.sampling, greedy: true, repetitionPenalty: 1 } : options.sampling);
    const maxBlock = Math.max(1, Math.min(options.blockSize ?? 64, 1024));
    this.#ensureBlock(maxBlock);
    be.rec.write(this.tok, 0, Uint32Array.from(tokens));
    if (!("rows" in s) && !s.greedy) be.rec.write(this.#rng, 0, xoshiroSeedState(s.seed));
    if ("rows" in s ? s.penalty : s.repetitionPenalty !== 1) {
      const h = Array.from({ length: B }, (_, b) => [...(options.history?.[b] ?? []), tokens[b]]);
      this.#writeSeen(h, vocab);
    }
    const inflight: { staging: GPUBuffer; len: number; done: Promise<void> }[] = [];
    let submitted = 0;
    let block = Math.min(8, maxBlock);
    let ring = 0;
    const submit = () => {
      const len = Math.min(block, n - submitted);
      for (let i = 0; i < len; i++) {
        this.encodeStep(state, i, s, vocab);
        // Submitting a few steps at a time lets the GPU start while the host encodes the rest.
        if ((i + 1) % this.submitSteps === 0) be.rec.flush();
      }
      const staging = this.#staging[ring];
      ring = (ring + 1) % this.#staging.length;
      be.rec.encoder().copyBufferToBuffer(this.#out!.buffer, 0, staging, 0, len * B * 4);
      be.rec.flush();
      inflight.push({ staging, len, done: staging.mapAsync(GPUMapMode.READ, 0, len * B * 4) });
      submitted += len;
      block = Math.min(block * 2, maxBlock);
    };
    try {
      // Blocks are started while there is room in flight, until `n` or a drain.
      const more = () =>
        submitted < n && inflight.length < this.inFlight && !options.drain?.aborted;
      while (more()) submit();
      while (inflight.length) {
        const head = inflight[0];
        await head.done;
        inflight.shift();
        be.rec.checkErrors();
        const ids = new Uint32Array(head.staging.getMappedRange(0, head.len * B * 4).slice(0));
        head.staging.unmap();
        while (more()) submit();
        const rows: number[][] = [];
        for (let b = 0; b < B; b++) {
          const row: number[] = [];
          for (let i = 0; i < head.len; i++) row.push(ids[i * B + b]);
          rows.push(row);
        }
        yield rows;
      }
    } catch (e) {
      // A lost device surfaces as whichever call noticed first (a map, a submit, a new buffer).
      throw await be.rec.failure(e);
    } finally {
      for (const f of inflight) {
        await f.done.catch(() => {});
        if (!be.rec.lostReason) f.staging.unmap();
      }
      // Each step drew one uniform per row from the row's stream on the device: the samplers
      // continue after those draws.
      if (perRow) {
        for (const r of samplers!) for (let i = 0; i < submitted; i++) r.rng.nextFloat();
      }
      this.#busy = false;
    }
  }

  /** Writes each row's stream and options for a per-row run (sample.wgsl, ROWS). */
  #writeRows(samplers: readonly Sampler[]): RowsSampling {
    const words = new Uint32Array(this.batch * ROW_WORDS);
    const f = new Float32Array(words.buffer);
    samplers.forEach((r, b) => {
      const o = r.options;
      const at = b * ROW_WORDS;
      words.set(r.rng.state(), at);
      words[at + 4] = (o.greedy ? 1 : 0) | (o.repetitionPenalty !== 1 ? 2 : 0) |
        (o.topP < 1 ? 4 : 0) | (o.minP > 0 ? 8 : 0);
      words[at + 5] = o.topK;
      f[at + 6] = o.temperature > 0 ? 1 / o.temperature : 1;
      f[at + 7] = o.temperature;
      f[at + 8] = o.topP;
      f[at + 9] = o.minP > 0 ? Math.log(o.minP) : 0;
      f[at + 10] = o.repetitionPenalty;
    });
    this.#be.rec.write(this.#rowRng, 0, words);
    return { rows: true, penalty: samplers.some((r) => r.options.repetitionPenalty !== 1) };
  }

  /**
   * Picks one token per row from given logits (`[batch, paddedVocab]`) with the GPU sampler, as
   * one decode step would (for tests). The RNG continues from the previous call unless `seed`
   * is given; `history` (re)sets the repetition-penalty bitmap.
   */
  async sampleLogits(
    logits: Float32Array,
    s: ResolvedSamplingOptions,
    options: { seed?: number; history?: readonly (readonly number[])[] } = {},
  ): Promise<number[]> {
    const be = this.#be;
    const vocab = Math.min(s.vocabSize ?? this.#cfg.paddedVocabSize, this.#cfg.paddedVocabSize);
    this.#ensureBlock(1);
    be.rec.write(this.logits, 0, logits);
    if (options.seed !== undefined) be.rec.write(this.#rng, 0, xoshiroSeedState(options.seed));
    if (options.history) this.#writeSeen(options.history, vocab);
    this.#sample(0, s, vocab);
    const out = new Uint32Array(await be.rec.read(this.#out!, 0, this.batch * 4));
    return [...out];
  }

  #writeSeen(history: readonly (readonly number[])[], vocab: number): void {
    const bits = new Uint32Array(this.batch * this.#words);
    for (let b = 0; b < this.batch; b++) {
      for (const id of history[b] ?? []) {
        if (Number.isInteger(id) && id >= 0 && id < vocab) {
          bits[b * this.#words + (id >>> 5)] |= 1 << (id & 31);
        }
      }
    }
    this.#be.rec.write(this.#seen, 0, bits);
  }

  /** Frees the plan's buffers. */
  dispose(): void {
    for (const s of this.#staging) s.destroy();
    this.#staging = [];
  }
}
