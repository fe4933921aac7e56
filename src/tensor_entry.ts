/**
 * A tensor of a checkpoint file that has not been read yet: its dtype, its shape, and how to read
 * its bytes. The loaders (safetensors, `torch.save` zip and legacy archives) all describe a file
 * as a map of these, so that weights are read one tensor at a time, never the whole file at once.
 *
 * @module
 */

import type { DType } from "./safetensors.ts";

/** One tensor of a checkpoint, read on demand. */
export interface TensorEntry {
  /** Element type as stored. */
  readonly dtype: DType;
  /** Shape, outermost axis first. */
  readonly shape: readonly number[];
  /** Bytes of its row-major data: elements × the element size. */
  readonly byteLength: number;
  /**
   * Where its values come from: two entries with the same key hold the same values (a tied
   * `lm_head.weight` viewing the embedding's storage, say), so they are read once.
   */
  readonly key: string;
  /** Reads its row-major little-endian bytes into `into` (`byteLength` bytes). */
  readInto(into: Uint8Array): Promise<void>;
}

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = { F32: 4, F16: 2, BF16: 2 };

/** A tensor already in memory, as the loaders' {@link TensorEntry}. */
export function memoryEntry(
  key: string,
  t: { dtype: DType; shape: readonly number[]; bytes: Uint8Array },
): TensorEntry {
  return {
    dtype: t.dtype,
    shape: t.shape,
    byteLength: t.bytes.byteLength,
    key,
    readInto: (into) => {
      into.set(t.bytes.subarray(0, into.byteLength));
      return Promise.resolve();
    },
  };
}
