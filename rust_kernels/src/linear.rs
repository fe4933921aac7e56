//! Linear layers: `y = x · Wᵀ` with `W` [N, K] row-major (PyTorch `Linear` layout), for f32, f16
//! and q8 (int8 with one f32 scale per block of 32 along K) weights. GEMV (`matvec_*`) for
//! decoding one token, blocked GEMM (`matmul_*`) for prefill. Every kernel takes a row range
//! `[row_start, row_end)` of W (= columns of y) so that several workers can split N, and an
//! `accumulate` flag (`y += …` instead of `y = …`, e.g. to add a bias or a residual in place).

use crate::simd::*;
use core::arch::wasm32::*;

/// Quantization block length along K for q8 weights.
pub const Q8_BLOCK: usize = 32;

/// A row-major weight matrix whose elements widen to f32.
trait Wt: Copy {
    /// Elements `i..i+8` of row `r` (row stride `ld`) as two f32x4.
    unsafe fn ld8(self, r: usize, ld: usize, i: usize) -> (v128, v128);
    /// Elements `i..i+4`.
    unsafe fn ld4(self, r: usize, ld: usize, i: usize) -> v128;
    /// Element `i`.
    unsafe fn ld1(self, r: usize, ld: usize, i: usize) -> f32;
}

#[derive(Clone, Copy)]
struct WF32(*const f32);
#[derive(Clone, Copy)]
struct WF16(*const u16);

impl Wt for WF32 {
    #[inline(always)]
    unsafe fn ld8(self, r: usize, ld: usize, i: usize) -> (v128, v128) {
        let p = self.0.add(r * ld + i);
        (self::ld(p), self::ld(p.add(4)))
    }
    #[inline(always)]
    unsafe fn ld4(self, r: usize, ld: usize, i: usize) -> v128 {
        self::ld(self.0.add(r * ld + i))
    }
    #[inline(always)]
    unsafe fn ld1(self, r: usize, ld: usize, i: usize) -> f32 {
        *self.0.add(r * ld + i)
    }
}

/// f16 weights read as `w * 2^-112` (x must be pre-scaled by 2^112); `FINITE` when the caller
/// has checked that no weight is ±inf or NaN (see `F16Masks::widen_scaled_down`).
#[derive(Clone, Copy)]
struct WF16S<const FINITE: bool>(*const u16, F16Masks);

impl<const FINITE: bool> Wt for WF16S<FINITE> {
    #[inline(always)]
    unsafe fn ld8(self, r: usize, ld: usize, i: usize) -> (v128, v128) {
        self.1
            .widen_scaled_down::<FINITE>(v128_load(self.0.add(r * ld + i) as *const v128))
    }
    #[inline(always)]
    unsafe fn ld4(self, r: usize, ld: usize, i: usize) -> v128 {
        self.1
            .widen_scaled_down::<FINITE>(v128_load64_zero(self.0.add(r * ld + i) as *const u64))
            .0
    }
    #[inline(always)]
    unsafe fn ld1(self, r: usize, ld: usize, i: usize) -> f32 {
        f16_to_f32_1(*self.0.add(r * ld + i)) * (1.0 / F16_UNSCALE)
    }
}

impl Wt for WF16 {
    #[inline(always)]
    unsafe fn ld8(self, r: usize, ld: usize, i: usize) -> (v128, v128) {
        ld_f16x8(self.0.add(r * ld + i))
    }
    #[inline(always)]
    unsafe fn ld4(self, r: usize, ld: usize, i: usize) -> v128 {
        ld_f16x4(self.0.add(r * ld + i))
    }
    #[inline(always)]
    unsafe fn ld1(self, r: usize, ld: usize, i: usize) -> f32 {
        f16_to_f32_1(*self.0.add(r * ld + i))
    }
}

#[inline(always)]
fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

#[inline(always)]
unsafe fn put(y: *mut f32, v: f32, accumulate: bool) {
    if accumulate {
        *y += v;
    } else {
        *y = v;
    }
}

// ---------------------------------------------------------------------------------------------
// GEMV

/// Dot product of row `r` with x, four independent accumulators (16 elements per step).
///
/// The GEMVs go one row at a time on purpose: a single sequential weight stream is what the
/// hardware prefetchers follow best. Interleaving 4 rows (reusing each x load 4 times) is ~30%
/// faster while the matrix sits in cache, but twice slower streaming from DRAM, which is where
/// the weights of a real model are at decode time.
#[inline(always)]
unsafe fn dot_row1<W: Wt>(w: W, r: usize, k: usize, x: *const f32) -> f32 {
    let mut a = [f32x4_splat(0.0); 4];
    let mut i = 0;
    while i + 32 <= k {
        for h in [0, 16] {
            let (w0, w1) = w.ld8(r, k, i + h);
            let (w2, w3) = w.ld8(r, k, i + h + 8);
            a[0] = fma(a[0], w0, ld(x.add(i + h)));
            a[1] = fma(a[1], w1, ld(x.add(i + h + 4)));
            a[2] = fma(a[2], w2, ld(x.add(i + h + 8)));
            a[3] = fma(a[3], w3, ld(x.add(i + h + 12)));
        }
        i += 32;
    }
    while i + 16 <= k {
        let (w0, w1) = w.ld8(r, k, i);
        let (w2, w3) = w.ld8(r, k, i + 8);
        a[0] = fma(a[0], w0, ld(x.add(i)));
        a[1] = fma(a[1], w1, ld(x.add(i + 4)));
        a[2] = fma(a[2], w2, ld(x.add(i + 8)));
        a[3] = fma(a[3], w3, ld(x.add(i + 12)));
        i += 16;
    }
    if i + 8 <= k {
        let (w0, w1) = w.ld8(r, k, i);
        a[0] = fma(a[0], w0, ld(x.add(i)));
        a[1] = fma(a[1], w1, ld(x.add(i + 4)));
        i += 8;
    }
    if i + 4 <= k {
        a[2] = fma(a[2], w.ld4(r, k, i), ld(x.add(i)));
        i += 4;
    }
    let mut s = hsum(add(add(a[0], a[1]), add(a[2], a[3])));
    while i < k {
        s += w.ld1(r, k, i) * *x.add(i);
        i += 1;
    }
    s
}

