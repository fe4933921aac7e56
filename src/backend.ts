/**
 * The small interface every backend (`ref`, `wasm`, `webgpu`) implements. The model
 * (src/model.ts) is written once against it: embedding, then per block an add + norm and a mixer,
 * then the final norm and the LM head.
 *
 * Activations are opaque handles owned by the backend (host arrays on `ref`, GPU buffers on
 * `webgpu`): a backend may record operations lazily and only run them when {@link Backend.read}
 * is awaited. An activation holds `rows × cols` float32 values, one row per token, rows ordered
 * sequence-major: row `b·seqLen + t` is token `t` of sequence `b`. Each activation is used
 * once: a backend may recycle it as soon as it has been passed to `addNorm`, `mixer`, `lmHead`
 * or `read` (the model never passes one twice).
 *
 * @module
 */

import type { MambaConfig } from "./config.ts";
import type { GptNeoXConfig } from "./neox_config.ts";
import type { TransformerWeights } from "./neox_weights.ts";
import type { ResolvedSamplingOptions, Sampler } from "./sampling.ts";
import type { ModelWeights } from "./weights.ts";

/** Names of the backends. */
export type BackendName = "ref" | "wasm" | "webgpu";

/**
 * Recurrent state of all layers in host memory, in the public layout documented on
 * {@link InferenceState}: per layer `conv` `[batch, convDim, dConv]` and `ssm`
 * `[batch, dInner, dState]` (Mamba-1) or `[batch, nheads, headdim, dState]` (Mamba-2).
 */
export interface StateTensors {
  /** Per layer conv window. */
  readonly conv: Float32Array[];
  /** Per layer SSM state. */
  readonly ssm: Float32Array[];
}

/** What every backend implements. `A` is its activation handle, `S` its state handle. */
export interface Backend<A = unknown, S = unknown> {
  /** Which backend this is. */
  readonly name: BackendName;
  /**
   * True when the backend computes directly on host {@link StateTensors} (then `S` is
   * `StateTensors` and the state needs no upload or download).
   */
  readonly hostState: boolean;
  /**
   * Why the backend can no longer compute (its device was lost), or undefined while it can.
   * Backends without a device never set it.
   */
  readonly lostReason?: string;
  /** Looks up token ids: returns `[ids.length, dModel]`. Ids are already validated. */
  embed(ids: Int32Array): A;
  /**
   * `residual = hidden + residual` (or `hidden` when `residual` is null), then
   * `normed = norm(residual)` with block `layer`'s pre-norm, or the final norm for `"final"`.
   * `which` picks the block's norm where it has two (Transformer blocks; default `"mixer"`).
   * The residual of `"final"` is never used: a backend may recycle it at once.
   */
  addNorm(
    hidden: A,
    residual: A | null,
    layer: number | "final",
    which?: BlockNorm,
  ): { normed: A; residual: A };
  /**
   * Runs block `layer`'s mixer over `seqLen` tokens of each of `batch` sequences, starting from
   * and updating `state` (a zero state gives mamba_ssm's `forward`; `seqLen` 1 its `step`).
   * Returns `[batch·seqLen, dModel]`.
   */
  mixer(layer: number, x: A, batch: number, seqLen: number, state: S): A;
  /** LM head over all rows, or only the last token of each sequence: `[rows, paddedVocab]`. */
  lmHead(x: A, batch: number, seqLen: number, lastOnly: boolean): A;
  /** Reads an activation back to the host (this is where lazy backends run their work). */
  read(a: A): Promise<Float32Array>;
  /** A zeroed state for `batch` sequences. */
  createState(batch: number): S;
  /** Overwrites a state from host tensors. */
  uploadState(s: S, host: StateTensors): void;
  /** Copies a state out to the host. */
  downloadState(s: S): Promise<StateTensors>;
  /** A new state equal to `s`. */
  cloneState(s: S): S;
  /** Frees the state's memory (no-op where garbage collection does it). */
  freeState(s: S): void;
  /** Frees everything the backend holds. */
  dispose(): void;
  /**
   * Optional fused decoding: feeds `tokens` (one per sequence) into `state`, then `n` times picks
   * the next token of every sequence from the logits (per `options.sampling`) and feeds it back,
   * all on the device. Yields the picked ids in blocks, `[batch][block length]`. After a full run
   * the state has consumed `tokens` and the first `n − 1` picked tokens (the last is not fed).
   */
  decodeTokens?(
    state: S,
    tokens: Int32Array,
    n: number,
    options: DecodeOptions,
  ): AsyncGenerator<number[][]>;
  /**
   * Copies host values into a new activation of `rows × cols` (`cols` = `dModel`), rows ordered
   * as everywhere (row `b·seqLen + t` is token `t` of sequence `b`): for callers that feed a
   * {@link Backend.mixer} their own inputs, as the `Mamba` / `Mamba2` blocks do.
   */
  upload?(data: Float32Array, rows: number, cols: number): A;

