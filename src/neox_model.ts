/**
 * `GptNeoXLM`: a GPT-NeoX (Pythia) language model — embedding, N × (LayerNorm → attention,
 * LayerNorm → MLP, in parallel or in sequence), final LayerNorm, LM head — written once against
 * the shared and Transformer operations of the backends ({@link TransformerBackend}). Its state
 * is a {@link KvCacheState}.
 *
 * @module
 */

import type { BackendName, TransformerBackend } from "./backend.ts";
import { hostDecode, validateSamplingOptions } from "./sampling.ts";
import { type BackendPreference, createTransformerBackendChain } from "./backends/registry.ts";
import { BackendChain } from "./backend_chain.ts";
import { InputError } from "./errors.ts";
import {
  complete,
  generate,
  generateBatch,
  type GeneratedToken,
  type GenerateOptions,
  textStream,
} from "./generate.ts";
import { advanceKv, bindKv, KvCacheState, type KvLayout } from "./kv_state.ts";
import type { GenerateTokensOptions, LoadOptions, Logits } from "./model.ts";
import { readConfigJson, resolveModelDir } from "./model_dir.ts";
import { type GptNeoXConfig, parseNeoxConfig } from "./neox_config.ts";
import { loadNeoxWeights, type TransformerWeights } from "./neox_weights.ts";
import { Tokenizer } from "./tokenizer.ts";
import { exists } from "./weights.ts";

/** Most token rows one pass through the model takes; longer inputs run in chunks. */
const PREFILL_ROWS = 2048;

/** Limits of a Transformer's context, checked before any work. */
export interface ContextLimits {
  /**
   * Most tokens a sequence may hold (prompt and generated). Default: the config's
   * `max_position_embeddings` (the longest context the model was trained for).
   */
  maxContext?: number;
  /**
   * Most bytes of keys and values one state may hold (all sequences and layers, float32).
   * Default: no limit beyond `maxContext`.
   */
  maxKvBytes?: number;
}

/** Options of {@link GptNeoXLM.load}: those of `MambaLM.load` plus the context limits. */
export interface TransformerLoadOptions extends LoadOptions, ContextLimits {}

/**
 * A GPT-NeoX (Pythia) language model, with the API of `MambaLM`. Load one with
 * `loadModel(dir)`, which picks the class from `config.json`.
 *
 * @example
 * ```ts
 * import { GptNeoXLM, parseNeoxConfig } from "@mamba/mamba";
 * import { randomNeoxWeights } from "@mamba/mamba/testing";
 * const config = parseNeoxConfig({
 *   model_type: "gpt_neox", hidden_size: 64, num_attention_heads: 4, num_hidden_layers: 2,
 *   intermediate_size: 256, vocab_size: 256,
 * });
 * const lm = await GptNeoXLM.fromWeights(config, randomNeoxWeights(config));
 * const state = lm.createState(1);
 * await lm.prefill(state, [[1, 2, 3]]);
 * const logits = await lm.step(state, [4]); // [1, vocab]
 * lm.dispose();
 * ```
 */
export class GptNeoXLM {
  /** The parsed `config.json`. */
  readonly config: GptNeoXConfig;
  /** The tokenizer, when the model came with one: needed for text prompts. */
  readonly tokenizer: Tokenizer | undefined;
  /** Most tokens a sequence may hold. */
  readonly maxContext: number;
  /** Most bytes of keys and values one state may hold. */
  readonly maxKvBytes: number;
  /**
   * The backend computing, and where to go when its device is lost. KV caches that lived on a
   * lost device are gone with it (they say so when used).
   */
  #backends: BackendChain<TransformerBackend>;

  /** Wraps a config and a ready backend; most users want `loadModel` or {@link fromWeights}. */
  constructor(
    config: GptNeoXConfig,
    backend: TransformerBackend,
    tokenizer?: Tokenizer,
    limits: ContextLimits = {},
  ) {
    const maxContext = limits.maxContext ?? config.maxPositions;
    if (!Number.isSafeInteger(maxContext) || maxContext < 1) {
      throw new InputError(`maxContext must be a positive integer, got ${maxContext}`);
    }
    const maxKvBytes = limits.maxKvBytes ?? Infinity;
    if (!(maxKvBytes > 0)) {
      throw new InputError(`maxKvBytes must be a positive number, got ${maxKvBytes}`);
    }
    this.config = config;
    this.#backends = new BackendChain(backend);
    this.tokenizer = tokenizer;
    this.maxContext = maxContext;
    this.maxKvBytes = maxKvBytes;
  }

