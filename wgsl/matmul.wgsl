// Tiled matrix product for many rows (prefill): for m < M, n < N,
//   y[m, nBase + n] = epilogue( x[m, :] · W[n, :] + bias[nBase + n] ).
// A 16×16 workgroup computes a (16·TM)×(16·TN) tile; each thread a TM×TN block of rows
// ty + 16i, columns tx + 16j (so stores are coalesced). K advances BK columns at a time through
// workgroup memory.
//
// Defines: TM, TN, BK; F16 (W as packed f16 pairs); BIAS; SOFTPLUS.

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
@group(0) @binding(1) var<storage, read> w: array<u32>;
#else
@group(0) @binding(1) var<storage, read> w: array<f32>;
#endif
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif

#include util

const TM = ${TM}u;
const TN = ${TN}u;
const BK = ${BK}u;
const BM = 16u * TM;
const BN = 16u * TN;

var<workgroup> As: array<f32, BK * BM>; // [k][m]
var<workgroup> Bs: array<f32, BK * BN>; // [k][n]

@compute @workgroup_size(16, 16)
fn matmul(
  @builtin(local_invocation_id) l: vec3u,
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let m0 = wid.y * BM;
  let n0 = wid.x * BN;
  var acc: array<f32, TM * TN>;
#unroll I TM
#unroll J TN
  acc[${I}u * TN + ${J}u] = 0.0;
#endunroll
#endunroll
  for (var k0 = 0u; k0 < p.K; k0 += BK) {
    // x tile: BM rows × BK columns.
    for (var e = lid; e < BM * BK; e += 256u) {
      let r = e / BK;
      let c = e % BK;
      let m = m0 + r;
      let k = k0 + c;
      var v = 0.0;
      if (m < p.M && k < p.K) {
        v = x[p.xOff + m * p.xStride + k];
      }
      As[c * BM + r] = v;
    }
    // W tile: BN rows × BK columns.
#if F16
    for (var e = lid; e < BN * BK / 2u; e += 256u) {
      let r = e / (BK / 2u);
      let c = (e % (BK / 2u)) * 2u;
      let n = n0 + r;
      let k = k0 + c;
      var v = vec2<f32>(0.0);
      if (n < p.N && k < p.K) {
        v = unpack2x16float(w[(n * p.wStride + k) >> 1u]);
      }
      Bs[c * BN + r] = v.x;
      Bs[(c + 1u) * BN + r] = v.y;
    }
#else
    for (var e = lid; e < BN * BK; e += 256u) {
      let r = e / BK;
      let c = e % BK;
      let n = n0 + r;
      let k = k0 + c;
      var v = 0.0;
      if (n < p.N && k < p.K) {
        v = w[n * p.wStride + k];
      }
      Bs[c * BN + r] = v;
    }
#endif
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk++) {
#unroll I TM
      let a${I} = As[kk * BM + l.y + 16u * ${I}u];
#endunroll
#unroll J TN
      let b${J} = Bs[kk * BN + l.x + 16u * ${J}u];
#endunroll
#unroll I TM
#unroll J TN
      acc[${I}u * TN + ${J}u] = fma(a${I}, b${J}, acc[${I}u * TN + ${J}u]);
#endunroll
#endunroll
    }
    workgroupBarrier();
  }
#unroll I TM
#unroll J TN
  {
    let m = m0 + l.y + 16u * ${I}u;
    let n = n0 + l.x + 16u * ${J}u;
    if (m < p.M && n < p.N) {
      var r = acc[${I}u * TN + ${J}u];
#if BIAS
      r += bias[p.nBase + n];
#endif
#if SOFTPLUS
      r = softplus(r);
#endif
      y[p.yOff + m * p.yStride + p.nBase + n] = r;
    }
  }
#endunroll
#endunroll
}

// ---------------------------------------------------------------------------------------------
// matmul128: the same product with 128×128 tiles for large problems (K % 4 == 0, x rows
// 4-aligned). A thread computes rows ty·8 … ty·8+7 and columns tx·8 … tx·8+7, reading its
// operands from workgroup memory as vec4 (4 loads per 64 FMAs); tiles are loaded as vec4 along K.
// Uses W as vec2<u32> (4 halves) for F16 or vec4<f32>.

#if F16
@group(0) @binding(5) var<storage, read> w4: array<vec2<u32>>;
#else
@group(0) @binding(5) var<storage, read> w4: array<vec4<f32>>;
#endif
@group(0) @binding(6) var<storage, read> x4: array<vec4<f32>>;

var<workgroup> A4: array<vec4<f32>, 256>; // [k 0..7][m / 4 0..31]
var<workgroup> B4: array<vec4<f32>, 256>; // [k 0..7][n / 4 0..31]

@compute @workgroup_size(16, 16)
fn matmul128(
  @builtin(local_invocation_id) l: vec3u,
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let m0 = wid.y * 128u;
  let n0 = wid.x * 128u;
  var acc: array<vec4<f32>, 16>;
#unroll I 16
  acc[${I}] = vec4<f32>(0.0);
#endunroll
  let r = lid / 2u;
  let c = (lid % 2u) * 4u;
  for (var k0 = 0u; k0 < p.K; k0 += 8u) {
    let k = k0 + c;
    var xv = vec4<f32>(0.0);
    if (m0 + r < p.M && k < p.K) {
      xv = x4[(p.xOff + (m0 + r) * p.xStride + k) >> 2u];
    }
    var wv = vec4<f32>(0.0);
    if (n0 + r < p.N && k < p.K) {
#if F16
      let q = w4[((n0 + r) * p.wStride + k) >> 2u];
      wv = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
#else
      wv = w4[((n0 + r) * p.wStride + k) >> 2u];
#endif
    }
#unroll J 4
    A4[(c + ${J}u) * 32u + r / 4u][r % 4u] = xv[${J}];
    B4[(c + ${J}u) * 32u + r / 4u][r % 4u] = wv[${J}];
#endunroll
    workgroupBarrier();
    for (var kk = 0u; kk < 8u; kk++) {
      let a0 = A4[kk * 32u + l.y * 2u];
      let a1 = A4[kk * 32u + l.y * 2u + 1u];
      let b0 = B4[kk * 32u + l.x * 2u];
      let b1 = B4[kk * 32u + l.x * 2u + 1u];
#unroll I 4
      acc[${I}u * 2u] = fma(vec4<f32>(a0[${I}]), b0, acc[${I}u * 2u]);
      acc[${I}u * 2u + 1u] = fma(vec4<f32>(a0[${I}]), b1, acc[${I}u * 2u + 1u]);
      acc[(${I}u + 4u) * 2u] = fma(vec4<f32>(a1[${I}]), b0, acc[(${I}u + 4u) * 2u]);
      acc[(${I}u + 4u) * 2u + 1u] = fma(vec4<f32>(a1[${I}]), b1, acc[(${I}u + 4u) * 2u + 1u]);
#endunroll
    }
    workgroupBarrier();
  }
#unroll I 8
#unroll H 2
  {
    let m = m0 + l.y * 8u + ${I}u;
    let v = acc[${I}u * 2u + ${H}u];
#unroll J 4
    {
      let n = n0 + l.x * 8u + ${H}u * 4u + ${J}u;
      if (m < p.M && n < p.N) {
        var o = v[${J}];
#if BIAS
        o += bias[p.nBase + n];
#endif
#if SOFTPLUS
        o = softplus(o);
#endif
        y[p.yOff + m * p.yStride + p.nBase + n] = o;
      }
    }
#endunroll
  }
#endunroll
#endunroll
}
