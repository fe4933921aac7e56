// Matrix-vector product for a few rows of x (decode): for m < MB, n < N,
//   y[m, nBase + n] = epilogue( pro(x[m, :]) · W[n, :] + bias[nBase + n] ).
// One team of TEAM lanes per output row n, WG / TEAM rows per workgroup; lanes stride K with
// 16-byte weight loads (UNR of them in flight), then the team reduces its partial sums through
// workgroup memory. Private arrays are only indexed by literals (#unroll), so they stay in
// registers.
//
// Defines:
//   MB        rows of x (the batch), WG workgroup size, TEAM lanes per output row (32)
//   NV        values per lane: MB, or 2·MB with PRO_RMS; NR = ceil(NV / 8) reduction rounds
//   UNR       weight loads in flight per lane
//   F16       W holds f16 pairs packed in u32 (unpack2x16float), 8 per load
//   F16NATIVE W holds f16 (shader-f16), 8 per load as mat2x4<f16>
//   XVEC      x (and resIn, normW, resOut) read as vec4: K % VEC == 0 and 4-aligned offsets
//   PRO_RMS   x ← RMSNorm(x)·normW over the K columns (eps p.eps), fused: the workgroup sums x²
//             alongside the dot product and scales at the end
//   PRO_ADD   x ← x + resIn first (the residual add)
//   RES_OUT   workgroup 0 also writes x (after PRO_ADD) to resOut
//   BIAS, SOFTPLUS  epilogue
#if F16NATIVE
enable f16;
#endif

struct P {
  N: u32,        // output rows of W handled here (one part of a split matrix)
  K: u32,        // reduction length
  wStride: u32,  // elements per W row (a multiple of VEC, zero padded)
  xStride: u32,  // elements between x rows
  xOff: u32,     // element offset of x[0, 0]
  yStride: u32,
  yOff: u32,
  nBase: u32,    // output column (and bias index) of this part's row 0
  eps: f32,
  rStride: u32,  // elements between rows of resIn / resOut
}

@group(0) @binding(0) var<uniform> p: P;
#if F16NATIVE
@group(0) @binding(1) var<storage, read> w: array<mat2x4<f16>>;
#elif F16
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
#endif
#if XVEC
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
#if PRO_ADD
#if XVEC
@group(0) @binding(5) var<storage, read> resIn: array<vec4<f32>>;
#else
@group(0) @binding(5) var<storage, read> resIn: array<f32>;
#endif
#endif
#if PRO_RMS
#if XVEC
@group(0) @binding(6) var<storage, read> normW: array<vec4<f32>>;
#else
@group(0) @binding(6) var<storage, read> normW: array<f32>;
#endif
#endif
#if RES_OUT
#if XVEC
@group(0) @binding(7) var<storage, read_write> resOut: array<vec4<f32>>;
#else
@group(0) @binding(7) var<storage, read_write> resOut: array<f32>;
#endif
#endif

#include util

const MB = ${MB}u;
const WG = ${WG}u;
const TEAM = ${TEAM}u;
const ROWS = WG / TEAM;
const UNR = ${UNR}u;
const NV = ${NV}u;
#if F16
const VEC = 8u;
#elif F16NATIVE
const VEC = 8u;
#else
const VEC = 4u;
#endif

// Four consecutive x values of row m from column k (zero past K), after the residual add.
fn xload(m: u32, k: u32) -> vec4<f32> {
#if XVEC
  var v = x[(p.xOff + m * p.xStride + k) >> 2u];
#if PRO_ADD
  v += resIn[(m * p.rStride + k) >> 2u];
#endif
#else
  var v = vec4<f32>(0.0);
  let b = p.xOff + m * p.xStride + k;
  for (var j = 0u; j < 4u; j++) {
    if (k + j < p.K) {
      var e = x[b + j];
#if PRO_ADD
      e += resIn[m * p.rStride + k + j];
#endif
      v[j] = e;
    }
  }
#endif
  return v;
}

#if PRO_RMS
fn nload(k: u32) -> vec4<f32> {
#if XVEC
  return normW[k >> 2u];
#else
  var v = vec4<f32>(0.0);
  for (var j = 0u; j < 4u; j++) {
    if (k + j < p.K) {
      v[j] = normW[k + j];
    }
  }
  return v;
#endif
}
#endif

