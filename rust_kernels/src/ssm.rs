//! The sequence-mixing kernels: causal depthwise conv1d, the Mamba-1 selective scan and the
//! Mamba-2 SSD recurrence. Each has a step form (one token) and a sequence form (L tokens,
//! token-major activations with explicit row strides so that they can read straight out of a
//! projection's output), and works on a channel/head range so that workers can split the layer.

use crate::simd::*;
use core::arch::wasm32::*;
use core::mem::transmute;

#[inline(always)]
fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

/// Loads `cnt` (1..=4) consecutive floats, zero-padding the rest.
#[inline(always)]
unsafe fn ldn(p: *const f32, cnt: usize) -> v128 {
    if cnt == 4 {
        ld(p)
    } else {
        ld_partial(p, 1, cnt)
    }
}

/// Stores the first `cnt` (1..=4) lanes.
#[inline(always)]
unsafe fn stn(p: *mut f32, cnt: usize, v: v128) {
    if cnt == 4 {
        st(p, v)
    } else {
        st_partial(p, 1, cnt, v)
    }
}

/// 4×4 transpose of rows `r0..r3`.
#[inline(always)]
fn transpose(r0: v128, r1: v128, r2: v128, r3: v128) -> [v128; 4] {
    let t0 = i32x4_shuffle::<0, 4, 1, 5>(r0, r1);
    let t1 = i32x4_shuffle::<2, 6, 3, 7>(r0, r1);
    let t2 = i32x4_shuffle::<0, 4, 1, 5>(r2, r3);
    let t3 = i32x4_shuffle::<2, 6, 3, 7>(r2, r3);
    [
        i32x4_shuffle::<0, 1, 4, 5>(t0, t2),
        i32x4_shuffle::<2, 3, 6, 7>(t0, t2),
        i32x4_shuffle::<0, 1, 4, 5>(t1, t3),
        i32x4_shuffle::<2, 3, 6, 7>(t1, t3),
    ]
}

// ---------------------------------------------------------------------------------------------
// Causal depthwise conv1d

/// Causal depthwise conv1d over `l` tokens for channels `[c_start, c_end)`.
///
/// - `state` [C, d_conv]: per channel the last `d_conv` inputs, oldest first (mamba_ssm's
///   `conv_state`); read as the left context and overwritten with the window after the last token.
/// - `x` [L, ldx] token-major input (channel c of token t at `x[t*ldx + c]`).
/// - `w` [C, d_conv] (the PyTorch weight [C, 1, d_conv] squeezed), `b` [C] or 0.
/// - `out` [L, ldo]: `out[t, c] = Σ_j w[c, j] · window_t[c, j] + b[c]`, then SiLU if `apply_silu`.
///
/// `out` must not alias `x` unless `ldo == ldx` and they are the same buffer (each value is read
/// before its slot is written).
#[no_mangle]
pub unsafe extern "C" fn conv1d_seq(
    state: *mut f32,
    x: *const f32,
    ldx: usize,
    w: *const f32,
    b: *const f32,
    out: *mut f32,
    ldo: usize,
    l: usize,
    d_conv: usize,
    c_start: usize,
    c_end: usize,
    apply_silu: u32,
) {
    let mut c = c_start;
    if d_conv == 4 {
        while c + 4 <= c_end {
            let s = state.add(c * 4);
            let [mut p0, mut p1, mut p2, mut p3] =
                transpose(ld(s), ld(s.add(4)), ld(s.add(8)), ld(s.add(12)));
            let wp = w.add(c * 4);
            let [w0, w1, w2, w3] = transpose(ld(wp), ld(wp.add(4)), ld(wp.add(8)), ld(wp.add(12)));
            let bv = if b.is_null() {
                f32x4_splat(0.0)
            } else {
                ld(b.add(c))
            };
            let mth = Math::get();
            for t in 0..l {
                let xv = ld(x.add(t * ldx + c));
                p0 = p1;
                p1 = p2;
                p2 = p3;
                p3 = xv;
                let mut o = mul(w0, p0);
                o = madd(o, w1, p1);
                o = madd(o, w2, p2);
                o = madd(o, w3, p3);
                o = add(o, bv);
                if apply_silu != 0 {
                    o = mth.silu4(o);
                }
                st(out.add(t * ldo + c), o);
            }
            let [r0, r1, r2, r3] = transpose(p0, p1, p2, p3);
            st(s, r0);
            st(s.add(4), r1);
            st(s.add(8), r2);
            st(s.add(12), r3);
            c += 4;
        }
    }
    // Generic path (any d_conv, leftover channels).
    while c < c_end {
        let s = state.add(c * d_conv);
        let wc = w.add(c * d_conv);
        let bias = if b.is_null() { 0.0 } else { *b.add(c) };
        for t in 0..l {
            let mut j = 0;
            while j + 1 < d_conv {
                *s.add(j) = *s.add(j + 1);
                j += 1;
            }
            if d_conv > 0 {
                *s.add(d_conv - 1) = *x.add(t * ldx + c);
            }
            let mut o = 0f32;
            for j in 0..d_conv {
                o += *wc.add(j) * *s.add(j);
            }
            o += bias;
            if apply_silu != 0 {
                o = silu1(o);
            }
            *out.add(t * ldo + c) = o;
        }
        c += 1;
    }
}

