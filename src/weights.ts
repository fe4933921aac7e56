/**
 * Loading a model's weights: one `model.safetensors` or a sharded set listed in
 * `model.safetensors.index.json`, with mamba_ssm or transformers key names. Every expected tensor is
 * checked by name and shape, and unexpected ones are refused, so a mismatched file fails loudly.
 *
 * @module
 */

import type { MambaConfig } from "./config.ts";
import { WeightsError } from "./errors.ts";
import { f32ArrayToF16 } from "./half.ts";
import {
  parseSafetensors,
  type SafetensorsTensor,
  tensorBits16,
  tensorToF32,
} from "./safetensors.ts";

/**
 * A tensor in host memory: float32 values, or float16 bit patterns kept as stored so that backends
 * with f16 support can use half the memory.
 */
export type HostTensor =
  | { readonly dtype: "f32"; readonly shape: readonly number[]; readonly data: Float32Array }
  | { readonly dtype: "f16"; readonly shape: readonly number[]; readonly data: Uint16Array };

/** A norm's scale (and, for LayerNorm, shift). */
export interface NormWeights {
  /** Scale, `[dModel]` (or `[dInner]` for the Mamba-2 gated norm). */
  readonly weight: HostTensor;
  /** Shift, LayerNorm only. */
  readonly bias?: HostTensor;
}

/** The weights of one block: its pre-norm and its mixer. Shapes as in mamba_ssm. */
export interface LayerWeights {
  /** The block's pre-norm. */
  readonly norm: NormWeights;
  /** `[2·dInner, dModel]` (M1) or `[2·dInner + 2·ngroups·dState + nheads, dModel]` (M2). */
  readonly inProj: HostTensor;
  /** `[rows of inProj]`, when `bias`. */
  readonly inProjBias?: HostTensor;
  /** Depthwise conv taps `[convDim, dConv]` (the middle axis of PyTorch's `[C, 1, K]` dropped). */
  readonly convWeight: HostTensor;
  /** `[convDim]`, when `conv_bias`. */
  readonly convBias?: HostTensor;
  /** M1: `[dtRank + 2·dState, dInner]`. */
  readonly xProj?: HostTensor;
  /** M1: `[dInner, dtRank]`. */
  readonly dtProjWeight?: HostTensor;
  /** M1: `[dInner]`; M2: `[nheads]` (`dt_bias`). */
  readonly dtBias: HostTensor;
  /** M1: `[dInner, dState]`; M2: `[nheads]`. A = −exp(A_log). */
  readonly aLog: HostTensor;
  /** M1: `[dInner]`; M2: `[nheads]` (or `[dInner]` with `D_has_hdim`). */
  readonly d: HostTensor;
  /** M2: the gated RMSNorm scale `[dInner]`, when `rmsnorm`. */
  readonly gatedNorm?: HostTensor;
  /** `[dModel, dInner]`. */
  readonly outProj: HostTensor;
  /** `[dModel]`, when `bias`. */
  readonly outProjBias?: HostTensor;
}

/** All weights of a language model. */
export interface ModelWeights {
  /** `[paddedVocab, dModel]`. */
  readonly embedding: HostTensor;
  /** The blocks, in order. */
  readonly layers: readonly LayerWeights[];
  /** The final norm. */
  readonly normF: NormWeights;
  /** `[paddedVocab, dModel]`; the same object as `embedding` when tied. */
  readonly lmHead: HostTensor;
}

/** How weights are kept in host memory after loading. */
export type WeightsDtype = "f32" | "f16" | "as-stored";

