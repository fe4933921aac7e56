/**
 * Writing a model the way `mamba_ssm` and Hugging Face tools read it: `config.json` in
 * mamba_ssm's `MambaConfig` form, and the weights under mamba_ssm's `state_dict()` names as
 * safetensors — one `model.safetensors`, or shards `model-00001-of-0000N.safetensors` with a
 * `model.safetensors.index.json` (`{"metadata": {"total_size": …}, "weight_map": {…}}`) once
 * they pass a size limit.
 *
 * @module
 */

import type { MambaConfig } from "./config.ts";
import { InputError, MambaError } from "./errors.ts";
import { f16ArrayToF32, f32ArrayToF16 } from "./half.ts";
import type { DType } from "./safetensors.ts";
import type { HostTensor, ModelWeights, NormWeights } from "./weights.ts";

/**
 * Element types {@link saveModel} writes.
 *
 * @example
 * ```ts
 * import type { SaveDtype } from "@mamba/mamba";
 * const dtype: SaveDtype = "bf16";
 * ```
 */
export type SaveDtype = "f32" | "f16" | "bf16";

/**
 * Options of {@link saveModel} (and `MambaLM.save`).
 *
 * @example
 * ```ts
 * import { MambaLM, type SaveOptions } from "@mamba/mamba";
 * const lm = await MambaLM.fromConfig({ d_model: 64, n_layer: 2, vocab_size: 256 }, { seed: 0 });
 * const options: SaveOptions = { dtype: "f16", maxShardBytes: 2e9 };
 * await lm.save("./tiny", options);
 * ```
 */
export interface SaveOptions {
  /**
   * Element type of every tensor: `"f32"`, `"f16"` or `"bf16"` (rounded to nearest even). By
   * default each tensor as it is held.
   */
  dtype?: SaveDtype;
  /**
   * Largest shard in bytes of tensor data (a tensor larger than this gets a shard of its own).
   * Above it the weights are split into shards with an index. Default 5 GB (5·10⁹, as
   * transformers' `max_shard_size="5GB"`).
   */
  maxShardBytes?: number;
}

/** One tensor to write: a mamba_ssm name, its PyTorch shape, and its values. */
export interface NamedTensor {
  /** mamba_ssm's `state_dict()` key. */
  readonly name: string;
  /** PyTorch's shape (conv weights `[C, 1, K]`). */
  readonly shape: readonly number[];
  /** The values as held. */
  readonly tensor: HostTensor;
}

/**
 * A model's tensors under mamba_ssm's `state_dict()` names, sorted by name: the backbone, and
 * `lm_head.weight` (a copy of the embedding when tied, as `state_dict()` lists it too).
 */
