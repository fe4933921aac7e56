/**
 * Loading a GPT-NeoX model's weights (the published `EleutherAI/pythia-*` key names) into
 * {@link TransformerWeights}: every expected tensor checked by name and shape, unexpected ones
 * refused, the legacy buffers of older checkpoints (`attention.bias`, `attention.masked_bias`,
 * `attention.rotary_emb.inv_freq`) ignored.
 *
 * `query_key_value` is stored grouped per head (`[head, (q|k|v), headDim]` rows); it is reordered
 * here, once, to `[q (all heads) | k | v]`, the layout of mamba_ssm's attention `in_proj`, so that
 * one set of attention kernels serves both.
 *
 * @module
 */

import type { GptNeoXConfig } from "./neox_config.ts";
import { WeightsError } from "./errors.ts";
import { f32ArrayToF16 } from "./half.ts";
import {
  parseSafetensors,
  type SafetensorsTensor,
  tensorBits16,
  tensorToF32,
} from "./safetensors.ts";
import {
  exists,
  type HostTensor,
  type NormWeights,
  readBytes,
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

/** Buffers of older checkpoints that are not weights. */
const LEGACY = /\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)$/;

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

function toHost(t: SafetensorsTensor, dtype: WeightsDtype, shape: number[]): HostTensor {
  if (t.dtype === "F16" && dtype !== "f32") return { dtype: "f16", shape, data: tensorBits16(t) };
  const data = tensorToF32(t);
  if (dtype === "f16") return { dtype: "f16", shape, data: f32ArrayToF16(data) };
  return { dtype: "f32", shape, data };
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
 * Builds {@link TransformerWeights} from parsed safetensors files, checking every tensor.
 *
 * @param dtype as for Mamba weights: `"f32"` widens everything, `"as-stored"` keeps F16,
 *   `"f16"` narrows everything.
 * @throws {WeightsError} naming the tensor on a missing, duplicate, unexpected or misshaped one.
 */
export function buildNeoxWeights(
  cfg: GptNeoXConfig,
  files: ReadonlyArray<ReadonlyMap<string, SafetensorsTensor>>,
  dtype: WeightsDtype = "f32",
): TransformerWeights {
  const want = expectedNeoxTensors(cfg);
  const found = new Map<string, SafetensorsTensor>();
  for (const tensors of files) {
    for (const [name, t] of tensors) {
      if (LEGACY.test(name)) continue;
      if (found.has(name)) throw new WeightsError(`tensor "${name}" appears twice`);
      if (!want.has(name)) throw new WeightsError(`unexpected tensor "${name}" for this config`);
      found.set(name, t);
    }
  }
  const get = (name: string): HostTensor => {
    const shape = want.get(name)!;
    const t = found.get(name);
    if (!t) throw new WeightsError(`missing tensor "${name}" (expected shape [${shape}])`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new WeightsError(
        `tensor "${name}" has shape [${t.shape}] but the config needs [${shape}]`,
      );
    }
    return toHost(t, dtype, shape);
  };
  const norm = (p: string): NormWeights => ({ weight: get(`${p}.weight`), bias: get(`${p}.bias`) });
  const layers: TransformerLayerWeights[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    const p = `gpt_neox.layers.${i}`;
    const a = `${p}.attention`;
    layers.push({
      norm: norm(`${p}.input_layernorm`),
      norm2: norm(`${p}.post_attention_layernorm`),
      qkv: ungroupQkv(get(`${a}.query_key_value.weight`), cfg.nHeads, cfg.headDim),
      qkvBias: ungroupQkv(get(`${a}.query_key_value.bias`), cfg.nHeads, cfg.headDim),
      out: get(`${a}.dense.weight`),
      outBias: get(`${a}.dense.bias`),
      fc1: get(`${p}.mlp.dense_h_to_4h.weight`),
      fc1Bias: get(`${p}.mlp.dense_h_to_4h.bias`),
      fc2: get(`${p}.mlp.dense_4h_to_h.weight`),
      fc2Bias: get(`${p}.mlp.dense_4h_to_h.bias`),
    });
  }
  const embedding = get("gpt_neox.embed_in.weight");
  return {
    embedding,
    layers,
    normF: norm("gpt_neox.final_layer_norm"),
    lmHead: cfg.tieEmbeddings ? embedding : get("embed_out.weight"),
  };
}

/**
 * Reads and parses the safetensors files of directory `dir` (a URL ending in `/`):
 * `model.safetensors`, or the shards of `model.safetensors.index.json`.
 *
 * @throws {WeightsError} when a file is missing or malformed.
 */
export async function readSafetensorsDir(
  dir: URL,
  onProgress?: (loaded: number, total: number) => void,
): Promise<Map<string, SafetensorsTensor>[]> {
  const indexUrl = new URL("model.safetensors.index.json", dir);
  let shardNames = ["model.safetensors"];
  if (await exists(indexUrl)) {
    const index = JSON.parse(new TextDecoder().decode(await readBytes(indexUrl)));
    const map = index?.weight_map;
    if (typeof map !== "object" || map === null) {
      throw new WeightsError(`${indexUrl.href}: no "weight_map" object`);
    }
    shardNames = [...new Set(Object.values(map as Record<string, string>))].sort();
  }
  const files: Map<string, SafetensorsTensor>[] = [];
  for (let i = 0; i < shardNames.length; i++) {
    const url = new URL(shardNames[i], dir);
    let bytes: Uint8Array;
    try {
      bytes = await readBytes(url);
    } catch (e) {
      if (e instanceof WeightsError) throw e;
      throw new WeightsError(`cannot read ${url.href}: ${(e as Error).message}`);
    }
    files.push(parseSafetensors(bytes, shardNames[i]).tensors);
    onProgress?.(i + 1, shardNames.length);
  }
  return files;
}

/** Loads and checks the weights of the GPT-NeoX model in directory `dir` (a URL ending in `/`). */
export async function loadNeoxWeights(
  cfg: GptNeoXConfig,
  dir: URL,
  dtype: WeightsDtype = "f32",
  onProgress?: (loaded: number, total: number) => void,
): Promise<TransformerWeights> {
  return buildNeoxWeights(cfg, await readSafetensorsDir(dir, onProgress), dtype);
}
