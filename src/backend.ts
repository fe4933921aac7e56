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
   */
  addNorm(hidden: A, residual: A | null, layer: number | "final"): { normed: A; residual: A };
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

  // -- Rows of a batch state and per-row sampling (continuous batching, src/server/) --------
  /**
   * Optional: copies sequences `[srcRow, srcRow + count)` of `src` into rows
   * `[dstRow, dstRow + count)` of `dst` (two states of this backend, of any batch sizes; `src`
   * and `dst` may be the same state if the ranges do not overlap). Ordered with the backend's
   * other work, like {@link Backend.cloneState}. Rows are checked by the caller.
   */
  copyStateRows?(src: S, srcRow: number, dst: S, dstRow: number, count: number): void;
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
