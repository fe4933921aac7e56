/**
 * The reference's initialisation, seeded: what `mamba_ssm` draws when it builds a `Mamba` /
 * `Mamba2` mixer (`mamba_ssm/modules/mamba_simple.py`, `mamba2.py`) or a whole
 * `MambaLMHeadModel` (`_init_weights` in `mamba_ssm/models/mixer_seq_simple.py`).
 *
 * The distributions are the reference's; the draws are not PyTorch's (this library has its own
 * generator, {@link Xoshiro128}), so a seed gives the same weights on every run and platform here,
 * not the weights `torch.manual_seed` would give.
 *
 * - PyTorch's defaults: `nn.Linear` and `nn.Conv1d` weights `kaiming_uniform_(a=√5)`, which is
 *   U(±1/√fan_in), biases U(±1/√fan_in); norms' weights 1 and biases 0.
 * - The mixers' own init: Mamba-1 `A_log = log(1..d_state)` per channel, `D = 1`, `dt_proj.weight`
 *   U(±dt_rank^-0.5·dt_scale) (`"random"`) or that constant (`"constant"`), `dt_proj.bias` the
 *   inverse softplus of dt drawn log-uniformly in [dt_min, dt_max] and floored at dt_init_floor;
 *   Mamba-2 `A_log = log(U(A_init_range))`, `dt_bias` like Mamba-1's, `D = 1`, conv weights
 *   U(±conv_init) when `conv_init` is set.
 * - In a model, `_init_weights` then sets the embedding to N(0, initializer_range = 0.02), every
 *   `nn.Linear` bias but `dt_proj`'s to 0, and redraws `out_proj.weight` with
 *   `kaiming_uniform_(a=√5)` divided by √(n_residuals_per_layer · n_layer)
 *   (`rescale_prenorm_residual`). An untied `lm_head` keeps `nn.Linear`'s default.
 *
 * @module
 */

import type { MambaConfig } from "./config.ts";
import { ConfigError, InputError } from "./errors.ts";
import { f32ArrayToF16 } from "./half.ts";
import { randomSeed, Xoshiro128 } from "./rng.ts";
import { assembleWeights, expectedTensors, type HostTensor, type ModelWeights } from "./weights.ts";

/**
 * The mixers' own initialisation settings (the `Mamba` / `Mamba2` constructor arguments).
 *
 * @example
 * ```ts
 * import type { MixerInit } from "@mamba/mamba";
 * const init: MixerInit = {
 *   dtMin: 0.001, dtMax: 0.1, dtInitFloor: 1e-4, dtInit: "random", dtScale: 1,
 *   AInitRange: [1, 16], convInit: null,
 * };
 * ```
 */
export interface MixerInit {
  /** Smallest dt of the dt-bias draw. Default 0.001. */
  readonly dtMin: number;
  /** Largest dt of the dt-bias draw. Default 0.1. */
  readonly dtMax: number;
  /** Floor of the drawn dt. Default 1e-4. */
  readonly dtInitFloor: number;
  /** Mamba-1: `"random"` (default) or `"constant"` `dt_proj.weight`. */
  readonly dtInit: "random" | "constant";
  /** Mamba-1: scale of `dt_proj.weight`. Default 1. */
  readonly dtScale: number;
  /** Mamba-2: range of A (`A_log = log(A)`). Default [1, 16]. */
  readonly AInitRange: readonly [number, number];
  /** Mamba-2: conv weights U(±convInit) when set; null (default) keeps PyTorch's default. */
  readonly convInit: number | null;
}

/** The reference's defaults of {@link MixerInit}. */
export const DEFAULT_MIXER_INIT: MixerInit = {
  dtMin: 0.001,
  dtMax: 0.1,
  dtInitFloor: 1e-4,
  dtInit: "random",
  dtScale: 1,
  AInitRange: [1, 16],
  convInit: null,
};

/**
 * Settings of `_init_weights`, the model-level pass (`initializer_cfg` in mamba_ssm).
 *
 * @example
 * ```ts
 * import { MambaLM } from "@mamba/mamba";
 * const lm = await MambaLM.fromConfig({ d_model: 64, n_layer: 2, vocab_size: 256 }, {
 *   init: { initializerRange: 0.02, rescalePrenormResidual: false },
 * });
 * ```
 */
