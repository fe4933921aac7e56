/**
 * `MambaLM`: a Mamba-1 or Mamba-2 language model — embedding, N × (add + norm → mixer), final
 * norm, LM head — run on one of the backends. The model logic lives here once; the backends only
 * supply the operations of {@link Backend}.
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import { BackendChain } from "./backend_chain.ts";
import { type BackendPreference, createBackendChain } from "./backends/registry.ts";
import { type MambaConfig, parseConfig } from "./config.ts";
import {
  complete,
  generate,
  generateBatch,
  type GeneratedToken,
  type GenerateOptions,
  textStream,
} from "./generate.ts";
import { Tokenizer } from "./tokenizer.ts";
import { ConfigError, InputError, MambaError, NoTokenizerError } from "./errors.ts";
import { type HubOptions, hubSnapshot, isHubModel } from "./hub.ts";
import {
  bindState,
  defaultMaxStateBytes,
  formatBytes,
  InferenceState,
  markComputed,
  stateByteLength,
  stateLayout,
} from "./state.ts";
import { decodeBlockTokens, prefillChunkTokens } from "./work_budget.ts";
import { exists, loadWeights, type ModelWeights, readBytes, type WeightsDtype } from "./weights.ts";
import {
  hostDecode,
  type Sampler,
  type SamplingOptions,
  validateSamplingOptions,
} from "./sampling.ts";
import {
  DEFAULT_MIXER_INIT,
  DEFAULT_MODEL_INIT,
  initModelWeights,
  type MixerInit,
  mixerInitFromJson,
  type ModelInit,
} from "./init.ts";
import { saveModel, type SaveOptions } from "./save.ts";

/**
 * Options of {@link MambaLM.load}. The {@link HubOptions} (`revision`, `offline`, `cacheDir`,
 * `endpoint`, `token`, `onDownload`) apply to models named by a Hub id.
 */
export interface LoadOptions extends HubOptions {
  /**
   * Which backend computes: `"auto"` (default: a hardware WebGPU adapter, else `"wasm"`, else
   * `"ref"`), `"webgpu"`, `"wasm"`, `"ref"`, or a list to try in order. With `"auto"` or a
   * list, a model whose GPU device is lost moves to the next backend (see
   * {@link DeviceLostError}).
   */
  backend?: BackendPreference;
  /**
   * How to keep the weights: `"f32"` (default), `"f16"`, or `"as-stored"`. Backends that compute
   * in float32 widen f16 weights as they go.
   */
  weightsDtype?: WeightsDtype;
  /** Called as weight shards load. */
  onProgress?: (loaded: number, total: number) => void;
  /**
   * The tokenizer: a {@link Tokenizer}, a path or URL of a `tokenizer.json` (or its directory),
   * or `false` for none. By default the model directory's `tokenizer.json`, when it has one; for
   * a Hub id, the repository's, else `EleutherAI/gpt-neox-20b`'s (a model loads without one:
   * token ids work, text says why it cannot, see {@link MambaLM.tokenizerError}).
   */
  tokenizer?: Tokenizer | string | URL | false;
  /**
   * Options of the `wasm` backend (ignored by the others): `threads`, the number of threads
   * (default `navigator.hardwareConcurrency`; 1 = no workers), and `weights`, how it stores the
   * matrices: `"f32"`, `"f16"`, or `"q8"` (int8, one scale per 32 weights, quantized at load);
   * by default as loaded (see `weightsDtype`); `simd`, which build of the kernels: `"relaxed"`
   * (fused multiply-add), `"plain"` (SIMD128 only) or `"auto"` (default: relaxed where the engine
   * has it; the environment variable `MAMBA_WASM_SIMD=plain` forces plain).
   */
  wasm?: { threads?: number; weights?: "f32" | "f16" | "q8"; simd?: "auto" | "relaxed" | "plain" };
}

/** Options of {@link MambaLM.createState}. */
export interface CreateStateOptions {
  /**
   * Most bytes the state may take. Default: half of the machine's memory
   * (`Deno.systemMemoryInfo()`), or 4 GiB without the permission to read it.
   */
  maxBytes?: number;
}

