/**
 * Loading a GPT-NeoX model's weights (the published `EleutherAI/pythia-*` key names) into
 * {@link TransformerWeights}, from the same files and through the same streaming readers as the
 * Mamba weights (`model.safetensors`, `pytorch_model.bin`, sharded or not; see
 * `openWeightFiles`): every expected tensor checked by name and shape before any is read,
 * unexpected ones refused, the legacy buffers of older checkpoints (`attention.bias`,
 * `attention.masked_bias`, `attention.rotary_emb.inv_freq`) ignored.
 *
 * `query_key_value` is stored grouped per head (`[head, (q|k|v), headDim]` rows); it is reordered
 * here, once, to `[q (all heads) | k | v]`, the layout of mamba_ssm's attention `in_proj`, so that
 * one set of attention kernels serves both.
 *
 * @module
 */

import type { GptNeoXConfig } from "./neox_config.ts";
import { WeightsError } from "./errors.ts";
import type { TensorEntry } from "./tensor_entry.ts";
import {
  type HostTensor,
  type NormWeights,
  openWeightFiles,
  readHost,
  type WeightsDtype,
} from "./weights.ts";

/** One Transformer block's weights (PyTorch `Linear` layout: `[out, in]`). */
export interface TransformerLayerWeights {
  /** The norm before attention (`input_layernorm`). */
  readonly norm: NormWeights;
  /** The norm before the MLP (`post_attention_layernorm`). */
  readonly norm2: NormWeights;
  /** `[(nHeads + 2·nKvHeads)·headDim, dModel]`, rows `[q | k | v]`, each head-major. */
  readonly qkv: HostTensor;
  /** `[(nHeads + 2·nKvHeads)·headDim]`, same order. */
  readonly qkvBias?: HostTensor;
  /** Attention output projection `[dModel, nHeads·headDim]` (`attention.dense`). */
  readonly out: HostTensor;
  /** `[dModel]`. */
  readonly outBias?: HostTensor;
  /** MLP up projection `[intermediate, dModel]` (`dense_h_to_4h`). */
  readonly fc1: HostTensor;
  /** `[intermediate]`. */
  readonly fc1Bias?: HostTensor;
  /** MLP down projection `[dModel, intermediate]` (`dense_4h_to_h`). */
  readonly fc2: HostTensor;
  /** `[dModel]`. */
  readonly fc2Bias?: HostTensor;
}

/** All weights of a Transformer language model. */
export interface TransformerWeights {
  /** `[vocab, dModel]` (`embed_in`). */
  readonly embedding: HostTensor;
  /** The blocks, in order. */
  readonly layers: readonly TransformerLayerWeights[];
  /** The final norm. */
  readonly normF: NormWeights;
  /** `[vocab, dModel]` (`embed_out`); the same object as `embedding` when tied. */
  readonly lmHead: HostTensor;
}

/**
 * Buffers of older checkpoints that are not weights: the causal mask (boolean), the masked score
 * and the rotary frequencies. They are left out when the files are opened, whatever their type.
 */
export const LEGACY_NEOX_BUFFER = /\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$/;
const isLegacy = (name: string) => LEGACY_NEOX_BUFFER.test(name);

/** Expected tensor names → shapes of a config, in the published GPT-NeoX naming. */
export function expectedNeoxTensors(cfg: GptNeoXConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const d = cfg.dModel;
  const qkvRows = (cfg.nHeads + 2 * cfg.nKvHeads) * cfg.headDim;
  const linear = (p: string, out: number, inp: number) => {
    m.set(`${p}.weight`, [out, inp]);
    m.set(`${p}.bias`, [out]);
  };
  m.set("gpt_neox.embed_in.weight", [cfg.vocabSize, d]);
  for (let i = 0; i < cfg.nLayer; i++) {
    const p = `gpt_neox.layers.${i}`;
    linear(`${p}.input_layernorm`, d, 0);
    linear(`${p}.post_attention_layernorm`, d, 0);
    linear(`${p}.attention.query_key_value`, qkvRows, d);
    linear(`${p}.attention.dense`, d, cfg.nHeads * cfg.headDim);
    linear(`${p}.mlp.dense_h_to_4h`, cfg.intermediateSize, d);
    linear(`${p}.mlp.dense_4h_to_h`, d, cfg.intermediateSize);
  }
  linear("gpt_neox.final_layer_norm", d, 0);
  if (!cfg.tieEmbeddings) m.set("embed_out.weight", [cfg.vocabSize, d]);
  // Norm weights are vectors: drop the placeholder second axis.
  for (const [k, v] of m) if (v[1] === 0) m.set(k, [v[0]]);
  return m;
}

/**
 * Reorders the rows of a per-head grouped `query_key_value` tensor (`[head, (q|k|v), headDim]`,
 * any trailing width) into `[q (all heads) | k | v]`.
 */
