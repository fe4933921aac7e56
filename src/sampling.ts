/**
 * Next-token sampling with the semantics of mamba_ssm's `generate` / `sample`
 * (`mamba_ssm/utils/generation.py`): greedy decoding, temperature, top-k, top-p
 * (nucleus), min-p and the CTRL repetition penalty, driven by a seeded PRNG.
 *
 * Order of operations for one row of logits:
 *
 * 1. Only ids `< vocabSize` are considered (logit rows may be padded).
 * 2. Repetition penalty (CTRL): for every distinct id in `history`,
 *    `logit < 0 ? logit * penalty : logit / penalty`.
 * 3. Greedy (`temperature === 0` or `topK === 1`): the argmax (first one on ties).
 * 4. Otherwise the logits are divided by `temperature`, then filtered by top-k, then
 *    top-p (on the distribution renormalised over the top-k survivors), then min-p;
 *    the token is drawn from the renormalised softmax over the survivors.
 *
 * Differences from the reference, on purpose:
 *
 * - The reference applies `min_p` only when `top_k == 0`, ignores `top_p` in that case,
 *   and compares the raw *logits* against `min_p · logits[..., 0]`. Here min-p is
 *   relative to the top probability, as in llama.cpp and Hugging Face: a token is kept
 *   when `p ≥ minP · p_max` (computed after temperature), and it combines with top-k
 *   and top-p.
 * - Ties at a top-k or top-p boundary are all kept (the reference's
 *   `modify_logits_for_top_k_filtering` also keeps ties), so the result does not depend
 *   on the order of a sort.
 * - `temperature: 0` means greedy instead of dividing by zero.
 *
 * @module
 */

import { InputError, OptionError } from "./errors.ts";
import { randomSeed, Xoshiro128 } from "./rng.ts";

/**
 * Options of the next-token sampler. Every field is optional; the defaults give plain
 * ancestral sampling (`temperature` 1, no filtering, no penalty).
 *
 * @example
 * ```ts
 * import type { SamplingOptions } from "./sampling.ts";
 * const greedy: SamplingOptions = { topK: 1 };
 * const creative: SamplingOptions = { temperature: 0.8, topP: 0.95, seed: 1 };
 * ```
 */
export interface SamplingOptions {
  /** Softmax temperature, ≥ 0 and finite. `0` means greedy. Default 1. */
  temperature?: number;
  /** Keep only the `topK` most likely tokens; `0` disables, `1` is greedy. Default 0. */
  topK?: number;
  /** Nucleus sampling: keep the smallest top set whose mass reaches `topP`, in (0, 1]. Default 1 (off). */
  topP?: number;
  /** Keep tokens with `p ≥ minP · p_max`, in [0, 1]. Default 0 (off). */
  minP?: number;
  /** CTRL repetition penalty over the history (prompt + generated), > 0. Default 1 (off). */
  repetitionPenalty?: number;
  /** Seed of the PRNG (an integer). Default: a fresh random seed. */
  seed?: number;
  /** Only ids below this are sampled (the real vocabulary of a padded logits row). Default: the row length. */
  vocabSize?: number;
}

/**
 * Sampling options after validation, with every default filled in.
 *
 * @example
 * ```ts
 * import { validateSamplingOptions } from "./sampling.ts";
 * const r = validateSamplingOptions({ topK: 1, seed: 3 });
 * console.log(r.greedy, r.temperature); // true 1
 * ```
 */
export interface ResolvedSamplingOptions {
  /** Softmax temperature (0 ⇒ greedy). */
  readonly temperature: number;
  /** Top-k, 0 when disabled. */
  readonly topK: number;
  /** Top-p, 1 when disabled. */
  readonly topP: number;
  /** Min-p, 0 when disabled. */
  readonly minP: number;
  /** Repetition penalty, 1 when disabled. */
  readonly repetitionPenalty: number;
  /** The PRNG seed actually used. */
  readonly seed: number;
  /** Vocabulary restriction, or `undefined` for the whole row. */
  readonly vocabSize: number | undefined;
  /** Whether the options reduce to argmax decoding. */
  readonly greedy: boolean;
}

/**
 * Error thrown for an invalid sampling option: an {@link OptionError} (so a `MambaError`),
 * and `option` names the offending field.
 *
 * @example
 * ```ts
 * import { MambaError } from "./errors.ts";
 * import { SamplingOptionsError, validateSamplingOptions } from "./sampling.ts";
 * try {
 *   validateSamplingOptions({ topP: 0 });
 * } catch (e) {
 *   console.log(e instanceof SamplingOptionsError, e instanceof MambaError); // true true
 * }
 * ```
 */
