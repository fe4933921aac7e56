/**
 * Loading a model's weights: `model.safetensors`, `pytorch_model.bin` (a `torch.save` file), or
 * sharded sets of either listed in an `*.index.json`, with mamba_ssm or transformers key names.
 * Every expected tensor is checked by name and shape before any data is read, and unexpected ones
 * are refused, so a mismatched file fails loudly and fast; then the tensors are read one at a
 * time, so loading never holds a whole file in memory.
 *
 * @module
 */

import type { MambaConfig } from "./config.ts";
import { WeightsError } from "./errors.ts";
import { openSource } from "./byte_source.ts";
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToF16 } from "./half.ts";
import { openSafetensors } from "./safetensors.ts";
import { DTYPE_SIZE, type TensorEntry } from "./tensor_entry.ts";
import { openTorchCheckpoint } from "./torch_checkpoint.ts";

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

/**
 * Reads one tensor and converts it to the host dtype. Where no conversion is needed the bytes
 * are read straight into the result; otherwise only this one tensor is held twice, briefly.
 */
export async function readHost(
  t: TensorEntry,
  dtype: WeightsDtype,
  shape: number[],
): Promise<HostTensor> {
  const n = t.byteLength / DTYPE_SIZE[t.dtype];
  if (t.dtype === "F16" && dtype !== "f32") {
    const data = new Uint16Array(n);
    await t.readInto(new Uint8Array(data.buffer));
    return { dtype: "f16", shape, data };
  }
  let f32: Float32Array;
  if (t.dtype === "F32") {
    f32 = new Float32Array(n);
    await t.readInto(new Uint8Array(f32.buffer));
  } else {
    const bits = new Uint16Array(n);
    await t.readInto(new Uint8Array(bits.buffer));
    f32 = t.dtype === "F16" ? f16ArrayToF32(bits) : bf16ArrayToF32(bits);
  }
  if (dtype === "f16") return { dtype: "f16", shape, data: f32ArrayToF16(f32) };
  return { dtype: "f32", shape, data: f32 };
}

/**
 * Checks the config's layer count against the layers the files hold, before anything is sized by
 * the config: a `config.json` that says `n_layer: 1e9` beside an 8-layer file fails here, in
 * microseconds, rather than after building a billion layers' worth of expectations.
 */
function checkLayerCount(cfg: MambaConfig, names: Iterable<string>): void {
  let layers = 0;
  for (const name of names) {
    const m = /^backbone\.layers\.(\d+)\./.exec(name);
    if (m) layers = Math.max(layers, Number(m[1]) + 1);
  }
  if (layers !== cfg.nLayer) {
    throw new WeightsError(
      `config.json says n_layer ${cfg.nLayer}, but the weights hold ${layers} layer${
        layers === 1 ? "" : "s"
      } (backbone.layers.*): the config and the weights belong to different models`,
    );
  }
}

/**
 * Builds {@link ModelWeights} from the tensors of one or more checkpoint files (the shards),
 * checking every name and shape against the config before reading any data, then reading the
 * tensors one at a time (two entries viewing the same data, a tied LM head say, are read once).
 *
 * @param files each file's tensors (one map for a single file)
 * @param dtype `"f32"` widens everything to float32 (what the `ref` backend needs); `"as-stored"`
 *   keeps F16 as F16 (BF16 is always widened); `"f16"` narrows everything to F16.
 * @param onFile called after each file's tensors are read, with (files done, files)
 * @throws {WeightsError} naming the tensor on a missing, duplicate, unexpected or misshaped
 *   tensor, or a config whose `n_layer` is not the files' layer count.
 */
