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

/// Lane-wise `acc + a * b` for the linear-layer microkernels: one fused multiply-add
/// (`f32x4.relaxed_madd`) in the relaxed-SIMD build, `madd` (multiply, then add) in the plain one.
///
/// Relaxed SIMD leaves it to the engine whether `relaxed_madd` rounds once or twice (V8 on x64 with
/// FMA3 fuses it); either way each lane is within one rounding of `madd`, so results may differ
/// from the plain build in the last bits, never more. The math functions (`exp4`, `log4`, …)
/// keep `madd`, so that their measured error bounds hold for both builds.
#[inline(always)]
pub fn fma(acc: v128, a: v128, b: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_madd(a, b, acc)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        madd(acc, a, b)
    }
}

/// Lane-wise `b < a ? b : a` (wasm `f32x4.pmin`: `a` when either is NaN).
///
/// With relaxed SIMD enabled LLVM turns `f32x4_pmin(a, b)` into `f32x4.relaxed_min(a, b)`, whose
/// result for a NaN is up to the engine: V8 on x64 (`minps`) returns the second operand, so
/// `exp4(NaN)` came out 0. The relaxed build therefore asks for `relaxed_min(b, a)` itself: on x64
/// that is `minps(b, a)` = `b < a ? b : a` exactly, on ARM an IEEE minimum that propagates NaN;
/// one instruction either way (spelling the selection out as a bitselect costs four).
#[inline(always)]
pub fn pmin(a: v128, b: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_min(b, a)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_pmin(a, b)
    }
}

/// Lane-wise `a < b ? b : a` (wasm `f32x4.pmax`; see `pmin`: `relaxed_max(b, a)` in the relaxed
/// build, `maxps(b, a)` on x64).
#[inline(always)]
pub fn pmax(a: v128, b: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_max(b, a)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_pmax(a, b)
    }
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
// exp / log / log1p / softplus / silu

/// log2(e).
pub const LOG2E: f32 = 1.442_695_04;
// Cody-Waite split of ln 2: LN2_HI has 9 significant bits, so k * LN2_HI is exact for |k| < 2^15.
const LN2_HI: f32 = 0.693_359_375;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 * 2^23: adding it rounds to an integer (to nearest even) that then sits in the low bits.
const MAGIC: f32 = 12_582_912.0;

macro_rules! sp {
    ($x:expr) => {
        f32x4($x, $x, $x, $x)
    };
}
macro_rules! spi {
    ($x:expr) => {
        i32x4($x, $x, $x, $x)
    };
}

/// The vector constants of the math functions, loaded from memory once per kernel call.
///
/// V8 materializes every `v128.const` with several instructions at each use and does not hoist
/// them out of loops, which made `exp4` several times slower than its arithmetic. Loading the
/// constants through a volatile read at the top of a kernel turns them into locals (registers or
/// one-instruction spill reloads) instead.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Math {
    exp_lo: v128,
    exp_hi: v128,
    log2e: v128,
    magic: v128,
    ln2_hi: v128,
    ln2_lo: v128,
    ep: [v128; 5],
    one: v128,
    half: v128,
    i127: v128,
    mant: v128,
    sqrt2: v128,
    lp: [v128; 9],
    twenty: v128,
    sign: v128,
}

static MATH: Math = Math {
    exp_lo: sp!(-104.0),
    exp_hi: sp!(88.8),
    log2e: sp!(LOG2E),
    magic: sp!(MAGIC),
    ln2_hi: sp!(LN2_HI),
    ln2_lo: sp!(LN2_LO),
    // e^r = 1 + r + r^2 P(r) on [-ln2/2, ln2/2], P of degree 4 fitted for relative error
    // (3.8e-9 before f32 rounding; highest degree first).
    ep: [
        sp!(1.375_140_7e-3),
        sp!(8.368_916e-3),
        sp!(4.166_953_3e-2),
        sp!(1.666_651_8e-1),
        sp!(4.999_998_8e-1),
    ],
    one: sp!(1.0),
    half: sp!(0.5),
    i127: spi!(127),
    mant: spi!(0x007f_ffff),
    sqrt2: sp!(core::f32::consts::SQRT_2),
    // Cephes logf polynomial on [sqrt(1/2) - 1, sqrt(2) - 1] (highest degree first).
    lp: [
        sp!(7.037_683_6e-2),
        sp!(-1.151_461_0e-1),
        sp!(1.167_699_9e-1),
        sp!(-1.242_014_1e-1),
        sp!(1.424_932_3e-1),
        sp!(-1.666_805_8e-1),
        sp!(2.000_071_5e-1),
        sp!(-2.499_999_4e-1),
        sp!(3.333_333_1e-1),
    ],
    twenty: sp!(20.0),
    sign: spi!(i32::MIN),
};