/**
 * Options of {@link MambaLM.fromConfig}.
 *
 * @example
 * ```ts
 * import { type FromConfigOptions, MambaLM } from "@mamba/mamba";
 * const options: FromConfigOptions = { seed: 0, backend: "auto", weightsDtype: "f16" };
 * const lm = await MambaLM.fromConfig({ d_model: 768, n_layer: 24, vocab_size: 50277 }, options);
 * ```
 */
export interface FromConfigOptions {
  /** Seed of the initialisation; a fresh random seed by default. */
  seed?: number;
  /** Which backend computes (default `"ref"`; see {@link LoadOptions.backend}). */
  backend?: BackendPreference;
  /** Keep the weights in `"f32"` (default) or `"f16"` (drawn in float32, then narrowed). */
  weightsDtype?: WeightsDtype;
  /** The model-level init settings (`initializer_cfg` of mamba_ssm). */
  init?: Partial<ModelInit>;
  /** A tokenizer for text prompts. */
  tokenizer?: Tokenizer;
  /** Options of the `wasm` backend (see {@link LoadOptions.wasm}). */
  wasm?: LoadOptions["wasm"];
}

/** Logits of a full-sequence forward. */
export interface Logits {
  /** Row-major values. */
  data: Float32Array;
  /** `[batch, seqLen, paddedVocabSize]`. */
  shape: [number, number, number];
}

/** Options of {@link MambaLM.generateTokens}: sampling options, plus two of its own. */
export interface GenerateTokensOptions extends SamplingOptions {
  /** Per sequence, the ids seen before `tokens` (the prompt), for the repetition penalty. */
  history?: readonly (readonly number[])[];
  /** Most tokens per yielded block on backends that decode on the device. Default 64. */
  blockSize?: number;
}

/** A token stream that fails at its first read (as generate() fails on a bad prompt). */
// deno-lint-ignore require-yield
async function* failing(e: Error): AsyncGenerator<GeneratedToken, void, undefined> {
  throw e;
}

/** Resolves a directory path or URL to a URL that ends in `/`. */
export function dirUrl(dir: string | URL): URL {
  if (dir instanceof URL) return new URL(dir.href.endsWith("/") ? dir.href : dir.href + "/");
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(dir)) return dirUrl(new URL(dir));
  const abs = dir.startsWith("/") ? dir : `${Deno.cwd()}/${dir}`;
  const u = new URL(`file://${abs.split("/").map(encodeURIComponent).join("/")}`);
  return dirUrl(u);
}

/**
 * A Mamba language model.
 *
 * @example
 * ```ts
 * import { MambaLM } from "@mamba/mamba";
 * const lm = await MambaLM.load("./models/demo", { backend: "ref" });
 * const { data, shape } = await lm.forward([[72, 101, 108, 108, 111]]); // [1, 5, vocab]
 * const state = lm.createState(1);
 * let logits = await lm.prefill(state, [[72, 101, 108, 108]]);
 * logits = await lm.step(state, [111]); // same as the last row of forward's logits
 * lm.dispose();
 * ```
 */
export class MambaLM {
  /** The parsed `config.json`. */
  readonly config: MambaConfig;
  /** The backend computing, and where to go when its device is lost. */
  #backends: BackendChain<Backend>;
  /** The host weights, for {@link MambaLM.save}: kept, or read again from the model's files. */
  #hostWeights?: () => Promise<ModelWeights>;
  /** The tokenizer, when the model came with one: needed for text prompts. */
  readonly tokenizer: Tokenizer | undefined;
  /** Why there is no tokenizer (set by {@link MambaLM.load}). */
  #noTokenizer: string | undefined;

  /** Wraps a config and a ready backend; most users want {@link MambaLM.load}. */
  constructor(config: MambaConfig, backend: Backend, tokenizer?: Tokenizer) {
    this.config = config;
    this.#backends = new BackendChain(backend);
    this.tokenizer = tokenizer;
  }