export class SamplingOptionsError extends OptionError {
  /**
   * Creates the error.
   *
   * @param option Name of the invalid option.
   * @param message Human-readable explanation.
   *
   * @example
   * ```ts
   * import { SamplingOptionsError } from "./sampling.ts";
   * const e = new SamplingOptionsError("topK", "topK must be an integer ≥ 0, got -1");
   * ```
   */
  constructor(option: string, message: string) {
    super(option, message);
  }
}

function fmt(v: unknown): string {
  return typeof v === "number" ? String(v) : JSON.stringify(v) ?? String(v);
}

/**
 * Validates sampling options and fills in the defaults.
 *
 * @throws {SamplingOptionsError} (a `MambaError`) when `temperature` is negative, NaN or
 * infinite; `topK` is negative or not an integer; `topP` is outside (0, 1]; `minP` is
 * outside [0, 1]; `repetitionPenalty` is ≤ 0 or not finite; `seed` is not an integer;
 * or `vocabSize` is not a positive integer.
 *
 * @example
 * ```ts
 * import { validateSamplingOptions } from "./sampling.ts";
 * const opts = validateSamplingOptions({ temperature: 0.7, topP: 0.9, seed: 42 });
 * console.log(opts.topK, opts.minP); // 0 0
 * ```
 */
export function validateSamplingOptions(opts: SamplingOptions = {}): ResolvedSamplingOptions {
  const temperature = opts.temperature ?? 1;
  if (typeof temperature !== "number" || !(temperature >= 0) || !Number.isFinite(temperature)) {
    throw new SamplingOptionsError(
      "temperature",
      `temperature must be a finite number ≥ 0 (0 = greedy), got ${fmt(opts.temperature)}`,
    );
  }
  const topK = opts.topK ?? 0;
  if (typeof topK !== "number" || !Number.isInteger(topK) || topK < 0) {
    throw new SamplingOptionsError(
      "topK",
      `topK must be an integer ≥ 0 (0 = off, 1 = greedy), got ${fmt(opts.topK)}`,
    );
  }
  const topP = opts.topP ?? 1;
  if (typeof topP !== "number" || !(topP > 0 && topP <= 1)) {
    throw new SamplingOptionsError(
      "topP",
      `topP must be in (0, 1] (1 = off), got ${fmt(opts.topP)}`,
    );
  }
  const minP = opts.minP ?? 0;
  if (typeof minP !== "number" || !(minP >= 0 && minP <= 1)) {
    throw new SamplingOptionsError(
      "minP",
      `minP must be in [0, 1] (0 = off), got ${fmt(opts.minP)}`,
    );
  }
  const repetitionPenalty = opts.repetitionPenalty ?? 1;
  if (
    typeof repetitionPenalty !== "number" || !(repetitionPenalty > 0) ||
    !Number.isFinite(repetitionPenalty)
  ) {
    throw new SamplingOptionsError(
      "repetitionPenalty",
      `repetitionPenalty must be a finite number > 0 (1 = off), got ${fmt(opts.repetitionPenalty)}`,
    );
  }
  const seed = opts.seed ?? randomSeed();
  if (typeof seed !== "number" || !Number.isInteger(seed)) {
    throw new SamplingOptionsError("seed", `seed must be an integer, got ${fmt(opts.seed)}`);
  }
  const vocabSize = opts.vocabSize;
  if (
    vocabSize !== undefined &&
    (typeof vocabSize !== "number" || !Number.isInteger(vocabSize) || vocabSize < 1)
  ) {
    throw new SamplingOptionsError(
      "vocabSize",
      `vocabSize must be a positive integer, got ${fmt(vocabSize)}`,
    );
  }
  return {
    temperature,
    topK,
    topP,
    minP,
    repetitionPenalty,
    seed,
    vocabSize,
    greedy: temperature === 0 || topK === 1,
  };
}

/**
 * Index of the largest value among the first `end` entries (the first one on ties;
 * NaN never wins). Returns -1 when every value is NaN or `end` is 0.
 *
 * @example
 * ```ts
 * import { argmax } from "./sampling.ts";
 * console.log(argmax(new Float32Array([1, 5, 5, 2]))); // 1
 * console.log(argmax(new Float32Array([1, 5, 9]), 2)); // 1
 * ```
 */
export function argmax(values: ArrayLike<number>, end: number = values.length): number {
  let best = -1;
  let bestV = -Infinity;
  const n = Math.min(end, values.length);
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (v > bestV || (best < 0 && v === -Infinity)) {
      bestV = v;
      best = i;
    }
  }
  return best;
}

