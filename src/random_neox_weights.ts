/**
 * Random GPT-NeoX weights in the shapes of a config, for benchmarks and tests, drawn like
 * transformers' initialisation in spirit (scaled uniform matrices, unit norms, zero biases).
 *
 * @module
 */

import { f32ArrayToF16 } from "./half.ts";
import type { GptNeoXConfig } from "./neox_config.ts";
import { expectedNeoxTensors, type TransformerWeights } from "./neox_weights.ts";
import { mulberry32 } from "./random_weights.ts";
import type { HostTensor } from "./weights.ts";

/**
 * Random weights for a GPT-NeoX `config`, float32 or float16. With `fast`, every matrix of more
 * than 64k values tiles one random block (of a prime length, so rows differ) scaled to its
 * bound, instead of drawing every value (what a benchmark of a 2.8b model needs).
 *
 * @example
 * ```ts
 * import { parseNeoxConfig } from "@mamba/mamba";
 * import { PUBLIC_NEOX_CONFIGS, randomNeoxWeights } from "@mamba/mamba/testing";
 * const w = randomNeoxWeights(parseNeoxConfig(PUBLIC_NEOX_CONFIGS["pythia-160m"]), { dtype: "f16" });
 * ```
 */
export function randomNeoxWeights(
  config: GptNeoXConfig,
  options: { dtype?: "f32" | "f16"; seed?: number; fast?: boolean } = {},
): TransformerWeights {
  const rand = mulberry32(options.seed ?? 1);
  const dtype = options.dtype ?? "f32";
  const BLOCK = 1_048_573;
  let unit: Float32Array | undefined;
  const t = new Map<string, HostTensor>();
  for (const [name, shape] of expectedNeoxTensors(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const v = new Float32Array(n);
    if (/layernorm\.weight$|final_layer_norm\.weight$/.test(name)) v.fill(1);
    else if (!name.endsWith(".bias")) {
      const bound = shape.length > 1 ? 1 / Math.sqrt(shape[1]) : 0;
      if (options.fast && n > 65536) {
        unit ??= new Float32Array(BLOCK).map(() => 2 * rand() - 1);
        for (let o = 0; o < n; o += BLOCK) {
          const len = Math.min(BLOCK, n - o);
          for (let i = 0; i < len; i++) v[o + i] = unit[i] * bound;
        }
      } else {
        for (let i = 0; i < n; i++) v[i] = (2 * rand() - 1) * bound;
      }
    }
    t.set(
      name,
      dtype === "f16" ? { dtype, shape, data: f32ArrayToF16(v) } : { dtype, shape, data: v },
    );
  }
  const get = (name: string) => t.get(name)!;
  const norm = (p: string) => ({ weight: get(`${p}.weight`), bias: get(`${p}.bias`) });
  const embedding = get("gpt_neox.embed_in.weight");
  return {
    embedding,
    layers: Array.from({ length: config.nLayer }, (_, i) => {
      const p = `gpt_neox.layers.${i}`;
      return {
        norm: norm(`${p}.input_layernorm`),
        norm2: norm(`${p}.post_attention_layernorm`),
        qkv: get(`${p}.attention.query_key_value.weight`),
        qkvBias: get(`${p}.attention.query_key_value.bias`),
        out: get(`${p}.attention.dense.weight`),
        outBias: get(`${p}.attention.dense.bias`),
        fc1: get(`${p}.mlp.dense_h_to_4h.weight`),
        fc1Bias: get(`${p}.mlp.dense_h_to_4h.bias`),
        fc2: get(`${p}.mlp.dense_4h_to_h.weight`),
        fc2Bias: get(`${p}.mlp.dense_4h_to_h.bias`),
      };
    }),
    normF: norm("gpt_neox.final_layer_norm"),
    lmHead: config.tieEmbeddings ? embedding : get("embed_out.weight"),
  };
}

const pythia = (d: number, layers: number, heads: number) => ({
  model_type: "gpt_neox",
  hidden_size: d,
  num_hidden_layers: layers,
  num_attention_heads: heads,
  intermediate_size: 4 * d,
  vocab_size: 50304,
  rotary_pct: 0.25,
  rotary_emb_base: 10000,
  use_parallel_residual: true,
  max_position_embeddings: 2048,
  layer_norm_eps: 1e-5,
  hidden_act: "gelu",
  tie_word_embeddings: false,
});

/** The shapes of the published `EleutherAI/pythia-*` checkpoints, as `config.json` objects. */
export const PUBLIC_NEOX_CONFIGS: Record<string, Record<string, unknown>> = {
  "pythia-70m": pythia(512, 6, 8),
  "pythia-160m": pythia(768, 12, 12),
  "pythia-410m": pythia(1024, 24, 16),
  "pythia-1b": pythia(2048, 16, 8),
  "pythia-1.4b": pythia(2048, 24, 16),
  "pythia-2.8b": pythia(2560, 32, 32),
};
