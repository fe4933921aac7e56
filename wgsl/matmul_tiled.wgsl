#if HALF
enable f16;
#endif
// Tiled matrix product for prefill (the CUDA-core SGEMM recipe, without warp shuffles):
//   y[m, nBase + n] = epilogue( x[m, :] · W[n, :] + bias[nBase + n] )   for m < M, n < N.
//
// A workgroup of NT = (BM/TM)·(BN/TN) threads computes a BM×BN block of y. K advances BK
// columns per stage through workgroup memory, which holds both tiles transposed (vec4s of 4
// consecutive rows of x or W at one k) and double-buffered: while the threads multiply stage t
// out of one buffer, the global loads of stage t + 1 are in flight into registers, and land in
// the other buffer after the multiply, so one barrier per stage suffices.
//
// Each thread accumulates a TM×TN micro-tile in registers, split in vec4 groups strided across
// the block (rows (i·RT + ty)·4 … +3 for i < TM/4, columns (j·CT + tx)·4 … +3 for j < TN/4): per
// k it reads TM/4 + TN/4 vec4s for TM·TN FMAs. Two layouts of workgroup memory (see As below):
// TR (per-thread rows, padded), where a thread reads at constant offsets from one pointer per
// stage, and shared k-rows, where the lanes of a warp read consecutive vec4s. Both are free of
// bank conflicts on the W side (lanes with the same ty share x's vec4 as a broadcast).
//
// Loading: the tiles are cut in 4×4 blocks (4 rows × 4 consecutive k). A thread reads a block as
// 4 vec4 loads along K (global memory is row-major) and writes it transposed, as 4 vec4 along
// m or n. Eight consecutive lanes take eight consecutive row groups at the same k (each of a
// warp's loads covers 8 rows × 64 bytes; its stores land in 8 distinct bank groups).
//
// Needs K % 4 == 0, x offset and stride % 4 == 0 (vec4 loads of x) and W rows of whole vec4s
// (the weights' stride is a multiple of 4, or 8 halves). Rows past M or N and columns past K
// read as zeros; stores are guarded.
//
// Defines: BM, BN, TM, TN (multiples of 4; BM and BN multiples of 32), BK (multiple of 4), TMV =
// TM/4, TNV = TN/4, NT, LOADS = ceil((BM + BN)·BK/16 / NT); F16 (W as packed f16 pairs); BIAS;
// SOFTPLUS; TR (the per-thread-row layout); KLOOP (the f32 multiply as a loop over the stage's
// k, else unrolled). HALF: packed f16 arithmetic (needs shader-f16): the tiles are stored as f16
// and each thread sums HK-long runs of k in f16 (vec4<f16> FMAs, two HFMA2 each), then adds
// every run into its f32 accumulators; KCH = BK/HK goes with it.

struct P {
  M: u32,
  N: u32,
  K: u32,
  wStride: u32,
  xStride: u32,
  xOff: u32,
  yStride: u32,
  yOff: u32,
  nBase: u32,
}

@group(0) @binding(0) var<uniform> p: P;
#if F16
@group(0) @binding(1) var<storage, read> w: array<vec2<u32>>;
#else
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
#endif
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif

#include util

const BM = ${BM}u;
const BN = ${BN}u;
const BK = ${BK}u;
const TMV = ${TMV}u;
const TNV = ${TNV}u;
const NT = ${NT}u;
const RT = BM / (4u * TMV); // threads along m
const CT = BN / (4u * TNV); // threads along n
const AV = BM / 4u; // vec4s in one k-row of the x tile
const BV = BN / 4u; // vec4s in one k-row of the W tile
const KC = BK / 4u; // 4-wide k groups per stage
const ABLK = AV * KC; // 4×4 blocks of the x tile
const BBLK = BV * KC; // 4×4 blocks of the W tile