  /**
   * Loads a GPT-NeoX model directory (local path or URL) or Hub id (`EleutherAI/pythia-160m`,
   * through the Hugging Face cache as for `MambaLM.load`): `config.json` (`model_type:
   * "gpt_neox"`), `model.safetensors` (or the shards of `model.safetensors.index.json`) and, when
   * present, `tokenizer.json`. `loadModel` calls this for GPT-NeoX configs.
   *
   * @throws {ConfigError} for a bad or unsupported config, {@link WeightsError} for bad weights.
   */
  static async load(dir: string | URL, options: TransformerLoadOptions = {}): Promise<GptNeoXLM> {
    const resolved = await resolveModelDir(dir, options);
    const base = resolved.dir;
    const config = parseNeoxConfig(await readConfigJson(base));
    const weights = await loadNeoxWeights(
      config,
      base,
      options.weightsDtype ?? "f32",
      options.onProgress,
    );
    const tokenizer = await resolveTokenizer(
      base,
      options.tokenizer ?? resolved.tokenizerDir,
    );
    const { backend, rest } = await createTransformerBackendChain(
      options.backend ?? "auto",
      { config, weights },
      options,
    );
    const lm = new GptNeoXLM(config, backend, tokenizer, options);
    // The weights are read again if the device is lost, rather than kept twice meanwhile.
    const dtype = options.weightsDtype ?? "f32";
    lm.#backends = new BackendChain(backend, rest, async (names) =>
      createTransformerBackendChain(
        names,
        { config, weights: await loadNeoxWeights(config, base, dtype) },
        options,
      ));
    return lm;
  }

  /**
   * Builds a model from a parsed config and weights already in memory (random weights for a
   * benchmark, say). The backend defaults to `"ref"`.
   */
  static async fromWeights(
    config: GptNeoXConfig,
    weights: TransformerWeights,
    options: ContextLimits & {
      backend?: BackendPreference;
      tokenizer?: Tokenizer;
      wasm?: LoadOptions["wasm"];
    } = {},
  ): Promise<GptNeoXLM> {
    const init = { config, weights };
    const { backend, rest } = await createTransformerBackendChain(
      options.backend ?? "ref",
      init,
      options,
    );
    const lm = new GptNeoXLM(config, backend, options.tokenizer, options);
    lm.#backends = new BackendChain(
      backend,
      rest,
      (names) => createTransformerBackendChain(names, init, options),
    );
    return lm;
  }

  /** The backend computing this model. */
  get backend(): TransformerBackend {
    return this.#backends.current;
  }

  /** Name of the backend in use. */
  get backendName(): BackendName {
    return this.#backends.current.name;
  }

  /** Whether the backend decodes many tokens per submit on the device (see {@link generateTokens}). */
  get fusedDecoding(): boolean {
    return this.backend.decodeTokens !== undefined;
  }

  /** The layout of a KV cache of this model for `batch` sequences. */
  kvLayout(batch: number): KvLayout {
    const c = this.config;
    return { kind: "kv", nLayer: c.nLayer, batch, nKvHeads: c.nKvHeads, headDim: c.headDim };
  }

  /** An empty KV cache for `batch` sequences. */
  createState(batch = 1): KvCacheState {
    if (!Number.isSafeInteger(batch) || batch < 1) {
      throw new InputError(`batch must be a positive integer, got ${batch}`);
    }
    return new KvCacheState(this.kvLayout(batch));
  }

  /** Full-sequence forward of equally long prompts from an empty cache: logits everywhere. */
  async forward(ids: readonly (readonly number[])[]): Promise<Logits> {
    const [batch, seqLen, flat] = this.#checkIds(ids);
    this.#checkRoom(this.kvLayout(batch), 0, seqLen);
    const be = await this.#backends.live();
    const kv = be.createKv(batch);
    try {
      const data = await this.#run(be, flat, batch, seqLen, kv, 0, false);
      return { data, shape: [batch, seqLen, this.config.paddedVocabSize] };
    } finally {
      be.freeKv(kv);
    }
  }

  /**
   * Feeds equally long prompts into `state` (which may already hold earlier text) and returns the
   * logits of each sequence's last token: `[batch, paddedVocabSize]`.
   *
   * @throws {InputError} when the cache would hold more than `maxContext` tokens or
   *   `maxKvBytes` bytes.
   */
  async prefill(state: KvCacheState, ids: readonly (readonly number[])[]): Promise<Float32Array> {
    const [batch, seqLen, flat] = this.#checkIds(ids);
    this.#checkState(state, batch);
    this.#checkRoom(state.layout, state.length, seqLen);
    const be = await this.#backends.live();
    const handle = bindKv(state, be);
    const out = await this.#run(be, flat, batch, seqLen, handle, state.length, true);
    advanceKv(state, seqLen);
    return out;
  }

  /** Advances every sequence by one token: `[batch, paddedVocabSize]` logits. */
  async step(state: KvCacheState, tokens: readonly number[]): Promise<Float32Array> {
    return await this.prefill(state, tokens.map((t) => [t]));
  }

  /** Streams a continuation of `prompt` (see `MambaLM.generate`). */
  generate(
    prompt: string | readonly number[],
    options?: GenerateOptions<KvCacheState>,
  ): AsyncGenerator<GeneratedToken, void, undefined> {
    return generate(this, prompt, options);
  }

  /** The whole continuation of `prompt` as one string. */
  complete(
    prompt: string | readonly number[],
    options?: GenerateOptions<KvCacheState>,
  ): Promise<string> {
    return complete(this, prompt, options);
  }

  /** Continuations of several prompts computed as one batch, each stopping on its own. */
  generateBatch(
    prompts: readonly (string | readonly number[])[],
    options?: GenerateOptions<KvCacheState>,
  ): Promise<string[]> {
    return generateBatch(this, prompts, options);
  }

  /**
   * A `TransformStream` that keeps one KV cache across everything written to it. Unlike a
   * Mamba model's, its memory grows with the text, up to `maxContext` tokens.
   */
  textStream(options?: GenerateOptions<KvCacheState>): TransformStream<string, string> {
    return textStream(this, options);
  }

  /**
   * Decodes `n` tokens for every sequence, as `MambaLM.generateTokens`: feeds `tokens`, then `n`
   * times picks the next token and feeds it back, yielding blocks of picked ids. On `webgpu` the
   * whole loop runs on the device (blocks of up to `blockSize`); elsewhere it steps on the host.
   * The cache grows by `n` tokens (fewer if the consumer stops early; on the device up to two
   * blocks more than were yielded — {@link KvCacheState.length} says how many).
   *
   * @throws {InputError} when `n` more tokens would exceed `maxContext` or `maxKvBytes`.
   */
  async *generateTokens(
    state: KvCacheState,
    tokens: readonly number[],
    n: number,
    options: GenerateTokensOptions = {},
  ): AsyncGenerator<number[][]> {
    const [batch, , flat] = this.#checkIds(tokens.map((t) => [t]));
    this.#checkState(state, batch);
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new InputError(`n must be a non-negative integer, got ${n}`);
    }
    const sampling = validateSamplingOptions({
      ...options,
      vocabSize: options.vocabSize ?? this.config.vocabSize,
    });
    if (n === 0) return;
    this.#checkRoom(state.layout, state.length, n);
    const be = await this.#backends.live();
    if (be.decodeTokens) {
      const kv = bindKv(state, be);
      const pos = state.length;
      be.reserveKv(kv, pos + n, this.maxContext);
      const progress = { steps: 0 };
      try {
        yield* be.decodeTokens(
          kv,
          pos,
          flat,
          n,
          { sampling, history: options.history, blockSize: options.blockSize },
          (hidden, position) => this.#blocks(be, hidden, batch, 1, kv, position),
          progress,
        );
      } finally {
        advanceKv(state, progress.steps);
      }
      return;
    }
    yield* hostDecode(
      (s, t) => this.step(s, t),
      state,
      tokens,
      n,
      sampling,
      this.config.paddedVocabSize,
      options.history,
    );
  }

  /** Frees the backend's memory. The model cannot be used afterwards. */
  dispose(): void {
    this.#backends.dispose();
  }

  /**
   * Runs `seqLen` tokens of each sequence through the model from position `pos`, in chunks of
   * at most {@link PREFILL_ROWS} rows (a KV-cache model can: each chunk attends to the cache the
   * previous ones filled), so that a long prompt never needs one activation of all its tokens.
   * Returns the logits of every token, or of each sequence's last one.
   */
  async #run(
    be: TransformerBackend,
    ids: Int32Array,
    batch: number,
    seqLen: number,
    kv: unknown,
    pos: number,
    lastOnly: boolean,
  ): Promise<Float32Array> {
    be.reserveKv(kv, pos + seqLen, this.maxContext);
    const chunk = Math.max(1, Math.floor(PREFILL_ROWS / batch));
    if (seqLen <= chunk) {
      const normed = this.#blocks(be, be.embed(ids), batch, seqLen, kv, pos);
      return await be.read(be.lmHead(normed, batch, seqLen, lastOnly));
    }
    const V = this.config.paddedVocabSize;
    const out = new Float32Array(lastOnly ? batch * V : batch * seqLen * V);
    for (let t0 = 0; t0 < seqLen; t0 += chunk) {
      const L = Math.min(chunk, seqLen - t0);
      const part = new Int32Array(batch * L);
      for (let b = 0; b < batch; b++) {
        part.set(ids.subarray(b * seqLen + t0, b * seqLen + t0 + L), b * L);
      }
      const normed = this.#blocks(be, be.embed(part), batch, L, kv, pos + t0);
      const last = t0 + L === seqLen;
      if (lastOnly && !last) {
        // Only the cache matters for the chunks before the last: read a little to run them.
        await be.read(be.lmHead(normed, batch, L, true));
        continue;
      }
      const logits = await be.read(be.lmHead(normed, batch, L, lastOnly));
      if (lastOnly) out.set(logits);
      else {
        for (let b = 0; b < batch; b++) {
          out.set(logits.subarray(b * L * V, (b + 1) * L * V), (b * seqLen + t0) * V);
        }
      }
    }
    return out;
  }

  /**
   * The blocks and the final norm over embedded tokens at positions `pos …`: the model's one
   * description of its layers, run directly or recorded into the backend's fused decoding.
   */
  #blocks(
    be: TransformerBackend,
    hidden: unknown,
    batch: number,
    seqLen: number,
    kv: unknown,
    pos: number,
  ): unknown {
    // The residual stream as Mamba's: `hidden` is the last block output not yet added to it.
    let residual: unknown = null;
    for (let i = 0; i < this.config.nLayer; i++) {
      const r = be.addNorm(hidden, residual, i, "mixer");
      residual = r.residual;
      if (this.config.parallelResidual) {
        // x + attn(LN1(x)) + mlp(LN2(x))
        const n2 = be.norm(residual, i, "mlp");
        const a = be.attention(i, r.normed, batch, seqLen, kv, pos);
        hidden = be.add(a, be.mlp(i, n2));
      } else {
        // x += attn(LN1(x)); x += mlp(LN2(x))
        const a = be.attention(i, r.normed, batch, seqLen, kv, pos);
        const r2 = be.addNorm(a, residual, i, "mlp");
        residual = r2.residual;
        hidden = be.mlp(i, r2.normed);
      }
    }
    return be.addNorm(hidden, residual, "final").normed;
  }

  #checkRoom(layout: KvLayout, held: number, adding: number): void {
    const length = held + adding;
    if (length > this.maxContext) {
      throw new InputError(
        `a context of ${length} tokens (${held} held + ${adding} new) exceeds maxContext ` +
          `${this.maxContext}` +
          (this.maxContext === this.config.maxPositions ? " (max_position_embeddings)" : ""),
      );
    }
    const bytes = KvCacheState.bytesFor(layout, length);
    if (bytes > this.maxKvBytes) {
      throw new InputError(
        `a KV cache of ${length} tokens × ${layout.batch} sequences needs ${bytes} bytes, ` +
          `more than maxKvBytes ${this.maxKvBytes}`,
      );
    }
  }

  #checkIds(ids: readonly (readonly number[])[]): [number, number, Int32Array] {
    if (!Array.isArray(ids) || ids.length === 0 || !ids.every(Array.isArray)) {
      throw new InputError("ids must be a non-empty array of token-id arrays, one per sequence");
    }
    const seqLen = ids[0].length;
    if (seqLen === 0) throw new InputError("a sequence needs at least one token");
    const V = this.config.paddedVocabSize;
    const flat = new Int32Array(ids.length * seqLen);
    ids.forEach((row, b) => {
      if (row.length !== seqLen) {
        throw new InputError(
          `all sequences of a batch need the same length: row 0 has ${seqLen}, row ${b} has ${row.length}`,
        );
      }
      row.forEach((id, t) => {
        if (!Number.isInteger(id) || id < 0 || id >= V) {
          throw new InputError(`token id ${id} at [${b}][${t}] is not an integer in [0, ${V})`);
        }
        flat[b * seqLen + t] = id;
      });
    });
    return [ids.length, seqLen, flat];
  }

  #checkState(state: KvCacheState, batch: number): void {
    if (!(state instanceof KvCacheState)) throw new InputError("state must be a KvCacheState");
    const want = this.kvLayout(state.batch);
    const got = state.layout;
    if (
      got.nLayer !== want.nLayer || got.nKvHeads !== want.nKvHeads || got.headDim !== want.headDim
    ) {
      throw new InputError(
        `state does not fit this model: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`,
      );
    }
    if (state.batch !== batch) {
      throw new InputError(`state holds ${state.batch} sequences but ${batch} were given`);
    }
  }
}

/** The tokenizer of `LoadOptions.tokenizer`, by default the directory's `tokenizer.json`. */
async function resolveTokenizer(
  base: URL,
  tok: LoadOptions["tokenizer"],
): Promise<Tokenizer | undefined> {
  if (tok instanceof Tokenizer) return tok;
  if (tok !== undefined && tok !== false) return await Tokenizer.load(tok);
  if (tok === undefined && (await exists(new URL("tokenizer.json", base)))) {
    return await Tokenizer.load(base);
  }
  return undefined;
}
