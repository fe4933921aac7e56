// Skinny product with the weights straight into registers, for decode batches of up to 16 rows
// of x (beyond that every tile of x reads all of W again, and skinny.wgsl wins): for m < M, n < N,
//   y[m, nBase + n] = epilogue( pro(x[m, :]) · W[n, :] + bias[nBase + n] ).
// The skinny kernel (skinny.wgsl) stages W and x through workgroup memory a chunk of K at a time,
// with a barrier pair per chunk; at 16 rows of x each of its rounds waits on a memory round trip.
// Here no weight goes through workgroup memory and the walk along K has no barrier: every weight
// is used by one thread only (for all MB rows of x it holds), so it goes from memory straight to
// that thread's registers, and x, which every thread of the workgroup reads, comes from the
// cache.
//
// A workgroup computes a BN × MB tile (BN = NC·TN rows of W from n0, MB rows of x from m0; grid x
// over n tiles, grid y over m tiles) with NC column groups of KL lanes. Lane l of group c holds
// rows n0 + c·TN … + TN − 1 of W and splits K with the other lanes in pieces of VEC columns
// (pieces l, l + KL, l + 2·KL, …; consecutive lanes read consecutive 16-byte pieces of a row).
// A pass loads KP pieces of each of its TN rows into registers, then reads the MB rows of x at
// those columns (·normW with PRO_RMS) and accumulates TN × MB sums; K beyond KL·KP·VEC takes more
// passes. (On the H200 one piece a pass was best: loading all of K at once held more registers
// than it hid latency.) At the end the lanes' sums meet in workgroup memory, RV values a thread a round (the
// lanes' rows padded to RVP floats, the groups to CS, so that neither the stores nor the reads of
// a round collide in a bank), and each output is summed over its KL lanes by one thread, which
// applies the epilogue (consecutive threads, consecutive n: coalesced stores).
//
// Defines:
//   TN, NC, KL, MB, KP   the tile (see above)
//   F16        W holds f16 pairs packed in u32 (unpack2x16float), 8 per piece; else f32, 4
//   XVEC       x read as vec4 (required: K % 4 == 0 and 4-aligned offsets)
//   PRO_RMS    x ← RMSNorm(x)·normW: Σx² of each row is gathered by group 0's lanes on the way,
//              and the sums are scaled by 1/rms at the end
//   BIAS, SOFTPLUS, CONV_EPI, CONV_BIAS, ADD_RES   epilogues as in skinny.wgsl
//   NV = TN·MB; RV values a thread a round (a multiple of TN dividing NV), NRR = NV / RV rounds;
//   RVP, CS: the padded strides of the final reduction; RS: floats of workgroup memory

#include skinny_io

#include util

const TN = ${TN}u;
const NC = ${NC}u;
const KL = ${KL}u;
const MB = ${MB}u;
const KP = ${KP}u;
const WG = NC * KL;
const BN = NC * TN;
const NV = ${NV}u;
const RV = ${RV}u;
const RVM = RV / TN;   // rows of x a round covers
const RVP = ${RVP}u;
const CS = ${CS}u;

var<workgroup> red: array<f32, ${RS}>;
#if PRO_RMS
var<workgroup> rs: array<f32, MB>;
#endif

// The piece of W row n from column k (zero past N or K).
fn wload(n: u32, k: u32) -> WV {
  if (n < p.N && k < p.K) {
    return w[(n * p.wStride + k) / VEC];
  }
  return WV(0);
}

// x[m, k…k+3], zero past M or K (K % 4 == 0).
fn xload(m: u32, k: u32) -> vec4<f32> {
  if (m < p.M && k < p.K) {
    return x[(p.xOff + m * p.xStride + k) >> 2u];
  }
  return vec4<f32>(0.0);
}

