// Matrix-vector product for a few rows of x (decode): for m < MB, n < N,
//   y[m, nBase + n] = epilogue( pro(x[m, :]) · W[n, :] + bias[nBase + n] ).
// One team of TEAM lanes per output row n, WG / TEAM rows per workgroup; lanes stride K with
// 16-byte weight loads, then the team reduces its partial sums.
//
// Defines:
//   MB        rows of x (the batch), WG workgroup size, TEAM lanes per output row
//   F16       W holds f16 pairs packed in u32 (unpack2x16float), 8 per load
//   F16NATIVE W holds f16 (shader-f16), 8 per load as mat2x4<f16>
//   XVEC      x (and resIn, normW, resOut) read as vec4: K % VEC == 0 and 4-aligned offsets
//   PRO_RMS   x ← RMSNorm(x)·normW over the K columns (eps p.eps), fused: the workgroup sums x²
//             alongside the dot product and scales at the end
//   PRO_ADD   x ← x + resIn first (the residual add)
//   RES_OUT   workgroup 0 also writes x (after PRO_ADD) to resOut
//   BIAS, SOFTPLUS  epilogue
//   SUBGROUP  reduce with subgroupAdd (TEAM must equal the subgroup size)
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
#if F16
const VEC = 8u;
#elif F16NATIVE
const VEC = 8u;
#else
const VEC = 4u;
#endif
#if PRO_RMS
const NV = 2u * MB;
#else
const NV = MB;
#endif

// Four consecutive x values of row m from column k (zero past K).
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
      v[j] = x[b + j];
#if PRO_ADD
      v[j] += resIn[m * p.rStride + k + j];
#endif
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

// Accumulates VEC columns from k of weight row `wrow` (element offset) into v.
fn step(k: u32, wrow: u32, writer: bool, v: ptr<function, array<f32, NV>>) {
  let wi = (wrow + k) / VEC;
#if F16NATIVE
  let wm = w[wi];
  let wv = array<vec4<f32>, 2>(vec4<f32>(wm[0]), vec4<f32>(wm[1]));
#elif F16
  let wq = w[wi];
  let wv = array<vec4<f32>, 2>(
    vec4<f32>(unpack2x16float(wq.x), unpack2x16float(wq.y)),
    vec4<f32>(unpack2x16float(wq.z), unpack2x16float(wq.w)),
  );
#else
  let wv = array<vec4<f32>, 1>(w[wi]);
#endif
  for (var h = 0u; h < VEC / 4u; h++) {
    let kk = k + 4u * h;
#if PRO_RMS
    let g = nload(kk);
#endif
    for (var m = 0u; m < MB; m++) {
      let xv = xload(m, kk);
#if RES_OUT
      if (writer) {
        rstore(m, kk, xv);
      }
#endif
#if PRO_RMS
      (*v)[MB + m] += dot(xv, xv);
      (*v)[m] += dot(xv * g, wv[h]);
#else
      (*v)[m] += dot(xv, wv[h]);
#endif
    }
  }
}

#if !SUBGROUP
var<workgroup> red: array<f32, 2048>;
#endif

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
  for (var j = 0u; j < NV; j++) {
    v[j] = 0.0;
  }
  if (valid) {
    let wrow = n * p.wStride;
    let stride = TEAM * VEC;
    var k = lane * VEC;
    for (; k + stride < p.K; k += 2u * stride) {
      step(k, wrow, writer, &v);
      step(k + stride, wrow, writer, &v);
    }
    if (k < p.K) {
      step(k, wrow, writer, &v);
    }
  }
#if SUBGROUP
  for (var j = 0u; j < NV; j++) {
    v[j] = subgroupAdd(v[j]);
  }
#else
  for (var j0 = 0u; j0 < NV; j0 += 8u) {
    for (var jj = 0u; jj < 8u; jj++) {
      if (j0 + jj < NV) {
        red[jj * WG + lid] = v[j0 + jj];
      }
    }
    workgroupBarrier();
    for (var s = TEAM / 2u; s > 0u; s >>= 1u) {
      if (lane < s) {
        for (var jj = 0u; jj < 8u; jj++) {
          if (j0 + jj < NV) {
            red[jj * WG + lid] += red[jj * WG + lid + s];
          }
        }
      }
      workgroupBarrier();
    }
    if (lane == 0u) {
      for (var jj = 0u; jj < 8u; jj++) {
        if (j0 + jj < NV) {
          v[j0 + jj] = red[jj * WG + lid];
        }
      }
    }
    workgroupBarrier();
  }
#endif
  if (valid && lane == 0u) {
    for (var m = 0u; m < MB; m++) {
      var r = v[m];
#if PRO_RMS
      r *= 1.0 / sqrt(v[MB + m] / f32(p.K) + p.eps);
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
}