/// One token of `conv1d_seq`: `x`, `out` [C] (the state shifts left by one, x enters last).
#[no_mangle]
pub unsafe extern "C" fn conv1d_step(
    state: *mut f32,
    x: *const f32,
    w: *const f32,
    b: *const f32,
    out: *mut f32,
    d_conv: usize,
    c_start: usize,
    c_end: usize,
    apply_silu: u32,
) {
    conv1d_seq(
        state, x, 0, w, b, out, 0, 1, d_conv, c_start, c_end, apply_silu,
    )
}

// ---------------------------------------------------------------------------------------------
// Mamba-1 selective scan

/// `flags` bit for `selective_scan` / `ssd_scan`: apply softplus to `delta + dt_bias`.
pub const FLAG_SOFTPLUS: u32 = 1;
/// `flags` bit for `ssd_scan`: do not multiply x by dt in the input term (the state update is then
/// `exp(dt*A) * h + x ⊗ B`, as in `ssd_minimal_discrete` with dt holding the log-decay, A = 1).
pub const FLAG_SSD_UNSCALED_X: u32 = 2;
/// `flags` bit for `selective_scan`: `h` and `a` are stored 4-channel-interleaved (see
/// `interleave4`), so the kernel uses them in place instead of transposing them per call.
pub const FLAG_SCAN_INTERLEAVED: u32 = 4;

/// Largest d_state kept in the transposed stack buffers of `selective_scan` (larger N takes the
/// per-channel path).
const SCAN_NMAX: usize = 256;
/// Tokens per block of `selective_scan`'s passes (their per-token values stay on the stack).
const SCAN_TB: usize = 64;

/// One channel, one token: `h = exp(dt*A) h + (dt*u) B; return h·C` (SIMD over N).
#[inline(always)]
unsafe fn scan_channel(
    mth: &Math,
    hp: *mut f32,
    ap: *const f32,
    dt: f32,
    du: f32,
    bt: *const f32,
    ct: *const f32,
    n: usize,
) -> f32 {
    let dtv = splat(dt);
    let duv = splat(du);
    let mut y = f32x4_splat(0.0);
    let mut j = 0;
    while j < n {
        let cnt = min(4, n - j);
        let da = mth.exp4(mul(dtv, ldn(ap.add(j), cnt)));
        let h = madd(mul(da, ldn(hp.add(j), cnt)), duv, ldn(bt.add(j), cnt));
        stn(hp.add(j), cnt, h);
        y = madd(y, h, ldn(ct.add(j), cnt));
        j += 4;
    }
    hsum(y)
}

/// Gathers `cnt` (1..=4) rows of a [rows, n] matrix (row stride n) into per-column vectors
/// `dst[j] = (m[0][j], m[1][j], m[2][j], m[3][j])` (missing rows zero).
#[inline(always)]
unsafe fn gather_cols(m: *const f32, n: usize, cnt: usize, dst: *mut v128) {
    let mut j = 0;
    if cnt == 4 {
        while j + 4 <= n {
            let t = transpose(
                ld(m.add(j)),
                ld(m.add(n + j)),
                ld(m.add(2 * n + j)),
                ld(m.add(3 * n + j)),
            );
            for q in 0..4 {
                *dst.add(j + q) = t[q];
            }
            j += 4;
        }
    }
    while j < n {
        *dst.add(j) = ld_partial(m.add(j), n, cnt);
        j += 1;
    }
}

/// Inverse of `gather_cols`: writes the `cnt` rows back.
#[inline(always)]
unsafe fn scatter_cols(src: *const v128, n: usize, cnt: usize, m: *mut f32) {
    let mut j = 0;
    if cnt == 4 {
        while j + 4 <= n {
            let t = transpose(
                *src.add(j),
                *src.add(j + 1),
                *src.add(j + 2),
                *src.add(j + 3),
            );
            st(m.add(j), t[0]);
            st(m.add(n + j), t[1]);
            st(m.add(2 * n + j), t[2]);
            st(m.add(3 * n + j), t[3]);
            j += 4;
        }
    }
    while j < n {
        st_partial(m.add(j), n, cnt, *src.add(j));
        j += 1;
    }
}

