/**
 * The `Mamba` and `Mamba2` blocks: one mixer on its own, as `mamba_ssm`'s `Mamba(d_model, …)` and
 * `Mamba2(d_model, …)` modules, applied to `[batch, length, dModel]` values. People build their
 * own models out of these.
 *
 * A block is a backend built over a one-layer weight set (its mixer; an identity pre-norm and a
 * placeholder embedding that are never used) and drives that backend's {@link Backend.mixer}
 * directly, so every backend's mixer — the code the language models run — computes it.
 *
 * @module
 */

import type { Backend, BackendInit, BackendName } from "./backend.ts";
import { type BackendPreference, createBackendChain } from "./backends/registry.ts";
import { type MambaConfig, parseConfig } from "./config.ts";
import { BackendError, ConfigError, DeviceLostError, InputError, WeightsError } from "./errors.ts";
import {
  checkMixerInit,
  DEFAULT_MIXER_INIT,
  initMixer,
  InitRandom,
  type MixerInit,
} from "./init.ts";
import { parseSafetensors, type SafetensorsTensor } from "./safetensors.ts";
import { memoryEntry } from "./tensor_entry.ts";
import { stateDictEntries } from "./save.ts";
import { bindState, InferenceState, markComputed, stateLayout } from "./state.ts";
import { buildWeights, type HostTensor, readBytes } from "./weights.ts";

/**
 * Float32 values with a shape: the blocks' inputs and outputs.
 *
 * @example
 * ```ts
 * import type { FloatTensor } from "@mamba/mamba";
 * const x: FloatTensor = { data: new Float32Array(2 * 8 * 16), shape: [2, 8, 16] }; // [batch, length, dModel]
 * ```
 */
export interface FloatTensor {
  /** Row-major values. */
  readonly data: Float32Array;
  /** Shape, outermost axis first: `[batch, length, dModel]` for the blocks. */
  readonly shape: readonly number[];
}

/**
 * Options of {@link Mamba}: the arguments of mamba_ssm's `Mamba` module, in camelCase, with its
 * defaults.
 *
 * @example
 * ```ts
 * import type { MambaOptions } from "@mamba/mamba";
 * const options: MambaOptions = { dModel: 768, dState: 16, dConv: 4, expand: 2, dtRank: "auto" };
 * ```
 */
export interface MambaOptions {
  /** Width of the input and output (`d_model`). Required. */
  dModel: number;
  /** SSM state size N. Default 16. */
  dState?: number;
  /** Width of the causal depthwise convolution. Default 4. */
  dConv?: number;
  /** Inner width / `dModel`. Default 2. */
  expand?: number;
  /** Rank of the dt projection: a number, or `"auto"` (default) = ⌈dModel / 16⌉. */
  dtRank?: number | "auto";
  /** Smallest dt of the dt-bias initialisation. Default 0.001. */
  dtMin?: number;
  /** Largest dt of the dt-bias initialisation. Default 0.1. */
  dtMax?: number;
  /** `dt_proj.weight` initialisation: `"random"` (default) or `"constant"`. */
  dtInit?: "random" | "constant";
  /** Scale of `dt_proj.weight`'s initialisation. Default 1. */
  dtScale?: number;
  /** Floor of the initial dt. Default 1e-4. */
  dtInitFloor?: number;
  /** Whether the convolution has a bias. Default true. */
  convBias?: boolean;
  /** Whether `in_proj` and `out_proj` have biases. Default false. */
  bias?: boolean;
}

/**
 * Options of {@link Mamba2}: the arguments of mamba_ssm's `Mamba2` module, in camelCase, with
 * its defaults.
 *
 * @example
 * ```ts
 * import type { Mamba2Options } from "@mamba/mamba";
 * const options: Mamba2Options = { dModel: 768, dState: 128, headdim: 64, ngroups: 1, chunkSize: 256 };
 * ```
 */