/**
 * Applies the CTRL repetition penalty (as `modify_logit_for_repetition_penalty` in
 * mamba_ssm): for each *distinct* id in `history` with `0 ≤ id < vocabSize`, the logit
 * becomes `logit < 0 ? logit * penalty : logit / penalty` (in float32, like the
 * reference). Writes into `out` (default: a new array holding a copy of the first
 * `vocabSize` logits) and returns it; `logits` itself is never modified.
 *
 * @example
 * ```ts
 * import { applyRepetitionPenalty } from "./sampling.ts";
 * const out = applyRepetitionPenalty(new Float32Array([2, -2, 1]), [0, 1, 1], 2);
 * console.log(Array.from(out)); // [1, -4, 1]
 * ```
 */
export function applyRepetitionPenalty(
  logits: Float32Array,
  history: ArrayLike<number>,
  penalty: number,
  out?: Float32Array,
  vocabSize: number = logits.length,
): Float32Array {
  const n = Math.min(vocabSize, logits.length);
  const dst = out ?? new Float32Array(n);
  if (dst.length < n) {
    throw new InputError(`applyRepetitionPenalty: out has ${dst.length} entries, fewer than ${n}`);
  }
  if (dst !== logits) dst.set(n === logits.length ? logits : logits.subarray(0, n));
  if (penalty === 1) return dst;
  const p = Math.fround(penalty);
  for (let j = 0; j < history.length; j++) {
    const id = history[j];
    if (!(id >= 0 && id < n) || !Number.isInteger(id)) continue;
    // Computed from the original logit, so repeated ids are penalised once.
    const v = logits[id];
    dst[id] = v < 0 ? v * p : v / p;
  }
  return dst;
}

/**
 * The token ids a sequence has seen, for the repetition penalty: each distinct id once, in the
 * order first seen. The CTRL penalty depends only on which ids occurred, not how often, so this
 * holds everything {@link applyRepetitionPenalty} needs while its size stays bounded by the
 * vocabulary however long the stream runs (a plain array of every id grew by a slot per token,
 * and made each penalised sample cost O(tokens so far)).
 *
 * @example
 * ```ts
 * import { Sampler, TokenHistory } from "./sampling.ts";
 * const h = new TokenHistory([3, 1, 3]);
 * h.push(1);
 * h.push(2);
 * console.log(h.ids); // [3, 1, 2]
 * const id = new Sampler({ topK: 1, repetitionPenalty: 1.3 }).sample(new Float32Array(4), h.ids);
 * ```
 */
export class TokenHistory {
  /** The distinct ids seen, in the order first seen. */
  readonly ids: number[] = [];
  #seen = new Uint8Array(0);

  /** Starts from `ids` (e.g. the prompt). */
  constructor(ids: Iterable<number> = []) {
    for (const id of ids) this.push(id);
  }