impl Math {
    /// Loads the constants (call once, outside the loops).
    #[inline(always)]
    pub fn get() -> Math {
        unsafe { core::ptr::read_volatile(&MATH) }
    }

    /// `e^x` per lane. Relative error about 1-2 ulp over the whole range; returns exactly 0
    /// below about -103.9, +inf above about 88.72, NaN for NaN. Never puts a subnormal operand
    /// into a multiplication except for results that are themselves subnormal.
    ///
    /// Written for V8's x64 lowering: `pmin`/`pmax` (plain minps/maxps) instead of the IEEE
    /// `min`/`max`, and the 1.5·2^23 magic number instead of `nearest` + `trunc_sat` to round
    /// `x·log2(e)` to an integer k and get k as bits at the same time.
    #[inline(always)]
    pub fn exp4(&self, x: v128) -> v128 {
        // NaN stays NaN: pmax/pmin return their first operand when the comparison is false.
        let x = pmin(pmax(x, self.exp_lo), self.exp_hi);
        let t = add(mul(x, self.log2e), self.magic);
        let kf = sub(t, self.magic); // x * log2(e) rounded to nearest even
        let k = i32x4_sub(t, self.magic); // the same integer, from the bits
        let r = sub(sub(x, mul(kf, self.ln2_hi)), mul(kf, self.ln2_lo));
        let z = mul(r, r);
        let mut p = self.ep[0];
        for c in &self.ep[1..] {
            p = madd(*c, p, r);
        }
        let y = add(add(mul(p, z), r), self.one);
        // 2^k as two factors so that k in [-150, 128] never leaves the normal exponent range.
        let k1 = i32x4_shr(k, 1);
        let k2 = i32x4_sub(k, k1);
        let s1 = i32x4_shl(i32x4_add(k1, self.i127), 23);
        let s2 = i32x4_shl(i32x4_add(k2, self.i127), 23);
        mul(mul(y, s1), s2)
    }

    /// Natural log per lane for positive, finite, normal inputs (what log1p needs).
    #[inline(always)]
    pub fn log4(&self, x: v128) -> v128 {
        let mut e = i32x4_sub(u32x4_shr(x, 23), self.i127);
        // m in [1, 2) (1.0 has the bits of the exponent field alone).
        let mut m = v128_or(v128_and(x, self.mant), self.one);
        // Fold the upper part to [sqrt(1/2), 1) so that f = m - 1 is small.
        let big = f32x4_gt(m, self.sqrt2);
        m = v128_bitselect(mul(m, self.half), m, big);
        e = i32x4_sub(e, big); // big lanes are -1
        let f = sub(m, self.one);
        let ef = f32x4_convert_i32x4(e);
        let z = mul(f, f);
        let mut p = self.lp[0];
        for c in &self.lp[1..] {
            p = madd(*c, p, f);
        }
        let mut y = mul(mul(f, z), p);
        y = madd(y, ef, self.ln2_lo);
        y = sub(y, mul(z, self.half));
        madd(add(f, y), ef, self.ln2_hi)
    }

    /// `ln(1 + u)` per lane for finite `u > -1`, accurate also for tiny `u` (Goldberg's trick:
    /// `log(w) * u / (w - 1)` with `w = 1 + u`, and `u` itself when `w == 1`).
    #[inline(always)]
    pub fn log1p4(&self, u: v128) -> v128 {
        let w = add(self.one, u);
        let d = sub(w, self.one);
        let r = mul(self.log4(w), f32x4_div(u, d));
        v128_bitselect(u, r, f32x4_eq(d, f32x4_splat(0.0)))
    }

    /// PyTorch's softplus (beta 1, threshold 20): `x > 20 ? x : log1p(exp(x))`.
    #[inline(always)]
    pub fn softplus4(&self, x: v128) -> v128 {
        let r = self.log1p4(self.exp4(x));
        v128_bitselect(x, r, f32x4_gt(x, self.twenty))
    }

    /// SiLU `x * sigmoid(x)`, computed as `x / (1 + e^-x)`.
    #[inline(always)]
    pub fn silu4(&self, x: v128) -> v128 {
        f32x4_div(x, add(self.one, self.exp4(v128_xor(x, self.sign))))
    }
}

/// The constants of `Exp2::exp2_4`, loaded from memory once per kernel call (see `Math`).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Exp2 {
    lo: v128,
    hi: v128,
    magic: v128,
    /// 2^f = 1 + f·(c[4] + f·(c[3] + … f·c[0])) on [-1/2, 1/2] (highest degree first).
    c: [v128; 5],
    one: v128,
}

