/**
 * The model configuration: parsed from a `mamba_ssm` `config.json` (what
 * `MambaLMHeadModel.save_pretrained` writes) or from a Hugging Face transformers `config.json`
 * (`model_type` `"mamba"` / `"mamba2"`), with every default of the reference constructors.
 *
 * @module
 */

import { ConfigError } from "./errors.ts";

/** Which mixer the layers use. */
export type MambaArch = "mamba1" | "mamba2";

/**
 * The parsed configuration. Sizes are derived once here (`dInner`, `dtRank`, `nheads`,
 * `paddedVocabSize`, `convDim`) so the rest of the library never re-derives them.
 */
export interface MambaConfig {
  /** `"mamba1"` (selective scan) or `"mamba2"` (SSD). */
  readonly arch: MambaArch;
  /** Width of the residual stream. */
  readonly dModel: number;
  /** Number of blocks. */
  readonly nLayer: number;
  /** Size of the real vocabulary (the tokenizer's). */
  readonly vocabSize: number;
  /** `vocabSize` rounded up to `padVocabSizeMultiple`: rows of the embedding and the logits. */
  readonly paddedVocabSize: number;
  /** Multiple the vocabulary is padded to. */
  readonly padVocabSizeMultiple: number;
  /** RMSNorm (true) or LayerNorm (false) for the block and final norms. */
  readonly rmsNorm: boolean;
  /** Epsilon of the block and final norms. */
  readonly normEps: number;
  /** Whether the residual stream is kept in float32 (always true in this library's math). */
  readonly residualInFp32: boolean;
  /** Whether `lm_head` shares the embedding matrix. */
  readonly tieEmbeddings: boolean;
  /** SSM state size N. */
  readonly dState: number;
  /** Width of the causal depthwise convolution. */
  readonly dConv: number;
  /** `dInner / dModel`. */
  readonly expand: number;
  /** Inner width `expand * dModel`. */
  readonly dInner: number;
  /** Channels the convolution runs over: `dInner` (Mamba-1) or `dInner + 2·ngroups·dState` (Mamba-2). */
  readonly convDim: number;
  /** Whether conv1d has a bias. */
  readonly convBias: boolean;
  /** Whether in_proj and out_proj have biases. */
  readonly bias: boolean;
  /** Mamba-1: rank of the dt projection. 0 for Mamba-2. */
  readonly dtRank: number;
  /** Mamba-2: head dimension P. 0 for Mamba-1. */
  readonly headdim: number;
  /** Mamba-2: number of heads `dInner / headdim`. 0 for Mamba-1. */
  readonly nheads: number;
  /** Mamba-2: number of B/C groups. 1 for Mamba-1. */
  readonly ngroups: number;
  /** Mamba-2: chunk length of the chunked SSD. */
  readonly chunkSize: number;
  /** Mamba-2: gated RMSNorm before out_proj (true) or plain `y·silu(z)` (false). */
  readonly gatedNorm: boolean;
  /** Mamba-2: normalise before gating (`norm(y)·silu(z)`) instead of `norm(y·silu(z))`. */
  readonly normBeforeGate: boolean;
  /** Mamba-2: D has one value per channel (`dInner`) instead of per head. */
  readonly dHasHdim: boolean;
  /** Mamba-2: dt is clamped to this range after softplus. `[0, Infinity]` means no clamp. */
  readonly dtLimit: readonly [number, number];
}

type Json = Record<string, unknown>;

/** Config keys that do not change inference and are accepted as they are. */
const IGNORED_TOP = new Set([
  "architectures",
  "torch_dtype",
  "transformers_version",
  "_name_or_path",
  "bos_token_id",
  "eos_token_id",
  "pad_token_id",
  "use_cache",
  "initializer_range",
  "rescale_prenorm_residual",
  "use_mambapy",
  "output_hidden_states",
  "return_dict",
  "fused_add_norm",
  "attn_cfg",
]);