export interface ModelInit {
  /** Std of the embedding. Default 0.02. */
  readonly initializerRange: number;
  /** Divide `out_proj.weight` by √(nResidualsPerLayer · nLayer). Default true. */
  readonly rescalePrenormResidual: boolean;
  /**
   * Residual branches per block: 1 (a mixer; the default), 2 with an MLP. (`MambaLMHeadModel`
   * applies `_init_weights` a second time with the default 1, which wins: its models end up
   * scaled by 1/√n_layer even with an MLP.)
   */
  readonly nResidualsPerLayer: number;
}

/** The reference's defaults of {@link ModelInit}. */
export const DEFAULT_MODEL_INIT: ModelInit = {
  initializerRange: 0.02,
  rescalePrenormResidual: true,
  nResidualsPerLayer: 1,
};

/** Checks a {@link MixerInit}; `field` names each setting as the caller spells it. */
export function checkMixerInit(init: MixerInit, field: (key: keyof MixerInit) => string): void {
  const bad = (key: keyof MixerInit, why: string) => {
    throw new ConfigError(field(key), why);
  };
  if (!(init.dtMin > 0)) bad("dtMin", `must be positive, got ${init.dtMin}`);
  if (!(init.dtMax >= init.dtMin)) bad("dtMax", `must be at least dtMin, got ${init.dtMax}`);
  if (!(init.dtInitFloor >= 0)) bad("dtInitFloor", `must be non-negative`);
  if (init.dtInit !== "random" && init.dtInit !== "constant") {
    bad("dtInit", `must be "random" or "constant", got ${JSON.stringify(init.dtInit)}`);
  }
  if (!(init.dtScale >= 0)) bad("dtScale", `must be non-negative, got ${init.dtScale}`);
  const [a0, a1] = init.AInitRange;
  if (!(a0 > 0 && a1 >= a0)) bad("AInitRange", `needs 0 < min <= max, got [${a0}, ${a1}]`);
  if (init.convInit !== null && !(init.convInit > 0)) {
    bad("convInit", `must be positive or null, got ${init.convInit}`);
  }
}

/** The draws of an initialisation, from one seeded generator. */
export class InitRandom {
  readonly #rng: Xoshiro128;
  #spare: number | null = null;

  /**
   * A generator seeded with `seed` (a fresh random seed when omitted).
   *
   * @throws {InputError} when `seed` is not an integer.
   */
  constructor(seed: number = randomSeed()) {
    if (!Number.isInteger(seed)) throw new InputError(`seed must be an integer, got ${seed}`);
    this.#rng = new Xoshiro128(seed);
  }