export interface Mamba2Options {
  /** Width of the input and output (`d_model`). Required. */
  dModel: number;
  /** SSM state size N. Default 128. */
  dState?: number;
  /** Width of the causal depthwise convolution. Default 4. */
  dConv?: number;
  /** Conv weights initialised U(±convInit) when set; default null (PyTorch's default). */
  convInit?: number | null;
  /** Inner width / `dModel`. Default 2. */
  expand?: number;
  /** Head dimension P. Default 64. */
  headdim?: number;
  /** Width of the SSM part; only null (default, = the inner width) is supported. */
  dSsm?: number | null;
  /** Number of B/C groups. Default 1. */
  ngroups?: number;
  /** Range A is initialised in (`A_log = log(A)`). Default [1, 16]. */
  AInitRange?: readonly [number, number];
  /** D has one value per channel instead of per head. Default false. */
  DHasHdim?: boolean;
  /** Gated RMSNorm before `out_proj`. Default true. */
  rmsnorm?: boolean;
  /** Normalise before gating. Default false. */
  normBeforeGate?: boolean;
  /** Smallest dt of the dt-bias initialisation. Default 0.001. */
  dtMin?: number;
  /** Largest dt of the dt-bias initialisation. Default 0.1. */
  dtMax?: number;
  /** Floor of the initial dt. Default 1e-4. */
  dtInitFloor?: number;
  /** dt is clamped to this range after softplus. Default [0, Infinity] (no clamp). */
  dtLimit?: readonly [number, number];
  /** Whether `in_proj` and `out_proj` have biases. Default false. */
  bias?: boolean;
  /** Whether the convolution has a bias. Default true. */
  convBias?: boolean;
  /** Chunk length of the chunked scan. Default 256. */
  chunkSize?: number;
}

/**
 * A tensor of a state dict: plain float32 values, a parsed safetensors tensor, or a
 * {@link HostTensor}.
 *
 * @example
 * ```ts
 * import type { StateDictTensor } from "@mamba/mamba";
 * const D: StateDictTensor = { data: new Float32Array(32).fill(1), shape: [32] };
 * ```
 */
export type StateDictTensor = FloatTensor | SafetensorsTensor | HostTensor;

/**
 * Where a block's weights come from: a safetensors file (a path, a URL, or its bytes) or a state
 * dict (a `Map` or an object of tensors by name).
 *
 * @example
 * ```ts
 * import type { BlockWeightsSource } from "@mamba/mamba";
 * const fromFile: BlockWeightsSource = "./model.safetensors";
 * const fromBytes: BlockWeightsSource = await Deno.readFile("./model.safetensors");
 * ```
 */
export type BlockWeightsSource =
  | string
  | URL
  | Uint8Array
  | ReadonlyMap<string, StateDictTensor>
  | Readonly<Record<string, StateDictTensor>>;

/**
 * Options of {@link Mamba.create} and {@link Mamba2.create}.
 *
 * @example
 * ```ts
 * import { type BlockCreateOptions, Mamba } from "@mamba/mamba";
 * const init: BlockCreateOptions = {
 *   weights: "./model.safetensors", prefix: "backbone.layers.3.mixer.", backend: "wasm",
 * };
 * const block = await Mamba.create({ dModel: 768 }, init);
 * ```
 */
export interface BlockCreateOptions {
  /**
   * Seed of the reference's initialisation (ignored with `weights`). By default a fresh random
   * seed.
   */
  seed?: number;
  /** Which backend computes: `"ref"` (default), `"wasm"`, `"webgpu"`, `"auto"` or a list. */
  backend?: BackendPreference;
  /**
   * The weights, instead of the initialisation: a safetensors file or a state dict, under
   * mamba_ssm's mixer names (`in_proj.weight`, `conv1d.weight`, …) after `prefix`.
   */
  weights?: BlockWeightsSource;
  /**
   * What the mixer's names start with in `weights`, e.g. `"backbone.layers.3.mixer."` for one
   * layer of a model file (the final dot may be left out). By default none, or the one mixer the
   * weights hold.
   */
  prefix?: string;
  /** How to keep the weights: `"f32"` (default) or `"f16"`. */
  weightsDtype?: "f32" | "f16";
  /** Options of the `wasm` backend (threads, weight storage). */
  wasm?: { threads?: number; weights?: "f32" | "f16" | "q8" };
}

/** Rows of the placeholder embedding a block's backend is built with (never looked up). */
const PLACEHOLDER_VOCAB = 8;

