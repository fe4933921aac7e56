/**
 * A strict reader for the safetensors format: an 8-byte little-endian header length N, N bytes of
 * JSON describing each tensor, then the raw little-endian row-major data. Every offset is checked
 * against the file before it is used, no name may appear twice, offsets are aligned to the element
 * size, and the tensors must tile the data exactly, so a truncated, padded or corrupt file gives a
 * {@link WeightsError} that says what is wrong, never a crash or a silently wrong tensor.
 *
 * A file is read whole ({@link parseSafetensors}) or header first, then tensor by tensor from a
 * {@link ByteSource} ({@link openSafetensors}), which is how models load.
 *
 * @module
 */

import type { ByteSource } from "./byte_source.ts";
import { WeightsError } from "./errors.ts";
import { bf16ArrayToF32, f16ArrayToF32 } from "./half.ts";
import { DTYPE_SIZE, type TensorEntry } from "./tensor_entry.ts";

/** The element types the library reads. */
export type DType = "F32" | "F16" | "BF16";

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

/**
 * Element sizes of the format's other dtypes: tensors of these load only when ignored (left out
 * by the caller's `ignore`), but their bytes still count when the data region is checked.
 */
const OTHER_DTYPE_SIZE: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  I16: 2,
  U16: 2,
  I32: 4,
  U32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
};

/** Largest header the reader accepts (the format's own limit is 100 MB). */
const MAX_HEADER_BYTES = 100_000_000;

/** One tensor of a header: where its bytes lie in the data region. */
export interface SafetensorsEntry {
  /** Its name in the file. */
  readonly name: string;
  /** Element type as stored. */
  readonly dtype: DType;
  /** Shape, outermost axis first. */
  readonly shape: readonly number[];
  /** Start of its bytes, counted from the start of the data region. */
  readonly begin: number;
  /** End (exclusive) of its bytes. */
  readonly end: number;
}

/** The size of a file's header, from its first 8 bytes. */
export function safetensorsHeaderLength(
  first8: Uint8Array,
  fileSize: number,
  name: string,
): number {
  if (fileSize < 8 || first8.byteLength < 8) {
    throw new WeightsError(`${name}: truncated: ${fileSize} bytes, no 8-byte header length`);
  }
  const headerLen = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (headerLen > BigInt(fileSize - 8)) {
    throw new WeightsError(
      `${name}: header length ${headerLen} goes beyond the end of the file (${fileSize} bytes)`,
    );
  }
  const n = Number(headerLen);
  if (n > MAX_HEADER_BYTES) throw new WeightsError(`${name}: header of ${n} bytes is too large`);
  return n;
}

/**
 * Parses and checks a safetensors header against the size of the data region that follows it:
 * every dtype, shape and range; offsets aligned to the element size; no name twice; and the
 * tensors covering the data region exactly, with no gap, no overlap and nothing after the last.
 *
 * @param header the JSON bytes
 * @param dataLength bytes in the file after the header
 * @param name the file, for messages
 * @param ignore names of tensors to leave out of the result (they may have any of the format's
 *   dtypes; their ranges are checked all the same)
 * @returns the tensors in the order of their data, and `__metadata__`
 * @throws {WeightsError} naming the file and the tensor.
 */
export function parseSafetensorsHeader(
  header: Uint8Array,
  dataLength: number,
  name: string,
  ignore?: (name: string) => boolean,
): { entries: SafetensorsEntry[]; metadata: Record<string, string> } {
  let text: string;
  let json: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(header);
    json = JSON.parse(text);
  } catch (e) {
    throw new WeightsError(`${name}: header is not valid UTF-8 JSON: ${(e as Error).message}`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new WeightsError(`${name}: header is not a JSON object`);
  }
  // JSON.parse keeps the last of two equal keys: look for them in the text itself.
  const seen = new Set<string>();
  for (const key of topLevelKeys(text)) {
    if (seen.has(key)) {
      throw new WeightsError(`${name}: tensor "${key}" appears twice in the header`);
    }
    seen.add(key);
  }
  let metadata: Record<string, string> = {};
  const entries: SafetensorsEntry[] = [];
  /** Every tensor's range, the ignored ones too, for the coverage check. */
  const ranges: SafetensorsEntry[] = [];
  for (const [key, value] of Object.entries(json as Record<string, unknown>)) {
    if (key === "__metadata__") {
      if (
        typeof value !== "object" || value === null || Array.isArray(value) ||
        !Object.values(value).every((v) => typeof v === "string")
      ) {
        throw new WeightsError(`${name}: __metadata__ is not a map of strings`);
      }
      metadata = value as Record<string, string>;
      continue;
    }
    const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof entry !== "object" || entry === null) {
      throw new WeightsError(`${name}: tensor "${key}": entry is not an object`);
    }
    const dtype = entry.dtype;
    const ignored = ignore?.(key) ?? false;
    if (
      typeof dtype !== "string" ||
      !(Object.hasOwn(DTYPE_SIZE, dtype) || (ignored && Object.hasOwn(OTHER_DTYPE_SIZE, dtype)))
    ) {
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
    if (end > dataLength) {
      throw new WeightsError(
        `${name}: tensor "${key}": data_offsets [${begin}, ${end}] go beyond the data (${dataLength} bytes; file truncated?)`,
      );
    }
    const size = DTYPE_SIZE[dtype as DType] ?? OTHER_DTYPE_SIZE[dtype];
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    const want = count * size;
    if (end - begin !== want) {
      throw new WeightsError(
        `${name}: tensor "${key}": shape [${shape}] of ${dtype} needs ${want} bytes but data_offsets span ${
          end - begin
        }`,
      );
    }
    if (begin % size !== 0) {
      throw new WeightsError(
        `${name}: tensor "${key}": data_offsets begin ${begin} is not a multiple of the ${dtype} size (${size} bytes)`,
      );
    }
    const e = { name: key, dtype: dtype as DType, shape: shape as number[], begin, end };
    ranges.push(e);
    if (!ignored) entries.push(e);
  }
  // The tensors must tile the data region exactly: a gap, an overlap or bytes after the last
  // tensor mean a damaged file (a header length one byte short leaves one byte over, say).
  ranges.sort((a, b) => a.begin - b.begin || a.end - b.end);
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let last = "";
  for (const e of ranges) {
    if (e.begin < covered) {
      throw new WeightsError(
        `${name}: tensors "${last}" and "${e.name}" have overlapping data_offsets`,
      );
    }
    if (e.begin > covered) {
      throw new WeightsError(
        `${name}: tensor "${e.name}": bytes [${covered}, ${e.begin}) of the data before it belong to no tensor`,
      );
    }
    covered = e.end;
    last = e.name;
  }
  if (covered !== dataLength) {
    throw new WeightsError(
      `${name}: ${dataLength - covered} byte${dataLength - covered === 1 ? "" : "s"} after ${
        last ? `the last tensor ("${last}")` : "the header"
      } belong to no tensor (bytes appended, or a wrong header length?)`,
    );
  }
  return { entries, metadata };
}