  /** U[0, 1) with 24 random bits (float32's resolution). */
  unit(): number {
    return (this.#rng.nextUint32() >>> 8) / 16777216;
  }

  /** `n` values U(lo, hi). */
  uniform(n: number, lo: number, hi: number): Float32Array {
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * this.unit();
    return out;
  }

  /**
   * `n` values N(0, std²): Marsaglia's polar method (a point drawn in the unit disc gives two
   * independent normals; no sine or cosine), both values of each pair used.
   */
  normal(n: number, std: number): Float32Array {
    const out = new Float32Array(n);
    let i = 0;
    if (n > 0 && this.#spare !== null) {
      out[i++] = this.#spare * std;
      this.#spare = null;
    }
    while (i < n) {
      let u: number, v: number, s: number;
      do {
        u = 2 * this.unit() - 1;
        v = 2 * this.unit() - 1;
        s = u * u + v * v;
      } while (s >= 1 || s === 0);
      const f = Math.sqrt(-2 * Math.log(s) / s);
      out[i++] = u * f * std;
      if (i < n) out[i++] = v * f * std;
      else this.#spare = v * f;
    }
    return out;
  }
}

/** The inverse of softplus: `x` such that `log(1 + eˣ) = y`. */
export function inverseSoftplus(y: number): number {
  return y + Math.log(-Math.expm1(-y));
}

/**
 * One mixer's tensors as the reference's constructor draws them (PyTorch's defaults plus the
 * mixer's own init), by mamba_ssm's names relative to the mixer (`in_proj.weight`, …), with
 * PyTorch's shapes (the conv weight `[convDim, 1, dConv]`).
 */
export function initMixer(
  cfg: MambaConfig,
  init: MixerInit,
  rand: InitRandom,
): Map<string, { data: Float32Array; shape: number[] }> {
  const { dModel, dInner, dState, dConv, convDim } = cfg;
  const t = new Map<string, { data: Float32Array; shape: number[] }>();
  const set = (name: string, data: Float32Array, shape: number[] = [data.length]) =>
    t.set(name, { data, shape });
  // nn.Linear / nn.Conv1d defaults: kaiming_uniform_(a=√5) = U(±1/√fan_in), bias U(±1/√fan_in).
  const linear = (name: string, nOut: number, nIn: number, bias: boolean) => {
    const b = 1 / Math.sqrt(nIn);
    set(`${name}.weight`, rand.uniform(nOut * nIn, -b, b), [nOut, nIn]);
    if (bias) set(`${name}.bias`, rand.uniform(nOut, -b, b));
  };
  // dt bias: softplus(bias) = dt, dt log-uniform in [dt_min, dt_max], floored.
  const dtBias = (n: number) => {
    const out = new Float32Array(n);
    const lo = Math.log(init.dtMin);
    const hi = Math.log(init.dtMax);
    for (let i = 0; i < n; i++) {
      const dt = Math.max(Math.exp(lo + rand.unit() * (hi - lo)), init.dtInitFloor);
      out[i] = inverseSoftplus(dt);
    }
    return out;
  };
  const inRows = cfg.arch === "mamba1" ? 2 * dInner : dInner + convDim + cfg.nheads;
  linear("in_proj", inRows, dModel, cfg.bias);
  const convBound = cfg.arch === "mamba2" && init.convInit !== null
    ? init.convInit
    : 1 / Math.sqrt(dConv);
  set("conv1d.weight", rand.uniform(convDim * dConv, -convBound, convBound), [convDim, 1, dConv]);
  if (cfg.convBias) {
    const b = 1 / Math.sqrt(dConv);
    set("conv1d.bias", rand.uniform(convDim, -b, b));
  }
  if (cfg.arch === "mamba1") {
    const R = cfg.dtRank;
    linear("x_proj", R + 2 * dState, dInner, false);
    const std = R ** -0.5 * init.dtScale;
    set(
      "dt_proj.weight",
      init.dtInit === "constant"
        ? new Float32Array(dInner * R).fill(std)
        : rand.uniform(dInner * R, -std, std),
      [dInner, R],
    );
    set("dt_proj.bias", dtBias(dInner));
    const aLog = new Float32Array(dInner * dState);
    for (let c = 0; c < dInner; c++) {
      for (let n = 0; n < dState; n++) aLog[c * dState + n] = Math.log(n + 1);
    }
    set("A_log", aLog, [dInner, dState]);
    set("D", new Float32Array(dInner).fill(1));
  } else {
    const H = cfg.nheads;
    set("dt_bias", dtBias(H));
    const [a0, a1] = init.AInitRange;
    set("A_log", rand.uniform(H, a0, a1).map(Math.log));
    set("D", new Float32Array(cfg.dHasHdim ? dInner : H).fill(1));
    if (cfg.gatedNorm) set("norm.weight", new Float32Array(dInner).fill(1));
  }
  linear("out_proj", dModel, dInner, cfg.bias);
  return t;
}

/** Float32 values as a host tensor of `dtype`. */
function host(data: Float32Array, shape: number[], dtype: "f32" | "f16"): HostTensor {
  return dtype === "f16"
    ? { dtype: "f16", shape, data: f32ArrayToF16(data) }
    : { dtype: "f32", shape, data };
}

/**
 * A whole model's weights as `MambaLMHeadModel(config)` initialises them: the mixers' init
 * ({@link initMixer}), then `_init_weights` ({@link ModelInit}), then the LM head tied to the
 * embedding (or `nn.Linear`'s default when `tie_embeddings` is false).
 *
 * @param mixer the mixers' settings (`dt_min`, … of `ssm_cfg`)
 * @param model the model-level settings
 * @param dtype how to keep the weights (drawn in float32, then narrowed for `"f16"`)
 */
export function initModelWeights(
  cfg: MambaConfig,
  seed?: number,
  mixer: MixerInit = DEFAULT_MIXER_INIT,
  model: ModelInit = DEFAULT_MODEL_INIT,
  dtype: "f32" | "f16" = "f32",
): ModelWeights {
  const rand = new InitRandom(seed);
  const want = expectedTensors(cfg);
  const t = new Map<string, HostTensor>();
  const put = (name: string, data: Float32Array) => {
    const shape = want.get(name)!;
    t.set(name, host(data, name.endsWith("conv1d.weight") ? [shape[0], shape[2]] : shape, dtype));
  };
  const d = cfg.dModel;
  put("backbone.embedding.weight", rand.normal(cfg.paddedVocabSize * d, model.initializerRange));
  const outScale = model.rescalePrenormResidual
    ? 1 / Math.sqrt(model.nResidualsPerLayer * cfg.nLayer)
    : 1;
  const ones = (n: number) => new Float32Array(n).fill(1);
  for (let i = 0; i < cfg.nLayer; i++) {
    const p = `backbone.layers.${i}`;
    put(`${p}.norm.weight`, ones(d));
    if (!cfg.rmsNorm) put(`${p}.norm.bias`, new Float32Array(d));
    for (const [name, { data: v }] of initMixer(cfg, mixer, rand)) {
      // _init_weights: nn.Linear biases to zero (dt_proj's is marked _no_reinit), out_proj
      // redrawn (the same U(±1/√d_inner)) and scaled down with depth.
      if (name === "in_proj.bias" || name === "out_proj.bias") v.fill(0);
      if (name === "out_proj.weight") v.forEach((x, j) => v[j] = x * outScale);
      put(`${p}.mixer.${name}`, v);
    }
  }
  put("backbone.norm_f.weight", ones(d));
  if (!cfg.rmsNorm) put("backbone.norm_f.bias", new Float32Array(d));
  const weights = assembleWeights(cfg, (name) => t.get(name));
  if (cfg.tieEmbeddings) return weights;
  const b = 1 / Math.sqrt(d);
  const lmHead = host(
    rand.uniform(cfg.paddedVocabSize * d, -b, b),
    [cfg.paddedVocabSize, d],
    dtype,
  );
  return { ...weights, lmHead };
}

/**
 * The {@link MixerInit} a `config.json` object asks for: `ssm_cfg`'s `dt_min`, `dt_max`,
 * `dt_init`, `dt_scale`, `dt_init_floor`, `A_init_range`, `conv_init` (mamba_ssm), or
 * `time_step_min`, `time_step_max`, `time_step_floor`, `time_step_scale`,
 * `time_step_init_scheme` (transformers); the reference's defaults for the rest.
 */
export function mixerInitFromJson(raw: Record<string, unknown>): MixerInit {
  const isTransformers = raw.model_type === "mamba" || raw.model_type === "mamba2";
  const src = (isTransformers ? raw : (raw.ssm_cfg ?? {})) as Record<string, unknown>;
  const keys = isTransformers
    ? {
      dtMin: "time_step_min",
      dtMax: "time_step_max",
      dtInitFloor: "time_step_floor",
      dtInit: "time_step_init_scheme",
      dtScale: "time_step_scale",
      AInitRange: "A_init_range",
      convInit: "conv_init",
    }
    : {
      dtMin: "dt_min",
      dtMax: "dt_max",
      dtInitFloor: "dt_init_floor",
      dtInit: "dt_init",
      dtScale: "dt_scale",
      AInitRange: "A_init_range",
      convInit: "conv_init",
    };
  const field = (k: keyof MixerInit) => isTransformers ? keys[k] : `ssm_cfg.${keys[k]}`;
  const num = (k: "dtMin" | "dtMax" | "dtInitFloor" | "dtScale"): number => {
    const v = src[keys[k]];
    if (v === undefined || v === null) return DEFAULT_MIXER_INIT[k];
    if (typeof v !== "number") throw new ConfigError(field(k), `must be a number`);
    return v;
  };
  const range = src[keys.AInitRange];
  if (
    range !== undefined &&
    !(Array.isArray(range) && range.length === 2 && range.every((x) => typeof x === "number"))
  ) {
    throw new ConfigError(field("AInitRange"), "must be [min, max]");
  }
  const conv = src[keys.convInit];
  if (conv !== undefined && conv !== null && typeof conv !== "number") {
    throw new ConfigError(field("convInit"), "must be a number or null");
  }
  const init: MixerInit = {
    dtMin: num("dtMin"),
    dtMax: num("dtMax"),
    dtInitFloor: num("dtInitFloor"),
    dtInit: (src[keys.dtInit] ?? "random") as "random" | "constant",
    dtScale: num("dtScale"),
    AInitRange: (range as [number, number] | undefined) ?? DEFAULT_MIXER_INIT.AInitRange,
    convInit: (conv as number | null | undefined) ?? null,
  };
  checkMixerInit(init, field);
  return init;
}