#[inline(always)]
unsafe fn matvec<W: Wt>(
    w: W,
    x: *const f32,
    y: *mut f32,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: bool,
) {
    let end = min(row_end, n);
    let mut r = row_start;
    while r < end {
        put(y.add(r), dot_row1(w, r, k, x), accumulate);
        r += 1;
    }
}

/// `y[r] (+)= Σ_k W[r, k] x[k]` for rows `r` in `[row_start, min(row_end, n))`; f32 weights.
#[no_mangle]
pub unsafe extern "C" fn matvec_f32(
    w: *const f32,
    x: *const f32,
    y: *mut f32,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: u32,
) {
    matvec(WF32(w), x, y, n, k, row_start, row_end, accumulate != 0)
}

/// As `matvec_f32` with IEEE binary16 weights (bit patterns), widened to f32 in registers.
/// `accumulate` may also carry [`F16_FINITE`].
#[no_mangle]
pub unsafe extern "C" fn matvec_f16(
    w: *const u16,
    x: *const f32,
    y: *mut f32,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: u32,
) {
    // Fast path: feed x * 2^112 (exact while |x| < 2^15) to weights left scaled by 2^-112.
    if k <= XQ_MAX {
        let xs = scratch_f32();
        let mut m = f32x4_splat(0.0);
        let mut i = 0;
        while i + 4 <= k {
            let v = ld(x.add(i));
            m = f32x4_max(m, f32x4_abs(v));
            st(xs.add(i), mul(v, splat(F16_UNSCALE)));
            i += 4;
        }
        while i < k {
            let v = *x.add(i);
            m = f32x4_max(m, f32x4_abs(f32x4_splat(v)));
            *xs.add(i) = v * F16_UNSCALE;
            i += 1;
        }
        let m = f32x4_max(m, i32x4_shuffle::<2, 3, 0, 1>(m, m));
        let m = f32x4_max(m, i32x4_shuffle::<1, 0, 3, 2>(m, m));
        if lane0(m) < 32768.0 {
            let acc = accumulate & 1 != 0;
            if accumulate & F16_FINITE != 0 {
                let wt = WF16S::<true>(w, F16Masks::get());
                return matvec(wt, xs, y, n, k, row_start, row_end, acc);
            }
            let wt = WF16S::<false>(w, F16Masks::get());
            return matvec(wt, xs, y, n, k, row_start, row_end, acc);
        }
    }
    matvec(WF16(w), x, y, n, k, row_start, row_end, accumulate & 1 != 0)
}

/// Bit of the `accumulate` argument of `matvec_f16` / `matmul_f16`: the caller has checked that
/// no weight is ±inf or NaN, so the widening may skip its Inf/NaN fix-up (about a quarter
/// cheaper). Bit 0 keeps its meaning (accumulate into y).
pub const F16_FINITE: u32 = 2;

/// Number of q8 scale blocks per row for K columns: `ceil(K / 32)`.
#[inline(always)]
fn q8_blocks(k: usize) -> usize {
    (k + Q8_BLOCK - 1) / Q8_BLOCK
}

/// Dot product of one q8 block (`len` <= 32 elements at `q`) with x, before scaling.
#[inline(always)]
unsafe fn q8_block_dot(q: *const i8, x: *const f32, len: usize) -> v128 {
    if len == Q8_BLOCK {
        let w0 = ld_i8x16(q);
        let w1 = ld_i8x16(q.add(16));
        let p0 = add(mul(w0[0], ld(x)), mul(w0[1], ld(x.add(4))));
        let p1 = add(mul(w0[2], ld(x.add(8))), mul(w0[3], ld(x.add(12))));
        let p2 = add(mul(w1[0], ld(x.add(16))), mul(w1[1], ld(x.add(20))));
        let p3 = add(mul(w1[2], ld(x.add(24))), mul(w1[3], ld(x.add(28))));
        add(add(p0, p1), add(p2, p3))
    } else {
        let mut acc = f32x4_splat(0.0);
        let mut i = 0;
        while i + 4 <= len {
            acc = madd(acc, ld_i8x4(q.add(i)), ld(x.add(i)));
            i += 4;
        }
        let mut s = 0f32;
        while i < len {
            s += *q.add(i) as f32 * *x.add(i);
            i += 1;
        }
        add(acc, f32x4_replace_lane::<0>(f32x4_splat(0.0), s))
    }
}

/// Largest K for which `matvec_q8` / `matvec_f16` use their fast paths (scratch-sized).
const XQ_MAX: usize = 32768;
/// Elements of the shared scratch (16-bit x of `matvec_q8` / `matmul_q8`, or f32 x of
/// `matvec_f16`, which fits in the same bytes for K <= XQ_MAX).
const SCRATCH_CAP: usize = 1 << 18;

/// Static per-instance scratch shared by the kernels that pre-process x (one kernel runs at a
/// time in an instance). Zero-initialized memory, so it costs no bytes in the .wasm file.
#[repr(C, align(64))]
struct Scratch {
    q: [i16; SCRATCH_CAP],
    s: [f32; SCRATCH_CAP / Q8_BLOCK],
}

static mut SCRATCH: Scratch = Scratch {
    q: [0; SCRATCH_CAP],
    s: [0.0; SCRATCH_CAP / Q8_BLOCK],
};

