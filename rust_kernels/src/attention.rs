//! Attention for Transformer layers: the rotary embedding, causal softmax attention over a KV
//! cache, tiled (flash-attention style: a tile of query rows against a tile of key slots, with a
//! running max and sum per row, so the L×L score matrix never exists), split over slot ranges
//! for decoding (flash-decoding: each split writes an unnormalised partial, `attn_merge`
//! combines them), and the exact GELU.
//!
//! A cache holds one sequence's keys (after rotary) and values as `[n_kv, cap, hd]`: slot `j` of
//! KV head `g` at `(g·cap + j)·hd`. Query head `h` reads KV head `h / (n_heads / n_kv)`.

use crate::simd::*;

/// Query rows per tile (their running max / sum live in registers' worth of stack).
const BR: usize = 8;
/// Key slots per tile.
const BK: usize = 64;

#[inline(always)]
unsafe fn dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    let mut acc0 = splat(0.0);
    let mut acc1 = splat(0.0);
    let mut i = 0;
    while i + 8 <= n {
        acc0 = madd(acc0, ld(a.add(i)), ld(b.add(i)));
        acc1 = madd(acc1, ld(a.add(i + 4)), ld(b.add(i + 4)));
        i += 8;
    }
    while i + 4 <= n {
        acc0 = madd(acc0, ld(a.add(i)), ld(b.add(i)));
        i += 4;
    }
    let mut s = hsum(add(acc0, acc1));
    while i < n {
        s += *a.add(i) * *b.add(i);
        i += 1;
    }
    s
}

/// `o[0..n] = o · c + v · w`.
#[inline(always)]
unsafe fn scale_add(o: *mut f32, c: f32, v: *const f32, w: f32, n: usize) {
    let cv = splat(c);
    let wv = splat(w);
    let mut i = 0;
    while i + 4 <= n {
        st(o.add(i), madd(mul(ld(o.add(i)), cv), ld(v.add(i)), wv));
        i += 4;
    }
    while i < n {
        *o.add(i) = *o.add(i) * c + *v.add(i) * w;
        i += 1;
    }
}

/// `e^(a − b)`, 0 when `a` is −inf (an empty row so far).
#[inline(always)]
fn exp_diff(a: f32, b: f32) -> f32 {
    if a == f32::NEG_INFINITY {
        0.0
    } else {
        exp1(a - b)
    }
}

/// Causal attention of `nq` query rows of one sequence. Query row `r` (at `q + r·ldq`, heads
/// side by side, rotary applied) is the token at position `pos0 + r` and sees the slots
/// `j0 ≤ j < min(j1, pos0 + r + 1)` of the cache (`k`, `v`: `[n_kv, cap, hd]`). Each head's
/// output goes to `out + r·ldo + h·hd`.
///
/// With `ml` 0 the outputs are normalised. Otherwise they are unnormalised partials — the
/// probability-weighted sum of values with weights `e^(s − m)` — and `ml[(r·n_heads + h)·2]`
/// gets `m` (the row's largest score in the range, −inf if none) and the sum of weights `l`,
/// for `attn_merge`.
#[no_mangle]
pub unsafe extern "C" fn attn_rows(
    q: *const f32,
    ldq: usize,
    out: *mut f32,
    ldo: usize,
    nq: usize,
    pos0: usize,
    k: *const f32,
    v: *const f32,
    cap: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    scale: f32,
    j0: usize,
    j1: usize,
    ml: *mut f32,
) {
    let group = n_heads / n_kv;
    let mut s = [0f32; BR * BK];
    let mut m = [0f32; BR];
    let mut l = [0f32; BR];
    for h in 0..n_heads {
        let kh = k.add((h / group) * cap * hd);
        let vh = v.add((h / group) * cap * hd);
        let mut r0 = 0;
        while r0 < nq {
            let br = core::cmp::min(BR, nq - r0);
            for i in 0..br {
                m[i] = f32::NEG_INFINITY;
                l[i] = 0.0;
                let o = out.add((r0 + i) * ldo + h * hd);
                for c in 0..hd {
                    *o.add(c) = 0.0;
                }
            }
            // Slots the last row of the tile sees; earlier rows mask the rest.
            let end = core::cmp::min(j1, pos0 + r0 + br);
            let mut j = j0;
            while j < end {
                let jn = core::cmp::min(j + BK, end);
                for i in 0..br {
                    let last = core::cmp::min(jn, pos0 + r0 + i + 1);
                    let qr = q.add((r0 + i) * ldq + h * hd);
                    let mut tile_max = f32::NEG_INFINITY;
                    for jj in j..jn {
                        let x = if jj < last { dot(qr, kh.add(jj * hd), hd) * scale } else { f32::NEG_INFINITY };
                        s[i * BK + jj - j] = x;
                        if x > tile_max {
                            tile_max = x;
                        }
                    }
                    if tile_max == f32::NEG_INFINITY {
                        continue;
                    }
                    let m_new = if tile_max > m[i] { tile_max } else { m[i] };
                    let corr = exp_diff(m[i], m_new);
                    let o = out.add((r0 + i) * ldo + h * hd);
                    let mut first = true;
                    for jj in j..last {
                        let p = exp1(s[i * BK + jj - j] - m_new);
                        l[i] = l[i] * (if first { corr } else { 1.0 }) + p;
                        scale_add(o, if first { corr } else { 1.0 }, vh.add(jj * hd), p, hd);
                        first = false;
                    }
                    m[i] = m_new;
                }
                j = jn;
            }
            for i in 0..br {
                let o = out.add((r0 + i) * ldo + h * hd);
                if ml.is_null() {
                    let inv = if l[i] > 0.0 { 1.0 / l[i] } else { 0.0 };
                    for c in 0..hd {
                        *o.add(c) *= inv;
                    }
                } else {
                    let p = ml.add(((r0 + i) * n_heads + h) * 2);
                    *p = m[i];
                    *p.add(1) = l[i];
                }
            }
            r0 += br;
        }
    }
}