#if HALF
const HK = ${HK}u;
alias V4 = vec4<f16>;
#else
alias V4 = vec4<f32>;
#endif
#if TR
// Per-thread rows: buffer b's row t of As holds, for each k of the stage, the TMV vec4s that
// threads with ty = t multiply (As[b·RT + ty][k·TMV + i] = rows (i·RT + ty)·4 … +3 at k); Bs
// likewise by tx. A thread takes a pointer to its row once per stage and then reads at
// constant offsets (no per-read index arithmetic or bounds clamp). One vec4 of padding per row
// spreads the lanes' rows over the banks.
const AR = BK * TMV + 1u;
const BR = BK * TNV + 1u;
var<workgroup> As: array<array<V4, AR>, 2u * RT>;
var<workgroup> Bs: array<array<V4, BR>, 2u * CT>;
#else
// Shared k-rows: As[b·BK·AV + k·AV + r] = rows r·4 … +3 at k.
var<workgroup> As: array<V4, 2u * BK * AV>;
var<workgroup> Bs: array<V4, 2u * BK * BV>;
#endif

fn loadX(m: u32, k: u32) -> vec4<f32> {
  if (m < p.M && k < p.K) {
    return x[(p.xOff + m * p.xStride + k) >> 2u];
  }
  return vec4<f32>(0.0);
}

fn loadW(n: u32, k: u32) -> vec4<f32> {
  if (n < p.N && k < p.K) {
#if F16
    let q = w[(n * p.wStride + k) >> 2u];
    return vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
#else
    return w[(n * p.wStride + k) >> 2u];
#endif
  }
  return vec4<f32>(0.0);
}

// Block q of a tile: its row group (4 rows) and k group, eight row groups per k group in turn.
fn rowGroup(q: u32) -> u32 {
  return (q / (8u * KC)) * 8u + q % 8u;
}

fn kGroup(q: u32) -> u32 {
  return (q / 8u) % KC;
}

// Block e of stage k0 (x blocks first, then W blocks): its 4 rows, each a vec4 along k.
fn fetch(e: u32, m0: u32, n0: u32, k0: u32) -> mat4x4<f32> {
  if (e < ABLK) {
    let r = m0 + rowGroup(e) * 4u;
    let k = k0 + kGroup(e) * 4u;
    return mat4x4<f32>(loadX(r, k), loadX(r + 1u, k), loadX(r + 2u, k), loadX(r + 3u, k));
  }
  let q = e - ABLK;
  let r = n0 + rowGroup(q) * 4u;
  let k = k0 + kGroup(q) * 4u;
  return mat4x4<f32>(loadW(r, k), loadW(r + 1u, k), loadW(r + 2u, k), loadW(r + 3u, k));
}

// Writes block e, transposed (column j = the 4 rows at k group + j), into buffer `buf`.
fn put(e: u32, buf: u32, b: mat4x4<f32>) {
  let t = transpose(b);
  if (e < ABLK) {
    let r = rowGroup(e);
    let k = kGroup(e) * 4u;
#if TR
    let row = &As[buf * RT + r % RT];
#unroll J 4
    (*row)[(k + ${J}u) * TMV + r / RT] = V4(t[${J}]);
#endunroll
#else
#unroll J 4
    As[buf * BK * AV + (k + ${J}u) * AV + r] = V4(t[${J}]);
#endunroll
#endif
  } else if (e < ABLK + BBLK) {
    let q = e - ABLK;
    let r = rowGroup(q);
    let k = kGroup(q) * 4u;
#if TR
    let row = &Bs[buf * CT + r % CT];
#unroll J 4
    (*row)[(k + ${J}u) * TNV + r / CT] = V4(t[${J}]);
#endunroll
#else
#unroll J 4
    Bs[buf * BK * BV + (k + ${J}u) * BV + r] = V4(t[${J}]);
#endunroll
#endif
  }
}

fn emit(row: u32, n: u32, v: f32) {
  if (n < p.N) {
    var r = v;
#if BIAS
    r += bias[p.nBase + n];
#endif
#if SOFTPLUS
    r = softplus(r);
#endif
    y[row + n] = r;
  }
}

