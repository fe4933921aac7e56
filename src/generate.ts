/**
 * Text generation on top of any recurrent language model that can prefill a prompt into
 * a state and then advance it one token at a time ({@link StepModel}; `MambaLM`
 * implements it).
 *
 * - {@link generate}: async iterator of `{ id, text }` for one prompt (streaming).
 * - {@link complete}: the whole completion of one prompt as a string.
 * - {@link generateBatch}: several prompts at once, with per-sequence stopping.
 * - {@link textStream}: a `TransformStream<string, string>` that keeps one state across
 *   everything written to it, in constant memory (log follower, chat).
 *
 * The loop is mamba_ssm's `decode`: prefill the prompt, then repeatedly sample the next
 * token from the last logits (see {@link Sampler}) and feed it back with one `step`.
 *
 * @module
 */

import { InputError, OptionError } from "./errors.ts";
import { Sampler, type SamplingOptions, TokenHistory } from "./sampling.ts";
import type { StreamDecoder, TextTokenizer } from "./tokenizer.ts";

/**
 * The minimum a recurrent inference state must offer to the generation helpers: its
 * batch size and a deep copy.
 *
 * @example
 * ```ts
 * import type { InferenceStateLike } from "./generate.ts";
 * class MyState implements InferenceStateLike {
 *   constructor(readonly batch: number) {}
 *   clone(): MyState {
 *     return new MyState(this.batch);
 *   }
 * }
 * ```
 */
export interface InferenceStateLike {
  /** Number of sequences (rows) the state holds. */
  readonly batch: number;
  /** Independent deep copy of the state. */
  clone(): InferenceStateLike;
}

/**
 * A language model that can be driven token by token.
 *
 * `prefill` and `step` both advance the state they are given and return the logits of
 * the last position of every row, as one `Float32Array` of `batch × rowLength` values
 * (`rowLength` is normally `config.paddedVocabSize`).
 *
 * @example
 * ```ts
 * import type { InferenceStateLike, StepModel } from "./generate.ts";
 * class State implements InferenceStateLike {
 *   constructor(readonly batch: number, public last: number[] = []) {}
 *   clone(): State {
 *     return new State(this.batch, [...this.last]);
 *   }
 * }
 * // A toy model that always predicts "previous token + 1".
 * const V = 8;
 * const counter: StepModel<State> = {
 *   config: { vocabSize: V, paddedVocabSize: V },
 *   createState: (batch = 1) => new State(batch),
 *   prefill(s, ids) {
 *     return Promise.resolve(this.step(s, ids.map((row) => row[row.length - 1])));
 *   },
 *   step(s, tokens) {
 *     s.last = tokens;
 *     const out = new Float32Array(tokens.length * V);
 *     tokens.forEach((t, b) => (out[b * V + ((t + 1) % V)] = 10));
 *     return Promise.resolve(out);
 *   },
 * };
 * ```
 */
export interface StepModel<S extends InferenceStateLike = InferenceStateLike> {
  /** Real vocabulary size (sampling is restricted to ids below it) and padded row length. */
  readonly config: { readonly vocabSize: number; readonly paddedVocabSize: number };
  /** Tokenizer, needed for string prompts, text output and stop strings. */
  readonly tokenizer?: TextTokenizer;
  /** New all-zero state for `batch` sequences (default 1). */
  createState(batch?: number): S;
  /** Feeds `ids[b]` into row `b` (rows may differ in length) and returns the last logits. */
  prefill(state: S, ids: number[][]): Promise<Float32Array>;
  /** Feeds one token per row and returns the next logits. */
  step(state: S, tokens: number[]): Promise<Float32Array>;
  /**
   * True when {@link StepModel.generateTokens} runs the decoding loop on the device; then
   * {@link generate} uses it for states it owns, instead of one `step` (and read-back) per token.
   */
  readonly fusedDecoding?: boolean;
  /** Fused decoding: feeds `tokens`, then picks and feeds `n` more; yields `[batch][block]` ids. */
  generateTokens?(
    state: S,
    tokens: readonly number[],
    n: number,
    options: SamplingOptions & { history?: readonly (readonly number[])[]; blockSize?: number },
  ): AsyncGenerator<number[][]>;
  /**
   * Most prompt tokens per `prefill` call (about 50 ms of work): longer prompts are fed in chunks
   * of this size, and `signal` is checked between them. Without it a prompt is fed at once.
   */
  readonly prefillChunkTokens?: number;
  /** Most tokens per block of fused decoding (about 50 ms of work); the backend's default without. */
  readonly decodeBlockTokens?: number;
}