export function stateDictEntries(cfg: MambaConfig, w: ModelWeights): NamedTensor[] {
  const out: NamedTensor[] = [];
  const add = (name: string, t: HostTensor | undefined) => {
    if (t) out.push({ name, shape: t.shape, tensor: t });
  };
  const norm = (p: string, n: NormWeights) => {
    add(`${p}.weight`, n.weight);
    add(`${p}.bias`, n.bias);
  };
  add("backbone.embedding.weight", w.embedding);
  w.layers.forEach((l, i) => {
    const p = `backbone.layers.${i}`;
    norm(`${p}.norm`, l.norm);
    const m = `${p}.mixer`;
    add(`${m}.in_proj.weight`, l.inProj);
    add(`${m}.in_proj.bias`, l.inProjBias);
    out.push({
      name: `${m}.conv1d.weight`,
      shape: [l.convWeight.shape[0], 1, l.convWeight.shape[1]],
      tensor: l.convWeight,
    });
    add(`${m}.conv1d.bias`, l.convBias);
    add(`${m}.x_proj.weight`, l.xProj);
    add(`${m}.dt_proj.weight`, l.dtProjWeight);
    add(cfg.arch === "mamba1" ? `${m}.dt_proj.bias` : `${m}.dt_bias`, l.dtBias);
    add(`${m}.A_log`, l.aLog);
    add(`${m}.D`, l.d);
    add(`${m}.norm.weight`, l.gatedNorm);
    add(`${m}.out_proj.weight`, l.outProj);
    add(`${m}.out_proj.bias`, l.outProjBias);
  });
  norm("backbone.norm_f", w.normF);
  add("lm_head.weight", w.lmHead);
  return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * `config` as mamba_ssm's `MambaConfig` JSON (what `save_pretrained` writes): its 12 fields,
 * with every `ssm_cfg` value spelled out; `norm_epsilon` only when it is not the default 1e-5
 * (mamba_ssm has no such field; this library reads it).
 */
export function mambaSsmConfigJson(cfg: MambaConfig): Record<string, unknown> {
  const expand = cfg.dInner / cfg.dModel;
  const ssm: Record<string, unknown> = cfg.arch === "mamba1"
    ? {
      layer: "Mamba1",
      d_state: cfg.dState,
      d_conv: cfg.dConv,
      expand,
      dt_rank: cfg.dtRank,
      conv_bias: cfg.convBias,
      bias: cfg.bias,
    }
    : {
      layer: "Mamba2",
      d_state: cfg.dState,
      d_conv: cfg.dConv,
      expand,
      headdim: cfg.headdim,
      ngroups: cfg.ngroups,
      chunk_size: cfg.chunkSize,
      rmsnorm: cfg.gatedNorm,
      norm_before_gate: cfg.normBeforeGate,
      D_has_hdim: cfg.dHasHdim,
      conv_bias: cfg.convBias,
      bias: cfg.bias,
    };
  const [lo, hi] = cfg.dtLimit;
  if (cfg.arch === "mamba2" && (lo !== 0 || hi !== Infinity)) {
    // JSON has no infinity; the reader takes "inf".
    ssm.dt_limit = [lo, hi === Infinity ? "inf" : hi];
  }
  const json: Record<string, unknown> = {
    d_model: cfg.dModel,
    d_intermediate: 0,
    n_layer: cfg.nLayer,
    vocab_size: cfg.vocabSize,
    ssm_cfg: ssm,
    attn_layer_idx: [],
    attn_cfg: {},
    rms_norm: cfg.rmsNorm,
    residual_in_fp32: cfg.residualInFp32,
    fused_add_norm: true,
    pad_vocab_size_multiple: cfg.padVocabSizeMultiple,
    tie_embeddings: cfg.tieEmbeddings,
  };
  if (cfg.normEps !== 1e-5) json.norm_epsilon = cfg.normEps;
  return json;
}

/** float32 → bfloat16 bit patterns, rounded to nearest even (NaN stays NaN). */
export function f32ArrayToBf16(values: Float32Array): Uint16Array {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    if ((b & 0x7fffffff) > 0x7f800000) out[i] = (b >>> 16) | 0x40;
    else out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** A tensor's bytes in the element type to write. */
function encode(t: HostTensor, dtype: SaveDtype | undefined): { dtype: DType; bytes: Uint8Array } {
  const want = dtype ?? t.dtype;
  const bytesOf = (a: Float32Array | Uint16Array) =>
    new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  if (want === t.dtype) return { dtype: want === "f32" ? "F32" : "F16", bytes: bytesOf(t.data) };
  const f32 = t.dtype === "f32" ? t.data : f16ArrayToF32(t.data);
  if (want === "f32") return { dtype: "F32", bytes: bytesOf(f32) };
  if (want === "f16") return { dtype: "F16", bytes: bytesOf(f32ArrayToF16(f32)) };
  return { dtype: "BF16", bytes: bytesOf(f32ArrayToBf16(f32)) };
}

const ELEMENT_BYTES: Record<SaveDtype, number> = { f32: 4, f16: 2, bf16: 2 };

/**
 * The header of a safetensors file holding `tensors` in this order: the u64 length, then the
 * JSON (with `"__metadata__": {"format": "pt"}`) padded with spaces to a multiple of 8 bytes.
 */
export function safetensorsHeader(
  tensors: readonly { name: string; dtype: DType; shape: readonly number[]; bytes: number }[],
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes] };
    offset += t.bytes;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded !== json.length) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/** Writes all of `bytes` (a file's `write` may take less than it is given). */
async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let o = 0; o < bytes.length;) o += await file.write(bytes.subarray(o));
}