/** `ssm_cfg.d_state` → `dState` (the option the user gave). */
function optionName(field: string): string {
  return field.replace(/^ssm_cfg\./, "").replace(/_([a-zA-Z])/g, (_, c) => c.toUpperCase());
}

/** The body of a {@link ConfigError}'s message, without its `config.json: field: ` prefix. */
function reason(e: ConfigError): string {
  const prefix = `config.json: ${e.field}: `;
  return e.message.startsWith(prefix) ? e.message.slice(prefix.length) : e.message;
}

/** Float32 values as a safetensors tensor (no copy). */
function f32Tensor(data: Float32Array, shape: readonly number[]): SafetensorsTensor {
  return {
    dtype: "F32",
    shape,
    bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
  };
}

/** Any {@link StateDictTensor} as a safetensors tensor. */
function asSafetensors(name: string, t: StateDictTensor): SafetensorsTensor {
  if ("bytes" in t) return t;
  if ("dtype" in t && t.dtype === "f16") {
    const d = t.data;
    return {
      dtype: "F16",
      shape: t.shape,
      bytes: new Uint8Array(d.buffer, d.byteOffset, d.byteLength),
    };
  }
  if (!(t.data instanceof Float32Array) || !Array.isArray(t.shape)) {
    throw new WeightsError(`tensor "${name}": expected { data: Float32Array, shape: number[] }`);
  }
  const n = t.shape.reduce((a: number, b: number) => a * b, 1);
  if (n !== t.data.length) {
    throw new WeightsError(
      `tensor "${name}": shape [${t.shape}] needs ${n} values, got ${t.data.length}`,
    );
  }
  return f32Tensor(t.data, t.shape);
}

/** Reads a weights source into named tensors. */
async function readSource(src: BlockWeightsSource): Promise<Map<string, SafetensorsTensor>> {
  if (typeof src === "string" || src instanceof URL) {
    let bytes: Uint8Array;
    const where = typeof src === "string" ? src : src.href;
    try {
      bytes = typeof src === "string" && !/^[a-z][a-z0-9+.-]*:\/\//i.test(src)
        ? await Deno.readFile(src)
        : await readBytes(new URL(src));
    } catch (e) {
      if (e instanceof WeightsError) throw e;
      throw new WeightsError(`cannot read ${where}: ${(e as Error).message}`);
    }
    return parseSafetensors(bytes, where).tensors;
  }
  if (src instanceof Uint8Array) return parseSafetensors(src, "weights").tensors;
  const entries = src instanceof Map
    ? [...(src as ReadonlyMap<string, StateDictTensor>).entries()]
    : Object.entries(src as Record<string, StateDictTensor>);
  return new Map(entries.map(([k, t]) => [k, asSafetensors(k, t)]));
}

/** The prefix of the one mixer in `names`, or the one asked for (with its final dot). */
function mixerPrefix(names: readonly string[], asked: string | undefined): string {
  if (asked !== undefined) return asked === "" || asked.endsWith(".") ? asked : asked + ".";
  if (names.includes("in_proj.weight")) return "";
  const found = names.filter((n) => n.endsWith(".in_proj.weight")).map((n) =>
    n.slice(0, -"in_proj.weight".length)
  );
  if (found.length === 1) return found[0];
  if (found.length === 0) throw new WeightsError(`no "in_proj.weight" among the weights' tensors`);
  throw new WeightsError(
    `the weights hold ${found.length} mixers (${found.slice(0, 3).join(", ")}…): ` +
      `pass the one to use as the "prefix" option`,
  );
}

/**
 * What {@link Mamba} and {@link Mamba2} share: one mixer on a backend, applied to
 * `[batch, length, dModel]` values from an empty state ({@link MixerBlock.forward}) or one token
 * at a time from a state ({@link MixerBlock.step}).
 *
 * @example
 * ```ts
 * import { Mamba, type MixerBlock } from "@mamba/mamba";
 * const block: MixerBlock = await Mamba.create({ dModel: 16 }, { seed: 0 });
 * const y = await block.forward({ data: new Float32Array(2 * 8 * 16), shape: [2, 8, 16] });
 * ```
 */