#[inline(always)]
unsafe fn scratch_q() -> *mut i16 {
    core::ptr::addr_of_mut!(SCRATCH.q) as *mut i16
}

#[inline(always)]
unsafe fn scratch_s() -> *mut f32 {
    core::ptr::addr_of_mut!(SCRATCH.s) as *mut f32
}

#[inline(always)]
unsafe fn scratch_f32() -> *mut f32 {
    scratch_q() as *mut f32
}

/// Rounds the first `nfull` blocks of 32 of x to 16-bit fixed point: per block
/// `s = max|x| / 32767`, `xq = round(x / s)`.
#[inline(always)]
unsafe fn quantize_x_i16(x: *const f32, nfull: usize, xq: *mut i16, xs: *mut f32) {
    for b in 0..nfull {
        let p = x.add(b * Q8_BLOCK);
        let mut v = [f32x4_splat(0.0); 8];
        let mut m = f32x4_splat(0.0);
        for j in 0..8 {
            v[j] = ld(p.add(4 * j));
            m = f32x4_max(m, f32x4_abs(v[j]));
        }
        m = f32x4_max(m, i32x4_shuffle::<2, 3, 0, 1>(m, m));
        m = f32x4_max(m, i32x4_shuffle::<1, 0, 3, 2>(m, m));
        let amax = lane0(m);
        *xs.add(b) = amax / 32767.0;
        let inv = splat(if amax > 0.0 { 32767.0 / amax } else { 0.0 });
        for j in 0..4 {
            let lo = i32x4_trunc_sat_f32x4(f32x4_nearest(mul(v[2 * j], inv)));
            let hi = i32x4_trunc_sat_f32x4(f32x4_nearest(mul(v[2 * j + 1], inv)));
            v128_store(
                xq.add(b * Q8_BLOCK + 8 * j) as *mut v128,
                i16x8_narrow_i32x4(lo, hi),
            );
        }
    }
}

/// Integer dot product of one full block: 32 int8 weights at `q` with 32 int16 x at `xq`.
#[inline(always)]
unsafe fn q8_block_dot_i16(q: *const i8, xq: &[v128; 4]) -> v128 {
    let w0 = v128_load(q as *const v128);
    let w1 = v128_load(q.add(16) as *const v128);
    let a = i32x4_add(
        i32x4_dot_i16x8(i16x8_extend_low_i8x16(w0), xq[0]),
        i32x4_dot_i16x8(i16x8_extend_high_i8x16(w0), xq[1]),
    );
    let b = i32x4_add(
        i32x4_dot_i16x8(i16x8_extend_low_i8x16(w1), xq[2]),
        i32x4_dot_i16x8(i16x8_extend_high_i8x16(w1), xq[3]),
    );
    f32x4_convert_i32x4(i32x4_add(a, b))
}

/// As `matvec_f32` with q8 weights: `wq` [N, K] int8 and `scales` [N, ceil(K/32)] f32, weight
/// `W[r, k] = wq[r, k] * scales[r, k / 32]` (see `quantize_q8`).
///
/// For K <= 32768 the full blocks run in integer arithmetic: x is first rounded per block of 32
/// to 16-bit fixed point (relative error <= 2^-16 of the block's max |x|, some 250 times below
/// the weights' own 8-bit rounding), then `i32x4.dot_i16x8_s` accumulates exactly. The last
/// partial block (K not a multiple of 32) and larger K use f32 arithmetic.
#[no_mangle]
pub unsafe extern "C" fn matvec_q8(
    wq: *const i8,
    scales: *const f32,
    x: *const f32,
    y: *mut f32,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: u32,
) {
    let end = min(row_end, n);
    let nb = q8_blocks(k);
    let nfull = k / Q8_BLOCK;
    let int_path = k <= XQ_MAX;
    let xq = scratch_q();
    let xs = scratch_s();
    if int_path {
        quantize_x_i16(x, nfull, xq, xs);
    }
    // Full blocks of rows r..r+R into acc.
    #[inline(always)]
    unsafe fn full_blocks<const R: usize>(
        wq: *const i8,
        scales: *const f32,
        x: *const f32,
        xq: *const i16,
        xs: *const f32,
        r: usize,
        k: usize,
        nb: usize,
        nfull: usize,
        int_path: bool,
        acc: &mut [v128; R],
    ) {
        let mut b0 = 0;
        if int_path && R == 1 {
            // Four blocks per iteration, two accumulators: the block scales (weight × x) come
            // as one vector product per four blocks, broadcast per block by a shuffle, instead of
            // two scalar loads, a product and a broadcast each; and a quarter of the loop's
            // counter and pointer updates.
            let mut acc2 = f32x4_splat(0.0);
            while b0 + 4 <= nfull {
                let sc = mul(ld(scales.add(r * nb + b0)), ld(xs.add(b0)));
                // Written out four times: as a `for` over i, LLVM keeps it a loop (selecting the
                // accumulator and reloading the broadcast scales from the stack): 0.84×.
                let blk = |b: usize| -> v128 {
                    let xp = xq.add(b * Q8_BLOCK) as *const v128;
                    let xv = [
                        v128_load(xp),
                        v128_load(xp.add(1)),
                        v128_load(xp.add(2)),
                        v128_load(xp.add(3)),
                    ];
                    q8_block_dot_i16(wq.add(r * k + b * Q8_BLOCK), &xv)
                };
                acc[0] = fma(acc[0], blk(b0), i32x4_shuffle::<0, 0, 0, 0>(sc, sc));
                acc2 = fma(acc2, blk(b0 + 1), i32x4_shuffle::<1, 1, 1, 1>(sc, sc));
                acc[0] = fma(acc[0], blk(b0 + 2), i32x4_shuffle::<2, 2, 2, 2>(sc, sc));
                acc2 = fma(acc2, blk(b0 + 3), i32x4_shuffle::<3, 3, 3, 3>(sc, sc));
                b0 += 4;
            }
            acc[0] = add(acc[0], acc2);
        }
        for b in b0..nfull {
            if int_path {
                let xp = xq.add(b * Q8_BLOCK) as *const v128;
                let xv = [
                    v128_load(xp),
                    v128_load(xp.add(1)),
                    v128_load(xp.add(2)),
                    v128_load(xp.add(3)),
                ];
                let sx = *xs.add(b);
                for j in 0..R {
                    let d = q8_block_dot_i16(wq.add((r + j) * k + b * Q8_BLOCK), &xv);
                    acc[j] = fma(acc[j], d, f32x4_splat(*scales.add((r + j) * nb + b) * sx));
                }
            } else {
                for j in 0..R {
                    let q = wq.add((r + j) * k + b * Q8_BLOCK);
                    let d = q8_block_dot(q, x.add(b * Q8_BLOCK), Q8_BLOCK);
                    acc[j] = madd(acc[j], d, f32x4_splat(*scales.add((r + j) * nb + b)));
                }
            }
        }
        if nfull < nb {
            let len = k - nfull * Q8_BLOCK;
            for j in 0..R {
                let q = wq.add((r + j) * k + nfull * Q8_BLOCK);
                let d = q8_block_dot(q, x.add(nfull * Q8_BLOCK), len);
                acc[j] = madd(acc[j], d, f32x4_splat(*scales.add((r + j) * nb + nfull)));
            }
        }
    }
    let mut r = row_start;
    while r < end {
        let mut acc = [f32x4_splat(0.0); 1];
        full_blocks::<1>(wq, scales, x, xq, xs, r, k, nb, nfull, int_path, &mut acc);
        put(y.add(r), hsum(acc[0]), accumulate != 0);
        r += 1;
    }
}