/** Writes one safetensors file, tensor by tensor (nothing the size of the file is built). */
async function writeSafetensors(path: string, tensors: readonly NamedTensor[], dtype?: SaveDtype) {
  const header = safetensorsHeader(tensors.map((t) => ({
    name: t.name,
    dtype: (dtype ?? t.tensor.dtype).toUpperCase() as DType,
    shape: t.shape,
    bytes: t.tensor.data.length * ELEMENT_BYTES[dtype ?? t.tensor.dtype],
  })));
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    await writeAll(file, header);
    for (const t of tensors) await writeAll(file, encode(t.tensor, dtype).bytes);
  } finally {
    file.close();
  }
}

/** A local directory path from a path or a `file:` URL. */
function localDir(dir: string | URL): string {
  if (dir instanceof URL || /^file:\/\//.test(dir)) {
    const u = new URL(dir);
    if (u.protocol !== "file:") throw new InputError(`save: cannot write to ${u.href}`);
    return decodeURIComponent(u.pathname);
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(dir)) throw new InputError(`save: cannot write to ${dir}`);
  return dir;
}

async function removeIfPresent(path: string): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/**
 * Writes `config.json` and the weights of a model into `dir` (created if needed): one
 * `model.safetensors` when the tensors fit in `maxShardBytes`, else shards
 * `model-0000i-of-0000N.safetensors` and `model.safetensors.index.json`. Tensors are written
 * under mamba_ssm's names, sorted, with `lm_head.weight` included. A stale index (or single
 * file) of an earlier save in `dir` is removed, so what loads back is what was written.
 *
 * @returns the file names written, config first.
 * @throws {InputError} on bad options or a directory that is not local.
 */
export async function saveModel(
  dir: string | URL,
  cfg: MambaConfig,
  weights: ModelWeights,
  options: SaveOptions = {},
): Promise<string[]> {
  const { dtype, maxShardBytes = 5e9 } = options;
  if (dtype !== undefined && !(dtype in ELEMENT_BYTES)) {
    throw new InputError(
      `save: dtype must be "f32", "f16" or "bf16", got ${JSON.stringify(dtype)}`,
    );
  }
  if (!(maxShardBytes > 0)) {
    throw new InputError(`save: maxShardBytes must be positive, got ${maxShardBytes}`);
  }
  const path = localDir(dir).replace(/\/+$/, "") || "/";
  const entries = stateDictEntries(cfg, weights);
  const size = (t: NamedTensor) => t.tensor.data.length * ELEMENT_BYTES[dtype ?? t.tensor.dtype];
  // Fill shards in name order, starting a new one when the next tensor would pass the limit.
  const shards: NamedTensor[][] = [[]];
  let used = 0;
  for (const t of entries) {
    const s = size(t);
    if (used > 0 && used + s > maxShardBytes) {
      shards.push([]);
      used = 0;
    }
    shards[shards.length - 1].push(t);
    used += s;
  }
  try {
    await Deno.mkdir(path, { recursive: true });
    await Deno.writeTextFile(
      `${path}/config.json`,
      JSON.stringify(mambaSsmConfigJson(cfg), null, 4) + "\n",
    );
    const written = ["config.json"];
    if (shards.length === 1) {
      await removeIfPresent(`${path}/model.safetensors.index.json`);
      await writeSafetensors(`${path}/model.safetensors`, entries, dtype);
      return [...written, "model.safetensors"];
    }
    await removeIfPresent(`${path}/model.safetensors`);
    const n = shards.length;
    const pad = (i: number) => String(i).padStart(5, "0");
    const weightMap: Record<string, string> = {};
    for (let i = 0; i < n; i++) {
      const name = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
      await writeSafetensors(`${path}/${name}`, shards[i], dtype);
      for (const t of shards[i]) weightMap[t.name] = name;
      written.push(name);
    }
    const totalSize = entries.reduce((a, t) => a + size(t), 0);
    await Deno.writeTextFile(
      `${path}/model.safetensors.index.json`,
      JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2) +
        "\n",
    );
    return [...written, "model.safetensors.index.json"];
  } catch (e) {
    if (e instanceof MambaError) throw e;
    throw new MambaError(`save: cannot write ${path}: ${(e as Error).message}`, { cause: e });
  }
}