/// The per-channel inputs and the output of `selective_scan` (see there for the layouts).
struct ScanIo {
    u: *const f32,
    ldu: usize,
    delta: *const f32,
    ldd: usize,
    d: *const f32,
    z: *const f32,
    ldz: usize,
    dt_bias: *const f32,
    y: *mut f32,
    ldy: usize,
    flags: u32,
}

impl ScanIo {
    /// `dt` (softplus'd if asked) and `dt * u` of channels `c..c+cnt` at token `t`.
    #[inline(always)]
    unsafe fn dt_du(&self, mth: &Math, t: usize, c: usize, cnt: usize) -> (v128, v128) {
        let mut dt = ldn(self.delta.add(t * self.ldd + c), cnt);
        if !self.dt_bias.is_null() {
            dt = add(dt, ldn(self.dt_bias.add(c), cnt));
        }
        if self.flags & FLAG_SOFTPLUS != 0 {
            dt = mth.softplus4(dt);
        }
        (dt, mul(dt, ldn(self.u.add(t * self.ldu + c), cnt)))
    }

    /// Adds the D skip to `yv`, applies the SiLU(z) gate and stores y of channels `c..c+cnt`
    /// at token `t` (u and z are read before y, which may alias them, is written).
    #[inline(always)]
    unsafe fn out(&self, mth: &Math, t: usize, c: usize, cnt: usize, mut yv: v128) {
        if !self.d.is_null() {
            yv = madd(
                yv,
                ldn(self.d.add(c), cnt),
                ldn(self.u.add(t * self.ldu + c), cnt),
            );
        }
        if !self.z.is_null() {
            yv = mul(yv, mth.silu4(ldn(self.z.add(t * self.ldz + c), cnt)));
        }
        stn(self.y.add(t * self.ldy + c), cnt, yv);
    }
}

/// The recurrence of four channels (one per lane) for one token, on per-state-index vectors
/// `ap[j]`, `hp[j]`: `h[j] = 2^(dt2 * a[j]) h[j] + du B[j]`, returns `Σ_j h[j] C[j]`. `dt2` is
/// dt·log2(e), so that the decay `exp(dt·A)` is one `exp2_4`.
#[inline(always)]
unsafe fn scan_token4(
    e2: &Exp2,
    ap: *const v128,
    hp: *mut v128,
    n: usize,
    dt2: v128,
    du: v128,
    bt: *const f32,
    ct: *const f32,
) -> v128 {
    let mut yv = f32x4_splat(0.0);
    for j in 0..n {
        let da = e2.exp2_4(mul(dt2, *ap.add(j)));
        let hv = madd(
            mul(da, *hp.add(j)),
            du,
            v128_load32_splat(bt.add(j) as *const u32),
        );
        *hp.add(j) = hv;
        yv = madd(yv, hv, v128_load32_splat(ct.add(j) as *const u32));
    }
    yv
}

