/**
 * Conversions between IEEE half / bfloat16 bit patterns and float32.
 *
 * @module
 */

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Decodes one IEEE 754 binary16 bit pattern to a number (exact). */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero or subnormal
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Encodes a number as the nearest IEEE binary16 bit pattern (round to nearest even). */
export function f32ToF16(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let m = mant >> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && (m & 1))) m++;
    return sign | m;
  }
  let m = mant >> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (m & 1))) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

const F16_TABLE = new Float32Array(65536);
for (let i = 0; i < 65536; i++) F16_TABLE[i] = f16ToF32(i);

/** Widens a whole array of binary16 bit patterns to float32. */
export function f16ArrayToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = F16_TABLE[bits[i]];
  return out;
}

/** Widens a whole array of bfloat16 bit patterns to float32 (exact: bf16 is the top half). */
export function bf16ArrayToF32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  const outBits = new Uint32Array(out.buffer);
  for (let i = 0; i < bits.length; i++) outBits[i] = bits[i] << 16;
  return out;
}

/**
 * Narrows float32 values to binary16 bit patterns (round to nearest even). Values in the normal
 * half range take an integer shortcut (F. Giesen's `float_to_half_fast3_rtne`: rebias the
 * exponent and round in one add, a mantissa carry moving into the exponent as it should); the
 * rest go through {@link f32ToF16}. The same bits, about 5× faster: loading a 2.8b model as f16
 * narrows 2.8 billion values.
 */
export function f32ArrayToF16(values: Float32Array): Uint16Array {
  const bits = new Int32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    const abs = b & 0x7fffffff;
    // 2^-14 (the smallest normal half) ≤ |x| < 2^16: rebias by (15 − 127) << 23, add 0xfff
    // plus the lowest kept bit (ties to even), keep the top bits.
    if (abs >= 0x38800000 && abs < 0x47800000) {
      const r = (abs + 0xc8000fff + ((abs >>> 13) & 1)) | 0;
      out[i] = ((b >>> 16) & 0x8000) | ((r >>> 13) & 0xffff);
    } else out[i] = f32ToF16(values[i]);
  }
  return out;
}