export abstract class MixerBlock {
  /** The one-layer config the block's backend runs (`dInner`, `nheads`, … derived). */
  readonly config: MambaConfig;
  readonly #backend: Backend;
  readonly #weights: BackendInit["weights"];

  /** Wraps a backend built over a one-layer weight set; use the subclasses' `create`. */
  protected constructor(config: MambaConfig, backend: Backend, weights: BackendInit["weights"]) {
    if (!backend.upload) {
      throw new BackendError(`the ${backend.name} backend cannot take host activations (upload)`);
    }
    this.config = config;
    this.#backend = backend;
    this.#weights = weights;
  }

  /** Name of the backend computing the block. */
  get backendName(): BackendName {
    return this.#backend.name;
  }

  /** Width of the input and output. */
  get dModel(): number {
    return this.config.dModel;
  }

  /**
   * The block's weights under mamba_ssm's names (`in_proj.weight`, `conv1d.weight` as
   * `[C, 1, K]`, `A_log`, …), as held (f32 or f16): what `Mamba(...).state_dict()` lists.
   */
  stateDict(): Map<string, { shape: readonly number[]; tensor: HostTensor }> {
    const prefix = "backbone.layers.0.mixer.";
    const out = new Map<string, { shape: readonly number[]; tensor: HostTensor }>();
    for (const t of stateDictEntries(this.config, this.#weights)) {
      if (t.name.startsWith(prefix)) {
        out.set(t.name.slice(prefix.length), { shape: t.shape, tensor: t.tensor });
      }
    }
    return out;
  }

  /**
   * A zeroed recurrent state for `batch` sequences: an {@link InferenceState} of one layer
   * (`conv[0]` `[batch, convDim, dConv]`, `ssm[0]` the SSM state), with its `toBytes`,
   * `fromBytes`, `clone`, `sync` and `reset`.
   */
  createState(batch = 1): InferenceState {
    if (!Number.isSafeInteger(batch) || batch < 1) {
      throw new InputError(`batch must be a positive integer, got ${batch}`);
    }
    return new InferenceState(stateLayout(this.config, batch));
  }

  /**
   * Applies the block to `x` `[batch, length, dModel]`: from an empty state (mamba_ssm's
   * `forward`), or continuing `state` (which it updates) when one is given. Returns
   * `[batch, length, dModel]`.
   *
   * @throws {InputError} on a misshaped input or a state of another block or batch.
   */
  async forward(x: FloatTensor, state?: InferenceState): Promise<FloatTensor> {
    const [batch, length] = this.#checkInput(x, 3);
    return {
      data: await this.#run(x.data, batch, length, state),
      shape: [batch, length, this.dModel],
    };
  }

  /**
   * Feeds one token per sequence into `state` (mamba_ssm's `step`): `x` is `[batch, 1, dModel]`
   * or `[batch, dModel]`; returns the output in the same shape.
   *
   * @throws {InputError} on a misshaped input or a state of another block or batch.
   */
  async step(state: InferenceState, x: FloatTensor): Promise<FloatTensor> {
    if (!(state instanceof InferenceState)) throw new InputError("state must be an InferenceState");
    const [batch, length] = this.#checkInput(x, x.shape.length === 2 ? 2 : 3);
    if (length !== 1) throw new InputError(`step takes one token per sequence, got ${length}`);
    return { data: await this.#run(x.data, batch, 1, state), shape: [...x.shape] };
  }

  /** Frees the backend's memory; the block cannot be used afterwards. */
  dispose(): void {
    this.#backend.dispose();
  }

  async #run(
    data: Float32Array,
    batch: number,
    length: number,
    state: InferenceState | undefined,
  ): Promise<Float32Array> {
    const be = this.#backend;
    if (be.lostReason) throw new DeviceLostError(be.lostReason);
    let handle: unknown;
    if (state) {
      this.#checkState(state, batch);
      handle = await bindState(state, be);
    } else {
      handle = be.createState(batch);
    }
    try {
      const x = be.upload!(data, batch * length, this.dModel);
      const out = await be.read(be.mixer(0, x, batch, length, handle));
      if (state) markComputed(state);
      return out;
    } finally {
      if (!state) be.freeState(handle);
    }
  }

  #checkInput(x: FloatTensor, rank: 2 | 3): [number, number] {
    const s = x?.shape;
    const want = rank === 3 ? "[batch, length, dModel]" : "[batch, dModel]";
    if (!(x?.data instanceof Float32Array) || !Array.isArray(s) || s.length !== rank) {
      throw new InputError(`input must be { data: Float32Array, shape: ${want} }`);
    }
    if (!s.every((d) => Number.isSafeInteger(d) && d > 0) || s[rank - 1] !== this.dModel) {
      throw new InputError(`input shape [${s}] is not ${want} with dModel ${this.dModel}`);
    }
    const n = s.reduce((a, b) => a * b, 1);
    if (x.data.length !== n) {
      throw new InputError(`input shape [${s}] needs ${n} values, got ${x.data.length}`);
    }
    return rank === 3 ? [s[0], s[1]] : [s[0], 1];
  }

