//! Normalizations (as in mamba_ssm's reference `rms_norm_ref` / `layer_norm_ref`) and
//! element-wise activations. All take `rows` consecutive vectors of `n` floats.

use crate::simd::*;
use core::arch::wasm32::*;

#[inline(always)]
unsafe fn sum_sq(x: *const f32, n: usize) -> f32 {
    let mut a = f32x4_splat(0.0);
    let mut b = f32x4_splat(0.0);
    let mut i = 0;
    while i + 8 <= n {
        let u = ld(x.add(i));
        let v = ld(x.add(i + 4));
        a = madd(a, u, u);
        b = madd(b, v, v);
        i += 8;
    }
    if i + 4 <= n {
        let u = ld(x.add(i));
        a = madd(a, u, u);
        i += 4;
    }
    let mut s = hsum(add(a, b));
    while i < n {
        let v = *x.add(i);
        s += v * v;
        i += 1;
    }
    s
}

#[inline(always)]
unsafe fn sum(x: *const f32, n: usize) -> f32 {
    let mut a = f32x4_splat(0.0);
    let mut i = 0;
    while i + 4 <= n {
        a = add(a, ld(x.add(i)));
        i += 4;
    }
    let mut s = hsum(a);
    while i < n {
        s += *x.add(i);
        i += 1;
    }
    s
}

/// `1 / sqrt(v)` correctly rounded twice (sqrt, then division), like `1 / torch.sqrt(v)`.
#[inline(always)]
fn rsqrt(v: f32) -> f32 {
    1.0 / lane0(f32x4_sqrt(splat(v)))
}

/// out = (x * s) * w (+ b) over n elements.
#[inline(always)]
unsafe fn scale_out(
    x: *const f32,
    shift: f32,
    s: f32,
    w: *const f32,
    b: *const f32,
    out: *mut f32,
    n: usize,
) {
    let sv = splat(s);
    let mv = splat(shift);
    let mut i = 0;
    while i + 4 <= n {
        let mut v = mul(mul(sub(ld(x.add(i)), mv), sv), ld(w.add(i)));
        if !b.is_null() {
            v = add(v, ld(b.add(i)));
        }
        st(out.add(i), v);
        i += 4;
    }
    while i < n {
        let mut v = ((*x.add(i) - shift) * s) * *w.add(i);
        if !b.is_null() {
            v += *b.add(i);
        }
        *out.add(i) = v;
        i += 1;
    }
}

#[inline(always)]
unsafe fn rms_row(x: *const f32, w: *const f32, out: *mut f32, n: usize, eps: f32) {
    let r = rsqrt(sum_sq(x, n) / n as f32 + eps);
    scale_out(x, 0.0, r, w, core::ptr::null(), out, n);
}

#[inline(always)]
unsafe fn ln_row(x: *const f32, w: *const f32, b: *const f32, out: *mut f32, n: usize, eps: f32) {
    let mean = sum(x, n) / n as f32;
    let mv = splat(mean);
    let mut a = f32x4_splat(0.0);
    let mut i = 0;
    while i + 4 <= n {
        let d = sub(ld(x.add(i)), mv);
        a = madd(a, d, d);
        i += 4;
    }
    let mut ss = hsum(a);
    while i < n {
        let d = *x.add(i) - mean;
        ss += d * d;
        i += 1;
    }
    let r = rsqrt(ss / n as f32 + eps);
    scale_out(x, mean, r, w, b, out, n);
}

/// RMSNorm of each of `rows` vectors: `out = x / sqrt(mean(x²) + eps) * w`. `out` may alias `x`.
#[no_mangle]
pub unsafe extern "C" fn rmsnorm(
    x: *const f32,
    w: *const f32,
    out: *mut f32,
    rows: usize,
    n: usize,
    eps: f32,
) {
    for r in 0..rows {
        rms_row(x.add(r * n), w, out.add(r * n), n, eps);
    }
}

/// LayerNorm of each of `rows` vectors: `out = (x - mean) / sqrt(var + eps) * w + b` (biased
/// variance; `b` may be 0 for none). `out` may alias `x`.
#[no_mangle]
pub unsafe extern "C" fn layernorm(
    x: *const f32,
    w: *const f32,
    b: *const f32,
    out: *mut f32,
    rows: usize,
    n: usize,
    eps: f32,
) {
    for r in 0..rows {
        ln_row(x.add(r * n), w, b, out.add(r * n), n, eps);
    }
}

#[inline(always)]
unsafe fn add_into(residual: *mut f32, hidden: *const f32, n: usize) {
    let mut i = 0;
    while i + 4 <= n {
        st(residual.add(i), add(ld(residual.add(i)), ld(hidden.add(i))));
        i += 4;
    }
    while i < n {
        *residual.add(i) += *hidden.add(i);
        i += 1;
    }
}

/// Fused residual add + RMSNorm (mamba_ssm's `fused_add_norm` in f32): per row,
/// `residual += hidden; out = rmsnorm(residual) * w`. `out` may alias `hidden`.
#[no_mangle]
pub unsafe extern "C" fn add_rmsnorm(
    residual: *mut f32,
    hidden: *const f32,
    w: *const f32,
    out: *mut f32,
    rows: usize,
    n: usize,
    eps: f32,
) {
    for r in 0..rows {
        let res = residual.add(r * n);
        add_into(res, hidden.add(r * n), n);
        rms_row(res, w, out.add(r * n), n, eps);
    }
}