/// Mamba-1 selective scan (mamba_ssm `selective_scan_ref` / `Mamba.step`) over `l` tokens for
/// channels `[c_start, c_end)` of `dim`, starting from and updating the state `h`.
///
/// Per token t and channel c, with `d = delta[t,c] + dt_bias[c]` (softplus'd if
/// `flags & 1`) and group `g = c / (dim / ngroups)`:
/// `h[c,:] = exp(d*A[c,:]) * h[c,:] + (d*u[t,c]) * B[t,g,:]`,
/// `y[t,c] = (h[c,:]·C[t,g,:] + D[c]*u[t,c]) * silu(z[t,c])`.
///
/// Layouts: `h`, `a` [dim, n]; `u` [L, ldu], `delta` [L, ldd], `z` [L, ldz], `y` [L, ldy]
/// token-major with channel c at column c; `bm`, `cm` [L, ldbc] with group g's `n` values at
/// column `g*n`; `d`, `dt_bias` [dim]. `d`, `z`, `dt_bias` may be 0 (absent). `y` may alias
/// `u` or `z` when they have the same stride.
///
/// Channels go four at a time, one per SIMD lane: their `A` and state are transposed into
/// per-state-index vectors on the stack for the whole sequence, so softplus, the gate and the
/// output are vector operations and no horizontal sums are needed.
#[no_mangle]
pub unsafe extern "C" fn selective_scan(
    h: *mut f32,
    u: *const f32,
    ldu: usize,
    delta: *const f32,
    ldd: usize,
    a: *const f32,
    bm: *const f32,
    cm: *const f32,
    ldbc: usize,
    d: *const f32,
    z: *const f32,
    ldz: usize,
    dt_bias: *const f32,
    y: *mut f32,
    ldy: usize,
    l: usize,
    dim: usize,
    n: usize,
    ngroups: usize,
    c_start: usize,
    c_end: usize,
    flags: u32,
) {
    let ng = if ngroups == 0 { 1 } else { ngroups };
    let cpg = if dim / ng == 0 { 1 } else { dim / ng };
    let mth = Math::get();
    let e2 = Exp2::get();
    let log2e = splat(LOG2E);
    let inter = flags & FLAG_SCAN_INTERLEAVED != 0;
    if inter && (c_start % 4 != 0 || (ng > 1 && cpg % 4 != 0) || n > SCAN_NMAX) {
        // Interleaved layout needs whole groups of four channels: trap rather than guess.
        core::arch::wasm32::unreachable();
    }
    let mut dts = [f32x4_splat(0.0); SCAN_TB];
    let mut dus = [f32x4_splat(0.0); SCAN_TB];
    let mut ys = [f32x4_splat(0.0); SCAN_TB];
    let io = ScanIo {
        u,
        ldu,
        delta,
        ldd,
        d,
        z,
        ldz,
        dt_bias,
        y,
        ldy,
        flags,
    };
    if inter && l == 1 {
        // One token (decoding): the same three passes, over blocks of channel groups instead
        // of tokens, so that the softplus of the next groups overlaps the recurrences.
        let mut c0 = c_start;
        while c0 < c_end {
            let c1 = min(c_end, c0 + 4 * SCAN_TB);
            let mut c = c0;
            let mut i = 0;
            while c < c1 {
                let cnt = min(4, c1 - c);
                let (dt, du) = io.dt_du(&mth, 0, c, cnt);
                dts[i] = dt;
                dus[i] = du;
                c += 4;
                i += 1;
            }
            let (mut c, mut i) = (c0, 0);
            while c < c1 {
                let goff = (c / cpg) * n;
                ys[i] = scan_token4(
                    &e2,
                    a.add(c * n) as *const v128,
                    h.add(c * n) as *mut v128,
                    n,
                    mul(dts[i], log2e),
                    dus[i],
                    bm.add(goff),
                    cm.add(goff),
                );
                c += 4;
                i += 1;
            }
            let (mut c, mut i) = (c0, 0);
            while c < c1 {
                io.out(&mth, 0, c, min(4, c1 - c), ys[i]);
                c += 4;
                i += 1;
            }
            c0 = c1;
        }
        return;
    }
    let mut at = [f32x4_splat(0.0); SCAN_NMAX];
    let mut hs = [f32x4_splat(0.0); SCAN_NMAX];
    let atp = at.as_mut_ptr();
    let hsp = hs.as_mut_ptr();
    let mut c = c_start;
    while c < c_end {
        let mut cnt = min(4, c_end - c);
        // Four lanes must share one group of B/C; otherwise go one channel at a time.
        if (c + cnt - 1) / cpg != c / cpg {
            cnt = 1;
        }
        let goff = (c / cpg) * n;
        // Per-state-index vectors of the four channels: in place when interleaved (group c/4
        // starts at float c*n there too), else transposed into the stack buffers.
        let (ap, hp): (*const v128, *mut v128) = if inter {
            (a.add(c * n) as *const v128, h.add(c * n) as *mut v128)
        } else {
            if n <= SCAN_NMAX {
                gather_cols(a.add(c * n), n, cnt, atp);
                gather_cols(h.add(c * n), n, cnt, hsp);
            }
            (atp, hsp)
        };
        // Tokens go in blocks of three passes, so that the recurrence loop carries nothing but
        // the state from one token to the next: softplus (an exp, a log and a division, ~100
        // cycles of latency) and the output gate would otherwise sit on the per-token critical
        // path; as passes of their own they pipeline across tokens.
        let mut t0 = 0;
        while t0 < l {
            let tb = min(SCAN_TB, l - t0);
            for i in 0..tb {
                let (dt, du) = io.dt_du(&mth, t0 + i, c, cnt);
                dts[i] = dt;
                dus[i] = du;
            }
            for i in 0..tb {
                let t = t0 + i;
                let bt = bm.add(t * ldbc + goff);
                let ct = cm.add(t * ldbc + goff);
                ys[i] = if n <= SCAN_NMAX {
                    scan_token4(&e2, ap, hp, n, mul(dts[i], log2e), dus[i], bt, ct)
                } else {
                    let dtl: [f32; 4] = transmute(dts[i]);
                    let dul: [f32; 4] = transmute(dus[i]);
                    let mut yl = [0f32; 4];
                    for q in 0..cnt {
                        let ci = c + q;
                        yl[q] = scan_channel(
                            &mth,
                            h.add(ci * n),
                            a.add(ci * n),
                            dtl[q],
                            dul[q],
                            bt,
                            ct,
                            n,
                        );
                    }
                    transmute(yl)
                };
            }
            for i in 0..tb {
                io.out(&mth, t0 + i, c, cnt, ys[i]);
            }
            t0 += tb;
        }
        if !inter && n <= SCAN_NMAX {
            scatter_cols(hsp, n, cnt, h.add(c * n));
        }
        c += cnt;
    }
}

