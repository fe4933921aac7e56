//! SIMD helpers and the math functions (exp, log, log1p, softplus, silu, f16 widening) shared by
//! the kernels. Everything here is `#[inline(always)]` and branch-free per lane.
//!
//! Accuracy (measured over dense sweeps by the TS tests): `exp4` and `log1p4` stay within about
//! 2 ulp (relative error < 2.5e-7); `softplus4` and `silu4` inherit that.

use core::arch::wasm32::*;

/// Broadcasts `x` to all four lanes.
#[inline(always)]
pub fn splat(x: f32) -> v128 {
    f32x4_splat(x)
}

/// Unaligned load of four f32.
#[inline(always)]
pub unsafe fn ld(p: *const f32) -> v128 {
    v128_load(p as *const v128)
}

/// Unaligned store of four f32.
#[inline(always)]
pub unsafe fn st(p: *mut f32, v: v128) {
    v128_store(p as *mut v128, v)
}

/// Lane-wise `a + b`.
#[inline(always)]
pub fn add(a: v128, b: v128) -> v128 {
    f32x4_add(a, b)
}

/// Lane-wise `a - b`.
#[inline(always)]
pub fn sub(a: v128, b: v128) -> v128 {
    f32x4_sub(a, b)
}

/// Lane-wise `a * b`.
#[inline(always)]
pub fn mul(a: v128, b: v128) -> v128 {
    f32x4_mul(a, b)
}

/// Lane-wise `acc + a * b` (two roundings: wasm SIMD has no fused multiply-add).
#[inline(always)]
pub fn madd(acc: v128, a: v128, b: v128) -> v128 {
    f32x4_add(acc, f32x4_mul(a, b))
}

/// Horizontal sum `(v0 + v2) + (v1 + v3)`.
#[inline(always)]
pub fn hsum(v: v128) -> f32 {
    let s = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    let s = f32x4_add(s, i32x4_shuffle::<1, 0, 3, 2>(s, s));
    f32x4_extract_lane::<0>(s)
}

/// Lane 0 of a vector.
#[inline(always)]
pub fn lane0(v: v128) -> f32 {
    f32x4_extract_lane::<0>(v)
}

/// Loads `count` (0..=4) f32 from `p` with element stride `stride`; missing lanes are 0.
#[inline(always)]
pub unsafe fn ld_partial(p: *const f32, stride: usize, count: usize) -> v128 {
    let mut t = [0f32; 4];
    let mut i = 0;
    while i < count {
        t[i] = *p.add(i * stride);
        i += 1;
    }
    v128_load(t.as_ptr() as *const v128)
}

/// Stores the first `count` (0..=4) lanes of `v` at `p` with element stride `stride`.
#[inline(always)]
pub unsafe fn st_partial(p: *mut f32, stride: usize, count: usize, v: v128) {
    let mut t = [0f32; 4];
    v128_store(t.as_mut_ptr() as *mut v128, v);
    let mut i = 0;
    while i < count {
        *p.add(i * stride) = t[i];
        i += 1;
    }
}

/// Loads four f32 with element stride `stride` (`stride == 1` is a plain vector load).
#[inline(always)]
pub unsafe fn ld_strided(p: *const f32, stride: usize) -> v128 {
    if stride == 1 {
        ld(p)
    } else {
        f32x4(*p, *p.add(stride), *p.add(2 * stride), *p.add(3 * stride))
    }
}

/// Stores four f32 with element stride `stride`.
#[inline(always)]
pub unsafe fn st_strided(p: *mut f32, stride: usize, v: v128) {
    if stride == 1 {
        st(p, v)
    } else {
        *p = f32x4_extract_lane::<0>(v);
        *p.add(stride) = f32x4_extract_lane::<1>(v);
        *p.add(2 * stride) = f32x4_extract_lane::<2>(v);
        *p.add(3 * stride) = f32x4_extract_lane::<3>(v);
    }
}

// ---------------------------------------------------------------------------------------------
// exp