  // -- Rows of a batch state and per-row sampling (continuous batching, src/server/) --------
  /**
   * Optional: copies sequences `[srcRow, srcRow + count)` of `src` into rows
   * `[dstRow, dstRow + count)` of `dst` (two states of this backend, of any batch sizes; `src`
   * and `dst` may be the same state if the ranges do not overlap). Ordered with the backend's
   * other work, like {@link Backend.cloneState}. Rows are checked by the caller.
   */
  copyStateRows?(src: S, srcRow: number, dst: S, dstRow: number, count: number): void;
  /**
   * Optional: picks one token per sequence from `logits` (an {@link Backend.lmHead} output,
   * `[batch, paddedVocab]`) on the device, each row with its own sampler over ids below
   * `vocab` (its options, its random stream, the repetition penalty over `history[b]`), as
   * `samplers[b].sample` would on the host; each stochastic sampler's stream advances by the
   * one draw made there. Consumes `logits`, except when it returns undefined: it cannot pick
   * now (a decode runs at this batch size) and the caller reads the logits instead. Saves
   * reading the logits back (200 kB a sequence for a 50k vocabulary) for a prompt's first token.
   */
  pickTokens?(
    logits: A,
    samplers: readonly Sampler[],
    vocab: number,
    history?: readonly (readonly number[])[],
  ): Promise<number[] | undefined>;
  /**
   * True when {@link Backend.decodeTokens} honours {@link DecodeOptions.samplers}: each
   * sequence picks with its own {@link Sampler} (on the host, or on the device continuing the
   * sampler's random stream, which is advanced past the draws made there).
   */
  readonly rowSamplers?: boolean;
}

/** Options of {@link Backend.decodeTokens}. */
export interface DecodeOptions {
  /** How to pick tokens (validated; `vocabSize` restricts the ids). */
  readonly sampling: ResolvedSamplingOptions;
  /** Per sequence, the ids seen before `tokens` (for the repetition penalty). */
  readonly history?: readonly (readonly number[])[];
  /** Most tokens per block read back (the first blocks are smaller). Default 64. */
  readonly blockSize?: number;
  /**
   * Per sequence, the sampler that picks its tokens (its own options and random stream, which
   * carry on from call to call); only on backends with {@link Backend.rowSamplers}. `sampling`
   * then only gives `vocabSize`.
   */
  readonly samplers?: readonly Sampler[];
  /**
   * Once aborted, no further block is started: the blocks already under way are still yielded,
   * then the generator ends, and the state is as after a full run of the blocks yielded (it has
   * consumed `tokens` and every picked id but the last; nothing, if no block was started). The
   * server drains a call this way to let a new request in sooner.
   */
  readonly drain?: AbortSignal;
}

/** What a backend factory receives. */
export interface BackendInit {
  /** The parsed config. */
  readonly config: MambaConfig;
  /** The weights in host memory, checked against the config. */
  readonly weights: ModelWeights;
}

// ---------------------------------------------------------------------------------------------
// Transformer operations (GPT-NeoX; shaped so that mamba_ssm's attention layers and GatedMLP
// can use them too). A backend built over {@link TransformerBackendInit} implements
// {@link TransformerBackend}: the shared operations above (embedding, add + norm, LM head,
// read) and these.