/// Converts a row-major [rows, n] matrix (e.g. the Mamba-1 state or A, [d_inner, d_state]) to
/// the 4-row-interleaved layout of `FLAG_SCAN_INTERLEAVED`: element (r, j) goes to
/// `dst[(r / 4) * 4 * n + j * 4 + r % 4]`. `dst` holds `ceil(rows / 4) * 4 * n` floats; the
/// padding lanes of a last partial group are written as 0.
#[no_mangle]
pub unsafe extern "C" fn interleave4(src: *const f32, dst: *mut f32, rows: usize, n: usize) {
    let mut r = 0;
    while r < rows {
        let cnt = min(4, rows - r);
        gather_cols(src.add(r * n), n, cnt, dst.add(r * n) as *mut v128);
        r += 4;
    }
}

/// Inverse of `interleave4` (padding lanes are dropped).
#[no_mangle]
pub unsafe extern "C" fn deinterleave4(src: *const f32, dst: *mut f32, rows: usize, n: usize) {
    let mut r = 0;
    while r < rows {
        let cnt = min(4, rows - r);
        scatter_cols(src.add(r * n) as *const v128, n, cnt, dst.add(r * n));
        r += 4;
    }
}

/// One token of `selective_scan` (all vectors [dim] / [ngroups*n], `h`, `a` [dim, n]).
#[no_mangle]
pub unsafe extern "C" fn selective_scan_step(
    h: *mut f32,
    u: *const f32,
    delta: *const f32,
    a: *const f32,
    bm: *const f32,
    cm: *const f32,
    d: *const f32,
    z: *const f32,
    dt_bias: *const f32,
    y: *mut f32,
    dim: usize,
    n: usize,
    ngroups: usize,
    c_start: usize,
    c_end: usize,
    flags: u32,
) {
    selective_scan(
        h, u, 0, delta, 0, a, bm, cm, 0, d, z, 0, dt_bias, y, 0, 1, dim, n, ngroups, c_start,
        c_end, flags,
    )
}

// ---------------------------------------------------------------------------------------------
// Mamba-2 SSD (recurrent form)

/// Four state rows `p..p+4` of one head for one token (they are contiguous: `4*n` floats at `sp`).
///
/// With `PF`, also reads one float of every 64-byte line of the next `4*n` floats at
/// `pf` (the next four rows) and returns their bits XORed: a software prefetch. From DRAM, the
/// four interleaved read-modify-write streams alone ran at ~11 GB/s on one core (the hardware
/// prefetcher does not follow them); with the touches one block ahead, ~35 GB/s. The caller
/// must keep the result alive (V8 drops unused loads).
#[inline(always)]
unsafe fn ssd_rows4<const PF: bool>(
    sp: *mut f32,
    n: usize,
    da: v128,
    s: [v128; 4],
    bt: *const f32,
    ct: *const f32,
    pf: *const u32,
) -> ([f32; 4], u32) {
    let mut y = [f32x4_splat(0.0); 4];
    let mut touched = 0u32;
    let mut j = 0;
    while j + 4 <= n {
        if PF {
            touched ^= core::ptr::read_volatile(pf.add(4 * j));
        }
        let bv = ld(bt.add(j));
        let cv = ld(ct.add(j));
        for r in 0..4 {
            let q = sp.add(r * n + j);
            let hv = madd(mul(da, ld(q)), s[r], bv);
            st(q, hv);
            y[r] = madd(y[r], hv, cv);
        }
        j += 4;
    }
    if j < n {
        let cnt = n - j;
        let bv = ld_partial(bt.add(j), 1, cnt);
        let cv = ld_partial(ct.add(j), 1, cnt);
        for r in 0..4 {
            let q = sp.add(r * n + j);
            let hv = madd(mul(da, ld_partial(q, 1, cnt)), s[r], bv);
            st_partial(q, 1, cnt, hv);
            y[r] = madd(y[r], hv, cv);
        }
    }
    ([hsum(y[0]), hsum(y[1]), hsum(y[2]), hsum(y[3])], touched)
}

/// Where `ssd_rows4` keeps the bits of its prefetch touches (one store per call of `ssd_scan`).
static mut SSD_TOUCHED: u32 = 0;

