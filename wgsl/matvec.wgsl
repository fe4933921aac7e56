// Matrix-vector product for a few rows of x (decode): for m < MB, n < N,
//   y[m, nBase + n] = epilogue( pro(x[m, :]) · W[n, :] + bias[nBase + n] ).
// One team of TEAM lanes (32…256) per RPT output rows n…n+RPT−1 (each load of x serves RPT rows),
// WG / TEAM teams per workgroup; lanes stride K with 16-byte weight loads (UNR per row in
// flight), then each 32-lane subteam reduces its partial sums
// through workgroup memory and the subteams of a team are added. Private arrays are only indexed
// by literals (#unroll), so they stay in registers.
//
// Defines:
//   MB        rows of x (the batch); WG = 256; TEAM lanes per team
//   RPT       output rows per team
//   NV        values per lane (MB · RPT ≤ 32, index m · RPT + row); NR = ceil(NV / 8) rounds
//   UNR       weight loads in flight per lane and row
//   F16       W holds f16 pairs packed in u32 (unpack2x16float), 8 per load
//   F16NATIVE W holds f16 (shader-f16), 8 per load as mat2x4<f16>
//   HALF      F16 or F16NATIVE (8 weights, two vec4 of x, per load)
//   XVEC      x (and resIn, normW, resOut) read as vec4: K % VEC == 0 and 4-aligned offsets
//   PRO_RMS   x ← RMSNorm(x)·normW (eps p.eps). Needs XVEC: the workgroup first sums x² (the
//             result is scaled by 1/rms), and with RMS_STAGE also stages x·normW in workgroup
//             memory (XS4 vec4s = MB·K/4) for the product to read; without it the product reads
//             (x + resIn)·normW from memory
//   PRO_ADD   x ← x + resIn first (the residual add)
//   RES_OUT   workgroup 0 also writes x (after PRO_ADD) to resOut
//   BIAS, SOFTPLUS  epilogue
//   GELU      epilogue: exact GELU after the bias (a GPT-NeoX MLP's first product)
//   CONV_EPI  epilogue: outputs nBase + n in [convLo, convLo + convC) also feed the causal
//             conv step of channel c = nBase + n − convLo (state, taps, bias, SiLU → convOut)
#if F16NATIVE
enable f16;
#endif

// The parameter block P (binding 0) is product_io's (p.M and p.ySplit unused here).
#if F16NATIVE
@group(0) @binding(1) var<storage, read> w: array<mat2x4<f16>>;
#elif F16
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
#endif
#include product_io

#include util

const MB = ${MB}u;
const WG = ${WG}u;
const TEAM = ${TEAM}u;
const ROWS = WG / TEAM;
const ST = TEAM / 32u;
const UNR = ${UNR}u;
const NV = ${NV}u;
const RPT = ${RPT}u;
#if HALF
const VEC = 8u;
#else
const VEC = 4u;
#endif

var<workgroup> red: array<f32, 2048>;  // [subteam][lane][8]
var<workgroup> sub: array<f32, 256>;   // [subteam][value]
var<workgroup> fin: array<f32, 256>;   // [team][value]
#if RMS_STAGE
var<workgroup> xs: array<vec4<f32>, ${XS4}>;  // [m][K / 4], x·normW
#endif
#if PRO_RMS
var<workgroup> red4: array<vec4<f32>, WG>;
var<workgroup> rs: array<f32, 16>;
#endif

// Four consecutive x values of row m from column k (zero past K).
fn xload(m: u32, k: u32) -> vec4<f32> {
#if RMS_STAGE
  return xs[(m * p.K + k) >> 2u];
#elif PRO_RMS
  // (x + resIn) · normW straight from memory (the cache serves the RPT rows of the team).
  var v = x[(p.xOff + m * p.xStride + k) >> 2u];
#if PRO_ADD
  v += resIn[(m * p.rStride + k) >> 2u];
#endif
  return v * normW[k >> 2u];
#elif XVEC
  return x[(p.xOff + m * p.xStride + k) >> 2u];
#else
  var v = vec4<f32>(0.0);
  let b = p.xOff + m * p.xStride + k;
  for (var j = 0u; j < 4u; j++) {
    if (k + j < p.K) {
      v[j] = x[b + j];
    }
  }
  return v;
#endif
}

