//! Sampling helpers: argmax and top-k over logits.

use crate::simd::*;
use core::arch::wasm32::*;
use core::mem::transmute;

/// Index of the largest of `n` floats (the first one on ties; NaNs are ignored). Returns 0 when
/// every value is NaN or -inf, and -1 when `n == 0`.
#[no_mangle]
pub unsafe extern "C" fn argmax(x: *const f32, n: usize) -> i32 {
    if n == 0 {
        return -1;
    }
    let mut best = f32x4_splat(f32::NEG_INFINITY);
    let mut bidx = i32x4_splat(-1);
    let mut idx = i32x4(0, 1, 2, 3);
    let four = i32x4_splat(4);
    let mut i = 0;
    while i + 4 <= n {
        let v = ld(x.add(i));
        let gt = f32x4_gt(v, best);
        best = v128_bitselect(v, best, gt);
        bidx = v128_bitselect(idx, bidx, gt);
        idx = i32x4_add(idx, four);
        i += 4;
    }
    let bv: [f32; 4] = transmute(best);
    let bi: [i32; 4] = transmute(bidx);
    let mut m = f32::NEG_INFINITY;
    let mut mi = -1i32;
    for j in 0..4 {
        if bi[j] >= 0 && (bv[j] > m || (bv[j] == m && (mi < 0 || bi[j] < mi))) {
            m = bv[j];
            mi = bi[j];
        }
    }
    while i < n {
        let v = *x.add(i);
        if v > m {
            m = v;
            mi = i as i32;
        }
        i += 1;
    }
    if mi < 0 {
        // Nothing above -inf: the first -inf if any, else (all NaN) 0.
        for j in 0..n {
            if *x.add(j) == f32::NEG_INFINITY {
                return j as i32;
            }
        }
        return 0;
    }
    mi
}

/// Writes to `out_idx` the indices of the `k` largest of `n` floats, largest first (ties: lower
/// index first; NaNs never selected before finite values). Returns the number written,
/// `min(k, n)`. O(n) for small k once the running threshold settles (insertion into a sorted
/// list of k).
#[no_mangle]
pub unsafe extern "C" fn top_k(x: *const f32, n: usize, k: usize, out_idx: *mut i32) -> usize {
    let k = if k < n { k } else { n };
    if k == 0 {
        return 0;
    }
    let mut len = 0usize;
    for i in 0..n {
        let v = *x.add(i);
        let v = if v != v { f32::NEG_INFINITY } else { v };
        if len == k {
            let last = *x.add(*out_idx.add(k - 1) as usize);
            let last = if last != last {
                f32::NEG_INFINITY
            } else {
                last
            };
            if !(v > last) {
                continue;
            }
            len -= 1;
        }
        // Insert after every element >= v (stable: earlier indices stay first on ties).
        let mut j = len;
        while j > 0 {
            let u = *x.add(*out_idx.add(j - 1) as usize);
            let u = if u != u { f32::NEG_INFINITY } else { u };
            if u >= v {
                break;
            }
            *out_idx.add(j) = *out_idx.add(j - 1);
            j -= 1;
        }
        *out_idx.add(j) = i as i32;
        len += 1;
    }
    len
}