#if RES_OUT
fn rstore(m: u32, k: u32, v: vec4<f32>) {
#if XVEC
  resOut[(m * p.rStride + k) >> 2u] = v;
#else
  for (var j = 0u; j < 4u; j++) {
    if (k + j < p.K) {
      resOut[m * p.rStride + k + j] = v[j];
    }
  }
#endif
}
#endif

var<workgroup> red: array<f32, 2048>;  // [team][lane][8]
var<workgroup> res: array<f32, 8 * 32>; // [team][value]

@compute @workgroup_size(WG)
fn matvec(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let team = lid / TEAM;
  let lane = lid % TEAM;
  let n = (wid.y * nwg.x + wid.x) * ROWS + team;
  let valid = n < p.N;
  let writer = wid.x == 0u && wid.y == 0u && team == 0u;
  var v: array<f32, NV>;
#unroll J NV
  v[${J}] = 0.0;
#endunroll
  if (valid) {
    let wrow = n * p.wStride;
    let stride = TEAM * VEC;
    for (var k0 = lane * VEC; k0 < p.K; k0 += UNR * stride) {
#unroll U UNR
      {
        let k = k0 + ${U}u * stride;
        if (k < p.K) {
          let wi = (wrow + k) / VEC;
#if F16NATIVE
          let wm = w[wi];
          let w0 = vec4<f32>(wm[0]);
          let w1 = vec4<f32>(wm[1]);
#elif F16
          let wq = w[wi];
          let w0 = vec4<f32>(unpack2x16float(wq.x), unpack2x16float(wq.y));
          let w1 = vec4<f32>(unpack2x16float(wq.z), unpack2x16float(wq.w));
#else
          let w0 = w[wi];
#endif
#if PRO_RMS
          let g0 = nload(k);
#if F16
          let g1 = nload(k + 4u);
#elif F16NATIVE
          let g1 = nload(k + 4u);
#endif
#endif
#unroll M MB
          {
            let x0 = xload(${M}u, k);
#if F16
            let x1 = xload(${M}u, k + 4u);
#elif F16NATIVE
            let x1 = xload(${M}u, k + 4u);
#endif
#if RES_OUT
            if (writer) {
              rstore(${M}u, k, x0);
#if F16
              rstore(${M}u, k + 4u, x1);
#elif F16NATIVE
              rstore(${M}u, k + 4u, x1);
#endif
            }
#endif
#if PRO_RMS
            v[MB + ${M}u] += dot(x0, x0);
            v[${M}] += dot(x0 * g0, w0);
#if F16
            v[MB + ${M}u] += dot(x1, x1);
            v[${M}] += dot(x1 * g1, w1);
#elif F16NATIVE
            v[MB + ${M}u] += dot(x1, x1);
            v[${M}] += dot(x1 * g1, w1);
#endif
#else
            v[${M}] += dot(x0, w0);
#if F16
            v[${M}] += dot(x1, w1);
#elif F16NATIVE
            v[${M}] += dot(x1, w1);
#endif
#endif
          }
#endunroll
        }
      }
#endunroll
    }
  }
  // Team reduction, 8 values per round: every lane stores its 8, then lanes 0..7 each sum one
  // value over the team's 32 lanes.
#unroll R NR
  {
#unroll J 8
    red[lid * 8u + ${J}u] = v[min(${R}u * 8u + ${J}u, NV - 1u)];
#endunroll
    workgroupBarrier();
    if (lane < 8u && ${R}u * 8u + lane < NV) {
      var s = 0.0;
      for (var l = 0u; l < TEAM; l++) {
        s += red[(team * TEAM + l) * 8u + lane];
      }
      res[team * 32u + ${R}u * 8u + lane] = s;
    }
    workgroupBarrier();
  }
#endunroll
  if (valid && lane < MB) {
    let m = lane;
    var r = res[team * 32u + m];
#if PRO_RMS
    r *= 1.0 / sqrt(res[team * 32u + MB + m] / f32(p.K) + p.eps);
#endif
#if BIAS
    r += bias[p.nBase + n];
#endif
#if SOFTPLUS
    r = softplus(r);
#endif
    y[p.yOff + m * p.yStride + p.nBase + n] = r;
  }
}