  #checkState(state: InferenceState, batch: number): void {
    const want = stateLayout(this.config, state.batch);
    const got = state.layout;
    const same = (a: readonly number[], b: readonly number[]) =>
      a.length === b.length && a.every((v, i) => v === b[i]);
    if (
      got.arch !== want.arch || got.nLayer !== 1 || !same(got.convShape, want.convShape) ||
      !same(got.ssmShape, want.ssmShape)
    ) {
      throw new InputError(
        `state does not fit this block: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`,
      );
    }
    if (state.batch !== batch) {
      throw new InputError(`state holds ${state.batch} sequences but ${batch} were given`);
    }
  }

  /**
   * Builds a block's backend: the config from `ssmCfg` (mamba_ssm names), the mixer from
   * `options.weights` or the reference's initialisation.
   */
  protected static async build(
    kind: "Mamba" | "Mamba2",
    dModel: unknown,
    ssmCfg: Record<string, unknown>,
    init: MixerInit,
    options: BlockCreateOptions,
  ): Promise<{ config: MambaConfig; backend: Backend; weights: BackendInit["weights"] }> {
    const bad = (field: string, why: string) => new InputError(`${kind} option ${field}: ${why}`);
    let config: MambaConfig;
    try {
      if (typeof dModel !== "number") throw new ConfigError("d_model", "is required (a number)");
      config = parseConfig({
        d_model: dModel,
        n_layer: 1,
        vocab_size: PLACEHOLDER_VOCAB,
        pad_vocab_size_multiple: PLACEHOLDER_VOCAB,
        ssm_cfg: ssmCfg,
      });
      checkMixerInit(init, (k) => k);
    } catch (e) {
      if (e instanceof ConfigError) throw bad(optionName(e.field), reason(e));
      throw e;
    }
    const dtype = options.weightsDtype ?? "f32";
    if (dtype !== "f32" && dtype !== "f16") {
      throw bad("weightsDtype", `must be "f32" or "f16", got ${JSON.stringify(dtype)}`);
    }
    const mixerName = "backbone.layers.0.mixer.";
    const tensors = new Map<string, SafetensorsTensor>();
    let prefix = mixerName;
    if (options.weights !== undefined) {
      const given = await readSource(options.weights);
      prefix = mixerPrefix([...given.keys()], options.prefix);
      for (const [name, t] of given) {
        if (!name.startsWith(prefix)) continue;
        const rest = name.slice(prefix.length);
        // A conv weight given as [C, K] is PyTorch's [C, 1, K].
        const shape = rest === "conv1d.weight" && t.shape.length === 2
          ? [t.shape[0], 1, t.shape[1]]
          : t.shape;
        tensors.set(mixerName + rest, { ...t, shape });
      }
      if (tensors.size === 0) {
        throw new WeightsError(`no tensor of the weights starts with "${prefix}"`);
      }
    } else {
      const rand = new InitRandom(options.seed);
      for (const [name, { data, shape }] of initMixer(config, init, rand)) {
        tensors.set(mixerName + name, f32Tensor(data, shape));
      }
    }
    // The parts of a one-layer model the block never runs: an identity pre-norm and final norm
    // and a placeholder embedding.
    const d = config.dModel;
    tensors.set("backbone.layers.0.norm.weight", f32Tensor(new Float32Array(d).fill(1), [d]));
    tensors.set("backbone.norm_f.weight", f32Tensor(new Float32Array(d).fill(1), [d]));
    const V = config.paddedVocabSize;
    tensors.set("backbone.embedding.weight", f32Tensor(new Float32Array(V * d), [V, d]));
    let weights: BackendInit["weights"];
    try {
      const entries = new Map([...tensors].map(([k, t]) => [k, memoryEntry(`block:${k}`, t)]));
      weights = await buildWeights(config, [entries], dtype);
    } catch (e) {
      if (e instanceof WeightsError) {
        throw new WeightsError(e.message.replaceAll(mixerName, prefix));
      }
      throw e;
    }
    const init2 = { config, weights };
    const { backend } = await createBackendChain(options.backend ?? "ref", init2, {
      wasm: options.wasm,
    });
    return { config, backend, weights };
  }
}