/// One state row of one head for one token.
#[inline(always)]
unsafe fn ssd_row1(
    sp: *mut f32,
    n: usize,
    da: v128,
    s: v128,
    bt: *const f32,
    ct: *const f32,
) -> f32 {
    let mut y = f32x4_splat(0.0);
    let mut j = 0;
    while j + 4 <= n {
        let hv = madd(mul(da, ld(sp.add(j))), s, ld(bt.add(j)));
        st(sp.add(j), hv);
        y = madd(y, hv, ld(ct.add(j)));
        j += 4;
    }
    if j < n {
        let cnt = n - j;
        let hv = madd(
            mul(da, ld_partial(sp.add(j), 1, cnt)),
            s,
            ld_partial(bt.add(j), 1, cnt),
        );
        st_partial(sp.add(j), 1, cnt, hv);
        y = madd(y, hv, ld_partial(ct.add(j), 1, cnt));
    }
    hsum(y)
}

/// Mamba-2 SSD recurrence (mamba_ssm `Mamba2.step`, and the sequence form equal to the chunked
/// scan up to rounding) over `l` tokens for heads `[h_start, h_end)` of `nheads`, starting from
/// and updating `state`.
///
/// Per token t and head h, with `dt = dt[t,h] + dt_bias[h]` (softplus'd if `flags & 1`) and group
/// `g = h / (nheads / ngroups)`: `dA = exp(dt * A[h])`;
/// `state[h,p,:] = dA * state[h,p,:] + (dt * x[t,h,p]) * B[t,g,:]` (just `x[t,h,p]` with flag
/// 2); `y[t,h,p] = state[h,p,:]·C[t,g,:] + D[h] * x[t,h,p]`.
///
/// Layouts: `state` [nheads, headdim, n]; `x` [L, ldx] and `y` [L, ldy] with head h's `headdim`
/// values at column `h*headdim`; `dt` [L, lddt] with head h at column h; `bm`, `cm` [L, ldbc]
/// with group g's `n` values at column `g*n`; `a`, `d`, `dt_bias` [nheads]. `d` and `dt_bias`
/// may be 0. `y` may alias `x` when `ldy == ldx`.
#[no_mangle]
pub unsafe extern "C" fn ssd_scan(
    state: *mut f32,
    x: *const f32,
    ldx: usize,
    dt: *const f32,
    lddt: usize,
    a: *const f32,
    bm: *const f32,
    cm: *const f32,
    ldbc: usize,
    d: *const f32,
    dt_bias: *const f32,
    y: *mut f32,
    ldy: usize,
    l: usize,
    nheads: usize,
    headdim: usize,
    n: usize,
    ngroups: usize,
    h_start: usize,
    h_end: usize,
    flags: u32,
) {
    // One-token calls (decoding) find the state in DRAM: they prefetch four rows ahead (see
    // `ssd_rows4`), up to the end of the head range. Sequences run the loop without it (their
    // state is in cache after the first token).
    if l == 1 {
        ssd_scan_impl::<true>(
            state, x, ldx, dt, lddt, a, bm, cm, ldbc, d, dt_bias, y, ldy, l, nheads, headdim, n,
            ngroups, h_start, h_end, flags,
        )
    } else {
        ssd_scan_seq(
            state, x, ldx, dt, lddt, a, bm, cm, ldbc, d, dt_bias, y, ldy, l, nheads, headdim, n,
            ngroups, h_start, h_end, flags,
        )
    }
}

/// Four state rows of one head for one token of the scaled recurrence (see `ssd_scan_seq`):
/// `g[r,:] += s[r] * B`, returns `g[r,:]·C`. Two multiply-adds per element, no decay.
#[inline(always)]
unsafe fn ssd_rows4_scaled(
    sp: *mut f32,
    n: usize,
    s: [v128; 4],
    bt: *const f32,
    ct: *const f32,
) -> [f32; 4] {
    let mut y = [f32x4_splat(0.0); 4];
    let mut j = 0;
    while j + 4 <= n {
        let bv = ld(bt.add(j));
        let cv = ld(ct.add(j));
        for r in 0..4 {
            let q = sp.add(r * n + j);
            let hv = fma(ld(q), s[r], bv);
            st(q, hv);
            y[r] = fma(y[r], hv, cv);
        }
        j += 4;
    }
    if j < n {
        let cnt = n - j;
        let bv = ld_partial(bt.add(j), 1, cnt);
        let cv = ld_partial(ct.add(j), 1, cnt);
        for r in 0..4 {
            let q = sp.add(r * n + j);
            let hv = fma(ld_partial(q, 1, cnt), s[r], bv);
            st_partial(q, 1, cnt, hv);
            y[r] = fma(y[r], hv, cv);
        }
    }
    [hsum(y[0]), hsum(y[1]), hsum(y[2]), hsum(y[3])]
}

/// One state row of the scaled recurrence.
#[inline(always)]
unsafe fn ssd_row1_scaled(sp: *mut f32, n: usize, s: v128, bt: *const f32, ct: *const f32) -> f32 {
    let mut y = f32x4_splat(0.0);
    let mut j = 0;
    while j < n {
        let cnt = min(4, n - j);
        let hv = fma(ldn(sp.add(j), cnt), s, ldn(bt.add(j), cnt));
        stn(sp.add(j), cnt, hv);
        y = fma(y, hv, ldn(ct.add(j), cnt));
        j += 4;
    }
    hsum(y)
}

