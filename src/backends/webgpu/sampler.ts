/**
 * The sampling half of fused decoding on the GPU, shared by every model: picking the next token
 * of each sequence from `[batch, paddedVocab]` logits on the GPU (greedy, or sampled with
 * temperature, top-k, top-p, min-p and the repetition penalty, per `wgsl/sample.wgsl`; one setup
 * for the whole batch, or each row its own options and random stream, continuing its host
 * {@link Sampler}'s), feeding it back through the `tok` buffer, and the block loop that reads
 * the picked ids back a block at a time with blocks in flight. The model half (tok → logits) is
 * a callback: Mamba's {@link DecodePlan}, the Transformer backend's decoding step.
 *
 * @module
 */

import type { DecodeOptions } from "../../backend.ts";
import { BackendError } from "../../errors.ts";
import type { ResolvedSamplingOptions, Sampler } from "../../sampling.ts";
import { type ReadSlot, readSlot } from "./readback.ts";
import type { Buf, Recorder } from "./recorder.ts";
import { checkCompiled, type Kernel, type ShaderDefs, type ShaderFile } from "./shaders.ts";

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

/** What the sampler needs of its backend. */
export interface SamplerHost {
  /** The command recorder. */
  readonly rec: Recorder;
  /** The compiled pipeline of `entry` in `wgsl/<file>.wgsl`. */
  pipeline(file: ShaderFile, entry: string, defs?: ShaderDefs): Kernel;
}

/**
 * A run whose rows each pick with their own {@link Sampler}: options and stream are in the
 * sampler's per-row buffer (sample.wgsl, ROWS), written once per run.
 */
export interface RowsSampling {
  readonly rows: true;
  /** Whether some row has a repetition penalty (the `seen` bitmap is kept). */
  readonly penalty: boolean;
}

/** How a step picks: one setup for every row, or each row its own. */
export type StepSampling = ResolvedSamplingOptions | RowsSampling;

/**
 * The key of a step's sampling setup, for callers that capture recorded steps: steps with the
 * same key record the same commands.
 */
export function samplingKey(s: StepSampling, vocab: number): string {
  return JSON.stringify(
    "rows" in s
      ? ["rows", s.penalty, vocab]
      : [s.greedy, s.temperature, s.topK, s.topP, s.minP, s.repetitionPenalty, vocab],
  );
}

/** Records one decoding step whose picked ids go to output slot `slot`. */
export type EncodeStep = (slot: number, s: StepSampling, vocab: number) => void;

/** The sampling buffers of fused decoding for one batch size, allocated once and reused. */
export class GpuSampler {
  /** Sequences. */
  readonly batch: number;
  /** Current token of each sequence (u32), fed by the next step. */
  readonly tok: Buf;
  /** `[batch, paddedVocab]` logits of the last step. */
  readonly logits: Buf;
  /**
   * Bumped whenever the output buffer is replaced: recorded sampling commands of an older
   * generation write into a buffer that is gone.
   */
  generation = 0;
  /**
   * Steps per submission inside a block: encoding costs the host about as much as the GPU
   * spends on a small model's step, so the GPU must not wait for a whole block to be encoded.
   */
  submitSteps = 4;
  /**
   * Steps of a block's first submission. Reading a block back waits until the GPU is idle (the
   * read's own copy is queued behind every block already submitted), so each block after the
   * first starts on an idle GPU, which waits for this many steps to be encoded.
   */
  firstSubmitSteps = 1;
  /**
   * Each block is this many times longer than the one before, from 8 steps up to the call's
   * block size: the first tokens come soon, and later blocks need fewer read-backs (each of
   * which leaves the GPU idle until the next block is submitted).
   */
  blockGrowth = 2;
  /**
   * Whether a block's steps so far go to the GPU after its `steps`-th step (its first
   * submission after {@link firstSubmitSteps}, then every {@link submitSteps}).
   */
  submitsAfter(steps: number): boolean {
    return steps === this.firstSubmitSteps || steps % this.submitSteps === 0;
  }
  /**
   * Blocks in flight: the next is encoded while the host waits for the oldest. More would keep
   * the GPU fed through longer host stalls, but a consumer that stops early wastes them.
   */
  inFlight = 2;
  readonly #host: SamplerHost;
  readonly #V: number;
  readonly #partial: Buf;
  readonly #rng: Buf;
  /** Per row: a xoshiro128** state and the sampling options (see sample.wgsl, ROWS). */
  readonly #rowRng: Buf;
  readonly #uni: Buf;
  readonly #seen: Buf;
  readonly #work: Buf;
  readonly #words: number;
  #out: Buf | null = null;
  /** Where each block in flight is read back from. */
  #staging: ReadSlot[] = [];
  #maxBlock = 0;
  #busy = false;