/** Which of a block's two norms: before the mixer (attention), or before the MLP. */
export type BlockNorm = "mixer" | "mlp";

/**
 * Keys and values of every attention layer in host memory: per layer `k` and `v`
 * `[batch, nKvHeads, length, headDim]` float32, keys after the rotary embedding.
 */
export interface KvTensors {
  /** Tokens held per sequence. */
  readonly length: number;
  /** Per layer keys. */
  readonly k: Float32Array[];
  /** Per layer values. */
  readonly v: Float32Array[];
}

/**
 * What a backend adds for Transformer blocks. `K` is its KV-cache handle, which holds a capacity
 * of token slots per sequence; the model says how many are in use (`pos`, `length`), so that
 * every sequence of a batch has the same length.
 */
export interface TransformerOps<A = unknown, K = unknown> {
  /** Block `layer`'s `which` norm of every row of `x`. Does NOT consume `x`. */
  norm(x: A, layer: number, which: BlockNorm): A;
  /**
   * Block `layer`'s attention over `seqLen` new tokens of each of `batch` sequences that hold
   * `pos` tokens already: the qkv projection, the rotary embedding at positions
   * `pos … pos + seqLen − 1`, keys and values written into `kv` at those slots, causal softmax
   * attention over slots `0 … position`, and the output projection. Returns `[batch·seqLen,
   * dModel]`. `kv` must hold at least `pos + seqLen` slots ({@link TransformerOps.reserveKv}).
   */
  attention(layer: number, x: A, batch: number, seqLen: number, kv: K, pos: number): A;
  /** Block `layer`'s MLP (`fc2(act(fc1(x)))`). */
  mlp(layer: number, x: A): A;
  /** `a + b`. */
  add(a: A, b: A): A;
  /** An empty KV cache for `batch` sequences. */
  createKv(batch: number): K;
  /**
   * Makes `kv` hold at least `length` slots per sequence, keeping what it holds. Capacity grows
   * by doubling, so a token-by-token stream copies the cache O(log n) times, not per token,
   * but never beyond `limit` slots (the model's context limit) unless `length` needs it.
   */
  reserveKv(kv: K, length: number, limit?: number): void;
  /** Overwrites the first `host.length` slots of `kv` (reserved already). */
  uploadKv(kv: K, host: KvTensors): void;
  /** Copies the first `length` slots out to the host. */
  downloadKv(kv: K, length: number): Promise<KvTensors>;
  /** A new cache holding the first `length` slots of `kv`. */
  cloneKv(kv: K, length: number): K;
  /** Frees the cache's memory. */
  freeKv(kv: K): void;
  /**
   * Optional fused decoding, as {@link Backend.decodeTokens}, from a cache holding `pos` tokens
   * and reserved for `pos + n`. Each step, the backend embeds the token picked on the device,
   * calls `blocks` (the model's layers and final norm, recorded with these same operations, at
   * position `pos + step`), applies the LM head and picks the next token. `progress.steps`
   * counts the tokens written into the cache so far, also when the consumer stops early (the
   * device may be up to two blocks ahead of what was yielded), so the caller knows its length.
   */
  decodeTokens?(
    kv: K,
    pos: number,
    tokens: Int32Array,
    n: number,
    options: DecodeOptions,
    blocks: (hidden: A, position: number) => A,
    progress: { steps: number },
  ): AsyncGenerator<number[][]>;
}

/** The operations of {@link Backend} that every model uses, whatever its blocks. */
export type SharedBackendOps<A = unknown> = Pick<
  Backend<A>,
  "name" | "lostReason" | "embed" | "addNorm" | "lmHead" | "read" | "dispose"
>;

/** A backend built for a Transformer model. */
export interface TransformerBackend<A = unknown, K = unknown>
  extends SharedBackendOps<A>, TransformerOps<A, K> {}

/** What a backend factory receives for a Transformer model. */
export interface TransformerBackendInit {
  /** The parsed config. */
  readonly config: GptNeoXConfig;
  /** The weights in host memory, checked against the config. */
  readonly weights: TransformerWeights;
}
