/** Writes safetensors files for tests (the library itself only reads them). */

/** A tensor to write. */
export interface TensorSpec {
  dtype: "F32" | "F16" | "BF16" | string;
  shape: number[];
  bytes: Uint8Array;
}

/** Serialises tensors (sorted by name, as safetensors writers do) with an optional header tweak. */
export function writeSafetensors(
  tensors: Record<string, TensorSpec>,
  tweak?: (header: Record<string, unknown>) => void,
): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } };
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const t = tensors[name];
    header[name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + t.bytes.length],
    };
    offset += t.bytes.length;
  }
  tweak?.(header);
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8) json += " ";
  const h = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + h.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.length), true);
  out.set(h, 8);
  let o = 8 + h.length;
  for (const name of names) {
    out.set(tensors[name].bytes, o);
    o += tensors[name].bytes.length;
  }
  return out;
}

/** F32 tensor spec from numbers. */
export function f32Tensor(shape: number[], values: ArrayLike<number>): TensorSpec {
  return { dtype: "F32", shape, bytes: new Uint8Array(new Float32Array(values).buffer) };
}