  /** Allocates the buffers for `batch` sequences over a padded vocabulary of `V`. */
  constructor(host: SamplerHost, batch: number, V: number) {
    this.#host = host;
    this.batch = batch;
    this.#V = V;
    const B = batch;
    const buf = (bytes: number, label: string) => host.rec.buffer(bytes, label);
    this.tok = buf(B * 4, "decode.tok");
    this.logits = buf(B * V * F32, "decode.logits");
    this.#partial = buf(B * ARGMAX_CHUNKS * 8, "decode.partial");
    this.#rng = buf(16, "decode.rng");
    this.#rowRng = buf(B * ROW_WORDS * 4, "decode.rowRng");
    this.#uni = buf(B * F32, "decode.uniform");
    this.#words = Math.ceil(V / 32);
    this.#seen = buf(B * this.#words * 4, "decode.seen");
    this.#work = buf(B * V * F32, "decode.work");
  }

  /** Records the pick of every sequence's next token from {@link logits} into output `slot`. */
  encodeSample(slot: number, s: StepSampling, vocab: number): void {
    const { rec } = this.#host;
    const B = this.batch;
    const V = this.#V;
    const out = this.#out!;
    const pipeline = (entry: string, defs?: ShaderDefs) =>
      this.#host.pipeline("sample", entry, defs);
    if ("rows" in s) {
      // Every row's options and stream are in #rowRng; the uniform block only shapes the work.
      const params = [V, vocab, B, slot, 0, ARGMAX_CHUNKS, 0, 0, 1, 1, 1, 0, 1, this.#words];
      rec.dispatch(
        pipeline("rng_draw", { ROWS: true }),
        SAMPLE_SIG,
        params,
        [null, null, null, null, this.#rowRng, this.#uni],
        1,
      );
      rec.dispatch(
        pipeline("sample_rows", { ROWS: true }),
        SAMPLE_SIG,
        params,
        [this.logits, this.tok, out, null, this.#rowRng, this.#uni, this.#seen, this.#work],
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
    if (s.greedy && !penalty) {
      rec.dispatch(
        pipeline("argmax_partial"),
        SAMPLE_SIG,
        params,
        [this.logits, null, null, this.#partial],
        ARGMAX_CHUNKS,
        B,
      );
      rec.dispatch(
        pipeline("argmax_final"),
        SAMPLE_SIG,
        params,
        [null, this.tok, out, this.#partial],
        B,
      );
      return;
    }
    if (!s.greedy) {
      rec.dispatch(
        pipeline("rng_draw"),
        SAMPLE_SIG,
        params,
        [null, null, null, null, this.#rng, this.#uni],
        1,
      );
    }
    rec.dispatch(
      pipeline("sample_rows"),
      SAMPLE_SIG,
      params,
      [this.logits, this.tok, out, null, null, this.#uni, this.#seen, this.#work],
      B,
    );
  }

  #ensureBlock(maxBlock: number): void {
    if (maxBlock <= this.#maxBlock) return;
    const { rec } = this.#host;
    if (this.#out) rec.destroy(this.#out);
    for (const s of this.#staging) s.destroy();
    const bytes = Math.max(16, maxBlock * this.batch * 4);
    this.#out = rec.buffer(bytes, "decode.out");
    this.#staging = [0, 1, 2].map(() => readSlot(rec.device, bytes, rec.ctx.readback));
    this.#maxBlock = maxBlock;
    this.generation++;
  }

  /**
   * Feeds `tokens`, then `n` times records a step with `encodeStep` (which must record the model
   * from {@link tok} to {@link logits} and then {@link encodeSample} into its slot), yielding the
   * picked ids in blocks (`[batch][block length]`). `progress.steps` counts the steps submitted
   * so far (the tokens the state has consumed), also when the consumer stops early.
   *
   * With `options.samplers` every row picks with its own sampler: its options and stream go to
   * the GPU, and when the run ends each sampler is advanced past the draws made there, so the
   * stream carries on from call to call as host stepping would. With `options.drain` aborted, no
   * further block is started; those under way are still yielded.
   */
  async *run(
    tokens: Int32Array,
    n: number,
    options: DecodeOptions,
    encodeStep: EncodeStep,
    progress: { steps: number } = { steps: 0 },
  ): AsyncGenerator<number[][]> {
    if (this.#busy) throw new BackendError("decodeTokens: this batch size is already decoding");
    const B = this.batch;
    const samplers = options.samplers;
    if (samplers && samplers.length !== B) {
      throw new BackendError(`decodeTokens: ${samplers.length} samplers for ${B} sequences`);
    }
    this.#busy = true;
    const { rec } = this.#host;
    const vocab = Math.min(options.sampling.vocabSize ?? this.#V, this.#V);
    const maxBlock = Math.max(1, Math.min(options.blockSize ?? 64, 1024));
    const inflight: { staging: ReadSlot; len: number }[] = [];
    // Per-row samplers, unless they all reduce to plain argmax (the fast greedy kernels).
    const perRow = samplers?.some((r) => !r.options.greedy || r.options.repetitionPenalty !== 1)
      ? samplers
      : undefined;
    let submitted = 0;
    try {
      const s: StepSampling = perRow
        ? this.#writeRows(perRow)
        : samplers
        ? { ...options.sampling, greedy: true, repetitionPenalty: 1 }
        : options.sampling;
      this.#ensureBlock(maxBlock);
      rec.write(this.tok, 0, Uint32Array.from(tokens));
      if (!("rows" in s) && !s.greedy) rec.write(this.#rng, 0, xoshiroSeedState(s.seed));
      if ("rows" in s ? s.penalty : s.repetitionPenalty !== 1) {
        const h = Array.from({ length: B }, (_, b) => [...(options.history?.[b] ?? []), tokens[b]]);
        this.#writeSeen(h, vocab);
      }
      let block = Math.min(8, maxBlock);
      let ring = 0;
      const submit = () => {
        const len = Math.min(block, n - submitted);
        for (let i = 0; i < len; i++) {
          encodeStep(i, s, vocab);
          progress.steps++;
          // Submitting a few steps at a time lets the GPU start while the host encodes the rest.
          if (this.submitsAfter(i + 1)) rec.flush();
        }
        const staging = this.#staging[ring];
        ring = (ring + 1) % this.#staging.length;
        staging.record(rec.encoder(), this.#out!.buffer, 0, len * B * 4);
        rec.flush();
        staging.submitted();
        inflight.push({ staging, len });
        submitted += len;
        block = Math.min(block * Math.max(1, this.blockGrowth), maxBlock);
      };
      // Blocks are started while there is room in flight, until `n` or a drain.
      const more = () =>
        submitted < n && inflight.length < this.inFlight && !options.drain?.aborted;
      while (more()) submit();
      while (inflight.length) {
        const head = inflight[0];
        await checkCompiled(rec.device);
        const bytes = await head.staging.read();
        inflight.shift();
        rec.checkErrors();
        const ids = new Uint32Array(bytes.buffer, bytes.byteOffset, head.len * B);
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
      throw await rec.failure(e);
    } finally {
      for (const f of inflight) await f.staging.settle();
      // Each step drew one uniform per row from the row's stream on the device: the samplers
      // continue after those draws.
      if (perRow) { for (const r of perRow) for (let i = 0; i < submitted; i++) r.rng.nextFloat(); }
      this.#busy = false;
    }
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
    const { rec } = this.#host;
    const vocab = Math.min(s.vocabSize ?? this.#V, this.#V);
    this.#ensureBlock(1);
    rec.write(this.logits, 0, logits);
    if (options.seed !== undefined) rec.write(this.#rng, 0, xoshiroSeedState(options.seed));
    if (options.history) this.#writeSeen(options.history, vocab);
    this.encodeSample(0, s, vocab);
    const out = new Uint32Array(await rec.read(this.#out!, 0, this.batch * 4));
    return [...out];
  }

  /**
   * Picks one token per row from `src` (`[batch, paddedVocab]` logits) with each row's sampler,
   * on the GPU, reading back only the ids (see {@link Backend.pickTokens}). Undefined while a
   * decode run uses these buffers.
   */
  async pick(
    src: Buf,
    samplers: readonly Sampler[],
    vocab: number,
    history?: readonly (readonly number[])[],
  ): Promise<number[] | undefined> {
    if (this.#busy) return undefined;
    if (samplers.length !== this.batch) {
      throw new BackendError(`pickTokens: ${samplers.length} samplers for ${this.batch} rows`);
    }
    this.#busy = true;
    try {
      const { rec } = this.#host;
      const V = Math.min(vocab, this.#V);
      this.#ensureBlock(1);
      rec.copy(src, 0, this.logits, 0, this.batch * this.#V * F32);
      const s = this.#writeRows(samplers);
      if (s.penalty) this.#writeSeen(history ?? [], V);
      this.encodeSample(0, s, V);
      const out = new Uint32Array(await rec.read(this.#out!, 0, this.batch * 4));
      // The host would have drawn once for each stochastic pick.
      for (const r of samplers) if (!r.options.greedy) r.rng.nextFloat();
      return [...out];
    } finally {
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
    this.#host.rec.write(this.#rowRng, 0, words);
    return { rows: true, penalty: samplers.some((r) => r.options.repetitionPenalty !== 1) };
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
    this.#host.rec.write(this.#seen, 0, bits);
  }

  /** Frees the staging buffers (the others go with the recorder). */
  dispose(): void {
    for (const s of this.#staging) s.destroy();
    this.#staging = [];
  }
}