export async function buildWeights(
  cfg: MambaConfig,
  files: ReadonlyArray<ReadonlyMap<string, TensorEntry>>,
  dtype: WeightsDtype = "f32",
  onFile?: (done: number, total: number) => void,
): Promise<ModelWeights> {
  const found = new Map<string, { t: TensorEntry; file: number }>();
  files.forEach((tensors, file) => {
    for (const [rawName, t] of tensors) {
      const name = canonicalName(rawName);
      if (found.has(name)) throw new WeightsError(`tensor "${name}" appears twice`);
      found.set(name, { t, file });
    }
  });
  checkLayerCount(cfg, found.keys());
  const want = expectedTensors(cfg);
  const lmHead = found.get("lm_head.weight");
  found.delete("lm_head.weight");
  for (const name of found.keys()) {
    if (!want.has(name)) throw new WeightsError(`unexpected tensor "${name}" for this config`);
  }
  const sameShape = (got: readonly number[], shape: readonly number[]) =>
    got.length === shape.length && got.every((d, i) => d === shape[i]);
  for (const [name, shape] of want) {
    const t = found.get(name)?.t;
    if (!t) {
      throw new WeightsError(`missing tensor "${name}" (expected shape [${shape}])`);
    }
    if (!sameShape(t.shape, shape)) {
      throw new WeightsError(
        `tensor "${name}" has shape [${t.shape}] but the config needs [${shape}]`,
      );
    }
  }
  const headShape = [cfg.paddedVocabSize, cfg.dModel];
  if (lmHead && !cfg.tieEmbeddings) {
    if (!sameShape(lmHead.t.shape, headShape)) {
      throw new WeightsError(
        `tensor "lm_head.weight" has shape [${lmHead.t.shape}] but the config needs [${headShape}]`,
      );
    }
    found.set("lm_head.weight", lmHead);
    want.set("lm_head.weight", headShape);
  } else if (!lmHead && !cfg.tieEmbeddings) {
    throw new WeightsError(
      `missing tensor "lm_head.weight" (expected shape [${headShape}]; tie_embeddings is false)`,
    );
  }
  // Every name and shape is right: now read, file by file.
  const host = new Map<string, HostTensor>();
  const byKey = new Map<string, HostTensor>();
  for (let file = 0; file < files.length; file++) {
    for (const [name, { t, file: f }] of found) {
      if (f !== file) continue;
      const shape = want.get(name)!;
      const hostShape = name.endsWith("conv1d.weight") ? [shape[0], shape[2]] : shape;
      let h = byKey.get(t.key);
      if (h && sameShape(h.shape, hostShape)) {
        host.set(name, h);
        continue;
      }
      h = await readHost(t, dtype, hostShape);
      byKey.set(t.key, h);
      host.set(name, h);
    }
    onFile?.(file + 1, files.length);
  }
  const weights = assembleWeights(cfg, (name) => host.get(name));
  const head = host.get("lm_head.weight");
  return head ? { ...weights, lmHead: head } : weights;
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

/** A weights file opened for reading tensor by tensor. */
export interface OpenCheckpoint {
  /** Its tensors, not yet read. */
  readonly tensors: Map<string, TensorEntry>;
  /** Closes the file. */
  close(): void;
}

/**
 * Opens one weights file: safetensors when its name ends in `.safetensors`, else a `torch.save`
 * file (`pytorch_model.bin`: zip or legacy). Only the header or the pickle is read here.
 * Tensors whose names `ignore` accepts are left out, whatever their type.
 */
export async function openCheckpoint(
  url: URL,
  ignore?: (name: string) => boolean,
): Promise<OpenCheckpoint> {
  const src = await openSource(url);
  try {
    const tensors = url.pathname.endsWith(".safetensors")
      ? await openSafetensors(src, ignore)
      : await openTorchCheckpoint(src, ignore);
    return { tensors, close: () => src.close() };
  } catch (e) {
    src.close();
    throw e;
  }
}

/** The shard file names of an index (`*.index.json`), refusing names outside the directory. */
async function shardNames(indexUrl: URL): Promise<string[]> {
  let index: unknown;
  try {
    index = JSON.parse(new TextDecoder().decode(await readBytes(indexUrl)));
  } catch (e) {
    if (e instanceof WeightsError) throw e;
    throw new WeightsError(`${indexUrl.href}: not readable JSON: ${(e as Error).message}`);
  }
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new WeightsError(`${indexUrl.href}: no "weight_map" object`);
  }
  const names = [...new Set(Object.values(map as Record<string, unknown>))];
  for (const n of names) {
    if (typeof n !== "string" || !/^[^/\\]+$/.test(n) || n === "." || n === "..") {
      throw new WeightsError(`${indexUrl.href}: shard ${JSON.stringify(n)} is not a file name`);
    }
  }
  return (names as string[]).sort();
}

/**
 * Opens the weights files of the model in directory `dir` (a URL ending in `/`), taking the first
 * of: `model.safetensors`; `model.safetensors.index.json` and its shards; `pytorch_model.bin`;
 * `pytorch_model.bin.index.json` and its shards. Only headers (or pickles) are read; the caller
 * reads the tensors and closes the files. Tensors whose names `ignore` accepts are left out.
 *
 * @throws {WeightsError} when no weights file is there, or a file is bad.
 */
export async function openWeightFiles(
  dir: URL,
  ignore?: (name: string) => boolean,
): Promise<OpenCheckpoint[]> {
  let files: string[] | undefined;
  for (const [single, index] of WEIGHT_FILES) {
    if (await exists(new URL(single, dir))) {
      files = [single];
      break;
    }
    const indexUrl = new URL(index, dir);
    if (await exists(indexUrl)) {
      files = await shardNames(indexUrl);
      break;
    }
  }
  if (!files) {
    throw new WeightsError(
      `no weights in ${dir.href}: looked for ${WEIGHT_FILES.flat().join(", ")}`,
    );
  }
  const open: OpenCheckpoint[] = [];
  try {
    for (const f of files) open.push(await openCheckpoint(new URL(f, dir), ignore));
    return open;
  } catch (e) {
    for (const o of open) o.close();
    throw e;
  }
}

/**
 * Loads and checks the weights of the model in directory `dir` (a URL ending in `/`), from the
 * files {@link openWeightFiles} picks. Each file is read tensor by tensor (file handle or HTTP
 * `Range`), so the loaded weights plus one tensor is all the memory it takes.
 *
 * @param onProgress called after each file (shard) is read, with (files read, files)
 * @throws {WeightsError} when no weights file is there, or a file is bad.
 */
export async function loadWeights(
  cfg: MambaConfig,
  dir: URL,
  dtype: WeightsDtype = "f32",
  onProgress?: (loaded: number, total: number) => void,
): Promise<ModelWeights> {
  const open = await openWeightFiles(dir);
  try {
    return await buildWeights(cfg, open.map((o) => o.tensors), dtype, onProgress);
  } finally {
    for (const o of open) o.close();
  }
}

/** The weights files a model directory may hold, in order of preference: (file, index). */
const WEIGHT_FILES: ReadonlyArray<readonly [string, string]> = [
  ["model.safetensors", "model.safetensors.index.json"],
  ["pytorch_model.bin", "pytorch_model.bin.index.json"],
];
