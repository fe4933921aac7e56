/**
 * A strict reader for the safetensors format: an 8-byte little-endian header length N, N bytes of
 * JSON describing each tensor, then the raw little-endian row-major data. Every offset is checked
 * against the file before it is used, so a truncated or corrupt file gives a {@link WeightsError}
 * that says what is wrong, never a crash or a silently wrong tensor.
 *
 * @module
 */

import { WeightsError } from "./errors.ts";
import { bf16ArrayToF32, f16ArrayToF32 } from "./half.ts";

/** The element types the library reads. */
export type DType = "F32" | "F16" | "BF16";

const BYTES_PER_ELEMENT: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };

/** One tensor of a safetensors file, viewing the file's bytes (no copy). */
export interface SafetensorsTensor {
  /** Element type as stored. */
  readonly dtype: DType;
  /** Shape, outermost axis first. */
  readonly shape: readonly number[];
  /** The raw little-endian bytes of the tensor. */
  readonly bytes: Uint8Array;
}

/** A parsed safetensors file: its tensors by name and its `__metadata__`. */
export interface SafetensorsFile {
  /** Tensors by name. */
  readonly tensors: Map<string, SafetensorsTensor>;
  /** The optional string-to-string `__metadata__` map. */
  readonly metadata: Record<string, string>;
}

/** Largest header the reader accepts (the format's own limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

/**
 * Parses a safetensors file held in memory. Tensors view `file` without copying.
 *
 * @param file the whole file
 * @param name a name for error messages (the path, say)
 * @throws {WeightsError} on a truncated file, a header length beyond the file, bad JSON, an
 *   unknown dtype, a shape that does not match its byte range, or overlapping / out-of-range
 *   `data_offsets`.
 * @example
 * ```ts
 * import { parseSafetensors } from "@mamba/mamba";
 * const st = parseSafetensors(await Deno.readFile("model.safetensors"));
 * for (const [name, t] of st.tensors) console.log(name, t.dtype, t.shape);
 * ```
 */
export function parseSafetensors(file: Uint8Array, name = "safetensors file"): SafetensorsFile {
  if (file.byteLength < 8) {
    throw new WeightsError(`${name}: truncated: ${file.byteLength} bytes, no 8-byte header length`);
  }
  const dv = new DataView(file.buffer, file.byteOffset, file.byteLength);
  const headerLen = dv.getBigUint64(0, true);
  if (headerLen > BigInt(file.byteLength - 8)) {
    throw new WeightsError(
      `${name}: header length ${headerLen} goes beyond the end of the file (${file.byteLength} bytes)`,
    );
  }
  const n = Number(headerLen);
  if (n > MAX_HEADER_BYTES) throw new WeightsError(`${name}: header of ${n} bytes is too large`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(file.subarray(8, 8 + n)));
  } catch (e) {
    throw new WeightsError(`${name}: header is not valid UTF-8 JSON: ${(e as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    throw new WeightsError(`${name}: header is not a JSON object`);
  }
  const data = file.subarray(8 + n);
  const tensors = new Map<string, SafetensorsTensor>();
  let metadata: Record<string, string> = {};
  const ranges: [number, number, string][] = [];
  for (const [key, value] of Object.entries(header as Record<string, unknown>)) {
    if (key === "__metadata__") {
      metadata = (value ?? {}) as Record<string, string>;
      continue;
    }
    const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof entry !== "object" || entry === null) {
      throw new WeightsError(`${name}: tensor "${key}": entry is not an object`);
    }
    const dtype = entry.dtype;
    if (typeof dtype !== "string" || !(dtype in BYTES_PER_ELEMENT)) {
      throw new WeightsError(
        `${name}: tensor "${key}": unsupported dtype ${JSON.stringify(dtype)} (F32, F16, BF16)`,
      );
    }
    const shape = entry.shape;
    if (
      !Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)
    ) {
      throw new WeightsError(`${name}: tensor "${key}": bad shape ${JSON.stringify(shape)}`);
    }
    const off = entry.data_offsets;
    if (
      !Array.isArray(off) || off.length !== 2 ||
      !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1]
    ) {
      throw new WeightsError(`${name}: tensor "${key}": bad data_offsets ${JSON.stringify(off)}`);
    }
    const [begin, end] = off as [number, number];
    if (end > data.byteLength) {
      throw new WeightsError(
        `${name}: tensor "${key}": data_offsets [${begin}, ${end}] go beyond the data (${data.byteLength} bytes; file truncated?)`,
      );
    }
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    const want = count * BYTES_PER_ELEMENT[dtype as DType];
    if (end - begin !== want) {
      throw new WeightsError(
        `${name}: tensor "${key}": shape [${shape}] of ${dtype} needs ${want} bytes but data_offsets span ${
          end - begin
        }`,
      );
    }
    ranges.push([begin, end, key]);
    tensors.set(key, {
      dtype: dtype as DType,
      shape: shape as number[],
      bytes: data.subarray(begin, end),
    });
  }
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][0] < ranges[i - 1][1]) {
      throw new WeightsError(
        `${name}: tensors "${ranges[i - 1][2]}" and "${
          ranges[i][2]
        }" have overlapping data_offsets`,
      );
    }
  }
  return { tensors, metadata };
}

/**
 * Reads a tensor's elements as float32 (F16 and BF16 are widened exactly).
 *
 * @example
 * ```ts
 * import { parseSafetensors, tensorToF32 } from "@mamba/mamba";
 * const st = parseSafetensors(await Deno.readFile("model.safetensors"));
 * const w = tensorToF32(st.tensors.get("backbone.norm_f.weight")!);
 * ```
 */
export function tensorToF32(t: SafetensorsTensor): Float32Array {
  const n = t.shape.reduce((a, b) => a * b, 1);
  if (t.dtype === "F32") {
    const out = new Float32Array(n);
    new Uint8Array(out.buffer).set(t.bytes);
    return out;
  }
  const bits = tensorBits16(t);
  return t.dtype === "F16" ? f16ArrayToF32(bits) : bf16ArrayToF32(bits);
}

/** The raw 16-bit patterns of an F16 or BF16 tensor (copied, so aligned). */
export function tensorBits16(t: SafetensorsTensor): Uint16Array {
  const out = new Uint16Array(t.bytes.byteLength / 2);
  new Uint8Array(out.buffer).set(t.bytes);
  return out;
}