static EXP2: Exp2 = Exp2 {
    lo: sp!(-125.0),
    hi: sp!(127.0),
    magic: sp!(MAGIC),
    // Degree-5 fit for relative error: 9e-8 before f32 rounding, 1.9e-7 evaluated in f32.
    c: [
        sp!(1.326_471_5e-3),
        sp!(9.671_514e-3),
        sp!(5.550_734e-2),
        sp!(2.402_224_2e-1),
        sp!(6.931_470_0e-1),
    ],
    one: sp!(1.0),
};

impl Exp2 {
    /// Loads the constants (call once, outside the loops).
    #[inline(always)]
    pub fn get() -> Exp2 {
        unsafe { core::ptr::read_volatile(&EXP2) }
    }

    /// `2^t` per lane, about half the work of `Math::exp4` (for the selective scan's decay
    /// `exp(dt·A) = 2^(dt·A·log2 e)`, whose A is pre-scaled once per call). No Cody-Waite
    /// split is needed: `t - round(t)` is exact. Relative error below 2.5e-7 for t in
    /// [-125, 127]; t is clamped to that range, so results below 2^-125 come out as about
    /// 2^-125 instead of smaller (or 0) and above 2^127 as 2^127 — as a decay factor that is an
    /// absolute error under 3e-38. NaN gives an unspecified value.
    #[inline(always)]
    pub fn exp2_4(&self, t: v128) -> v128 {
        let t = pmin(pmax(t, self.lo), self.hi);
        let tm = add(t, self.magic); // round(t) in the low mantissa bits
        let f = sub(t, sub(tm, self.magic)); // in [-1/2, 1/2], exact
        let mut p = self.c[0];
        for c in &self.c[1..] {
            p = madd(*c, p, f);
        }
        // 2^f, in [0.7, 1.42].
        let p = madd(self.one, p, f);
        // Add round(t) to the exponent field: tm's bits are 0x4b40_0000 + k, and the shift
        // leaves k << 23 (the constant's low 9 bits are 0). k in [-125, 127] keeps the
        // exponent normal.
        i32x4_add(p, i32x4_shl(tm, 23))
    }
}

/// Scalar `e^x` (the SIMD routine on one lane).
#[inline(always)]
pub fn exp1(x: f32) -> f32 {
    lane0(Math::get().exp4(splat(x)))
}

/// Scalar softplus.
#[inline(always)]
pub fn softplus1(x: f32) -> f32 {
    lane0(Math::get().softplus4(splat(x)))
}

/// Scalar SiLU.
#[inline(always)]
pub fn silu1(x: f32) -> f32 {
    lane0(Math::get().silu4(splat(x)))
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

/// The three masks of the f16 widening, loaded from memory (see `Math` for why).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct F16Masks {
    keep: v128,
    exp: v128,
    inf: v128,
}

static F16_MASKS: F16Masks = F16Masks {
    keep: i32x4(
        0x8fff_8fff_u32 as i32,
        0x8fff_8fff_u32 as i32,
        0x8fff_8fff_u32 as i32,
        0x8fff_8fff_u32 as i32,
    ),
    exp: i32x4(0x7c00_7c00, 0x7c00_7c00, 0x7c00_7c00, 0x7c00_7c00),
    inf: i32x4(0x7f80_7f80, 0x7f80_7f80, 0x7f80_7f80, 0x7f80_7f80),
};

impl F16Masks {
    /// Loads the masks (once per kernel call).
    #[inline(always)]
    pub fn get() -> F16Masks {
        unsafe { core::ptr::read_volatile(&F16_MASKS) }
    }

    /// As `f16x8_to_f32` without the final multiplication: returns each half times 2^-112
    /// (exact; ±inf and NaN stay so). A dot product with x pre-scaled by 2^112 then equals the
    /// unscaled one bit for bit, one multiplication per four weights cheaper. With `FINITE` the
    /// caller guarantees no ±inf or NaN among the halves, and the Inf/NaN fix-up (three
    /// operations per eight weights) is left out; an inf or NaN would then come out finite.
    #[inline(always)]
    pub fn widen_scaled_down<const FINITE: bool>(&self, h: v128) -> (v128, v128) {
        let mut up = v128_and(i16x8_shr(h, 3), self.keep);
        if !FINITE {
            let infnan = i16x8_eq(v128_and(h, self.exp), self.exp);
            up = v128_or(up, v128_and(infnan, self.inf));
        }
        let lo = i16x8_shl(h, 13);
        (
            i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(lo, up),
            i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(lo, up),
        )
    }
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