@compute @workgroup_size(${NT})
fn matmul_tiled(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  let tx = lid % CT;
  let ty = lid / CT;
  // The accumulators and prefetched blocks are plain variables (not arrays), one per name, so
  // that no compiler has a reason to put them anywhere but in registers.
#unroll I TMV
#unroll R 4
#unroll J TNV
  var acc${I}${R}${J} = vec4<f32>(0.0);
#endunroll
#endunroll
#endunroll
#unroll L LOADS
  var ld${L}: mat4x4<f32>;
#endunroll
  let stages = (p.K + BK - 1u) / BK;

  // Stage 0 straight into buffer 0.
#unroll L LOADS
  if (lid + ${L}u * NT < ABLK + BBLK) {
    put(lid + ${L}u * NT, 0u, fetch(lid + ${L}u * NT, m0, n0, 0u));
  }
#endunroll
  workgroupBarrier();

  for (var s = 0u; s < stages; s++) {
    let cur = s % 2u;
    let more = s + 1u < stages;
    // The next stage's loads, in flight during the multiply.
    if (more) {
#unroll L LOADS
      if (lid + ${L}u * NT < ABLK + BBLK) {
        ld${L} = fetch(lid + ${L}u * NT, m0, n0, (s + 1u) * BK);
      }
#endunroll
    }
#if TR
    let pa = &As[cur * RT + ty];
    let pb = &Bs[cur * CT + tx];
#else
    let ab = cur * BK * AV;
    let bb = cur * BK * BV;
#endif
#if HALF
#unroll C KCH
    {
      // Zeroed explicitly: naga hoists a declaration's zero fill out of the loop.
#unroll I TMV
#unroll R 4
#unroll J TNV
      var h${I}${R}${J}: vec4<f16>;
      h${I}${R}${J} = vec4<f16>(0.0);
#endunroll
#endunroll
#endunroll
#unroll KK HK
      {
        let kk = ${C}u * HK + ${KK}u;
#unroll I TMV
#if TR
        let a${I} = (*pa)[kk * TMV + ${I}u];
#else
        let a${I} = As[ab + kk * AV + ${I}u * RT + ty];
#endif
#endunroll
#unroll J TNV
#if TR
        let b${J} = (*pb)[kk * TNV + ${J}u];
#else
        let b${J} = Bs[bb + kk * BV + ${J}u * CT + tx];
#endif
#endunroll
#unroll I TMV
#unroll R 4
#unroll J TNV
        h${I}${R}${J} = fma(vec4<f16>(a${I}[${R}]), b${J}, h${I}${R}${J});
#endunroll
#endunroll
#endunroll
      }
#endunroll
#unroll I TMV
#unroll R 4
#unroll J TNV
      acc${I}${R}${J} += vec4<f32>(h${I}${R}${J});
#endunroll
#endunroll
#endunroll
    }
#endunroll
#else
#if KLOOP
    for (var kk = 0u; kk < BK; kk++) {
#else
#unroll KK BK
    {
      let kk = ${KK}u;
#endif
#unroll I TMV
#if TR
      let a${I} = (*pa)[kk * TMV + ${I}u];
#else
      let a${I} = As[ab + kk * AV + ${I}u * RT + ty];
#endif
#endunroll
#unroll J TNV
#if TR
      let b${J} = (*pb)[kk * TNV + ${J}u];
#else
      let b${J} = Bs[bb + kk * BV + ${J}u * CT + tx];
#endif
#endunroll
#unroll I TMV
#unroll R 4
#unroll J TNV
      acc${I}${R}${J} = fma(vec4<f32>(a${I}[${R}]), b${J}, acc${I}${R}${J});
#endunroll
#endunroll
#endunroll
    }
#if !KLOOP
#endunroll
#endif
#endif
    // The other buffer was last read in stage s − 1, before the barrier that ended it.
    if (more) {
#unroll L LOADS
      put(lid + ${L}u * NT, 1u - cur, ld${L});
#endunroll
    }
    workgroupBarrier();
  }

#unroll I TMV
#unroll R 4
  {
    let m = m0 + (${I}u * RT + ty) * 4u + ${R}u;
    if (m < p.M) {
      let row = p.yOff + m * p.yStride + p.nBase;
#unroll J TNV
      {
        let v = acc${I}${R}${J};
        let n = n0 + (${J}u * CT + tx) * 4u;
        emit(row, n, v.x);
        emit(row, n + 1u, v.y);
        emit(row, n + 2u, v.z);
        emit(row, n + 3u, v.w);
      }
#endunroll
    }
  }
#endunroll
#endunroll
}