/// Quantizes f32 weights `w` [N, K] to q8: per row and block of 32 along K (the last block may
/// be shorter), `scale = max|w| / 127` and `q = round_half_even(w / scale)` in [-127, 127], so
/// `|w - q * scale| <= scale / 2`. Writes `wq` [N, K] and `scales` [N, ceil(K/32)]. Rows
/// `[row_start, min(row_end, n))` only.
#[no_mangle]
pub unsafe extern "C" fn quantize_q8(
    w: *const f32,
    wq: *mut i8,
    scales: *mut f32,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
) {
    let end = min(row_end, n);
    let nb = q8_blocks(k);
    for r in row_start..end {
        for b in 0..nb {
            let s0 = b * Q8_BLOCK;
            let len = min(Q8_BLOCK, k - s0);
            let src = w.add(r * k + s0);
            let mut amax = 0f32;
            for i in 0..len {
                let a = f32x4_extract_lane::<0>(f32x4_abs(f32x4_splat(*src.add(i))));
                if a > amax {
                    amax = a;
                }
            }
            let scale = amax / 127.0;
            *scales.add(r * nb + b) = scale;
            let dst = wq.add(r * k + s0);
            for i in 0..len {
                let q = if scale > 0.0 {
                    let v = f32x4_nearest(f32x4_splat(*src.add(i) / scale));
                    let v = f32x4_min(f32x4_max(v, f32x4_splat(-127.0)), f32x4_splat(127.0));
                    f32x4_extract_lane::<0>(v) as i8
                } else {
                    0
                };
                *dst.add(i) = q;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM
//
// f32 and f16 weights go through the packed GEMM below (`matmul_packed`), q8 weights through the
// integer one further down. The inner-product tiles here (`tile`, `tokens`, `matmul_widen`)
// remain for q8 weights outside the integer path (K < 32 or K > 32768).

/// Tokens per outer block: the block of X stays in L2 while all row tiles of W stream past.
const MB: usize = 64;
/// K chunk for q8 weights widened to f32: a TR-row × KC tile is widened once per token block.
const KC: usize = 1024;
/// Rows of W per register tile.
const TR: usize = 2;
/// Tokens per register tile.
const TT: usize = 4;

/// `y[t, j] (+)= Σ_i x[t, i] w[j, i]` for `R` rows of w × `T` tokens over `kc` elements.
#[inline(always)]
unsafe fn tile<const R: usize, const T: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    y: *mut f32,
    ldy: usize,
    kc: usize,
    accumulate: bool,
) {
    let mut a = [[f32x4_splat(0.0); T]; R];
    let mut i = 0;
    while i + 4 <= kc {
        let mut wv = [f32x4_splat(0.0); R];
        for j in 0..R {
            wv[j] = ld(w.add(j * ldw + i));
        }
        for t in 0..T {
            let xv = ld(x.add(t * ldx + i));
            for j in 0..R {
                a[j][t] = fma(a[j][t], wv[j], xv);
            }
        }
        i += 4;
    }
    for j in 0..R {
        for t in 0..T {
            let mut s = hsum(a[j][t]);
            let mut ii = i;
            while ii < kc {
                s += *w.add(j * ldw + ii) * *x.add(t * ldx + ii);
                ii += 1;
            }
            put(y.add(t * ldy + j), s, accumulate);
        }
    }
}

/// All tokens `[0, m)` of a token block against `R` rows (f32, row stride `ldw`).
#[inline(always)]
unsafe fn tokens<const R: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    y: *mut f32,
    ldy: usize,
    m: usize,
    kc: usize,
    accumulate: bool,
) {
    let mut t = 0;
    while t + TT <= m {
        tile::<R, TT>(
            x.add(t * ldx),
            ldx,
            w,
            ldw,
            y.add(t * ldy),
            ldy,
            kc,
            accumulate,
        );
        t += TT;
    }
    while t < m {
        tile::<R, 1>(
            x.add(t * ldx),
            ldx,
            w,
            ldw,
            y.add(t * ldy),
            ldy,
            kc,
            accumulate,
        );
        t += 1;
    }
}

/// `Y[t, r] (+)= Σ_k X[t, k] W[r, k]` for tokens `t < m` and rows `r` in
/// `[row_start, min(row_end, n))`; X rows are `ldx` floats apart, Y rows `ldy` floats apart.
#[no_mangle]
pub unsafe extern "C" fn matmul_f32(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    y: *mut f32,
    ldy: usize,
    m: usize,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: u32,
) {
    if m == 1 {
        return matvec_f32(w, x, y, n, k, row_start, row_end, accumulate);
    }
    let acc = accumulate != 0;
    matmul_packed(WF32(w), x, ldx, y, ldy, m, n, k, row_start, row_end, acc)
}

// Packed GEMM (f32 and f16 weights): outer products on packed panels.
//
// X is packed per block of up to MBP tokens into panels of PT tokens, k-major (`xp[k][t]`), and W per
// 8 rows into a panel `wp[k][8]` (f16 widened there, once per token block). The microkernel
// keeps PT × 2 vectors of y in registers and per k loads the 8 weights as two vectors and each
// token's x as one broadcast: 2·PT multiply-adds per 2 + PT loads, all at immediate offsets from
// two pointers, and no horizontal sums. With PT = 6 that is 12 accumulators + 2 weights + 1 x =
// 15 registers, what V8 allocates on x64; the plain build needs one more for the product of its
// separate multiply and add, so it uses PT = 5.

/// Tokens per panel (register tile: PT tokens × 8 rows).
#[cfg(target_feature = "relaxed-simd")]
const PT: usize = 6;
#[cfg(not(target_feature = "relaxed-simd"))]
const PT: usize = 5;
/// Tokens per packed block of X (a multiple of PT, ~64).
/// Most tokens per packed block of X (a multiple of PT; 126 × 512 floats = 252 KiB, in L2).
/// The tokens are split into equal blocks of whole panels: a short last block would repack all
/// of W for a few tokens (M = 64 in blocks of 60 + 4 was 7% slower than one block of 64).
const MBP: usize = (128 / PT) * PT;
/// K chunk: a 8 × KCP weight panel (16 KiB) stays in L1 while the token panels stream past.
const KCP: usize = 512;

/// `PT` tokens × 8 rows over `kc`: returns the sums (`acc[t][v]` = rows `4v..4v+4` of token t).
#[inline(always)]
unsafe fn panel_kernel(xp: *const f32, wp: *const f32, kc: usize) -> [[v128; 2]; PT] {
    let mut acc = [[f32x4_splat(0.0); 2]; PT];
    let mut x = xp;
    let mut w = wp;
    let wend = wp.add(kc * 8);
    while w < wend {
        let w0 = ld(w);
        let w1 = ld(w.add(4));
        for t in 0..PT {
            let xv = v128_load32_splat(x.add(t) as *const u32);
            acc[t][0] = fma(acc[t][0], w0, xv);
            acc[t][1] = fma(acc[t][1], w1, xv);
        }
        x = x.add(PT);
        w = w.add(8);
    }
    acc
}

/// Packs X rows `t0..t0+mb`, columns `k0..k0+kc` into panels of PT tokens (`xp[p][k][t]`,
/// missing tokens of the last panel zero).
#[inline(always)]
unsafe fn pack_x(x: *const f32, ldx: usize, mb: usize, k0: usize, kc: usize, xp: *mut f32) {
    let panels = (mb + PT - 1) / PT;
    for p in 0..panels {
        let dst = xp.add(p * kc * PT);
        for t in 0..PT {
            let tok = p * PT + t;
            if tok < mb {
                let src = x.add(tok * ldx + k0);
                for i in 0..kc {
                    *dst.add(i * PT + t) = *src.add(i);
                }
            } else {
                for i in 0..kc {
                    *dst.add(i * PT + t) = 0.0;
                }
            }
        }
    }
}

/// Transposes four vectors (rows) into four vectors (columns).
#[inline(always)]
fn transpose4(a: v128, b: v128, c: v128, d: v128) -> [v128; 4] {
    let ab_lo = i32x4_shuffle::<0, 4, 1, 5>(a, b);
    let ab_hi = i32x4_shuffle::<2, 6, 3, 7>(a, b);
    let cd_lo = i32x4_shuffle::<0, 4, 1, 5>(c, d);
    let cd_hi = i32x4_shuffle::<2, 6, 3, 7>(c, d);
    [
        i64x2_shuffle::<0, 2>(ab_lo, cd_lo),
        i64x2_shuffle::<1, 3>(ab_lo, cd_lo),
        i64x2_shuffle::<0, 2>(ab_hi, cd_hi),
        i64x2_shuffle::<1, 3>(ab_hi, cd_hi),
    ]
}

/// Packs W rows `r..r+rows` (rows <= 8), columns `k0..k0+kc`, widened to f32, into `wp[k][8]`
/// (missing rows zero).
#[inline(always)]
unsafe fn pack_w<W: Wt>(
    w: W,
    ldw: usize,
    r: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    wp: *mut f32,
) {
    for g in 0..2 {
        let base = r + 4 * g;
        let col = wp.add(4 * g);
        if base + 4 <= r + rows {
            let mut i = 0;
            while i + 8 <= kc {
                let (a0, a1) = w.ld8(base, ldw, k0 + i);
                let (b0, b1) = w.ld8(base + 1, ldw, k0 + i);
                let (c0, c1) = w.ld8(base + 2, ldw, k0 + i);
                let (d0, d1) = w.ld8(base + 3, ldw, k0 + i);
                let lo = transpose4(a0, b0, c0, d0);
                let hi = transpose4(a1, b1, c1, d1);
                for j in 0..4 {
                    st(col.add((i + j) * 8), lo[j]);
                    st(col.add((i + 4 + j) * 8), hi[j]);
                }
                i += 8;
            }
            while i < kc {
                for j in 0..4 {
                    *col.add(i * 8 + j) = w.ld1(base + j, ldw, k0 + i);
                }
                i += 1;
            }
        } else {
            for j in 0..4 {
                let row = base + j;
                for i in 0..kc {
                    *col.add(i * 8 + j) = if row < r + rows {
                        w.ld1(row, ldw, k0 + i)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Stores (or adds) the first `toks` tokens × `rows` rows of a panel's sums into y (a panel of
/// `T` tokens: the f32 / f16 GEMM's or the q8 one's).
#[inline(always)]
unsafe fn store_panel<const T: usize>(
    acc: &[[v128; 2]; T],
    y: *mut f32,
    ldy: usize,
    toks: usize,
    rows: usize,
    accumulate: bool,
) {
    for t in 0..toks {
        let yt = y.add(t * ldy);
        if rows == 8 {
            for v in 0..2 {
                let p = yt.add(4 * v);
                st(
                    p,
                    if accumulate {
                        add(ld(p), acc[t][v])
                    } else {
                        acc[t][v]
                    },
                );
            }
        } else {
            let mut tmp = [0f32; 8];
            st(tmp.as_mut_ptr(), acc[t][0]);
            st(tmp.as_mut_ptr().add(4), acc[t][1]);
            for j in 0..rows {
                put(yt.add(j), tmp[j], accumulate);
            }
        }
    }
}

/// The packed GEMM over rows `[row_start, min(row_end, n))` of a weight matrix (see above).
#[inline(always)]
unsafe fn matmul_packed<W: Wt>(
    w: W,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
    m: usize,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: bool,
) {
    let end = min(row_end, n);
    let xp = scratch_f32();
    let wp = xp.add(MBP * KCP);
    let blocks = (m + MBP - 1) / MBP;
    let per_block = ((m + blocks - 1) / blocks + PT - 1) / PT * PT;
    let mut t0 = 0;
    while t0 < m {
        let mb = min(per_block, m - t0);
        let panels = (mb + PT - 1) / PT;
        let mut k0 = 0;
        while k0 < k {
            let kc = min(KCP, k - k0);
            let acc = accumulate || k0 > 0;
            pack_x(x.add(t0 * ldx), ldx, mb, k0, kc, xp);
            let mut r = row_start;
            while r < end {
                let rows = min(8, end - r);
                pack_w(w, k, r, rows, k0, kc, wp);
                for p in 0..panels {
                    let sums = panel_kernel(xp.add(p * kc * PT), wp, kc);
                    let toks = min(PT, mb - p * PT);
                    store_panel(&sums, y.add((t0 + p * PT) * ldy + r), ldy, toks, rows, acc);
                }
                r += rows;
            }
            k0 += kc;
        }
        t0 += mb;
    }
}

/// Shared GEMM driver for weights that are widened to f32 into a stack tile first.
/// `widen(r, rows, k0, kc, dst)` writes rows `r..r+rows`, columns `k0..k0+kc` into `dst`
/// (row stride KC).
#[inline(always)]
unsafe fn matmul_widen<F: Fn(usize, usize, usize, usize, *mut f32)>(
    widen: F,
    x: *const f32,
    ldx: usize,
    y: *mut f32,
    ldy: usize,
    m: usize,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: bool,
) {
    let end = min(row_end, n);
    let mut buf = [0f32; TR * KC];
    let bp = buf.as_mut_ptr();
    let mut t0 = 0;
    while t0 < m {
        let mb = min(MB, m - t0);
        let xb = x.add(t0 * ldx);
        let yb = y.add(t0 * ldy);
        let mut r = row_start;
        while r < end {
            let rows = min(TR, end - r);
            let mut k0 = 0;
            while k0 < k {
                let kc = min(KC, k - k0);
                widen(r, rows, k0, kc, bp);
                let acc = accumulate || k0 > 0;
                if rows == TR {
                    tokens::<TR>(xb.add(k0), ldx, bp, KC, yb.add(r), ldy, mb, kc, acc);
                } else {
                    for j in 0..rows {
                        tokens::<1>(
                            xb.add(k0),
                            ldx,
                            bp.add(j * KC),
                            KC,
                            yb.add(r + j),
                            ldy,
                            mb,
                            kc,
                            acc,
                        );
                    }
                }
                k0 += kc;
            }
            r += rows;
        }
        t0 += mb;
    }
}

/// As `matmul_f32` with IEEE binary16 weights.
#[no_mangle]
pub unsafe extern "C" fn matmul_f16(
    x: *const f32,
    ldx: usize,
    w: *const u16,
    y: *mut f32,
    ldy: usize,
    m: usize,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: u32,
) {
    if m == 1 {
        return matvec_f16(w, x, y, n, k, row_start, row_end, accumulate);
    }
    let acc = accumulate & 1 != 0;
    matmul_packed(WF16(w), x, ldx, y, ldy, m, n, k, row_start, row_end, acc)
}

// Integer q8 GEMM: outer products of 16-bit pairs.
//
// x is rounded per token and block of 32 to 16-bit fixed point (as in `matvec_q8`) and packed per
// panel of QPT tokens so that each (even, odd) pair of a token is one 32-bit word (`xp[k/2][t]`);
// W is packed per 8 rows with its int8 widened to int16 and each row's (even, odd) pair in one
// 32-bit lane (`wp[k/2][2]`, 4 rows per vector). Per pair of k the microkernel loads the 2 weight
// vectors and broadcasts each token's pair: `i32x4.dot_i16x8_s` then multiplies 8 weights by 2 x
// and adds the pairs, 8 multiply-adds per instruction into lanes = rows (no horizontal sums), twice
// the rate of the f32 FMA kernel's 4. Each block of 32 is exact in int32; its sums are converted
// and scaled (weight scale × x scale) into f32 accumulators. 3 tokens × 8 rows: 6 int32 + 6 f32
// accumulators + 2 weights + 1 x = 15 registers.

/// Tokens per panel of the integer q8 GEMM.
const QPT: usize = 3;
/// Most tokens per packed block of x (a multiple of QPT).
const MBQ: usize = 63;
/// Largest number of full blocks of the packed weight panel (K <= XQ_MAX).
const QNB_MAX: usize = XQ_MAX / Q8_BLOCK;

/// The packed weight panel of `matmul_q8`: `w` [blocks][16 pairs][2] and the scales [blocks][8].
#[repr(C, align(64))]
struct Q8Panel {
    w: [i32; QNB_MAX * 32 * 4],
    s: [f32; QNB_MAX * 8],
}

/// Zero-initialized (no bytes in the .wasm file), 512 KiB + 32 KiB.
static mut Q8_PANEL: Q8Panel = Q8Panel {
    w: [0; QNB_MAX * 32 * 4],
    s: [0.0; QNB_MAX * 8],
};

/// Packs rows `r..r+rows` (rows <= 8, missing rows zero) of the full blocks into `Q8_PANEL`.
#[inline(always)]
unsafe fn pack_w_q8(
    wq: *const i8,
    scales: *const f32,
    k: usize,
    nb: usize,
    nfull: usize,
    r: usize,
    rows: usize,
) {
    let wp = core::ptr::addr_of_mut!(Q8_PANEL.w) as *mut v128;
    let sp = core::ptr::addr_of_mut!(Q8_PANEL.s) as *mut f32;
    let zero = i32x4_splat(0);
    for g in 0..2 {
        let base = r + 4 * g;
        // The four rows' pointers (a missing row reads a zero vector instead).
        let mut rp = [core::ptr::null::<i8>(); 4];
        for j in 0..4 {
            if base + j < r + rows {
                rp[j] = wq.add((base + j) * k);
            }
        }
        let ldr = |j: usize, off: usize| -> v128 {
            if rp[j].is_null() {
                zero
            } else {
                v128_load(rp[j].add(off) as *const v128)
            }
        };
        for b in 0..nfull {
            for h in 0..2 {
                let off = b * Q8_BLOCK + 16 * h;
                let (a, bb, c, d) = (ldr(0, off), ldr(1, off), ldr(2, off), ldr(3, off));
                // 16-bit units = (even, odd) byte pairs: interleave rows a, b and c, d by pairs,
                // then by pairs of pairs, so that each 4 bytes hold one row's pair, rows in order.
                let ab_lo = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(a, bb);
                let ab_hi = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(a, bb);
                let cd_lo = i16x8_shuffle::<0, 8, 1, 9, 2, 10, 3, 11>(c, d);
                let cd_hi = i16x8_shuffle::<4, 12, 5, 13, 6, 14, 7, 15>(c, d);
                let q = [
                    i32x4_shuffle::<0, 4, 1, 5>(ab_lo, cd_lo),
                    i32x4_shuffle::<2, 6, 3, 7>(ab_lo, cd_lo),
                    i32x4_shuffle::<0, 4, 1, 5>(ab_hi, cd_hi),
                    i32x4_shuffle::<2, 6, 3, 7>(ab_hi, cd_hi),
                ];
                // q[i] holds pairs 2i and 2i+1 (of this half block) of the four rows.
                for i in 0..4 {
                    let pair = 8 * h + 2 * i;
                    *wp.add((b * 16 + pair) * 2 + g) = i16x8_extend_low_i8x16(q[i]);
                    *wp.add((b * 16 + pair + 1) * 2 + g) = i16x8_extend_high_i8x16(q[i]);
                }
            }
            for j in 0..4 {
                *sp.add(b * 8 + 4 * g + j) = if rp[j].is_null() {
                    0.0
                } else {
                    *scales.add((base + j) * nb + b)
                };
            }
        }
    }
}

/// One panel of QPT tokens × 8 rows over the full blocks: the f32 sums (`acc[t][v]` = rows
/// `4v..4v+4` of token t). `xp` [blocks][16][QPT] pairs, `xs` [blocks][QPT] x scales.
#[inline(always)]
unsafe fn q8_panel_kernel(xp: *const u32, xs: *const f32, nfull: usize) -> [[v128; 2]; QPT] {
    let wp = core::ptr::addr_of!(Q8_PANEL.w) as *const v128;
    let sp = core::ptr::addr_of!(Q8_PANEL.s) as *const f32;
    let mut acc = [[f32x4_splat(0.0); 2]; QPT];
    for b in 0..nfull {
        let mut d = [[i32x4_splat(0); 2]; QPT];
        let w = wp.add(b * 32);
        let x = xp.add(b * 16 * QPT);
        for p in 0..16 {
            let w0 = *w.add(2 * p);
            let w1 = *w.add(2 * p + 1);
            for t in 0..QPT {
                let xv = v128_load32_splat(x.add(p * QPT + t));
                d[t][0] = i32x4_add(d[t][0], i32x4_dot_i16x8(w0, xv));
                d[t][1] = i32x4_add(d[t][1], i32x4_dot_i16x8(w1, xv));
            }
        }
        let s0 = ld(sp.add(b * 8));
        let s1 = ld(sp.add(b * 8 + 4));
        for t in 0..QPT {
            let sx = splat(*xs.add(b * QPT + t));
            acc[t][0] = fma(acc[t][0], f32x4_convert_i32x4(d[t][0]), mul(s0, sx));
            acc[t][1] = fma(acc[t][1], f32x4_convert_i32x4(d[t][1]), mul(s1, sx));
        }
    }
    acc
}

/// Rounds tokens `0..mb` of x (rows `ldx` apart) to 16-bit per block of 32 and packs them into
/// panels of QPT tokens: `xp[panel][blocks][16][QPT]` pairs, `xs[panel][blocks][QPT]` (missing
/// tokens zero). `tmp` holds one token's `nfull * 32` int16.
#[inline(always)]
unsafe fn pack_x_q8(
    x: *const f32,
    ldx: usize,
    mb: usize,
    nfull: usize,
    tmp: *mut i16,
    xp: *mut u32,
    xs: *mut f32,
) {
    let panels = (mb + QPT - 1) / QPT;
    let words = nfull * 16;
    let mut ts = [0f32; QNB_MAX];
    for p in 0..panels {
        let xpp = xp.add(p * words * QPT);
        let xsp = xs.add(p * nfull * QPT);
        for t in 0..QPT {
            let tok = p * QPT + t;
            if tok < mb {
                quantize_x_i16(x.add(tok * ldx), nfull, tmp, ts.as_mut_ptr());
                let src = tmp as *const u32;
                for i in 0..words {
                    *xpp.add(i * QPT + t) = *src.add(i);
                }
                for b in 0..nfull {
                    *xsp.add(b * QPT + t) = ts[b];
                }
            } else {
                for i in 0..words {
                    *xpp.add(i * QPT + t) = 0;
                }
                for b in 0..nfull {
                    *xsp.add(b * QPT + t) = 0.0;
                }
            }
        }
    }
}

/// As `matmul_f32` with q8 weights (`wq` [N, K] int8, `scales` [N, ceil(K/32)]).
///
/// Like `matvec_q8`, for K <= 32768 the full blocks run in integer arithmetic on x rounded per
/// token and block of 32 to 16-bit fixed point (exact `i32x4.dot_i16x8_s` accumulation, x's
/// relative rounding <= 2^-16 of its block max); a partial last block, and larger K, use f32.
#[no_mangle]
pub unsafe extern "C" fn matmul_q8(
    x: *const f32,
    ldx: usize,
    wq: *const i8,
    scales: *const f32,
    y: *mut f32,
    ldy: usize,
    m: usize,
    n: usize,
    k: usize,
    row_start: usize,
    row_end: usize,
    accumulate: u32,
) {
    if m == 1 {
        return matvec_q8(wq, scales, x, y, n, k, row_start, row_end, accumulate);
    }
    let nb = q8_blocks(k);
    if k > XQ_MAX || k < Q8_BLOCK {
        let src = |r: usize, rows: usize, k0: usize, kc: usize, dst: *mut f32| {
            for j in 0..rows {
                let q = wq.add((r + j) * k + k0);
                let sc = scales.add((r + j) * nb);
                let d = dst.add(j * KC);
                for i in 0..kc {
                    *d.add(i) = *q.add(i) as f32 * *sc.add((k0 + i) / Q8_BLOCK);
                }
            }
        };
        return matmul_widen(
            src,
            x,
            ldx,
            y,
            ldy,
            m,
            n,
            k,
            row_start,
            row_end,
            accumulate != 0,
        );
    }
    let end = min(row_end, n);
    let acc = accumulate != 0;
    let nfull = k / Q8_BLOCK;
    let tail = nfull * Q8_BLOCK;
    // Scratch: packed x, then one token's int16 row; packed x scales.
    let words = nfull * 16;
    let xp = scratch_q() as *mut u32;
    let xs = scratch_s();
    let cap = min((SCRATCH_CAP - tail) / (2 * words), (SCRATCH_CAP / Q8_BLOCK) / nfull);
    let mbq = min(MBQ, cap / QPT * QPT);
    let tmp = scratch_q().add(SCRATCH_CAP - tail);
    // Equal blocks of whole panels (a short last block would repack all of W for a few tokens).
    let blocks = (m + mbq - 1) / mbq;
    let per_block = ((m + blocks - 1) / blocks + QPT - 1) / QPT * QPT;
    let mut t0 = 0;
    while t0 < m {
        let mb = min(per_block, m - t0);
        let panels = (mb + QPT - 1) / QPT;
        pack_x_q8(x.add(t0 * ldx), ldx, mb, nfull, tmp, xp, xs);
        let mut r = row_start;
        while r < end {
            let rows = min(8, end - r);
            pack_w_q8(wq, scales, k, nb, nfull, r, rows);
            for p in 0..panels {
                let sums = q8_panel_kernel(xp.add(p * words * QPT), xs.add(p * nfull * QPT), nfull);
                let toks = min(QPT, mb - p * QPT);
                let yp = y.add((t0 + p * QPT) * ldy + r);
                if tail < k {
                    // The partial last block in f32, added to the sums before they are stored.
                    let mut o = [[0f32; 8]; QPT];
                    for t in 0..toks {
                        st(o[t].as_mut_ptr(), sums[t][0]);
                        st(o[t].as_mut_ptr().add(4), sums[t][1]);
                        let xt = x.add((t0 + p * QPT + t) * ldx + tail);
                        for j in 0..rows {
                            let d = q8_block_dot(wq.add((r + j) * k + tail), xt, k - tail);
                            o[t][j] += hsum(d) * *scales.add((r + j) * nb + nfull);
                            put(yp.add(t * ldy + j), o[t][j], acc);
                        }
                    }
                } else {
                    store_panel(&sums, yp, ldy, toks, rows, acc);
                }
            }
            r += rows;
        }
        t0 += mb;
    }
}