const LOG2E: f32 = 1.442_695_04;
// Cody-Waite split of ln 2: LN2_HI has 9 significant bits, so k * LN2_HI is exact for |k| < 2^15.
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x` per lane. Relative error about 1-2 ulp over the whole range; returns exactly 0 below
/// about -103.9, +inf above about 88.72, NaN for NaN. Never touches subnormal operands in its
/// multiplications except for results that are themselves subnormal.
#[inline(always)]
pub fn exp4(x: v128) -> v128 {
    let x = f32x4_min(f32x4_max(x, splat(-104.0)), splat(88.8));
    let kf = f32x4_nearest(mul(x, splat(LOG2E)));
    let r = sub(sub(x, mul(kf, splat(LN2_HI))), mul(kf, splat(LN2_LO)));
    let z = mul(r, r);
    // Cephes expf minimax polynomial on [-ln2/2, ln2/2].
    let mut p = splat(1.987_569_15e-4);
    p = madd(splat(1.398_199_95e-3), p, r);
    p = madd(splat(8.333_451_9e-3), p, r);
    p = madd(splat(4.166_579_6e-2), p, r);
    p = madd(splat(1.666_666_5e-1), p, r);
    p = madd(splat(5.000_000_1e-1), p, r);
    let y = add(add(mul(p, z), r), splat(1.0));
    // 2^k as two factors so that k in [-150, 128] never leaves the normal exponent range.
    let k = i32x4_trunc_sat_f32x4(kf);
    let k1 = i32x4_shr(k, 1);
    let k2 = i32x4_sub(k, k1);
    let s1 = i32x4_shl(i32x4_add(k1, i32x4_splat(127)), 23);
    let s2 = i32x4_shl(i32x4_add(k2, i32x4_splat(127)), 23);
    mul(mul(y, s1), s2)
}

/// Scalar `e^x` (the SIMD routine on one lane).
#[inline(always)]
pub fn exp1(x: f32) -> f32 {
    lane0(exp4(splat(x)))
}

// ---------------------------------------------------------------------------------------------
// log / log1p

/// Natural log per lane for positive, finite, normal inputs (what softplus and log1p need).
#[inline(always)]
pub fn log4(x: v128) -> v128 {
    let bits = x;
    let mut e = i32x4_sub(u32x4_shr(bits, 23), i32x4_splat(127));
    let mut m = v128_or(
        v128_and(bits, i32x4_splat(0x007f_ffff)),
        i32x4_splat(0x3f80_0000),
    );
    // m in [1, 2): fold the upper part to [sqrt(1/2), 1) so that f = m - 1 is small.
    let big = f32x4_gt(m, splat(core::f32::consts::SQRT_2));
    m = v128_bitselect(mul(m, splat(0.5)), m, big);
    e = i32x4_sub(e, big); // big lanes are -1
    let f = sub(m, splat(1.0));
    let ef = f32x4_convert_i32x4(e);
    let z = mul(f, f);
    // Cephes logf polynomial.
    let mut p = splat(7.037_683_6e-2);
    p = madd(splat(-1.151_461_0e-1), p, f);
    p = madd(splat(1.167_699_9e-1), p, f);
    p = madd(splat(-1.242_014_1e-1), p, f);
    p = madd(splat(1.424_932_3e-1), p, f);
    p = madd(splat(-1.666_805_8e-1), p, f);
    p = madd(splat(2.000_071_5e-1), p, f);
    p = madd(splat(-2.499_999_4e-1), p, f);
    p = madd(splat(3.333_333_1e-1), p, f);
    let mut y = mul(mul(f, z), p);
    y = madd(y, ef, splat(LN2_LO));
    y = sub(y, mul(z, splat(0.5)));
    let r = add(f, y);
    madd(r, ef, splat(LN2_HI))
}

/// `ln(1 + u)` per lane for `u > -1` finite, accurate also for tiny `u` (Goldberg's trick:
/// `log(w) * u / (w - 1)` with `w = 1 + u`, and `u` itself when `w == 1`).
#[inline(always)]
pub fn log1p4(u: v128) -> v128 {
    let w = add(splat(1.0), u);
    let d = sub(w, splat(1.0));
    let r = mul(log4(w), f32x4_div(u, d));
    v128_bitselect(u, r, f32x4_eq(d, splat(0.0)))
}

/// PyTorch's softplus (beta 1, threshold 20): `x > 20 ? x : log1p(exp(x))`.
#[inline(always)]
pub fn softplus4(x: v128) -> v128 {
    let r = log1p4(exp4(x));
    v128_bitselect(x, r, f32x4_gt(x, splat(20.0)))
}

/// Scalar softplus.
#[inline(always)]
pub fn softplus1(x: f32) -> f32 {
    lane0(softplus4(splat(x)))
}

/// SiLU `x * sigmoid(x) = x / (1 + e^-x)`.
#[inline(always)]
pub fn silu4(x: v128) -> v128 {
    f32x4_div(x, add(splat(1.0), exp4(f32x4_neg(x))))
}

/// Scalar SiLU.
#[inline(always)]
pub fn silu1(x: f32) -> f32 {
    lane0(silu4(splat(x)))
}

// ---------------------------------------------------------------------------------------------
// f16 -> f32

/// 2^112: rescales an f16 exponent/mantissa placed in f32 position to its value.
const F16_SCALE: f32 = 5.192_296_9e33;

/// Widens eight IEEE binary16 values (one v128 of u16) to two f32x4 (elements 0-3, 4-7).
///
/// Branch-free and exact for every bit pattern (zeros, subnormals, normals, ±inf; NaN stays
/// NaN). The bit work is done on 16-bit lanes (eight at a time): each half's sign, exponent and
/// mantissa are placed at their f32 positions (upper 16 bits `sign | (h & 0x7fff) >> 3`, lower 16 bits
/// `em << 13`), which yields an f32 equal to the half times 2^-112; one multiplication by 2^112
/// then rebias the exponent, and also normalizes half subnormals exactly. For Inf/NaN the f32
/// exponent is forced to all ones first, so they stay Inf/NaN through the multiplication.
#[inline(always)]
pub fn f16x8_to_f32(h: v128) -> (v128, v128) {
    // Arithmetic shift: s eeeee mmmmmmmmmm -> ssss eeeee mmmmmmm; keep one sign bit.
    let up = v128_and(i16x8_shr(h, 3), i16x8_splat(0x8fff_u16 as i16));
    let infnan = i16x8_eq(v128_and(h, i16x8_splat(0x7c00)), i16x8_splat(0x7c00));
    let up = v128_or(up, v128_and(infnan, i16x8_splat(0x7f80)));
    let lo = i16x8_shl(h, 13);
    let x0 = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(lo, up);
    let x1 = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(lo, up);
    (mul(x0, splat(F16_SCALE)), mul(x1, splat(F16_SCALE)))
}

/// As `f16x8_to_f32` without the final multiplication: returns each half times 2^-112 (exact;
/// ±inf and NaN stay so). A dot product with x pre-scaled by 2^112 then equals the unscaled one
/// bit for bit, one multiplication per four weights cheaper.
#[inline(always)]
pub fn f16x8_to_f32_scaled_down(h: v128) -> (v128, v128) {
    let up = v128_and(i16x8_shr(h, 3), i16x8_splat(0x8fff_u16 as i16));
    let infnan = i16x8_eq(v128_and(h, i16x8_splat(0x7c00)), i16x8_splat(0x7c00));
    let up = v128_or(up, v128_and(infnan, i16x8_splat(0x7f80)));
    let lo = i16x8_shl(h, 13);
    (
        i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(lo, up),
        i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(lo, up),
    )
}

/// The factor `f16x8_to_f32_scaled_down` leaves out (2^112).
pub const F16_UNSCALE: f32 = F16_SCALE;

/// Loads eight halves at `p` and returns them widened as two f32x4 (elements 0-3, 4-7).
#[inline(always)]
pub unsafe fn ld_f16x8(p: *const u16) -> (v128, v128) {
    f16x8_to_f32(v128_load(p as *const v128))
}

/// Loads four halves at `p` widened to f32x4.
#[inline(always)]
pub unsafe fn ld_f16x4(p: *const u16) -> v128 {
    f16x8_to_f32(v128_load64_zero(p as *const u64)).0
}

/// Scalar f16 -> f32.
#[inline(always)]
pub fn f16_to_f32_1(h: u16) -> f32 {
    lane0(f16x8_to_f32(i16x8_splat(h as i16)).0)
}

// ---------------------------------------------------------------------------------------------
// int -> f32 (small integers)

/// Exact f32 of i32 lanes in [-2^22, 2^22) via the 1.5·2^23 magic number. Used instead of
/// `f32x4_convert_i32x4` right after a sign extension, because LLVM folds extend + convert into
/// a narrow conversion that the wasm backend then scalarizes.
#[inline(always)]
pub fn small_i32x4_to_f32(v: v128) -> v128 {
    sub(i32x4_add(v, i32x4_splat(0x4b40_0000)), splat(12_582_912.0))
}

/// Loads sixteen i8 at `p` and returns them as four f32x4.
#[inline(always)]
pub unsafe fn ld_i8x16(p: *const i8) -> [v128; 4] {
    let b = v128_load(p as *const v128);
    let lo = i16x8_extend_low_i8x16(b);
    let hi = i16x8_extend_high_i8x16(b);
    [
        small_i32x4_to_f32(i32x4_extend_low_i16x8(lo)),
        small_i32x4_to_f32(i32x4_extend_high_i16x8(lo)),
        small_i32x4_to_f32(i32x4_extend_low_i16x8(hi)),
        small_i32x4_to_f32(i32x4_extend_high_i16x8(hi)),
    ]
}

/// Loads four i8 at `p` as f32x4.
#[inline(always)]
pub unsafe fn ld_i8x4(p: *const i8) -> v128 {
    let b = v128_load32_zero(p as *const u32);
    small_i32x4_to_f32(i32x4_extend_low_i16x8(i16x8_extend_low_i8x16(b)))
}