/**
 * A Mamba (selective-scan) block, as mamba_ssm's `Mamba` module: `in_proj` → causal conv →
 * input-dependent selective scan, gated → `out_proj`, on `[batch, length, dModel]` values.
 *
 * @example
 * ```ts
 * import { Mamba } from "@mamba/mamba";
 * const [batch, length, dim] = [2, 64, 16];
 * const x = { data: new Float32Array(batch * length * dim).map(() => Math.random()), shape: [batch, length, dim] };
 * const model = await Mamba.create({ dModel: dim, dState: 16, dConv: 4, expand: 2 }, { seed: 0 });
 * const y = await model.forward(x);
 * console.log(y.shape); // [2, 64, 16]
 * ```
 */
export class Mamba extends MixerBlock {
  /** The options with every default filled in (`dtRank` resolved). */
  readonly options: Required<MambaOptions> & { dtRank: number };

  private constructor(
    config: MambaConfig,
    backend: Backend,
    weights: BackendInit["weights"],
    options: Required<MambaOptions> & { dtRank: number },
  ) {
    super(config, backend, weights);
    this.options = options;
  }

  /**
   * Builds the block: weights from the reference's initialisation as the module is constructed
   * (PyTorch's defaults and the mixer's own init; `_init_weights` is a model's, see
   * `MambaLM.fromConfig`), seeded by `init.seed`, or
   * from `init.weights` (a safetensors file or a state dict, e.g. one layer of a model with
   * `prefix: "backbone.layers.3.mixer."`), on `init.backend` (default `"ref"`).
   *
   * @throws {InputError} on bad options, {@link WeightsError} on weights that do not fit them.
   * @example
   * ```ts
   * import { Mamba } from "@mamba/mamba";
   * const block = await Mamba.create({ dModel: 64 }, {
   *   weights: "./model.safetensors", prefix: "backbone.layers.3.mixer.", backend: "wasm",
   * });
   * ```
   */
  static async create(options: MambaOptions, init: BlockCreateOptions = {}): Promise<Mamba> {
    const o = { ...options };
    const mixer: MixerInit = {
      ...DEFAULT_MIXER_INIT,
      dtMin: o.dtMin ?? DEFAULT_MIXER_INIT.dtMin,
      dtMax: o.dtMax ?? DEFAULT_MIXER_INIT.dtMax,
      dtInit: o.dtInit ?? DEFAULT_MIXER_INIT.dtInit,
      dtScale: o.dtScale ?? DEFAULT_MIXER_INIT.dtScale,
      dtInitFloor: o.dtInitFloor ?? DEFAULT_MIXER_INIT.dtInitFloor,
    };
    const { config, backend, weights } = await MixerBlock.build(
      "Mamba",
      o.dModel,
      {
        d_state: o.dState,
        d_conv: o.dConv,
        expand: o.expand,
        dt_rank: o.dtRank,
        conv_bias: o.convBias,
        bias: o.bias,
      },
      mixer,
      init,
    );
    return new Mamba(config, backend, weights, {
      dModel: config.dModel,
      dState: config.dState,
      dConv: config.dConv,
      expand: config.expand,
      dtRank: config.dtRank,
      dtMin: mixer.dtMin,
      dtMax: mixer.dtMax,
      dtInit: mixer.dtInit,
      dtScale: mixer.dtScale,
      dtInitFloor: mixer.dtInitFloor,
      convBias: config.convBias,
      bias: config.bias,
    });
  }
}