/**
 * Options of the generation functions: the {@link SamplingOptions} plus stopping rules.
 *
 * @example
 * ```ts
 * import type { GenerateOptions } from "./generate.ts";
 * const opts: GenerateOptions = { maxNewTokens: 64, temperature: 0.8, topP: 0.9, stop: ["\n\n"], seed: 1 };
 * ```
 */
export interface GenerateOptions<S extends InferenceStateLike = InferenceStateLike>
  extends SamplingOptions {
  /** Most tokens to generate (per prompt / per written chunk). Default 128. */
  maxNewTokens?: number;
  /**
   * Token that ends generation (not emitted, not fed to the state). Default: the
   * tokenizer's `eosTokenId`. `null` disables it.
   */
  eosTokenId?: number | null;
  /**
   * Generation ends as soon as the text contains one of these strings; the text is
   * truncated just before it. Text that might be the start of a stop string is held back
   * until it is known not to be one. Needs a tokenizer.
   */
  stop?: string[];
  /**
   * Aborting ends generation after the current step, prefill chunk or decoding block (each about
   * 50 ms of work, see `StepModel.prefillChunkTokens`); the text so far is kept. An abort during
   * the prompt's prefill yields nothing, and leaves `state` (when given) consistently advanced
   * over the prompt's first chunks: a prefix of the prompt, cut at a chunk boundary.
   */
  signal?: AbortSignal;
  /**
   * Existing state to continue from (its batch must match). It is advanced in place over
   * the prompt and the generated tokens, so a later call continues the same text.
   * Without it, a fresh state is created (and the prompt may get the tokenizer's
   * special tokens).
   */
  state?: S;
  /**
   * Only with `state`: whether the generated tokens are fed into it as well (default
   * true). When false, the prompt is fed into `state` and the continuation is generated
   * on a clone, so `state` holds only the prompts (e.g. to follow a log while predicting
   * what comes next).
   */
  feedGenerated?: boolean;
}

/**
 * One generated token and the text it completes.
 *
 * @example
 * ```ts
 * import type { GeneratedToken } from "./generate.ts";
 * const t: GeneratedToken = { id: 12092, text: "Hello" };
 * ```
 */
export interface GeneratedToken {
  /** The token id. */
  id: number;
  /**
   * Text increment: always whole characters (a multi-byte character split over several
   * tokens appears with its last token), and held back while it may be part of a stop
   * string. Concatenating all increments gives the final text.
   */
  text: string;
}

const DEFAULT_MAX_NEW_TOKENS = 128;

interface Resolved {
  maxNewTokens: number;
  eos: number | undefined;
  stop: string[];
  sampler: Sampler;
  start: number | undefined;
}

function resolve<S extends InferenceStateLike>(
  model: StepModel<S>,
  opts: GenerateOptions<S>,
): Resolved {
  const maxNewTokens = opts.maxNewTokens ?? DEFAULT_MAX_NEW_TOKENS;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) {
    throw new OptionError(
      "maxNewTokens",
      `maxNewTokens must be an integer ≥ 0, got ${opts.maxNewTokens}`,
    );
  }
  const tokEos = model.tokenizer?.eosTokenId;
  const eos = opts.eosTokenId === null ? undefined : opts.eosTokenId ?? tokEos;
  if (eos !== undefined && (!Number.isInteger(eos) || eos < 0)) {
    throw new OptionError("eosTokenId", `eosTokenId must be an integer ≥ 0 or null, got ${eos}`);
  }
  const stop = opts.stop ?? [];
  if (!Array.isArray(stop) || stop.some((s) => typeof s !== "string" || s.length === 0)) {
    throw new OptionError("stop", "stop must be an array of non-empty strings");
  }
  if (stop.length > 0 && model.tokenizer === undefined) {
    throw new OptionError("stop", "stop strings need a model with a tokenizer");
  }
  const sampler = new Sampler({ ...opts, vocabSize: opts.vocabSize ?? model.config.vocabSize });
  return { maxNewTokens, eos, stop, sampler, start: eos ?? tokEos };
}