/// Smallest running decay of `ssd_scan_seq`'s scaled state (2^-40): the inputs are divided by it,
/// so it bounds their growth.
const SSD_MIN_DECAY: f32 = 9.094_947e-13;

/// Heads per group of B and C rows (`ngroups` 0 counts as 1).
#[inline(always)]
fn heads_per_group(nheads: usize, ngroups: usize) -> usize {
    let ng = if ngroups == 0 { 1 } else { ngroups };
    if nheads / ng == 0 {
        1
    } else {
        nheads / ng
    }
}

/// Head `hh`'s dt bias and skip weight D (0 where the pointer is null).
#[inline(always)]
unsafe fn head_bias_d(dt_bias: *const f32, d: *const f32, hh: usize) -> (f32, f32) {
    let bias = if dt_bias.is_null() {
        0.0
    } else {
        *dt_bias.add(hh)
    };
    (bias, if d.is_null() { 0.0 } else { *d.add(hh) })
}

/// Token `t`'s Δ for head `hh` (bias added, softplus with `FLAG_SOFTPLUS`).
#[inline(always)]
unsafe fn token_dt(dt: *const f32, lddt: usize, t: usize, hh: usize, bias: f32, flags: u32) -> f32 {
    let dtv = *dt.add(t * lddt + hh) + bias;
    if flags & FLAG_SOFTPLUS != 0 {
        softplus1(dtv)
    } else {
        dtv
    }
}

/// What a token's x is scaled by: its Δ, or 1 with `FLAG_SSD_UNSCALED_X`.
#[inline(always)]
fn x_scale(dtv: f32, flags: u32) -> f32 {
    if flags & FLAG_SSD_UNSCALED_X != 0 {
        1.0
    } else {
        dtv
    }
}

/// `ssd_scan` over a sequence (`l > 1`), with the state kept scaled: per head, while the running
/// product of the decays `a_t = Π dA` stays above `SSD_MIN_DECAY`, the stored state is
/// `g = h / a_t`, so a token's update `h = dA·h + s·B` becomes `g += (s / a_t)·B` and its output
/// `y = a_t · (g·C) + D·x`: two multiply-adds per state element instead of a multiply and two
/// (with relaxed SIMD's FMA: 1.18× faster, see rust_kernels/README.md). When the next decay would
/// take `a_t` below the bound, that token runs the plain update with the decay `a_t·dA`, which
/// also brings the state back to `h` (and `a_t` to 1); so does a pass at the end. The rounding
/// differs from the one-token form (`ssd_step`) by a few ulp: every term is stored relative to the
/// current `a_t`, as the plain update stores it relative to 1.
#[inline(never)]
unsafe fn ssd_scan_seq(
    state: *mut f32,
    x: *const f32,
    ldx: usize,
    dt: *const f32,
    lddt: usize,
    a: *const f32,
    bm: *const f32,
    cm: *const f32,
    ldbc: usize,
    d: *const f32,
    dt_bias: *const f32,
    y: *mut f32,
    ldy: usize,
    l: usize,
    nheads: usize,
    headdim: usize,
    n: usize,
    ngroups: usize,
    h_start: usize,
    h_end: usize,
    flags: u32,
) {
    let hpg = heads_per_group(nheads, ngroups);
    let pn = headdim * n;
    for hh in h_start..h_end {
        let goff = (hh / hpg) * n;
        let sp = state.add(hh * pn);
        let ah = *a.add(hh);
        let (bias, dh) = head_bias_d(dt_bias, d, hh);
        let dh = splat(dh);
        let mut run = 1.0f32;
        for t in 0..l {
            let dtv = token_dt(dt, lddt, t, hh, bias, flags);
            let xscale = x_scale(dtv, flags);
            let next = run * exp1(dtv * ah);
            // Scaled step (inputs divided by the running decay, output multiplied by it), or the
            // plain one with the whole decay since the last renormalization.
            let scaled = next >= SSD_MIN_DECAY;
            let (inv, da, yscale) = if scaled {
                (splat(xscale / next), splat(1.0), splat(next))
            } else {
                (splat(xscale), splat(next), splat(1.0))
            };
            run = if scaled { next } else { 1.0 };
            let xt = x.add(t * ldx + hh * headdim);
            let yt = y.add(t * ldy + hh * headdim);
            let bt = bm.add(t * ldbc + goff);
            let ct = cm.add(t * ldbc + goff);
            let mut p = 0;
            while p + 4 <= headdim {
                let xv = ld(xt.add(p));
                let sa: [f32; 4] = transmute(mul(xv, inv));
                let s = [splat(sa[0]), splat(sa[1]), splat(sa[2]), splat(sa[3])];
                let ys = if scaled {
                    ssd_rows4_scaled(sp.add(p * n), n, s, bt, ct)
                } else {
                    ssd_rows4::<false>(sp.add(p * n), n, da, s, bt, ct, sp as _).0
                };
                st(yt.add(p), madd(mul(transmute(ys), yscale), dh, xv));
                p += 4;
            }
            while p < headdim {
                let xp = *xt.add(p);
                let s = splat(xp * lane0(inv));
                let yp = if scaled {
                    ssd_row1_scaled(sp.add(p * n), n, s, bt, ct)
                } else {
                    ssd_row1(sp.add(p * n), n, da, s, bt, ct)
                };
                *yt.add(p) = yp * lane0(yscale) + lane0(dh) * xp;
                p += 1;
            }
        }
        if run != 1.0 {
            let r = splat(run);
            let mut i = 0;
            while i < pn {
                let cnt = min(4, pn - i);
                stn(sp.add(i), cnt, mul(ldn(sp.add(i), cnt), r));
                i += 4;
            }
        }
    }
}