@compute @workgroup_size(WG)
fn skinny_regs(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let c = lid / KL;  // column group
  let l = lid % KL;  // lane along K
  let nc = wid.x * BN + c * TN;
  let m0 = wid.y * MB;
  // acc[i·TN + j]: row m0 + i of x, row nc + j of W.
  var acc: array<f32, NV>;
#unroll V NV
  acc[${V}] = 0.0;
#endunroll
#if PRO_RMS
  var ss: array<f32, MB>;
#unroll I MB
  ss[${I}] = 0.0;
#endunroll
#endif
  for (var k0 = l * VEC; k0 < p.K; k0 += KL * KP * VEC) {
    // Every weight load of the pass is issued before the first sum waits on one.
#unroll Q KP
#unroll J TN
    let w${Q}_${J} = wload(nc + ${J}u, k0 + ${Q}u * KL * VEC);
#endunroll
#endunroll
#unroll Q KP
    {
      let k = k0 + ${Q}u * KL * VEC;
#unroll J TN
#if F16
      let wa${J} = vec4<f32>(unpack2x16float(w${Q}_${J}.x), unpack2x16float(w${Q}_${J}.y));
      let wb${J} = vec4<f32>(unpack2x16float(w${Q}_${J}.z), unpack2x16float(w${Q}_${J}.w));
#else
      let wa${J} = w${Q}_${J};
#endif
#endunroll
#if PRO_RMS
      var ga = vec4<f32>(0.0);
      var gb = vec4<f32>(0.0);
      if (k < p.K) {
        ga = normW[k >> 2u];
#if F16
        gb = normW[(k >> 2u) + 1u];
#endif
      }
#endif
#unroll I MB
      {
        var xa = xload(m0 + ${I}u, k);
#if F16
        var xb = xload(m0 + ${I}u, k + 4u);
#endif
#if PRO_RMS
        ss[${I}] += dot(xa, xa);
        xa *= ga;
#if F16
        ss[${I}] += dot(xb, xb);
        xb *= gb;
#endif
#endif
#unroll J TN
#if F16
        acc[${I} * TN + ${J}] += dot(xa, wa${J}) + dot(xb, wb${J});
#else
        acc[${I} * TN + ${J}] += dot(xa, wa${J});
#endif
#endunroll
      }
#endunroll
    }
#endunroll
  }
#if PRO_RMS
  // Σx² of each row: group 0's lanes' partial sums, then one thread per row.
  if (c == 0u) {
#unroll I MB
    red[l * (MB + 1u) + ${I}u] = ss[${I}];
#endunroll
  }
  workgroupBarrier();
  if (lid < MB) {
    var t = 0.0;
    for (var q = 0u; q < KL; q++) {
      t += red[q * (MB + 1u) + lid];
    }
    rs[lid] = 1.0 / sqrt(t / f32(p.K) + p.eps);
  }
  workgroupBarrier();
#endif
  // The lanes' sums, RV values a thread a round: [group][lane][RVP]. Round R holds rows
  // R·RVM … of x; its output o is column j = o % TN of group o / TN % NC, row o / BN.
#unroll R NRR
  {
#unroll U RV
    red[c * CS + l * RVP + ${U}u] = acc[${R}u * RV + ${U}u];
#endunroll
    workgroupBarrier();
    for (var o = lid; o < NC * RV; o += WG) {
      let j = o % TN;
      let g = (o / TN) % NC;
      let i = o / BN;
      let u = i * TN + j;
      var r = 0.0;
      for (var q = 0u; q < KL; q++) {
        r += red[g * CS + q * RVP + u];
      }
      let n = wid.x * BN + g * TN + j;
      let ml = ${R}u * RVM + i;
      let m = m0 + ml;
      if (n < p.N && m < p.M) {
#if PRO_RMS
        r *= rs[ml];
#endif
        let col = p.nBase + n;
        finish_output(m, col, p.yOff + m * p.yStride + col, r);
      }
    }
    workgroupBarrier();
  }
#endunroll
}