/** Mamba/Mamba2 constructor fields that only affect initialisation or kernel choice. */
const IGNORED_SSM = new Set([
  "dt_min",
  "dt_max",
  "dt_init",
  "dt_scale",
  "dt_init_floor",
  "A_init_range",
  "use_fast_path",
  "use_mem_eff_path",
  "layer_idx",
  "device",
  "dtype",
  "sequence_parallel",
  "process_group",
  "activation",
  "layer",
]);

function num(obj: Json, key: string, field: string, def?: number, integer = true): number {
  const v = obj[key] ?? def;
  if (v === undefined) throw new ConfigError(field, "is required");
  if (typeof v !== "number" || !Number.isFinite(v) || (integer && !Number.isInteger(v))) {
    throw new ConfigError(
      field,
      `must be ${integer ? "an integer" : "a number"}, got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

function bool(obj: Json, key: string, field: string, def: boolean): boolean {
  const v = obj[key] ?? def;
  if (typeof v !== "boolean") {
    throw new ConfigError(field, `must be true or false, got ${JSON.stringify(v)}`);
  }
  return v;
}

function positive(v: number, field: string): number {
  if (v <= 0) throw new ConfigError(field, `must be positive, got ${v}`);
  return v;
}

/**
 * Parses a `config.json` object (mamba_ssm or transformers format) into a {@link MambaConfig}.
 *
 * Unsupported features that change the math (attention layers, an MLP via `d_intermediate`,
 * a partial SSM via `d_ssm`, an activation other than SiLU) throw a {@link ConfigError} naming the
 * field, as do contradictions (a head dimension that does not divide the inner width, say).
 *
 * @example
 * ```ts
 * import { parseConfig } from "@mamba/mamba";
 * const cfg = parseConfig({ d_model: 768, n_layer: 24, vocab_size: 50277, ssm_cfg: {} });
 * console.log(cfg.arch, cfg.dInner, cfg.dtRank, cfg.paddedVocabSize); // mamba1 1536 48 50280
 * ```
 */
export function parseConfig(raw: unknown): MambaConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError("(root)", "config.json must be a JSON object");
  }
  const json = raw as Json;
  const modelType = json.model_type;
  if (modelType === "mamba" || modelType === "mamba2") return parseTransformers(json, modelType);
  if (modelType !== undefined && modelType !== "mamba_ssm") {
    throw new ConfigError(
      "model_type",
      `unsupported model_type ${JSON.stringify(modelType)} (mamba, mamba2)`,
    );
  }
  return parseMambaSsm(json);
}

function parseMambaSsm(json: Json): MambaConfig {
  for (const key of Object.keys(json)) {
    if (
      !IGNORED_TOP.has(key) && ![
        "d_model",
        "d_intermediate",
        "n_layer",
        "vocab_size",
        "ssm_cfg",
        "attn_layer_idx",
        "rms_norm",
        "residual_in_fp32",
        "pad_vocab_size_multiple",
        "tie_embeddings",
        "model_type",
        "norm_epsilon",
      ].includes(key)
    ) {
      throw new ConfigError(key, "unknown field");
    }
  }
  const attn = json.attn_layer_idx ?? [];
  if (!Array.isArray(attn)) throw new ConfigError("attn_layer_idx", "must be a list");
  if (attn.length > 0) {
    throw new ConfigError(
      "attn_layer_idx",
      "attention layers (hybrid models) are not supported yet",
    );
  }
  if (num(json, "d_intermediate", "d_intermediate", 0) !== 0) {
    throw new ConfigError(
      "d_intermediate",
      "an MLP after the mixer (d_intermediate > 0) is not supported yet",
    );
  }
  const ssm = (json.ssm_cfg ?? {}) as Json;
  if (typeof ssm !== "object" || ssm === null || Array.isArray(ssm)) {
    throw new ConfigError("ssm_cfg", "must be an object");
  }
  const layer = ssm.layer ?? "Mamba1";
  if (layer !== "Mamba1" && layer !== "Mamba2") {
    throw new ConfigError(
      "ssm_cfg.layer",
      `unknown layer ${JSON.stringify(layer)} (Mamba1, Mamba2)`,
    );
  }
  const arch: MambaArch = layer === "Mamba2" ? "mamba2" : "mamba1";
  const dModel = positive(num(json, "d_model", "d_model"), "d_model");
  const common = {
    dModel,
    nLayer: positive(num(json, "n_layer", "n_layer"), "n_layer"),
    vocabSize: positive(num(json, "vocab_size", "vocab_size"), "vocab_size"),
    padVocabSizeMultiple: positive(
      num(json, "pad_vocab_size_multiple", "pad_vocab_size_multiple", 8),
      "pad_vocab_size_multiple",
    ),
    rmsNorm: bool(json, "rms_norm", "rms_norm", true),
    normEps: num(json, "norm_epsilon", "norm_epsilon", 1e-5, false),
    residualInFp32: bool(json, "residual_in_fp32", "residual_in_fp32", true),
    tieEmbeddings: bool(json, "tie_embeddings", "tie_embeddings", true),
  };
  const known = arch === "mamba1"
    ? ["d_state", "d_conv", "expand", "dt_rank", "conv_bias", "bias"]
    : [
      "d_state",
      "d_conv",
      "expand",
      "headdim",
      "ngroups",
      "chunk_size",
      "rmsnorm",
      "norm_before_gate",
      "D_has_hdim",
      "conv_bias",
      "bias",
      "d_ssm",
      "dt_limit",
      "conv_init",
    ];
  for (const key of Object.keys(ssm)) {
    if (!IGNORED_SSM.has(key) && !known.includes(key)) {
      throw new ConfigError(`ssm_cfg.${key}`, `unknown field for ${layer}`);
    }
  }
  if (ssm.activation !== undefined && ssm.activation !== "silu" && ssm.activation !== "swish") {
    throw new ConfigError(
      "ssm_cfg.activation",
      `only "silu" is supported, got ${JSON.stringify(ssm.activation)}`,
    );
  }
  const mixer = arch === "mamba1"
    ? {
      dState: num(ssm, "d_state", "ssm_cfg.d_state", 16),
      dConv: num(ssm, "d_conv", "ssm_cfg.d_conv", 4),
      expand: num(ssm, "expand", "ssm_cfg.expand", 2, false),
      dtRank: ssm.dt_rank === undefined || ssm.dt_rank === "auto"
        ? Math.ceil(dModel / 16)
        : num(ssm, "dt_rank", "ssm_cfg.dt_rank"),
      convBias: bool(ssm, "conv_bias", "ssm_cfg.conv_bias", true),
      bias: bool(ssm, "bias", "ssm_cfg.bias", false),
    }
    : {
      dState: num(ssm, "d_state", "ssm_cfg.d_state", 128),
      dConv: num(ssm, "d_conv", "ssm_cfg.d_conv", 4),
      expand: num(ssm, "expand", "ssm_cfg.expand", 2, false),
      headdim: num(ssm, "headdim", "ssm_cfg.headdim", 64),
      ngroups: num(ssm, "ngroups", "ssm_cfg.ngroups", 1),
      chunkSize: num(ssm, "chunk_size", "ssm_cfg.chunk_size", 256),
      gatedNorm: bool(ssm, "rmsnorm", "ssm_cfg.rmsnorm", true),
      normBeforeGate: bool(ssm, "norm_before_gate", "ssm_cfg.norm_before_gate", false),
      dHasHdim: bool(ssm, "D_has_hdim", "ssm_cfg.D_has_hdim", false),
      convBias: bool(ssm, "conv_bias", "ssm_cfg.conv_bias", true),
      bias: bool(ssm, "bias", "ssm_cfg.bias", false),
      dtLimit: parseDtLimit(ssm.dt_limit),
      dSsm: ssm.d_ssm ?? null,
    };
  return finish(arch, common, mixer);
}

function parseDtLimit(v: unknown): [number, number] {
  if (v === undefined || v === null) return [0, Infinity];
  if (
    !Array.isArray(v) || v.length !== 2 ||
    !v.every((x) => typeof x === "number" || x === "inf" || x === "Infinity")
  ) {
    throw new ConfigError("ssm_cfg.dt_limit", `must be [min, max], got ${JSON.stringify(v)}`);
  }
  const [lo, hi] = v.map((x) => (typeof x === "number" ? x : Infinity));
  if (!(lo >= 0 && hi > lo)) {
    throw new ConfigError("ssm_cfg.dt_limit", `needs 0 <= min < max, got ${JSON.stringify(v)}`);
  }
  return [lo, hi];
}

interface Common {
  dModel: number;
  nLayer: number;
  vocabSize: number;
  padVocabSizeMultiple: number;
  rmsNorm: boolean;
  normEps: number;
  residualInFp32: boolean;
  tieEmbeddings: boolean;
}

interface Mixer {
  dState: number;
  dConv: number;
  expand: number;
  convBias: boolean;
  bias: boolean;
  dtRank?: number;
  headdim?: number;
  ngroups?: number;
  chunkSize?: number;
  gatedNorm?: boolean;
  normBeforeGate?: boolean;
  dHasHdim?: boolean;
  dtLimit?: [number, number];
  dSsm?: unknown;
  /** transformers gives the inner width explicitly. */
  dInner?: number;
  nheads?: number;
}

function finish(arch: MambaArch, c: Common, m: Mixer): MambaConfig {
  const p = arch === "mamba1" ? "ssm_cfg." : "ssm_cfg.";
  positive(m.dState, `${p}d_state`);
  positive(m.dConv, `${p}d_conv`);
  positive(m.expand, `${p}expand`);
  const dInner = m.dInner ?? m.expand * c.dModel;
  if (!Number.isInteger(dInner)) {
    throw new ConfigError(`${p}expand`, `expand * d_model = ${dInner} is not an integer`);
  }
  if (c.normEps <= 0) throw new ConfigError("norm_epsilon", "must be positive");
  const paddedVocabSize = Math.ceil(c.vocabSize / c.padVocabSizeMultiple) * c.padVocabSizeMultiple;
  if (arch === "mamba1") {
    positive(m.dtRank!, `${p}dt_rank`);
    return {
      arch,
      ...c,
      paddedVocabSize,
      dState: m.dState,
      dConv: m.dConv,
      expand: m.expand,
      dInner,
      convDim: dInner,
      convBias: m.convBias,
      bias: m.bias,
      dtRank: m.dtRank!,
      headdim: 0,
      nheads: 0,
      ngroups: 1,
      chunkSize: 0,
      gatedNorm: false,
      normBeforeGate: false,
      dHasHdim: false,
      dtLimit: [0, Infinity],
    };
  }
  const headdim = positive(m.headdim!, `${p}headdim`);
  const ngroups = positive(m.ngroups!, `${p}ngroups`);
  positive(m.chunkSize!, `${p}chunk_size`);
  if (m.dSsm !== null && m.dSsm !== undefined && m.dSsm !== dInner) {
    throw new ConfigError(
      `${p}d_ssm`,
      `a partial SSM (d_ssm ${
        JSON.stringify(m.dSsm)
      } != d_inner ${dInner}, with a gated MLP) is not supported yet`,
    );
  }
  if (dInner % headdim !== 0) {
    throw new ConfigError(`${p}headdim`, `headdim ${headdim} does not divide d_inner ${dInner}`);
  }
  const nheads = dInner / headdim;
  if (m.nheads !== undefined && m.nheads !== nheads) {
    throw new ConfigError(
      "num_heads",
      `num_heads ${m.nheads} contradicts intermediate_size / head_dim = ${dInner} / ${headdim} = ${nheads}`,
    );
  }
  if (nheads % ngroups !== 0) {
    throw new ConfigError(`${p}ngroups`, `ngroups ${ngroups} does not divide the ${nheads} heads`);
  }
  return {
    arch,
    ...c,
    paddedVocabSize,
    dState: m.dState,
    dConv: m.dConv,
    expand: m.expand,
    dInner,
    convDim: dInner + 2 * ngroups * m.dState,
    convBias: m.convBias,
    bias: m.bias,
    dtRank: 0,
    headdim,
    nheads,
    ngroups,
    chunkSize: m.chunkSize!,
    gatedNorm: m.gatedNorm!,
    normBeforeGate: m.normBeforeGate!,
    dHasHdim: m.dHasHdim!,
    dtLimit: m.dtLimit!,
  };
}

/** transformers' MambaConfig / Mamba2Config. */
function parseTransformers(json: Json, modelType: "mamba" | "mamba2"): MambaConfig {
  const dModel = positive(num(json, "hidden_size", "hidden_size"), "hidden_size");
  const act = json.hidden_act ?? "silu";
  if (act !== "silu" && act !== "swish") {
    throw new ConfigError("hidden_act", `only "silu" is supported, got ${JSON.stringify(act)}`);
  }
  const common: Common = {
    dModel,
    nLayer: positive(num(json, "num_hidden_layers", "num_hidden_layers"), "num_hidden_layers"),
    vocabSize: positive(num(json, "vocab_size", "vocab_size"), "vocab_size"),
    padVocabSizeMultiple: num(json, "pad_vocab_size_multiple", "pad_vocab_size_multiple", 1),
    rmsNorm: modelType === "mamba" ? true : bool(json, "rms_norm", "rms_norm", true),
    normEps: num(json, "layer_norm_epsilon", "layer_norm_epsilon", 1e-5, false),
    residualInFp32: bool(json, "residual_in_fp32", "residual_in_fp32", true),
    tieEmbeddings: bool(json, "tie_word_embeddings", "tie_word_embeddings", true),
  };
  const expand = num(json, "expand", "expand", 2, false);
  const dInner = num(json, "intermediate_size", "intermediate_size", expand * dModel);
  if (modelType === "mamba") {
    const rank = json.time_step_rank;
    return finish("mamba1", common, {
      dState: num(json, "state_size", "state_size", 16),
      dConv: num(json, "conv_kernel", "conv_kernel", 4),
      expand,
      dInner,
      dtRank: rank === undefined || rank === "auto"
        ? Math.ceil(dModel / 16)
        : num(json, "time_step_rank", "time_step_rank"),
      convBias: bool(json, "use_conv_bias", "use_conv_bias", true),
      bias: bool(json, "use_bias", "use_bias", false),
    });
  }
  const limit = json.time_step_limit;
  return finish("mamba2", common, {
    dState: num(json, "state_size", "state_size", 128),
    dConv: num(json, "conv_kernel", "conv_kernel", 4),
    expand,
    dInner,
    headdim: num(json, "head_dim", "head_dim", 64),
    nheads: json.num_heads === undefined ? undefined : num(json, "num_heads", "num_heads"),
    ngroups: num(json, "n_groups", "n_groups", 1),
    chunkSize: num(json, "chunk_size", "chunk_size", 256),
    gatedNorm: true,
    normBeforeGate: bool(json, "norm_before_gate", "norm_before_gate", false),
    dHasHdim: false,
    convBias: bool(json, "use_conv_bias", "use_conv_bias", true),
    bias: bool(json, "use_bias", "use_bias", false),
    dtLimit: parseDtLimit(Array.isArray(limit) ? limit.map((x) => x === null ? "inf" : x) : limit),
  });
}
