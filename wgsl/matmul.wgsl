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