  /** Records `id` (ignored when it is not a non-negative integer). */
  push(id: number): void {
    if (!Number.isSafeInteger(id) || id < 0) return;
    if (id >= this.#seen.length) {
      const grown = new Uint8Array(Math.max(id + 1, 2 * this.#seen.length, 256));
      grown.set(this.#seen);
      this.#seen = grown;
    }
    if (this.#seen[id] === 0) {
      this.#seen[id] = 1;
      this.ids.push(id);
    }
  }

  /** Whether `id` was seen. */
  has(id: number): boolean {
    return this.#seen[id] === 1;
  }
}

/**
 * Stateful next-token sampler. It owns a seeded PRNG (so a fixed seed gives a
 * reproducible sequence) and reuses its scratch buffers between calls.
 *
 * @example
 * ```ts
 * import { Sampler } from "./sampling.ts";
 * const sampler = new Sampler({ temperature: 0.8, topK: 40, seed: 1 });
 * const logits = new Float32Array([0.1, 2.0, 1.5, -1.0]);
 * const id = sampler.sample(logits, [1]); // one of 0..3
 * const greedy = new Sampler({ topK: 1 }).sample(logits); // 1
 * ```
 */
export class Sampler {
  /** The validated options, with defaults filled in (including the seed actually used). */
  readonly options: ResolvedSamplingOptions;
  #rng: Xoshiro128;
  #work = new Float32Array(0);
  #heap = new Float32Array(0);
  #sorted = new Float32Array(0);
  #mass = new Float64Array(0);
  #weights = new Float64Array(0);

  /**
   * Creates a sampler; the PRNG is seeded from `opts.seed` (or a random seed).
   *
   * @param opts Sampling options, validated with {@link validateSamplingOptions}.
   * @throws {SamplingOptionsError} for invalid options.
   *
   * @example
   * ```ts
   * import { Sampler } from "./sampling.ts";
   * const s = new Sampler({ topP: 0.9, seed: 7, vocabSize: 50277 });
   * ```
   */
  constructor(opts: SamplingOptions = {}) {
    this.options = validateSamplingOptions(opts);
    this.#rng = new Xoshiro128(this.options.seed);
  }

  /**
   * The sampler's random stream: one {@link Xoshiro128.nextFloat} per stochastic pick (none for
   * greedy ones). A backend that picks on the device continues it there and advances it here.
   *
   * @example
   * ```ts
   * import { Sampler } from "./sampling.ts";
   * const s = new Sampler({ seed: 5 });
   * const state = s.rng.state(); // where the next draw starts
   * ```
   */
  get rng(): Xoshiro128 {
    return this.#rng;
  }

  /**
   * Picks the next token id from one row of logits.
   *
   * @param logits Logits of one sequence (length ≥ `vocabSize`; extra padded entries
   *   are ignored when `vocabSize` is set). Not modified.
   * @param history Ids seen so far (prompt + generated) for the repetition penalty.
   * @returns A token id in `[0, vocabSize)`.
   * @throws {InputError} when the row is shorter than `vocabSize`, or every logit is NaN or −∞.
   *
   * @example
   * ```ts
   * import { Sampler } from "./sampling.ts";
   * const s = new Sampler({ topK: 1, repetitionPenalty: 10 });
   * console.log(s.sample(new Float32Array([3, 2, 0]), [0])); // 1 (3/10 < 2)
   * ```
   */
  sample(logits: Float32Array, history?: ArrayLike<number>): number {
    const o = this.options;
    const V = o.vocabSize ?? logits.length;
    if (logits.length < V) {
      throw new InputError(`logits row has ${logits.length} entries but vocabSize is ${V}`);
    }
    let src = logits;
    if (o.repetitionPenalty !== 1 && history !== undefined && history.length > 0) {
      if (this.#work.length < V) this.#work = new Float32Array(V);
      src = applyRepetitionPenalty(logits, history, o.repetitionPenalty, this.#work, V);
    }
    if (o.greedy) {
      const id = argmax(src, V);
      if (id < 0 || src[id] !== src[id]) {
        throw new InputError(
          "cannot sample: every logit is NaN (do the weights or the state hold NaN?)",
        );
      }
      return id;
    }
    return this.#sampleStochastic(src, V);
  }

  #sampleStochastic(src: Float32Array, V: number): number {
    const o = this.options;
    const T = o.temperature;
    const invT = 1 / T;
    let lmax = -Infinity;
    for (let i = 0; i < V; i++) {
      const v = src[i];
      if (v > lmax) lmax = v;
    }
    if (lmax === -Infinity) {
      throw new InputError(
        "cannot sample: every logit is NaN or -Infinity (do the weights or the state hold NaN?)",
      );
    }
    // Every filter keeps an upper set of the (monotonically scaled) logits, so their
    // composition is a single threshold on the raw logit.
    if (this.#weights.length < V) this.#weights = new Float64Array(V);
    const w = this.#weights;
    let thr = -Infinity;
    if (o.topK > 0 && o.topK < V) thr = this.#kthLargest(src, V, o.topK);
    // With top-p, `w` already holds each kept-so-far token's weight.
    const weighed = o.topP < 1;
    if (weighed) thr = Math.max(thr, this.#topPThreshold(src, V, thr, lmax, invT, o.topP, w));
    if (o.minP > 0) thr = Math.max(thr, lmax + T * Math.log(o.minP));
    if (thr > lmax) thr = lmax; // guard against rounding: the top token always survives

    let total = 0;
    let last = -1;
    for (let i = 0; i < V; i++) {
      const v = src[i];
      if (v >= thr) {
        const x = weighed ? w[i] : v === lmax ? 1 : Math.exp((v - lmax) * invT);
        w[i] = x;
        total += x;
        last = i;
      } else {
        w[i] = 0;
      }
    }
    const u = this.#rng.nextFloat() * total;
    let acc = 0;
    for (let i = 0; i <= last; i++) {
      const x = w[i];
      if (x === 0) continue;
      acc += x;
      if (u < acc) return i;
    }
    return last;
  }

  /** k-th largest non-NaN value (−∞ when there are fewer than k). Min-heap of size k. */
  #kthLargest(src: Float32Array, V: number, k: number): number {
    if (this.#heap.length < k) this.#heap = new Float32Array(k);
    const h = this.#heap;
    let size = 0;
    for (let i = 0; i < V; i++) {
      const v = src[i];
      if (v !== v) continue;
      if (size < k) {
        // sift up
        let c = size++;
        while (c > 0) {
          const p = (c - 1) >> 1;
          if (h[p] <= v) break;
          h[c] = h[p];
          c = p;
        }
        h[c] = v;
      } else if (v > h[0]) {
        // replace root, sift down
        let c = 0;
        for (;;) {
          const l = 2 * c + 1;
          if (l >= k) break;
          const r = l + 1;
          const m = r < k && h[r] < h[l] ? r : l;
          if (h[m] >= v) break;
          h[c] = h[m];
          c = m;
        }
        h[c] = v;
      }
    }
    return size < k ? -Infinity : h[0];
  }

  /**
   * Smallest logit value t such that the tokens with logit ≥ t (among those ≥ `floor`)
   * form the nucleus: a token is kept when the probability mass of strictly more likely
   * tokens is below `topP` (ties are kept together).
   *
   * Found by a quickselect on mass rather than a sort (a 50k-entry sort costs ~5 ms, a
   * selection well under one): each round splits the candidates around a pivot value into
   * greater / equal / smaller. If the mass of everything greater than the pivot is still below
   * the target, the pivot is kept and the search goes on among the smaller values; otherwise
   * the threshold lies among the greater ones. Leaves each candidate's weight in `weights[i]`.
   */
  #topPThreshold(
    src: Float32Array,
    V: number,
    floor: number,
    lmax: number,
    invT: number,
    topP: number,
    weights: Float64Array,
  ): number {
    if (this.#sorted.length < V) {
      this.#sorted = new Float32Array(V);
      this.#mass = new Float64Array(V);
    }
    const val = this.#sorted;
    const mass = this.#mass;
    let n = 0;
    let total = 0;
    for (let i = 0; i < V; i++) {
      const v = src[i];
      if (v >= floor) {
        const x = v === lmax ? 1 : Math.exp((v - lmax) * invT);
        weights[i] = x;
        val[n] = v;
        mass[n++] = x;
        total += x;
      }
    }
    const target = topP * total;
    let thr = lmax;
    let above = 0; // mass of the candidates greater than every one in [lo, hi)
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const pivot = val[lo + ((hi - lo) >> 1)];
      // Three-way partition of [lo, hi): [lo, gt) > pivot, [gt, lt) = pivot, [lt, hi) < pivot.
      let gt = lo;
      let i = lo;
      let lt = hi;
      let greater = 0;
      let equal = 0;
      while (i < lt) {
        const v = val[i];
        const x = mass[i];
        if (v > pivot) {
          greater += x;
          val[i] = val[gt];
          mass[i] = mass[gt];
          val[gt] = v;
          mass[gt++] = x;
          i++;
        } else if (v < pivot) {
          lt--;
          val[i] = val[lt];
          mass[i] = mass[lt];
          val[lt] = v;
          mass[lt] = x;
        } else {
          equal += x;
          i++;
        }
      }
      if (above + greater < target) { // the pivot is kept: look lower
        thr = pivot;
        above += greater + equal;
        lo = lt;
      } else hi = gt; // it is not: the threshold is among the greater values
    }
    return thr;
  }
}

/**
 * Decoding on the host, for backends without fused decoding: feeds `tokens` (one per sequence)
 * through `step`, picks the next token of each sequence with one {@link Sampler}, feeds it back,
 * `n` times. Yields the picked ids a step at a time, `[batch][1]`.
 */
export async function* hostDecode<S>(
  step: (state: S, tokens: readonly number[]) => Promise<Float32Array>,
  state: S,
  tokens: readonly number[],
  n: number,
  sampling: ResolvedSamplingOptions,
  paddedVocab: number,
  seen?: readonly (readonly number[])[],
): AsyncGenerator<number[][]> {
  const sampler = new Sampler(sampling);
  const V = paddedVocab;
  const history = tokens.map((t, b) => new TokenHistory([...(seen?.[b] ?? []), t]));
  let cur = [...tokens];
  for (let i = 0; i < n; i++) {
    const logits = await step(state, cur);
    cur = cur.map((_, b) => sampler.sample(logits.subarray(b * V, (b + 1) * V), history[b].ids));
    cur.forEach((t, b) => history[b].push(t));
    yield cur.map((t) => [t]);
  }
}