/** Expected tensor names → shapes of a config, in mamba_ssm naming. */
export function expectedTensors(cfg: MambaConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const norm = (prefix: string) => {
    m.set(`${prefix}.weight`, [cfg.dModel]);
    if (!cfg.rmsNorm) m.set(`${prefix}.bias`, [cfg.dModel]);
  };
  m.set("backbone.embedding.weight", [cfg.paddedVocabSize, cfg.dModel]);
  for (let i = 0; i < cfg.nLayer; i++) {
    const p = `backbone.layers.${i}`;
    norm(`${p}.norm`);
    const inRows = cfg.arch === "mamba1"
      ? 2 * cfg.dInner
      : 2 * cfg.dInner + 2 * cfg.ngroups * cfg.dState + cfg.nheads;
    m.set(`${p}.mixer.in_proj.weight`, [inRows, cfg.dModel]);
    if (cfg.bias) m.set(`${p}.mixer.in_proj.bias`, [inRows]);
    m.set(`${p}.mixer.conv1d.weight`, [cfg.convDim, 1, cfg.dConv]);
    if (cfg.convBias) m.set(`${p}.mixer.conv1d.bias`, [cfg.convDim]);
    if (cfg.arch === "mamba1") {
      m.set(`${p}.mixer.x_proj.weight`, [cfg.dtRank + 2 * cfg.dState, cfg.dInner]);
      m.set(`${p}.mixer.dt_proj.weight`, [cfg.dInner, cfg.dtRank]);
      m.set(`${p}.mixer.dt_proj.bias`, [cfg.dInner]);
      m.set(`${p}.mixer.A_log`, [cfg.dInner, cfg.dState]);
      m.set(`${p}.mixer.D`, [cfg.dInner]);
    } else {
      m.set(`${p}.mixer.dt_bias`, [cfg.nheads]);
      m.set(`${p}.mixer.A_log`, [cfg.nheads]);
      m.set(`${p}.mixer.D`, [cfg.dHasHdim ? cfg.dInner : cfg.nheads]);
      if (cfg.gatedNorm) m.set(`${p}.mixer.norm.weight`, [cfg.dInner]);
    }
    m.set(`${p}.mixer.out_proj.weight`, [cfg.dModel, cfg.dInner]);
    if (cfg.bias) m.set(`${p}.mixer.out_proj.bias`, [cfg.dModel]);
  }
  norm("backbone.norm_f");
  return m;
}

/** transformers spells a few names differently; map them onto mamba_ssm's. */
function canonicalName(name: string): string {
  return name.replace(/^backbone\.embeddings\./, "backbone.embedding.");
}

function toHost(t: SafetensorsTensor, dtype: WeightsDtype, shape: number[]): HostTensor {
  if (t.dtype === "F16" && dtype !== "f32") {
    return { dtype: "f16", shape, data: tensorBits16(t) };
  }
  const data = tensorToF32(t);
  if (dtype === "f16") {
    return { dtype: "f16", shape, data: f32ArrayToF16(data) };
  }
  return { dtype: "f32", shape, data };
}

/**
 * Builds {@link ModelWeights} from parsed safetensors files, checking every tensor's name and
 * shape against the config.
 *
 * @param files the parsed shards (one for a single file)
 * @param dtype `"f32"` widens everything to float32 (what the `ref` backend needs); `"as-stored"`
 *   keeps F16 as F16 (BF16 is always widened); `"f16"` narrows everything to F16.
 * @throws {WeightsError} naming the tensor on a missing, duplicate, unexpected or misshaped tensor.
 */
export function buildWeights(
  cfg: MambaConfig,
  files: ReadonlyArray<ReadonlyMap<string, SafetensorsTensor>>,
  dtype: WeightsDtype = "f32",
): ModelWeights {
  const want = expectedTensors(cfg);
  const found = new Map<string, SafetensorsTensor>();
  for (const tensors of files) {
    for (const [rawName, t] of tensors) {
      const name = canonicalName(rawName);
      if (found.has(name)) throw new WeightsError(`tensor "${name}" appears twice`);
      found.set(name, t);
    }
  }
  const lmHeadT = found.get("lm_head.weight");
  found.delete("lm_head.weight");
  for (const name of found.keys()) {
    if (!want.has(name)) throw new WeightsError(`unexpected tensor "${name}" for this config`);
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
    return toHost(t, dtype, name.endsWith("conv1d.weight") ? [shape[0], shape[2]] : shape);
  };
  const weights = assembleWeights(cfg, (name) => (want.has(name) ? get(name) : undefined));
  if (lmHeadT && !cfg.tieEmbeddings) {
    const shape = [cfg.paddedVocabSize, cfg.dModel];
    if (
      lmHeadT.shape.length !== 2 || lmHeadT.shape[0] !== shape[0] || lmHeadT.shape[1] !== shape[1]
    ) {
      throw new WeightsError(
        `tensor "lm_head.weight" has shape [${lmHeadT.shape}] but the config needs [${shape}]`,
      );
    }
    return { ...weights, lmHead: toHost(lmHeadT, dtype, shape) };
  } else if (!lmHeadT && !cfg.tieEmbeddings) {
    throw new WeightsError(
      `missing tensor "lm_head.weight" (expected shape [${cfg.paddedVocabSize},${cfg.dModel}]; tie_embeddings is false)`,
    );
  }
  return weights;
}