/// Combines `splits` partials of `attn_rows` (each `rows` outputs of `hd` at
/// `acc + (s·rows + i)·hd`, with `(m, l)` at `ml + (s·rows + i)·2`) into normalised outputs
/// `out + i·ldo`: `Σ_s e^(m_s − M) acc_s / Σ_s e^(m_s − M) l_s`.
#[no_mangle]
pub unsafe extern "C" fn attn_merge(
    acc: *const f32,
    ml: *const f32,
    splits: usize,
    rows: usize,
    hd: usize,
    out: *mut f32,
    ldo: usize,
) {
    for i in 0..rows {
        let mut big = f32::NEG_INFINITY;
        for s in 0..splits {
            let m = *ml.add((s * rows + i) * 2);
            if m > big {
                big = m;
            }
        }
        let o = out.add(i * ldo);
        for c in 0..hd {
            *o.add(c) = 0.0;
        }
        let mut total = 0f32;
        for s in 0..splits {
            let w = exp_diff(*ml.add((s * rows + i) * 2), big);
            total += w * *ml.add((s * rows + i) * 2 + 1);
            scale_add(o, 1.0, acc.add((s * rows + i) * hd), w, hd);
        }
        let inv = if total > 0.0 { 1.0 / total } else { 0.0 };
        for c in 0..hd {
            *o.add(c) *= inv;
        }
    }
}

/// Rotate-half rotary embedding of `heads` heads of `hd` channels in each of `rows` rows (row `r`
/// at `x + r·ldx`): channel `i < rot/2` pairs with `i + rot/2`, turned by the angle whose cosine
/// and sine are `cos[r·rot/2 + i]`, `sin[…]` (the host computes them per position).
#[no_mangle]
pub unsafe extern "C" fn rotary(
    x: *mut f32,
    ldx: usize,
    rows: usize,
    heads: usize,
    hd: usize,
    rot: usize,
    cos: *const f32,
    sin: *const f32,
) {
    let half = rot / 2;
    for r in 0..rows {
        let cr = cos.add(r * half);
        let sr = sin.add(r * half);
        for h in 0..heads {
            let p = x.add(r * ldx + h * hd);
            let mut i = 0;
            while i + 4 <= half {
                let a = ld(p.add(i));
                let b = ld(p.add(i + half));
                let c = ld(cr.add(i));
                let s = ld(sr.add(i));
                st(p.add(i), sub(mul(a, c), mul(b, s)));
                st(p.add(i + half), add(mul(b, c), mul(a, s)));
                i += 4;
            }
            while i < half {
                let a = *p.add(i);
                let b = *p.add(i + half);
                *p.add(i) = a * *cr.add(i) - b * *sr.add(i);
                *p.add(i + half) = b * *cr.add(i) + a * *sr.add(i);
                i += 1;
            }
        }
    }
}

/// The error function from its complement in Chebyshev form (Numerical Recipes' `erfcc`,
/// relative error < 1.2e-7), as in the `ref` backend.
#[inline(always)]
fn erf1(x: f32) -> f32 {
    let z = if x < 0.0 { -x } else { x };
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp1(-z * z + poly);
    if x >= 0.0 {
        1.0 - erfc
    } else {
        erfc - 1.0
    }
}

/// Exact GELU `x/2 · (1 + erf(x/√2))` of `n` values (`out` may be `x`).
#[no_mangle]
pub unsafe extern "C" fn gelu(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        let v = *x.add(i);
        *out.add(i) = 0.5 * v * (1.0 + erf1(v * core::f32::consts::FRAC_1_SQRT_2));
    }
}