  /**
   * Loads a model directory (local path or URL): `config.json` (mamba_ssm or transformers format)
   * and `model.safetensors` (or the shards of `model.safetensors.index.json`). A string of the
   * form `org/name` that is not a local path is a Hugging Face Hub id: the files come from the
   * Hugging Face cache, downloaded first when missing (see {@link HubOptions}).
   *
   * @example
   * ```ts ignore
   * import { MambaLM } from "@mamba/mamba";
   * const lm = await MambaLM.load("state-spaces/mamba-130m", {
   *   revision: "main",
   *   onDownload: ({ file, loaded, total }) => console.error(file, loaded, total),
   * });
   * console.log(await lm.complete("Mamba is", { maxNewTokens: 20 }));
   * ```
   *
   * @throws {ConfigError} for a bad or unsupported config, {@link WeightsError} for bad weights,
   *   {@link HubError} when a Hub id's files cannot be had.
   */
  static async load(dir: string | URL, options: LoadOptions = {}): Promise<MambaLM> {
    let noTokenizer: string | undefined;
    let hubTokenizer: string | undefined;
    if (typeof dir === "string" && await isHubModel(dir)) {
      const snap = await hubSnapshot(dir, options);
      dir = snap.dir;
      hubTokenizer = snap.tokenizerDir;
      noTokenizer = snap.tokenizerProblem;
    }
    const base = dirUrl(dir);
    const configUrl = new URL("config.json", base);
    if (!(await exists(configUrl))) {
      throw new MambaError(`no config.json in ${base.href}`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(new TextDecoder().decode(await readBytes(configUrl)));
    } catch (e) {
      throw new ConfigError("(root)", `cannot parse ${configUrl.href}: ${(e as Error).message}`);
    }
    const config = parseConfig(raw);
    const weights = await loadWeights(
      config,
      base,
      options.weightsDtype ?? "f32",
      options.onProgress,
    );
    let tokenizer: Tokenizer | undefined;
    const tok = options.tokenizer;
    if (tok instanceof Tokenizer) tokenizer = tok;
    else if (tok !== undefined && tok !== false) tokenizer = await Tokenizer.load(tok);
    else if (tok === false) noTokenizer = "loaded with tokenizer: false";
    else if (hubTokenizer !== undefined) {
      try {
        tokenizer = await Tokenizer.load(hubTokenizer);
      } catch (e) {
        noTokenizer = `${hubTokenizer}/tokenizer.json does not load: ${(e as Error).message}`;
      }
    } else if (noTokenizer === undefined && (await exists(new URL("tokenizer.json", base)))) {
      tokenizer = await Tokenizer.load(base);
    } else noTokenizer ??= `${base.href} has no tokenizer.json`;
    const init = { config, weights };
    const { backend, rest } = await createBackendChain(options.backend ?? "auto", init, options);
    const lm = new MambaLM(config, backend, tokenizer);
    if (!tokenizer) lm.#noTokenizer = noTokenizer;
    const dtype = options.weightsDtype ?? "f32";
    lm.#hostWeights = () => loadWeights(config, base, dtype);
    // The weights are read again if the device is lost, rather than kept twice meanwhile.
    lm.#backends = new BackendChain(
      backend,
      rest,
      async (names) =>
        createBackendChain(
          names,
          { config, weights: await loadWeights(config, base, dtype) },
          options,
        ),
    );
    return lm;
  }