function promptIds<S extends InferenceStateLike>(
  model: StepModel<S>,
  prompt: string | readonly number[],
  fresh: boolean,
  start: number | undefined,
): number[] {
  let ids: number[];
  if (typeof prompt === "string") {
    const tok = model.tokenizer;
    if (tok === undefined) {
      throw new InputError("this model has no tokenizer: pass the prompt as token ids");
    }
    ids = tok.encode(prompt, { addSpecialTokens: fresh });
  } else {
    ids = Array.from(prompt);
  }
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= model.config.paddedVocabSize) {
      throw new InputError(
        `prompt token id ${id} is outside the model's vocabulary [0, ${model.config.paddedVocabSize})`,
      );
    }
  }
  if (ids.length === 0) {
    if (fresh && start !== undefined && start < model.config.paddedVocabSize) return [start];
    throw new InputError(
      fresh
        ? "empty prompt and no end-of-text token to start from"
        : "the prompt must not be empty when continuing a state",
    );
  }
  return ids;
}

/** Holds back text that may be the beginning of a stop string. */
class StopMatcher {
  #stops: string[];
  #held = "";
  stopped = false;

  constructor(stops: string[]) {
    this.#stops = stops;
  }

  push(text: string): string {
    if (this.stopped) return "";
    const held = this.#held + text;
    let at = -1;
    for (const s of this.#stops) {
      const i = held.indexOf(s);
      if (i >= 0 && (at < 0 || i < at)) at = i;
    }
    if (at >= 0) {
      this.stopped = true;
      this.#held = "";
      return held.slice(0, at);
    }
    let keep = 0;
    for (const s of this.#stops) {
      for (let k = Math.min(s.length - 1, held.length); k > keep; k--) {
        if (held.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    this.#held = held.slice(held.length - keep);
    return held.slice(0, held.length - keep);
  }

  flush(): string {
    const out = this.#held;
    this.#held = "";
    return out;
  }
}

/** Text pipeline of one sequence: detokenizer, then stop-string matcher (the server uses it too). */
export class TextSink {
  #dec: StreamDecoder | undefined;
  #stop: StopMatcher | undefined;

  constructor(tok: TextTokenizer | undefined, stops: string[]) {
    this.#dec = tok?.createDecoder();
    this.#stop = stops.length > 0 ? new StopMatcher(stops) : undefined;
  }

  get stopped(): boolean {
    return this.#stop?.stopped ?? false;
  }

  push(id: number): string {
    const t = this.#dec?.push(id) ?? "";
    return this.#stop ? this.#stop.push(t) : t;
  }

  /** Remaining text at the end of generation (nothing after a stop string). */
  finish(): string {
    const t = this.#dec?.flush() ?? "";
    if (!this.#stop) return t;
    const out = this.#stop.push(t);
    return this.#stop.stopped ? out : out + this.#stop.flush();
  }
}

function cloneState<S extends InferenceStateLike>(state: S): S {
  // `clone()` returns the same concrete type (InferenceStateLike cannot say so).
  return state.clone() as S;
}

/**
 * With a signal to watch, lets the event loop run about every 50 ms: synchronous backends
 * resolve every step at once, and an abort from a timer or a signal handler would otherwise
 * wait for the whole generation.
 */
class AbortPoller {
  #signal: AbortSignal | undefined;
  #last = performance.now();

  constructor(signal: AbortSignal | undefined) {
    this.#signal = signal;
  }

  async aborted(): Promise<boolean> {
    const s = this.#signal;
    if (s === undefined) return false;
    if (!s.aborted && performance.now() - this.#last > 50) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      this.#last = performance.now();
    }
    return s.aborted;
  }
}

/**
 * Feeds equally long rows `ids` into `state` in chunks of `model.prefillChunkTokens`, watching
 * the signal between chunks (a long prompt is otherwise one uninterruptible call: 149 s for 20k
 * tokens on `ref`). Returns the last token's logits, or undefined when aborted; then `state`
 * holds the chunks fed so far. Feeding a recurrent model in pieces computes the same thing as at
 * once (up to float rounding in chunked scans).
 */
async function prefillChunked<S extends InferenceStateLike>(
  model: StepModel<S>,
  state: S,
  ids: number[][],
  poll: AbortPoller,
): Promise<Float32Array | undefined> {
  const len = ids[0].length;
  const c = model.prefillChunkTokens;
  const chunk = c !== undefined && Number.isSafeInteger(c) && c > 0 ? c : len;
  if (chunk >= len) return await model.prefill(state, ids);
  let logits: Float32Array | undefined;
  for (let t = 0; t < len; t += chunk) {
    if (await poll.aborted()) return undefined;
    logits = await model.prefill(state, ids.map((row) => row.slice(t, t + chunk)));
  }
  return logits;
}

function rowOf(logits: Float32Array, batch: number, b: number): Float32Array {
  const n = logits.length / batch;
  if (!Number.isInteger(n)) {
    throw new InputError(`logits length ${logits.length} is not a multiple of batch ${batch}`);
  }
  return batch === 1 ? logits : logits.subarray(b * n, (b + 1) * n);
}

interface RunContext {
  /** Last token that was sampled and accepted but not yet fed to the state. */
  pending: number | undefined;
}

/**
 * Token ids picked on the host: sample from `logits`, hand the id out, and feed it to the state
 * only when the next id is asked for (so a consumer that stops early never pays for a step).
 */
async function* hostIds<S extends InferenceStateLike>(
  model: StepModel<S>,
  state: S,
  logits: Float32Array,
  r: Resolved,
  history: TokenHistory,
  ctx: RunContext,
): AsyncGenerator<number, void, undefined> {
  for (;;) {
    yield r.sampler.sample(rowOf(logits, 1, 0), history.ids);
    logits = await model.step(state, [ctx.pending!]);
    ctx.pending = undefined;
  }
}

/**
 * Token ids picked by the device's fused decoding loop (`webgpu`): the first from the prefill
 * logits on the host, the rest in blocks without a read-back per token. Only for states the
 * caller cannot see afterwards, since a stop may leave the device up to two blocks ahead.
 */
async function* fusedIds<S extends InferenceStateLike>(
  generateTokens: NonNullable<StepModel<S>["generateTokens"]>,
  blockSize: number | undefined,
  state: S,
  logits: Float32Array,
  r: Resolved,
  history: TokenHistory,
): AsyncGenerator<number, void, undefined> {
  const first = r.sampler.sample(rowOf(logits, 1, 0), history.ids);
  yield first;
  const o = r.sampler.options;
  const blocks = generateTokens(state, [first], r.maxNewTokens - 1, {
    temperature: o.temperature,
    topK: o.topK,
    topP: o.topP,
    minP: o.minP,
    repetitionPenalty: o.repetitionPenalty,
    vocabSize: o.vocabSize,
    // A different stream than the first token's, still fixed by the seed.
    seed: (o.seed + 0x9e3779b9) >>> 0,
    history: [history.ids.slice()],
    ...(blockSize === undefined ? {} : { blockSize }),
  });
  for await (const block of blocks) yield* block[0];
}

/**
 * Core single-sequence loop over picked ids: stops at `maxNewTokens`, the end-of-text token, a
 * stop string or an abort. Each token is yielded once the next one has been picked (or it is
 * known to be the last), so that text held at the very end can travel with the last real token.
 */
async function* run(
  ids: AsyncGenerator<number, void, undefined>,
  tokenizer: TextTokenizer | undefined,
  r: Resolved,
  history: TokenHistory,
  poll: AbortPoller,
  ctx: RunContext,
): AsyncGenerator<GeneratedToken, void, undefined> {
  const sink = new TextSink(tokenizer, r.stop);
  let prev: GeneratedToken | undefined;
  let produced = 0;
  try {
    for (;;) {
      if (produced >= r.maxNewTokens || await poll.aborted()) break;
      const next = await ids.next();
      if (next.done) break;
      const id = next.value;
      if (id === r.eos) break;
      history.push(id);
      produced++;
      ctx.pending = id;
      let text = sink.push(id);
      const last = sink.stopped || produced >= r.maxNewTokens;
      if (prev !== undefined) {
        const p = prev;
        prev = undefined;
        yield p;
      }
      if (last) {
        if (!sink.stopped) text += sink.finish();
        yield { id, text };
        return;
      }
      prev = { id, text };
    }
    if (prev !== undefined) {
      prev.text += sink.finish();
      yield prev;
    }
  } finally {
    await ids.return();
  }
}

/**
 * Generates a continuation of one prompt, token by token.
 *
 * The prompt (text, or token ids) is prefilled, then tokens are sampled and fed back
 * until `maxNewTokens`, the end-of-text token, a stop string, or an abort. Each yielded
 * token carries the text it completes; their concatenation is the completion.
 *
 * Each token is yielded when the following one has been sampled (one step later), so
 * text still held at the end always arrives with a real token. With `opts.state`, the
 * state ends up advanced over the prompt and every yielded token (the finishing
 * end-of-text token is not fed); if the consumer stops iterating early it may also
 * include one token that was not yet yielded.
 *
 * @param model The model (e.g. a `MambaLM`).
 * @param prompt Text (needs `model.tokenizer`) or token ids. An empty prompt on a fresh
 *   state starts from the end-of-text token.
 * @param opts Sampling and stopping options.
 * @throws {OptionError} (an {@link InputError}) for an invalid option, naming it.
 * @throws {InputError} for an empty prompt that cannot be started, or a text prompt without a
 *   tokenizer.
 *
 * @example
 * ```ts ignore
 * import { generate } from "./generate.ts";
 * for await (const { text } of generate(lm, "Mamba is", { maxNewTokens: 50, topK: 1 })) {
 *   await Deno.stdout.write(new TextEncoder().encode(text));
 * }
 * ```
 */
export async function* generate<S extends InferenceStateLike>(
  model: StepModel<S>,
  prompt: string | readonly number[],
  opts: GenerateOptions<S> = {},
): AsyncGenerator<GeneratedToken, void, undefined> {
  const r = resolve(model, opts);
  const state = opts.state ?? model.createState(1);
  if (state.batch !== 1) {
    throw new OptionError("state", `generate needs a state of batch 1, got ${state.batch}`);
  }
  const ids = promptIds(model, prompt, opts.state === undefined, r.start);
  if (opts.signal?.aborted) return;
  const poll = new AbortPoller(opts.signal);
  const logits = await prefillChunked(model, state, [ids], poll);
  if (logits === undefined) return;
  const keep = opts.state !== undefined && opts.feedGenerated !== false;
  const genState = opts.state !== undefined && !keep ? cloneState(state) : state;
  const ctx: RunContext = { pending: undefined };
  let failed = false;
  try {
    const history = new TokenHistory(ids);
    const fused = opts.state === undefined && model.fusedDecoding
      ? model.generateTokens
      : undefined;
    const source = fused
      ? fusedIds(fused.bind(model), model.decodeBlockTokens, genState, logits, r, history)
      : hostIds(model, genState, logits, r, history, ctx);
    yield* run(source, model.tokenizer, r, history, poll, ctx);
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    if (!failed && keep && ctx.pending !== undefined) {
      await model.step(state, [ctx.pending]);
    }
  }
}

/**
 * Generates a continuation of one prompt and returns it as a string.
 *
 * @param model The model (e.g. a `MambaLM`).
 * @param prompt Text or token ids.
 * @param opts Sampling and stopping options (see {@link generate}).
 *
 * @example
 * ```ts ignore
 * import { complete } from "./generate.ts";
 * const text = await complete(lm, "The capital of France is", { maxNewTokens: 8, topK: 1 });
 * ```
 */
export async function complete<S extends InferenceStateLike>(
  model: StepModel<S>,
  prompt: string | readonly number[],
  opts: GenerateOptions<S> = {},
): Promise<string> {
  let out = "";
  for await (const t of generate(model, prompt, opts)) out += t.text;
  return out;
}

/**
 * Generates continuations of several prompts in one batch (one state of batch
 * `prompts.length`). Each row stops on its own (end-of-text token, stop string,
 * `maxNewTokens`); a finished row keeps being stepped with the end-of-text token (or 0)
 * but its output no longer changes. All rows share one seeded sampler, drawn in row
 * order, so a seed gives reproducible results.
 *
 * Prompts may differ in length: the common length is prefilled at once, and the longer
 * prompts are then fed one token per step while the shorter rows already generate, so
 * every row sees exactly the logits it would see alone (greedy output equals that of
 * {@link generate} for each prompt). With
 * `opts.state`, rows that finish early also absorb the padding steps.
 *
 * @param model The model (e.g. a `MambaLM`).
 * @param prompts Texts or token-id arrays, one per row.
 * @param opts Sampling and stopping options; `opts.state` must have batch `prompts.length`.
 * @returns The completions, in prompt order.
 *
 * @example
 * ```ts ignore
 * import { generateBatch } from "./generate.ts";
 * const [a, b] = await generateBatch(lm, ["Once upon a time", "def main():"], {
 *   maxNewTokens: 32,
 *   temperature: 0.7,
 *   seed: 1,
 * });
 * ```
 */
export async function generateBatch<S extends InferenceStateLike>(
  model: StepModel<S>,
  prompts: readonly (string | readonly number[])[],
  opts: GenerateOptions<S> = {},
): Promise<string[]> {
  const B = prompts.length;
  if (B === 0) return [];
  const r = resolve(model, opts);
  const state = opts.state ?? model.createState(B);
  if (state.batch !== B) {
    throw new OptionError("state", `state has batch ${state.batch} but there are ${B} prompts`);
  }
  const ids = prompts.map((p) => promptIds(model, p, opts.state === undefined, r.start));
  const texts: string[] = new Array(B).fill("");
  if (opts.signal?.aborted || (r.maxNewTokens === 0 && opts.state === undefined)) return texts;
  const lens = ids.map((row) => row.length);
  const common = Math.min(...lens);
  const keep = opts.state !== undefined && opts.feedGenerated !== false;
  const onClone = opts.state !== undefined && !keep;
  if (onClone && lens.some((n) => n !== common)) {
    throw new OptionError(
      "feedGenerated",
      "generateBatch with feedGenerated: false needs prompts of equal length",
    );
  }
  const histories = ids.map((row) => new TokenHistory(row));
  const sinks = ids.map(() => new TextSink(model.tokenizer, r.stop));
  const done: boolean[] = new Array(B).fill(r.maxNewTokens === 0);
  const produced: number[] = new Array(B).fill(0);
  const pos: number[] = new Array(B).fill(common);
  const pad = r.eos ?? 0;
  const tokens: number[] = new Array(B).fill(pad);
  // Prefill the common length; longer prompts finish token by token below (teacher forcing)
  // while the other rows already generate. Every row's result is the same as alone.
  const poll = new AbortPoller(opts.signal);
  const prefilled = await prefillChunked(
    model,
    state,
    ids.map((row) => row.slice(0, common)),
    poll,
  );
  if (prefilled === undefined) return texts;
  let logits = prefilled;
  const gen = onClone ? cloneState(state) : state;
  let unfed = false;
  for (;;) {
    if (await poll.aborted()) break;
    unfed = false;
    for (let b = 0; b < B; b++) {
      if (pos[b] < lens[b]) {
        tokens[b] = ids[b][pos[b]++];
        unfed = true;
        continue;
      }
      if (done[b]) {
        tokens[b] = pad;
        continue;
      }
      const id = r.sampler.sample(rowOf(logits, B, b), histories[b].ids);
      if (id === r.eos) {
        done[b] = true;
        tokens[b] = pad;
        continue;
      }
      histories[b].push(id);
      tokens[b] = id;
      unfed = true;
      texts[b] += sinks[b].push(id);
      if (sinks[b].stopped || ++produced[b] >= r.maxNewTokens) done[b] = true;
    }
    if (done.every((d, b) => d && pos[b] >= lens[b])) break;
    logits = await model.step(gen, tokens);
    unfed = false;
  }
  for (let b = 0; b < B; b++) texts[b] += sinks[b].finish();
  if (keep && unfed) await model.step(state, tokens);
  return texts;
}

/**
 * A `TransformStream<string, string>` around one persistent state: every chunk written
 * to it is fed into the state (prefill), then a continuation of up to `maxNewTokens`
 * tokens is generated and enqueued as one output chunk (possibly empty). The state, the
 * sampler and the generated tokens carry over to the next chunk, so the stream can follow
 * an endless log or a chat in constant memory. With `maxNewTokens: 0` it only ingests;
 * writing an empty chunk just continues the previous continuation.
 *
 * With `feedGenerated: false` the continuations are generated on clones and the state
 * holds only the written text (log following); by default it holds both (chat).
 *
 * The repetition penalty looks at the current chunk and its continuation. The last
 * generated token is fed together with the next chunk; when the stream closes and
 * `opts.state` was given, it is fed then, so the state holds everything. After
 * `opts.signal` aborts, the running continuation ends early and further writes fail.
 *
 * @param model The model; needs a tokenizer.
 * @param opts Sampling and stopping options; `opts.state` (batch 1) to start from.
 *
 * @example
 * ```ts ignore
 * import { textStream } from "./generate.ts";
 * const follower = textStream(lm, { maxNewTokens: 20, stop: ["\n"], topK: 1 });
 * const writer = follower.writable.getWriter();
 * const reader = follower.readable.getReader();
 * await writer.write("2024-01-01 12:00:00 INFO service started\n");
 * console.log((await reader.read()).value); // the predicted next line
 * ```
 */
export function textStream<S extends InferenceStateLike>(
  model: StepModel<S>,
  opts: GenerateOptions<S> = {},
): TransformStream<string, string> {
  const tok = model.tokenizer;
  if (tok === undefined) throw new InputError("textStream needs a model with a tokenizer");
  const r = resolve(model, opts);
  let state: S | undefined = opts.state;
  if (state !== undefined && state.batch !== 1) {
    throw new OptionError("state", `textStream needs a state of batch 1, got ${state.batch}`);
  }
  let fresh = state === undefined;
  const keep = opts.feedGenerated !== false;
  const ctx: RunContext = { pending: undefined };
  return new TransformStream<string, string>({
    async transform(chunk, controller) {
      opts.signal?.throwIfAborted();
      state ??= model.createState(1);
      const ids = tok.encode(String(chunk), { addSpecialTokens: fresh });
      fresh = false;
      if (ctx.pending !== undefined) ids.unshift(ctx.pending);
      ctx.pending = undefined;
      if (ids.length === 0) {
        controller.enqueue("");
        return;
      }
      const poll = new AbortPoller(opts.signal);
      const logits = await prefillChunked(model, state, [ids], poll);
      if (logits === undefined) {
        controller.enqueue("");
        return;
      }
      const gen = keep ? state : cloneState(state);
      let text = "";
      const history = new TokenHistory(ids);
      const source = hostIds(model, gen, logits, r, history, ctx);
      for await (const t of run(source, model.tokenizer, r, history, poll, ctx)) {
        text += t.text;
      }
      if (!keep) ctx.pending = undefined;
      controller.enqueue(text);
    },
    async flush() {
      if (opts.state !== undefined && ctx.pending !== undefined) {
        await model.step(opts.state, [ctx.pending]);
        ctx.pending = undefined;
      }
    },
  });
}
