/**
 * The configuration of a GPT-NeoX model (the Pythia architecture), parsed from a transformers
 * `config.json` with `model_type: "gpt_neox"`, with the defaults of transformers'
 * `GPTNeoXConfig`.
 *
 * The attention fields use generic names (`nHeads`, `nKvHeads`, `headDim`, `rotaryDim`,
 * `rotaryBase`) because the backends' attention kernels read them, and mamba_ssm's attention
 * layers (grouped-query, partial rotary) describe themselves with the same ones.
 *
 * @module
 */

import { ConfigError } from "./errors.ts";

/** The shape of an attention layer, as the backends' attention kernels see it. */
export interface AttentionSpec {
  /** Query heads. */
  readonly nHeads: number;
  /** Key/value heads (grouped-query attention when fewer than `nHeads`; they divide it). */
  readonly nKvHeads: number;
  /** Channels per head. */
  readonly headDim: number;
  /** Leading channels of each query/key head that get the rotary embedding (even; 0 = none). */
  readonly rotaryDim: number;
  /** Base of the rotary frequencies: `inv_freq[i] = base^(−2i / rotaryDim)`. */
  readonly rotaryBase: number;
}

/** A parsed GPT-NeoX `config.json`. */
export interface GptNeoXConfig extends AttentionSpec {
  /** Always `"gpt_neox"`. */
  readonly arch: "gpt_neox";
  /** Width of the residual stream (`hidden_size`). */
  readonly dModel: number;
  /** Number of blocks (`num_hidden_layers`). */
  readonly nLayer: number;
  /** Size of the vocabulary: rows of `embed_in` and `embed_out`. */
  readonly vocabSize: number;
  /** Same as `vocabSize` (Pythia checkpoints are padded already); the logits' row length. */
  readonly paddedVocabSize: number;
  /** Always false: the norms are LayerNorms with bias. */
  readonly rmsNorm: false;
  /** Epsilon of every LayerNorm (`layer_norm_eps`). */
  readonly normEps: number;
  /** `x + attn(LN1(x)) + mlp(LN2(x))` (true) or attention, then MLP, each with its residual. */
  readonly parallelResidual: boolean;
  /** Hidden width of the MLP (`intermediate_size`). */
  readonly intermediateSize: number;
  /** Whether `embed_out` is `embed_in` (false for every Pythia checkpoint). */
  readonly tieEmbeddings: boolean;
  /** Longest context the model was trained for (`max_position_embeddings`). */
  readonly maxPositions: number;
}

type Json = Record<string, unknown>;

function int(obj: Json, key: string, def?: number): number {
  const v = obj[key] ?? def;
  if (v === undefined) throw new ConfigError(key, "is required");
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
    throw new ConfigError(key, `must be a positive integer, got ${JSON.stringify(v)}`);
  }
  return v;
}

function real(obj: Json, key: string, def: number): number {
  const v = obj[key] ?? def;
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new ConfigError(key, `must be a number, got ${JSON.stringify(v)}`);
  }
  return v;
}

function bool(obj: Json, key: string, def: boolean): boolean {
  const v = obj[key] ?? def;
  if (typeof v !== "boolean") {
    throw new ConfigError(key, `must be true or false, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Whether a parsed `config.json` describes a GPT-NeoX model. */
export function isGptNeoXConfigJson(raw: unknown): boolean {
  return typeof raw === "object" && raw !== null && (raw as Json).model_type === "gpt_neox";
}

/**
 * Parses a transformers GPT-NeoX `config.json` (`model_type: "gpt_neox"`, e.g. the
 * `EleutherAI/pythia-*` checkpoints). Fields that do not change inference (dropout,
 * initialisation, token ids, `use_cache`, …) are ignored; fields that would change it in ways
 * this library does not implement (another activation, rope scaling, no attention bias) are
 * refused by name.
 *
 * @throws {ConfigError} naming the field that is missing, malformed or unsupported.
 * @example
 * ```ts
 * import { parseNeoxConfig } from "@mamba/mamba";
 * const cfg = parseNeoxConfig(JSON.parse(await Deno.readTextFile("pythia-160m/config.json")));
 * console.log(cfg.nHeads, cfg.headDim, cfg.rotaryDim, cfg.parallelResidual); // 12 64 16 true
 * ```
 */
export function parseNeoxConfig(raw: unknown): GptNeoXConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ConfigError("(root)", "config.json must be a JSON object");
  }
  const json = raw as Json;
  if (json.model_type !== "gpt_neox") {
    throw new ConfigError(
      "model_type",
      `must be "gpt_neox", got ${JSON.stringify(json.model_type)}`,
    );
  }
  const dModel = int(json, "hidden_size");
  const nHeads = int(json, "num_attention_heads");
  if (dModel % nHeads !== 0) {
    throw new ConfigError(
      "num_attention_heads",
      `${nHeads} heads do not divide hidden_size ${dModel}`,
    );
  }
  const headDim = dModel / nHeads;
  const act = json.hidden_act ?? "gelu";
  if (act !== "gelu") {
    throw new ConfigError(
      "hidden_act",
      `only "gelu" (the exact erf form) is supported, got ${JSON.stringify(act)}`,
    );
  }
  if (json.rope_scaling !== undefined && json.rope_scaling !== null) {
    throw new ConfigError("rope_scaling", "rotary scaling is not supported");
  }
  if (json.attention_bias === false) {
    throw new ConfigError("attention_bias", "attention without biases is not supported");
  }
  // Newer transformers spell the rotary fields partial_rotary_factor / rope_theta, some
  // inside rope_parameters.
  const rope =
    (typeof json.rope_parameters === "object" && json.rope_parameters !== null
      ? json.rope_parameters
      : {}) as Json;
  const first = (keys: string[], def: number): [number, string] => {
    for (const obj of [json, rope]) {
      for (const k of keys) if (obj[k] !== undefined) return [real(obj, k, def), k];
    }
    return [def, keys[0]];
  };
  const [pct, pctKey] = first(["rotary_pct", "partial_rotary_factor"], 0.25);
  if (!(pct >= 0 && pct <= 1)) throw new ConfigError(pctKey, `must be in [0, 1], got ${pct}`);
  // transformers: rotary_ndims = int(head_size * rotary_pct).
  const rotaryDim = Math.floor(headDim * pct);
  if (rotaryDim % 2 !== 0) {
    throw new ConfigError(
      pctKey,
      `gives ${rotaryDim} rotary channels of a ${headDim}-channel head; rotate-half needs an even number`,
    );
  }
  const [rotaryBase, baseKey] = first(["rotary_emb_base", "rope_theta"], 10000);
  if (rotaryBase <= 0) throw new ConfigError(baseKey, `must be positive, got ${rotaryBase}`);
  const normEps = real(json, "layer_norm_eps", 1e-5);
  if (normEps <= 0) throw new ConfigError("layer_norm_eps", `must be positive, got ${normEps}`);
  const vocabSize = int(json, "vocab_size");
  return {
    arch: "gpt_neox",
    dModel,
    nLayer: int(json, "num_hidden_layers"),
    vocabSize,
    paddedVocabSize: vocabSize,
    rmsNorm: false,
    normEps,
    parallelResidual: bool(json, "use_parallel_residual", true),
    intermediateSize: int(json, "intermediate_size"),
    tieEmbeddings: bool(json, "tie_word_embeddings", false),
    maxPositions: int(json, "max_position_embeddings", 2048),
    nHeads,
    nKvHeads: nHeads,
    headDim,
    rotaryDim,
    rotaryBase,
  };
}