export function ungroupQkv(t: HostTensor, nHeads: number, headDim: number): HostTensor {
  const width = t.shape.length > 1 ? t.shape[1] : 1;
  const src = t.data;
  const dst = new (src.constructor as { new (n: number): typeof src })(src.length);
  const rowLen = headDim * width;
  for (let h = 0; h < nHeads; h++) {
    for (let part = 0; part < 3; part++) {
      const from = (h * 3 + part) * rowLen;
      const to = (part * nHeads + h) * rowLen;
      dst.set(src.subarray(from, from + rowLen), to);
    }
  }
  return { ...t, data: dst } as HostTensor;
}

/**
 * Builds {@link TransformerWeights} from the tensors of one or more checkpoint files (the
 * shards), checking every name and shape before reading any data, then reading the tensors one
 * at a time.
 *
 * @param dtype as for Mamba weights: `"f32"` widens everything, `"as-stored"` keeps F16,
 *   `"f16"` narrows everything.
 * @throws {WeightsError} naming the tensor on a missing, duplicate, unexpected or misshaped one.
 */
export async function buildNeoxWeights(
  cfg: GptNeoXConfig,
  files: ReadonlyArray<ReadonlyMap<string, TensorEntry>>,
  dtype: WeightsDtype = "f32",
): Promise<TransformerWeights> {
  const found = new Map<string, TensorEntry>();
  let layers = 0;
  for (const tensors of files) {
    for (const [name, t] of tensors) {
      if (isLegacy(name)) continue;
      if (found.has(name)) throw new WeightsError(`tensor "${name}" appears twice`);
      found.set(name, t);
      const m = /^gpt_neox\.layers\.(\d+)\./.exec(name);
      if (m) layers = Math.max(layers, Number(m[1]) + 1);
    }
  }
  // Before anything is sized by the config (a bogus num_hidden_layers, say).
  if (layers !== cfg.nLayer) {
    throw new WeightsError(
      `config.json says num_hidden_layers ${cfg.nLayer}, but the weights hold ${layers} ` +
        `(gpt_neox.layers.*): the config and the weights belong to different models`,
    );
  }
  const want = expectedNeoxTensors(cfg);
  for (const name of found.keys()) {
    if (!want.has(name)) throw new WeightsError(`unexpected tensor "${name}" for this config`);
  }
  for (const [name, shape] of want) {
    const t = found.get(name);
    if (!t) throw new WeightsError(`missing tensor "${name}" (expected shape [${shape}])`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new WeightsError(
        `tensor "${name}" has shape [${t.shape}] but the config needs [${shape}]`,
      );
    }
  }
  // Every name and shape is right: now read.
  const get = (name: string) => readHost(found.get(name)!, dtype, want.get(name)!);
  const norm = async (p: string): Promise<NormWeights> => ({
    weight: await get(`${p}.weight`),
    bias: await get(`${p}.bias`),
  });
  const out: TransformerLayerWeights[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    const p = `gpt_neox.layers.${i}`;
    const a = `${p}.attention`;
    out.push({
      norm: await norm(`${p}.input_layernorm`),
      norm2: await norm(`${p}.post_attention_layernorm`),
      qkv: ungroupQkv(await get(`${a}.query_key_value.weight`), cfg.nHeads, cfg.headDim),
      qkvBias: ungroupQkv(await get(`${a}.query_key_value.bias`), cfg.nHeads, cfg.headDim),
      out: await get(`${a}.dense.weight`),
      outBias: await get(`${a}.dense.bias`),
      fc1: await get(`${p}.mlp.dense_h_to_4h.weight`),
      fc1Bias: await get(`${p}.mlp.dense_h_to_4h.bias`),
      fc2: await get(`${p}.mlp.dense_4h_to_h.weight`),
      fc2Bias: await get(`${p}.mlp.dense_4h_to_h.bias`),
    });
  }
  const embedding = await get("gpt_neox.embed_in.weight");
  return {
    embedding,
    layers: out,
    normF: await norm("gpt_neox.final_layer_norm"),
    lmHead: cfg.tieEmbeddings ? embedding : await get("embed_out.weight"),
  };
}

/**
 * Loads and checks the weights of the GPT-NeoX model in directory `dir` (a URL ending in `/`):
 * `model.safetensors`, `pytorch_model.bin`, or the shards of their index, read tensor by tensor.
 */
export async function loadNeoxWeights(
  cfg: GptNeoXConfig,
  dir: URL,
  dtype: WeightsDtype = "f32",
  onProgress?: (loaded: number, total: number) => void,
): Promise<TransformerWeights> {
  const open = await openWeightFiles(dir, isLegacy);
  try {
    const w = await buildNeoxWeights(cfg, open.map((o) => o.tensors), dtype);
    onProgress?.(open.length, open.length);
    return w;
  } finally {
    for (const o of open) o.close();
  }
}