/**
 * A Mamba-2 (SSD) block, as mamba_ssm's `Mamba2` module: `in_proj` → causal conv over x, B, C →
 * state-space duality scan with scalar-per-head A → gated RMSNorm → `out_proj`, on
 * `[batch, length, dModel]` values.
 *
 * @example
 * ```ts
 * import { Mamba2 } from "@mamba/mamba";
 * const model = await Mamba2.create({ dModel: 256, dState: 64, headdim: 64, ngroups: 1 }, { seed: 0 });
 * const y = await model.forward({ data: new Float32Array(1 * 10 * 256), shape: [1, 10, 256] });
 * const state = model.createState(1);
 * const out = await model.step(state, { data: new Float32Array(256), shape: [1, 1, 256] });
 * ```
 */
export class Mamba2 extends MixerBlock {
  /** The options with every default filled in. */
  readonly options: Required<Mamba2Options>;

  private constructor(
    config: MambaConfig,
    backend: Backend,
    weights: BackendInit["weights"],
    options: Required<Mamba2Options>,
  ) {
    super(config, backend, weights);
    this.options = options;
  }

  /**
   * Builds the block: weights from the reference's initialisation as the module is constructed
   * (PyTorch's defaults and the mixer's own init; `_init_weights` is a model's, see
   * `MambaLM.fromConfig`), seeded by `init.seed`, or
   * from `init.weights` (a safetensors file or a state dict, e.g. one layer of a model with
   * `prefix: "backbone.layers.3.mixer."`), on `init.backend` (default `"ref"`).
   *
   * @throws {InputError} on bad options, {@link WeightsError} on weights that do not fit them.
   * @example
   * ```ts
   * import { Mamba2 } from "@mamba/mamba";
   * const block = await Mamba2.create({ dModel: 128, dState: 64, headdim: 32 }, { seed: 1, backend: "webgpu" });
   * ```
   */
  static async create(options: Mamba2Options, init: BlockCreateOptions = {}): Promise<Mamba2> {
    const o = { ...options };
    const mixer: MixerInit = {
      ...DEFAULT_MIXER_INIT,
      dtMin: o.dtMin ?? DEFAULT_MIXER_INIT.dtMin,
      dtMax: o.dtMax ?? DEFAULT_MIXER_INIT.dtMax,
      dtInitFloor: o.dtInitFloor ?? DEFAULT_MIXER_INIT.dtInitFloor,
      AInitRange: o.AInitRange ?? DEFAULT_MIXER_INIT.AInitRange,
      convInit: o.convInit ?? null,
    };
    const limit = o.dtLimit;
    const { config, backend, weights } = await MixerBlock.build(
      "Mamba2",
      o.dModel,
      {
        layer: "Mamba2",
        d_state: o.dState,
        d_conv: o.dConv,
        expand: o.expand,
        headdim: o.headdim,
        d_ssm: o.dSsm ?? undefined,
        ngroups: o.ngroups,
        chunk_size: o.chunkSize,
        rmsnorm: o.rmsnorm,
        norm_before_gate: o.normBeforeGate,
        D_has_hdim: o.DHasHdim,
        conv_bias: o.convBias,
        bias: o.bias,
        dt_limit: limit ? [limit[0], limit[1] === Infinity ? "inf" : limit[1]] : undefined,
      },
      mixer,
      init,
    );
    return new Mamba2(config, backend, weights, {
      dModel: config.dModel,
      dState: config.dState,
      dConv: config.dConv,
      convInit: mixer.convInit,
      expand: config.expand,
      headdim: config.headdim,
      dSsm: null,
      ngroups: config.ngroups,
      AInitRange: mixer.AInitRange,
      DHasHdim: config.dHasHdim,
      rmsnorm: config.gatedNorm,
      normBeforeGate: config.normBeforeGate,
      dtMin: mixer.dtMin,
      dtMax: mixer.dtMax,
      dtInitFloor: mixer.dtInitFloor,
      dtLimit: config.dtLimit,
      bias: config.bias,
      convBias: config.convBias,
      chunkSize: config.chunkSize,
    });
  }
}