/// Fused residual add + LayerNorm: `residual += hidden; out = layernorm(residual)`.
#[no_mangle]
pub unsafe extern "C" fn add_layernorm(
    residual: *mut f32,
    hidden: *const f32,
    w: *const f32,
    b: *const f32,
    out: *mut f32,
    rows: usize,
    n: usize,
    eps: f32,
) {
    for r in 0..rows {
        let res = residual.add(r * n);
        add_into(res, hidden.add(r * n), n);
        ln_row(res, w, b, out.add(r * n), n, eps);
    }
}

/// Mamba-2 gated RMSNorm (mamba_ssm `RMSNormGated` reference). Per row and per group of
/// `group_size` elements: with `norm_before_gate == 0` (the Mamba-2 default)
/// `out = rmsnorm(y * silu(z)) * w`, else `out = rmsnorm(y) * w * silu(z)`. `y` and `out` rows
/// are `n` floats apart, `z` rows `ldz` floats apart. `out` may alias `y`.
#[no_mangle]
pub unsafe extern "C" fn gated_rmsnorm(
    y: *const f32,
    z: *const f32,
    ldz: usize,
    w: *const f32,
    out: *mut f32,
    rows: usize,
    n: usize,
    group_size: usize,
    eps: f32,
    norm_before_gate: u32,
) {
    let gs = if group_size == 0 { n } else { group_size };
    for r in 0..rows {
        let yr = y.add(r * n);
        let zr = z.add(r * ldz);
        let or = out.add(r * n);
        let mth = Math::get();
        if norm_before_gate == 0 {
            // out = y * silu(z) first (in place in out), then normalize it.
            let mut i = 0;
            while i + 4 <= n {
                st(or.add(i), mul(ld(yr.add(i)), mth.silu4(ld(zr.add(i)))));
                i += 4;
            }
            while i < n {
                *or.add(i) = *yr.add(i) * silu1(*zr.add(i));
                i += 1;
            }
            let mut g = 0;
            while g < n {
                let len = if gs < n - g { gs } else { n - g };
                rms_row(or.add(g), w.add(g), or.add(g), len, eps);
                g += len;
            }
        } else {
            let mut g = 0;
            while g < n {
                let len = if gs < n - g { gs } else { n - g };
                rms_row(yr.add(g), w.add(g), or.add(g), len, eps);
                g += len;
            }
            let mut i = 0;
            while i + 4 <= n {
                st(or.add(i), mul(ld(or.add(i)), mth.silu4(ld(zr.add(i)))));
                i += 4;
            }
            while i < n {
                *or.add(i) *= silu1(*zr.add(i));
                i += 1;
            }
        }
    }
}

/// Applies `f` to n elements, four at a time (the tail through a zero-padded vector).
#[inline(always)]
unsafe fn map<F: Fn(v128) -> v128>(x: *const f32, out: *mut f32, n: usize, f: F) {
    let mut i = 0;
    while i + 4 <= n {
        st(out.add(i), f(ld(x.add(i))));
        i += 4;
    }
    if i < n {
        let v = f(ld_partial(x.add(i), 1, n - i));
        st_partial(out.add(i), 1, n - i, v);
    }
}

/// `out = silu(x) = x * sigmoid(x)` element-wise (`out` may alias `x`).
#[no_mangle]
pub unsafe extern "C" fn silu(x: *const f32, out: *mut f32, n: usize) {
    let m = Math::get();
    map(x, out, n, |v| m.silu4(v))
}

/// `out = x * silu(z)` element-wise (`out` may alias `x` or `z`).
#[no_mangle]
pub unsafe extern "C" fn mul_silu(x: *const f32, z: *const f32, out: *mut f32, n: usize) {
    let mth = Math::get();
    let mut i = 0;
    while i + 4 <= n {
        st(out.add(i), mul(ld(x.add(i)), mth.silu4(ld(z.add(i)))));
        i += 4;
    }
    while i < n {
        *out.add(i) = *x.add(i) * silu1(*z.add(i));
        i += 1;
    }
}

/// PyTorch softplus element-wise: `x > 20 ? x : log1p(exp(x))`.
#[no_mangle]
pub unsafe extern "C" fn softplus(x: *const f32, out: *mut f32, n: usize) {
    let m = Math::get();
    map(x, out, n, |v| m.softplus4(v))
}

/// `e^x` element-wise (the kernels' SIMD exp, exported for tests and host use).
#[no_mangle]
pub unsafe extern "C" fn exp_f32(x: *const f32, out: *mut f32, n: usize) {
    let m = Math::get();
    map(x, out, n, |v| m.exp4(v))
}

/// `ln(1 + x)` element-wise for finite `x > -1` (the kernels' SIMD log1p).
#[no_mangle]
pub unsafe extern "C" fn log1p_f32(x: *const f32, out: *mut f32, n: usize) {
    let m = Math::get();
    map(x, out, n, |v| m.log1p4(v))
}

/// `out = a + b` element-wise (`out` may alias either).
#[no_mangle]
pub unsafe extern "C" fn add_f32(a: *const f32, b: *const f32, out: *mut f32, n: usize) {
    let mut i = 0;
    while i + 4 <= n {
        st(out.add(i), add(ld(a.add(i)), ld(b.add(i))));
        i += 4;
    }
    while i < n {
        *out.add(i) = *a.add(i) + *b.add(i);
        i += 1;
    }
}

/// Widens n IEEE binary16 bit patterns to f32 (exact for all 65536 patterns).
#[no_mangle]
pub unsafe extern "C" fn f16_to_f32(src: *const u16, dst: *mut f32, n: usize) {
    let mut i = 0;
    while i + 8 <= n {
        let (a, b) = ld_f16x8(src.add(i));
        st(dst.add(i), a);
        st(dst.add(i + 4), b);
        i += 8;
    }
    while i < n {
        *dst.add(i) = f16_to_f32_1(*src.add(i));
        i += 1;
    }
}
