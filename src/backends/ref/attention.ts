/**
 * Causal softmax attention over a KV cache, with the rotary position embedding, as plain loops:
 * the specification of the `wasm` and `webgpu` attention kernels.
 *
 * The cache of one layer holds `[batch, nKvHeads, capacity, headDim]` keys (after rotary) and
 * values; slot `p` of a sequence is its token at position `p`.
 *
 * @module
 */

import type { AttentionSpec } from "../../neox_config.ts";

/** One layer's cache. */
export interface RefKvLayer {
  /** Keys `[batch, nKvHeads, capacity, headDim]`. */
  k: Float32Array;
  /** Values, same layout. */
  v: Float32Array;
}

/**
 * Rotates the first `rotaryDim` channels of the head at `x[off…]` to position `pos`, in the
 * rotate-half (GPT-NeoX, non-interleaved) form: channel `i` pairs with `i + rotaryDim/2`, at
 * angle `pos · base^(−2i/rotaryDim)`.
 */
export function rotary(
  x: Float32Array,
  off: number,
  pos: number,
  rotaryDim: number,
  base: number,
): void {
  const half = rotaryDim / 2;
  for (let i = 0; i < half; i++) {
    // float32 like the reference: inv_freq, then the angle, are float32 values.
    const invFreq = Math.fround(1 / Math.fround(base ** Math.fround((2 * i) / rotaryDim)));
    const angle = Math.fround(pos * invFreq);
    const c = Math.cos(angle);
    const s = Math.sin(angle);
    const a = x[off + i];
    const b = x[off + i + half];
    x[off + i] = a * c - b * s;
    x[off + i + half] = b * c + a * s;
  }
}

/**
 * Attention of `seqLen` new tokens per sequence, after `pos` cached ones.
 *
 * @param qkv `[batch·seqLen, (nHeads + 2·nKvHeads)·headDim]` rows `[q | k | v]` (modified: the
 *   rotary embedding is applied in place)
 * @param capacity slots per sequence in `cache`
 * @returns `[batch·seqLen, nHeads·headDim]`
 */
export function attention(
  spec: AttentionSpec,
  qkv: Float32Array,
  batch: number,
  seqLen: number,
  pos: number,
  cache: RefKvLayer,
  capacity: number,
): Float32Array {
  const { nHeads, nKvHeads, headDim: hd, rotaryDim, rotaryBase } = spec;
  const qDim = nHeads * hd;
  const kvDim = nKvHeads * hd;
  const rowLen = qDim + 2 * kvDim;
  const slot = (b: number, g: number, p: number) => ((b * nKvHeads + g) * capacity + p) * hd;
  // Rotate q and k, and write the new keys and values into the cache.
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < seqLen; t++) {
      const row = (b * seqLen + t) * rowLen;
      const p = pos + t;
      for (let h = 0; h < nHeads; h++) rotary(qkv, row + h * hd, p, rotaryDim, rotaryBase);
      for (let g = 0; g < nKvHeads; g++) {
        rotary(qkv, row + qDim + g * hd, p, rotaryDim, rotaryBase);
        cache.k.set(qkv.subarray(row + qDim + g * hd, row + qDim + (g + 1) * hd), slot(b, g, p));
        const v0 = row + qDim + kvDim + g * hd;
        cache.v.set(qkv.subarray(v0, v0 + hd), slot(b, g, p));
      }
    }
  }
  // Each query attends to the slots up to its own position.
  const out = new Float32Array(batch * seqLen * qDim);
  const scale = 1 / Math.sqrt(hd);
  const scores = new Float32Array(pos + seqLen);
  for (let b = 0; b < batch; b++) {
    for (let t = 0; t < seqLen; t++) {
      const row = (b * seqLen + t) * rowLen;
      const last = pos + t;
      for (let h = 0; h < nHeads; h++) {
        const g = Math.floor(h / (nHeads / nKvHeads));
        let max = -Infinity;
        for (let j = 0; j <= last; j++) {
          let dot = 0;
          for (let c = 0; c < hd; c++) dot += qkv[row + h * hd + c] * cache.k[slot(b, g, j) + c];
          scores[j] = dot * scale;
          max = Math.max(max, scores[j]);
        }
        let sum = 0;
        for (let j = 0; j <= last; j++) {
          scores[j] = Math.exp(scores[j] - max);
          sum += scores[j];
        }
        const o = (b * seqLen + t) * qDim + h * hd;
        for (let j = 0; j <= last; j++) {
          const w = scores[j] / sum;
          for (let c = 0; c < hd; c++) out[o + c] += w * cache.v[slot(b, g, j) + c];
        }
      }
    }
  }
  return out;
}