/// `ssd_scan` for one `PF` (see there).
#[inline(never)]
unsafe fn ssd_scan_impl<const PF: bool>(
    state: *mut f32,
    x: *const f32,
    ldx: usize,
    dt: *const f32,
    lddt: usize,
    a: *const f32,
    bm: *const f32,
    cm: *const f32,
    ldbc: usize,
    d: *const f32,
    dt_bias: *const f32,
    y: *mut f32,
    ldy: usize,
    l: usize,
    nheads: usize,
    headdim: usize,
    n: usize,
    ngroups: usize,
    h_start: usize,
    h_end: usize,
    flags: u32,
) {
    let hpg = heads_per_group(nheads, ngroups);
    let pn = headdim * n;
    let state_end = state.add(h_end * pn) as *const f32;
    let mut touched = 0u32;
    for hh in h_start..h_end {
        let goff = (hh / hpg) * n;
        let sp = state.add(hh * pn);
        let ah = *a.add(hh);
        let (bias, dh) = head_bias_d(dt_bias, d, hh);
        for t in 0..l {
            let dtv = token_dt(dt, lddt, t, hh, bias, flags);
            let da = splat(exp1(dtv * ah));
            let xscale = splat(x_scale(dtv, flags));
            let xt = x.add(t * ldx + hh * headdim);
            let yt = y.add(t * ldy + hh * headdim);
            let bt = bm.add(t * ldbc + goff);
            let ct = cm.add(t * ldbc + goff);
            let mut p = 0;
            while p + 4 <= headdim {
                let xv = ld(xt.add(p));
                let sv = mul(xv, xscale);
                let sa: [f32; 4] = transmute(sv);
                let s = [splat(sa[0]), splat(sa[1]), splat(sa[2]), splat(sa[3])];
                let next = sp.add((p + 4) * n) as *const f32;
                let ys = if PF && next.add(4 * n) <= state_end {
                    let (ys, bits) = ssd_rows4::<true>(sp.add(p * n), n, da, s, bt, ct, next as _);
                    touched ^= bits;
                    ys
                } else {
                    ssd_rows4::<false>(sp.add(p * n), n, da, s, bt, ct, next as _).0
                };
                let yv = madd(transmute(ys), splat(dh), xv);
                st(yt.add(p), yv);
                p += 4;
            }
            while p < headdim {
                let xp = *xt.add(p);
                let s = splat(xp * lane0(xscale));
                let yp = ssd_row1(sp.add(p * n), n, da, s, bt, ct);
                *yt.add(p) = yp + dh * xp;
                p += 1;
            }
        }
    }
    if PF {
        core::ptr::write_volatile(core::ptr::addr_of_mut!(SSD_TOUCHED), touched);
    }
}

/// One token of `ssd_scan` (`x`, `y` [nheads*headdim], `dt` [nheads], `bm`, `cm` [ngroups*n]).
#[no_mangle]
pub unsafe extern "C" fn ssd_step(
    state: *mut f32,
    x: *const f32,
    dt: *const f32,
    a: *const f32,
    bm: *const f32,
    cm: *const f32,
    d: *const f32,
    dt_bias: *const f32,
    y: *mut f32,
    nheads: usize,
    headdim: usize,
    n: usize,
    ngroups: usize,
    h_start: usize,
    h_end: usize,
    flags: u32,
) {
    ssd_scan(
        state, x, 0, dt, 0, a, bm, cm, 0, d, dt_bias, y, 0, 1, nheads, headdim, n, ngroups,
        h_start, h_end, flags,
    )
}