/**
 * The keys of the top-level object of valid JSON text, in order, duplicates kept. A small scan:
 * strings are decoded, nested values skipped.
 */
function topLevelKeys(text: string): string[] {
  const keys: string[] = [];
  let i = 0;
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const string = (): string => {
    const start = i++; // the opening quote
    while (text[i] !== '"') i += text[i] === "\\" ? 2 : 1;
    i++;
    return JSON.parse(text.slice(start, i));
  };
  /** Skips one value: a string, a nested object or array, or a bare number / literal. */
  const skipValue = () => {
    let depth = 0;
    while (i < text.length) {
      const c = text[i];
      if (c === '"') {
        string();
        if (depth === 0) return;
        continue;
      }
      if (c === "{" || c === "[") depth++;
      else if (c === "}" || c === "]") {
        if (depth === 0) return; // the end of the top-level object
        if (--depth === 0) {
          i++;
          return;
        }
      } else if (depth === 0 && (c === "," || " \t\n\r".includes(c))) return;
      i++;
    }
  };
  ws();
  i++; // {
  ws();
  while (i < text.length && text[i] !== "}") {
    keys.push(string());
    ws();
    i++; // :
    ws();
    skipValue();
    ws();
    if (text[i] === ",") i++;
    ws();
  }
  return keys;
}

/**
 * Parses a safetensors file held in memory. Tensors view `file` without copying.
 *
 * @param file the whole file
 * @param name a name for error messages (the path, say)
 * @throws {WeightsError} on a truncated file, a header length beyond the file, bad JSON, an
 *   unknown dtype, a shape that does not match its byte range, a name given twice, offsets not
 *   aligned to the element size, or data_offsets that overlap, leave a gap or leave bytes over.
 * @example
 * ```ts
 * import { parseSafetensors } from "@mamba/mamba";
 * const st = parseSafetensors(await Deno.readFile("model.safetensors"));
 * for (const [name, t] of st.tensors) console.log(name, t.dtype, t.shape);
 * ```
 */
export function parseSafetensors(file: Uint8Array, name = "safetensors file"): SafetensorsFile {
  const n = safetensorsHeaderLength(file.subarray(0, 8), file.byteLength, name);
  const data = file.subarray(8 + n);
  const { entries, metadata } = parseSafetensorsHeader(
    file.subarray(8, 8 + n),
    data.byteLength,
    name,
  );
  const tensors = new Map<string, SafetensorsTensor>();
  for (const e of entries) {
    tensors.set(e.name, {
      dtype: e.dtype,
      shape: e.shape,
      bytes: data.subarray(e.begin, e.end),
    });
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

/**
 * Opens a safetensors file for reading tensor by tensor: reads and checks the header only (see
 * {@link parseSafetensorsHeader}); each entry reads its own byte range when asked. Tensors whose
 * names `ignore` accepts are left out, whatever their dtype.
 *
 * @throws {WeightsError} naming the file and the tensor.
 */
export async function openSafetensors(
  src: ByteSource,
  ignore?: (name: string) => boolean,
): Promise<Map<string, TensorEntry>> {
  const n = safetensorsHeaderLength(await src.read(0, Math.min(8, src.size)), src.size, src.name);
  const dataStart = 8 + n;
  const { entries } = parseSafetensorsHeader(
    await src.read(8, n),
    src.size - dataStart,
    src.name,
    ignore,
  );
  const out = new Map<string, TensorEntry>();
  for (const e of entries) {
    out.set(e.name, {
      dtype: e.dtype,
      shape: e.shape,
      byteLength: e.end - e.begin,
      key: `${src.name}@${e.begin}:${e.end}`,
      readInto: (into) => src.readInto(dataStart + e.begin, into),
    });
  }
  return out;
}