@compute @workgroup_size(WG)
fn matvec(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let team = lid / TEAM;
  let lane = lid % TEAM;
  let st = lid / 32u;
  let slane = lid % 32u;
  let n = ((wid.y * nwg.x + wid.x) * ROWS + team) * RPT; // first row of this team
  let valid = n < p.N;
#if PRO_RMS
  // Sum x² per row (x + residual), stage x·normW with RMS_STAGE, and let workgroup 0 write the
  // residual.
  let K4 = p.K / 4u;
  let writer = wid.x == 0u && wid.y == 0u;
  var ss = vec4<f32>(0.0);
#unroll M MB
  for (var k4 = lid; k4 < K4; k4 += WG) {
    var v = x[(p.xOff + ${M}u * p.xStride) / 4u + k4];
#if PRO_ADD
    v += resIn[${M}u * p.rStride / 4u + k4];
#endif
#if RES_OUT
    if (writer) {
      resOut[${M}u * p.rStride / 4u + k4] = v;
    }
#endif
    ss[${M}u % 4u] += dot(v, v);
#if RMS_STAGE
    xs[${M}u * K4 + k4] = v * normW[k4];
#endif
  }
  if (${M}u % 4u == 3u || ${M}u == MB - 1u) {
    red4[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
      if (lid < s) {
        red4[lid] += red4[lid + s];
      }
      workgroupBarrier();
    }
    if (lid == 0u) {
      let t = red4[0];
      for (var j = 0u; j <= ${M}u % 4u; j++) {
        rs[${M}u - ${M}u % 4u + j] = 1.0 / sqrt(t[j] / f32(p.K) + p.eps);
      }
    }
    workgroupBarrier();
    ss = vec4<f32>(0.0);
  }
#endunroll
#endif
  var v: array<f32, NV>;
#unroll J NV
  v[${J}] = 0.0;
#endunroll
  if (valid) {
    let stride = TEAM * VEC;
    for (var k0 = lane * VEC; k0 < p.K; k0 += UNR * stride) {
#unroll U UNR
      {
        let k = k0 + ${U}u * stride;
        if (k < p.K) {
          // x is loaded once per RPT rows: that is what several rows per team buy.
#unroll M MB
          let xa${M} = xload(${M}u, k);
#if HALF
          let xb${M} = xload(${M}u, k + 4u);
#endif
#endunroll
#unroll Q RPT
          {
            // Rows past N (the last team's) re-read row N − 1 and are not stored.
            let wi = (min(n + ${Q}u, p.N - 1u) * p.wStride + k) / VEC;
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
#unroll M MB
            v[${M} * RPT + ${Q}] += dot(xa${M}, w0);
#if HALF
            v[${M} * RPT + ${Q}] += dot(xb${M}, w1);
#endif
#endunroll
          }
#endunroll
        }
      }
#endunroll
    }
  }
  // Reduction: 8 values per round, every lane stores its 8, then lanes 0..7 of each 32-lane
  // subteam each add one value over the subteam; then the subteams of a team are added.
#unroll R NR
  {
#unroll J 8
    red[lid * 8u + ${J}u] = v[min(${R}u * 8u + ${J}u, NV - 1u)];
#endunroll
    workgroupBarrier();
    if (slane < 8u && ${R}u * 8u + slane < NV) {
      var s = 0.0;
      for (var l = 0u; l < 32u; l++) {
        s += red[(st * 32u + l) * 8u + slane];
      }
      sub[st * 32u + ${R}u * 8u + slane] = s;
    }
    workgroupBarrier();
  }
#endunroll
  if (lane < NV) {
    var s = 0.0;
    for (var q = 0u; q < ST; q++) {
      s += sub[(team * ST + q) * 32u + lane];
    }
    fin[team * 32u + lane] = s;
  }
  workgroupBarrier();
  let col = p.nBase + n + lane % RPT;
  if (valid && lane < NV && n + lane % RPT < p.N) {
    let m = lane / RPT;
    var r = fin[team * 32u + lane];
#if PRO_RMS
    r *= rs[m];
#endif
    finish_output(m, col, p.yOff + m * p.yStride + col, r);
  }
}