  /**
   * Builds a model from a parsed config and weights already in memory (random weights for a
   * benchmark, say, or weights converted by other code). The backend defaults to `"ref"`. The
   * model keeps a reference to `weights`, for {@link MambaLM.save} and, with `"auto"` or a list
   * that leaves backends to move to, for that move (see {@link DeviceLostError}).
   *
   * @example
   * ```ts
   * import { MambaLM, parseConfig } from "@mamba/mamba";
   * import { randomWeights } from "@mamba/mamba/testing";
   * const config = parseConfig({ d_model: 64, n_layer: 2, vocab_size: 256 });
   * const lm = await MambaLM.fromWeights(config, randomWeights(config), { backend: "ref" });
   * ```
   */
  static async fromWeights(
    config: MambaConfig,
    weights: ModelWeights,
    options: {
      backend?: BackendPreference;
      tokenizer?: Tokenizer;
      wasm?: LoadOptions["wasm"];
    } = {},
  ): Promise<MambaLM> {
    const init = { config, weights };
    const { backend, rest } = await createBackendChain(options.backend ?? "ref", init, options);
    const lm = new MambaLM(config, backend, options.tokenizer);
    lm.#backends = new BackendChain(
      backend,
      rest,
      (names) => createBackendChain(names, init, options),
    );
    lm.#hostWeights = () => Promise.resolve(weights);
    return lm;
  }

  /**
   * Builds a model with fresh weights from the reference's initialisation, as
   * `MambaLMHeadModel(MambaConfig(...))` does: the mixers' own init (`A_log`, `D = 1`, the dt bias
   * from `dt_min` / `dt_max` / `dt_init_floor`, …, taken from the config's `ssm_cfg` or
   * transformers' `time_step_*` fields), then mamba_ssm's `_init_weights` (embedding
   * N(0, 0.02²), linear biases 0, `out_proj.weight` divided by √(n_layer)). `config` is a
   * `config.json` object (mamba_ssm's `MambaConfig` form or transformers') or a parsed
   * {@link MambaConfig} (then the `ssm_cfg` init settings take their defaults). Seeded: the same
   * seed gives the same weights. The backend defaults to `"ref"`; the model keeps the weights
   * (for {@link MambaLM.save} and a move off a lost device).
   *
   * @throws {ConfigError} for a bad or unsupported config.
   * @example
   * ```ts
   * import { MambaLM } from "@mamba/mamba";
   * const lm = await MambaLM.fromConfig({
   *   d_model: 256, n_layer: 4, vocab_size: 256,
   *   ssm_cfg: { layer: "Mamba2", d_state: 64, headdim: 32 },
   * }, { seed: 0, backend: "auto" });
   * for await (const t of lm.generate([1, 2, 3], { maxNewTokens: 8, temperature: 0.7, topP: 0.9 })) {
   *   console.log(t.id);
   * }
   * await lm.save("./my-model"); // config.json + model.safetensors
   * ```
   */
  static async fromConfig(
    config: MambaConfig | Record<string, unknown>,
    options: FromConfigOptions = {},
  ): Promise<MambaLM> {
    const isParsed = typeof config === "object" && config !== null && "arch" in config &&
      "dInner" in config;
    const parsed = isParsed ? config as MambaConfig : parseConfig(config);
    const mixer: MixerInit = isParsed
      ? DEFAULT_MIXER_INIT
      : mixerInitFromJson(config as Record<string, unknown>);
    const model: ModelInit = { ...DEFAULT_MODEL_INIT, ...options.init };
    const dtype = options.weightsDtype === "f16" ? "f16" : "f32";
    const weights = initModelWeights(parsed, options.seed, mixer, model, dtype);
    return await MambaLM.fromWeights(parsed, weights, options);
  }

  /**
   * Writes the model into directory `dir` as mamba_ssm and Hugging Face tools read it:
   * `config.json` (mamba_ssm's `MambaConfig`, its 12 fields) and `model.safetensors` under
   * mamba_ssm's tensor names (`lm_head.weight` included, as `state_dict()` has it), split into
   * shards with `model.safetensors.index.json` when larger than `maxShardBytes`. `MambaLM.load`
   * reads it back bit-exactly (in the dtype written).
   *
   * @returns the names of the files written.
   * @throws {MambaError} when the model has no host weights to save (it was built with
   *   `new MambaLM(...)` around a ready backend) or the directory cannot be written.
   * @example
   * ```ts
   * import { MambaLM } from "@mamba/mamba";
   * const lm = await MambaLM.fromConfig({ d_model: 64, n_layer: 2, vocab_size: 256 }, { seed: 1 });
   * await lm.save("./tiny", { dtype: "f16" });
   * const again = await MambaLM.load("./tiny", { weightsDtype: "as-stored" });
   * ```
   */
  async save(dir: string | URL, options: SaveOptions = {}): Promise<string[]> {
    if (!this.#hostWeights) {
      throw new MambaError(
        "save: this model has no host weights (build it with load, fromWeights or fromConfig)",
      );
    }
    return await saveModel(dir, this.config, await this.#hostWeights(), options);
  }

  /** The backend computing this model (it changes when a lost device is left behind). */
  get backend(): Backend {
    return this.#backends.current;
  }

  /** Whether the backend decodes many tokens per submit on the device (see {@link generateTokens}). */
  get fusedDecoding(): boolean {
    return this.backend.decodeTokens !== undefined;
  }

  /**
   * Most prompt tokens per `prefill` call in the generation helpers: about 50 ms of work on the
   * current backend (see src/work_budget.ts), so that an `AbortSignal` is honoured between chunks.
   */
  get prefillChunkTokens(): number {
    return prefillChunkTokens(this.config, this.backend);
  }

  /** Most tokens per block of fused decoding in the generation helpers (about 50 ms of work). */
  get decodeBlockTokens(): number {
    return decodeBlockTokens(this.config, this.backend);
  }

  /** Name of the backend in use. */
  get backendName(): string {
    return this.backend.name;
  }

  /**
   * A zeroed recurrent state for `batch` sequences (see {@link InferenceState} for its layout).
   * `options.maxBytes` caps its size (default: half of the machine's memory, see
   * {@link CreateStateOptions}).
   *
   * @throws {InputError} for a batch that is not a positive integer, or whose state would need
   *   more than `maxBytes` (the message says how many bytes).
   */
  createState(batch = 1, options: CreateStateOptions = {}): InferenceState {
    if (!Number.isSafeInteger(batch) || batch < 1) {
      throw new InputError(`batch must be a positive integer, got ${batch}`);
    }
    const maxBytes = options.maxBytes ?? defaultMaxStateBytes();
    if (typeof maxBytes !== "number" || !(maxBytes > 0)) {
      throw new InputError(`createState: maxBytes must be a number > 0, got ${maxBytes}`);
    }
    const layout = stateLayout(this.config, batch);
    const bytes = stateByteLength(layout);
    if (bytes > maxBytes) {
      // Typed arrays take their memory lazily: without this check the state "succeeds" and the
      // process dies later, when the state is first written.
      throw new InputError(
        `createState(${batch}): the state would need ${formatBytes(bytes)}, more than maxBytes ` +
          `${formatBytes(maxBytes)} (pass { maxBytes } to allow more)`,
      );
    }
    return new InferenceState(layout);
  }

  /**
   * Full-sequence forward of equally long prompts from an empty state (mamba_ssm's
   * `MambaLMHeadModel.forward`): logits for every position.
   */
  async forward(ids: readonly (readonly number[])[]): Promise<Logits> {
    const [batch, seqLen, flat] = this.#checkIds(ids);
    const be = await this.#backends.live();
    const state = be.createState(batch);
    try {
      const data = await this.#run(be, flat, batch, seqLen, state, false);
      return { data, shape: [batch, seqLen, this.config.paddedVocabSize] };
    } finally {
      be.freeState(state);
    }
  }

  /**
   * Feeds equally long prompts into `state` (which may already hold earlier text) and returns the
   * logits of each sequence's last token: `[batch, paddedVocabSize]`.
   */
  async prefill(state: InferenceState, ids: readonly (readonly number[])[]): Promise<Float32Array> {
    const [batch, seqLen, flat] = this.#checkIds(ids);
    this.#checkState(state, batch);
    const be = await this.#backends.live();
    const handle = await bindState(state, be);
    const out = await this.#run(be, flat, batch, seqLen, handle, true);
    markComputed(state);
    return out;
  }

  /**
   * Feeds prompts into `state` as {@link MambaLM.prefill} does, then picks each sequence's next
   * token with its own sampler (`history[b]`, e.g. the prompt's ids, feeds the repetition
   * penalty). Where the backend can (`webgpu`), the pick runs on the device and only the ids
   * come back, not the logits: the quickest first token of a completion. Elsewhere it is
   * `samplers[b].sample` on the logits. The picked tokens are not fed.
   *
   * @example
   * ```ts
   * import { MambaLM, Sampler } from "@mamba/mamba";
   * const lm = await MambaLM.load("./models/demo");
   * const state = lm.createState(1);
   * const sampler = new Sampler({ temperature: 0.8, topP: 0.95, seed: 1 });
   * const [first] = await lm.prefillAndPick(state, [[72, 101, 108]], [sampler]);
   * ```
   */
  async prefillAndPick(
    state: InferenceState,
    ids: readonly (readonly number[])[],
    samplers: readonly Sampler[],
    history?: readonly (readonly number[])[],
  ): Promise<number[]> {
    const [batch, seqLen, flat] = this.#checkIds(ids);
    this.#checkState(state, batch);
    if (samplers.length !== batch) {
      throw new InputError(`prefillAndPick: ${samplers.length} samplers for ${batch} sequences`);
    }
    const be = await this.#backends.live();
    const handle = await bindState(state, be);
    const V = this.config.paddedVocabSize;
    const picked = await this.#run(be, flat, batch, seqLen, handle, true, async (logits) => {
      const onDevice = await be.pickTokens?.(logits, samplers, this.config.vocabSize, history);
      if (onDevice) return onDevice;
      const all = await be.read(logits);
      return samplers.map((s, b) => s.sample(all.subarray(b * V, (b + 1) * V), history?.[b]));
    });
    markComputed(state);
    return picked;
  }

  /** Advances every sequence by one token: `[batch, paddedVocabSize]` logits. */
  async step(state: InferenceState, tokens: readonly number[]): Promise<Float32Array> {
    return await this.prefill(state, tokens.map((t) => [t]));
  }

  /**
   * Streams a continuation of `prompt` (text, or token ids), token by token; each token carries
   * the UTF-8-safe text it completes. See {@link GenerateOptions} for sampling and stopping.
   *
   * @example
   * ```ts
   * import { MambaLM } from "@mamba/mamba";
   * const lm = await MambaLM.load("./models/demo");
   * for await (const t of lm.generate("The future of AI is", { maxNewTokens: 64, topP: 0.9, temperature: 0.7 })) {
   *   await Deno.stdout.write(new TextEncoder().encode(t.text));
   * }
   * ```
   */
  generate(
    prompt: string | readonly number[],
    options?: GenerateOptions<InferenceState>,
  ): AsyncGenerator<GeneratedToken, void, undefined> {
    const no = this.#textWithoutTokenizer([prompt], options);
    if (no) return failing(no);
    return generate(this, prompt, options);
  }

  /** The whole continuation of `prompt` as one string (see {@link MambaLM.generate}). */
  complete(
    prompt: string | readonly number[],
    options?: GenerateOptions<InferenceState>,
  ): Promise<string> {
    const no = this.#textWithoutTokenizer([prompt], options);
    if (no) return Promise.reject(no);
    return complete(this, prompt, options);
  }

  /** Continuations of several prompts computed as one batch, each stopping on its own. */
  generateBatch(
    prompts: readonly (string | readonly number[])[],
    options?: GenerateOptions<InferenceState>,
  ): Promise<string[]> {
    const no = this.#textWithoutTokenizer(prompts, options);
    if (no) return Promise.reject(no);
    return generateBatch(this, prompts, options);
  }

  /**
   * A `TransformStream` that keeps one state: each chunk of text written to it is fed into the
   * state, and a continuation of up to `maxNewTokens` is read out. Memory stays constant however
   * long the stream runs.
   */
  textStream(options?: GenerateOptions<InferenceState>): TransformStream<string, string> {
    const no = this.#textWithoutTokenizer([""], options);
    if (no) throw no;
    return textStream(this, options);
  }

  /**
   * Why text cannot be used with this model (`undefined` when it has a tokenizer): the error
   * that text prompts and stop strings throw.
   */
  get tokenizerError(): NoTokenizerError | undefined {
    if (this.tokenizer) return undefined;
    return new NoTokenizerError(
      `this model has no tokenizer (${this.#noTokenizer ?? "none was given"}): pass the ` +
        `prompt as token ids, or load with the tokenizer option`,
    );
  }

  /** The error for text (a text prompt, or stop strings) without a tokenizer. */
  #textWithoutTokenizer(
    prompts: readonly (string | readonly number[])[],
    options: GenerateOptions<InferenceState> | undefined,
  ): NoTokenizerError | undefined {
    if (this.tokenizer) return undefined;
    const text = prompts.some((p) => typeof p === "string") || (options?.stop?.length ?? 0) > 0;
    return text ? this.tokenizerError : undefined;
  }

  /**
   * Decodes `n` tokens for every sequence: feeds `tokens` (one per sequence: the last prompt
   * token, or one picked from {@link prefill}'s logits), then `n` times picks the next token
   * (greedy or sampled, per `options`; ids below the real vocabulary unless `vocabSize` says
   * otherwise) and feeds it back. Yields blocks of picked ids, `[batch][block length]`. Backends
   * with fused decoding (`webgpu`) run the whole loop on the device and yield blocks of up to
   * `blockSize` tokens; the others step on the host with a {@link Sampler} (blocks of one). The
   * state ends after `tokens` and the first `n − 1` picked tokens; if the consumer stops early,
   * it may have consumed up to two blocks more than were yielded.
   *
   * @example
   * ```ts
   * import { MambaLM } from "@mamba/mamba";
   * const lm = await MambaLM.load("./models/demo", { backend: "auto" });
   * const state = lm.createState(1);
   * const prompt = [72, 101, 108, 108, 111];
   * await lm.prefill(state, [prompt.slice(0, -1)]);
   * for await (const block of lm.generateTokens(state, [prompt.at(-1)!], 64, { topK: 1 })) {
   *   console.log(block[0]);
   * }
   * ```
   */
  async *generateTokens(
    state: InferenceState,
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
    const be = await this.#backends.live();
    if (be.decodeTokens) {
      const handle = await bindState(state, be);
      markComputed(state);
      yield* be.decodeTokens(handle, flat, n, {
        sampling,
        history: options.history,
        blockSize: options.blockSize,
      });
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

  async #run<T = Float32Array>(
    be: Backend,
    ids: Int32Array,
    batch: number,
    seqLen: number,
    state: unknown,
    lastOnly: boolean,
    finish: (logits: unknown) => Promise<T> = (a) => be.read(a) as Promise<T>,
  ): Promise<T> {
    try {
      let hidden = be.embed(ids);
      let residual: unknown = null;
      for (let i = 0; i < this.config.nLayer; i++) {
        const r = be.addNorm(hidden, residual, i);
        residual = r.residual;
        hidden = be.mixer(i, r.normed, batch, seqLen, state);
      }
      const { normed } = be.addNorm(hidden, residual, "final");
      return await finish(be.lmHead(normed, batch, seqLen, lastOnly));
    } catch (e) {
      // "Array buffer allocation failed" / "Invalid typed array length": too many tokens at once.
      if (!(e instanceof RangeError)) throw e;
      const c = this.config;
      const rows = batch * seqLen;
      const bytes = 4 * rows * (c.dModel * 2 + c.dInner * 4 + (lastOnly ? 0 : c.paddedVocabSize));
      throw new InputError(
        `cannot allocate the activations of ${batch} × ${seqLen} tokens (about ` +
          `${formatBytes(bytes)}; feed fewer tokens per call): ${e.message}`,
        { cause: e },
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
          throw new InputError(
            `token id ${id} at [${b}][${t}] is not an integer in [0, ${V}) (the padded vocabulary)`,
          );
        }
        flat[b * seqLen + t] = id;
      });
    });
    return [ids.length, seqLen, flat];
  }

  #checkState(state: InferenceState, batch: number): void {
    if (!(state instanceof InferenceState)) throw new InputError("state must be an InferenceState");
    const want = stateLayout(this.config, state.batch);
    const got = state.layout;
    const same = (a: readonly number[], b: readonly number[]) =>
      a.length === b.length && a.every((v, i) => v === b[i]);
    if (
      got.arch !== want.arch || got.nLayer !== want.nLayer ||
      !same(got.convShape, want.convShape) || !same(got.ssmShape, want.ssmShape)
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