/**
 * Puts tensors looked up by their mamba_ssm names into {@link ModelWeights}, the LM head tied to
 * the embedding. `get` returns `undefined` for an optional tensor the config does not have.
 *
 * @throws {WeightsError} when a tensor every config needs is missing.
 */
export function assembleWeights(
  cfg: MambaConfig,
  get: (name: string) => HostTensor | undefined,
): ModelWeights {
  const need = (name: string): HostTensor => {
    const t = get(name);
    if (!t) throw new WeightsError(`missing tensor "${name}"`);
    return t;
  };
  const norm = (p: string): NormWeights => ({
    weight: need(`${p}.weight`),
    bias: get(`${p}.bias`),
  });
  const embedding = need("backbone.embedding.weight");
  const layers: LayerWeights[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    const mx = `backbone.layers.${i}.mixer`;
    layers.push({
      norm: norm(`backbone.layers.${i}.norm`),
      inProj: need(`${mx}.in_proj.weight`),
      inProjBias: get(`${mx}.in_proj.bias`),
      convWeight: need(`${mx}.conv1d.weight`),
      convBias: get(`${mx}.conv1d.bias`),
      xProj: get(`${mx}.x_proj.weight`),
      dtProjWeight: get(`${mx}.dt_proj.weight`),
      dtBias: need(cfg.arch === "mamba1" ? `${mx}.dt_proj.bias` : `${mx}.dt_bias`),
      aLog: need(`${mx}.A_log`),
      d: need(`${mx}.D`),
      gatedNorm: get(`${mx}.norm.weight`),
      outProj: need(`${mx}.out_proj.weight`),
      outProjBias: get(`${mx}.out_proj.bias`),
    });
  }
  return { embedding, layers, normF: norm("backbone.norm_f"), lmHead: embedding };
}

/** Reads a file from a local path or an http(s)/file URL. */
export async function readBytes(url: URL): Promise<Uint8Array> {
  if (url.protocol === "file:") return await Deno.readFile(url);
  const res = await fetch(url);
  if (!res.ok) throw new WeightsError(`cannot fetch ${url.href}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/** Whether `url` exists (a local file, or an http(s) resource answering 2xx). */
export async function exists(url: URL): Promise<boolean> {
  if (url.protocol === "file:") {
    try {
      await Deno.stat(url);
      return true;
    } catch {
      return false;
    }
  }
  try {
    const res = await fetch(url, { method: "HEAD" });
    await res.body?.cancel();
    return res.ok;
  } catch {
    return false;
  }
}

/**
 * Loads and checks the weights of the model in directory `dir` (a URL ending in `/`):
 * `model.safetensors`, or the shards of `model.safetensors.index.json`.
 */
export async function loadWeights(
  cfg: MambaConfig,
  dir: URL,
  dtype: WeightsDtype = "f32",
  onProgress?: (loaded: number, total: number) => void,
): Promise<ModelWeights> {
  const indexUrl = new URL("model.safetensors.index.json", dir);
  let shardNames: string[];
  if (await exists(indexUrl)) {
    const index = JSON.parse(new TextDecoder().decode(await readBytes(indexUrl)));
    const map = index?.weight_map;
    if (typeof map !== "object" || map === null) {
      throw new WeightsError(`${indexUrl.href}: no "weight_map" object`);
    }
    shardNames = [...new Set(Object.values(map as Record<string, string>))].sort();
  } else {
    shardNames = ["model.safetensors"];
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
  return buildWeights(cfg, files, dtype);
}
