// Skinny matrix product for decode batches (a few dozen rows of x): for m < M, n < N,
//   y[m, nBase + n] = epilogue( pro(x[m, :]) · W[n, :] + bias[nBase + n] ).
// The matrix-vector kernel (matvec.wgsl) re-reads every row of x for each weight load, which
// caps it at a few TFLOP/s past 8 rows; here both operands go through workgroup memory and each
// thread computes a TN × TM block of outputs from registers.
//
// A workgroup computes a BN × BM tile (BN = NT·TN rows of W from n0, BM = MT·TM rows of x from
// m0; grid x over n tiles, grid y over m tiles). Its KS slices of T = NT·MT threads split K:
// slice s takes the chunks of BK columns s, s + KS, s + 2·KS, … For each chunk a slice stages
// its BN weight rows (16-byte loads: every weight is read from memory once per m tile, f16
// widened to f32) and BM rows of x in workgroup memory, then thread (nt, mt) of the slice
// accumulates outputs n = nt + NT·j (j < TN), m = mt + MT·i (i < TM) from vec4 reads: TN + TM
// reads serve 4·TN·TM FMAs, and neighbouring lanes share mt, so their x reads are broadcasts.
// Rows are padded by one vec4 (BKP = BK/4 + 1) so that lanes reading neighbouring rows hit
// different banks. At the end the slices' partial sums meet in workgroup memory (RV values per
// thread a round, the rows padded by one float), and each thread finishes a few outputs with
// the epilogue (consecutive threads, consecutive n: coalesced stores).
//
// Defines:
//   TN, TM, NT, MT, KS, BK   the tile (see above); BK a multiple of 8
//   F16        W holds f16 pairs packed in u32 (unpack2x16float), 8 per load; else f32, 4
//   XVEC       x (and resIn, normW, resOut) read as vec4: K % 4 == 0 and 4-aligned offsets
//   PRO_RMS    x ← RMSNorm(x)·normW: x·normW is staged, Σx² of each row is gathered on the way
//              and the sums are scaled by 1/rms at the end (needs XVEC)
//   PRO_ADD    x ← x + resIn first (the residual add)
//   RES_OUT    the workgroups of n tile 0 also write x (after PRO_ADD) to resOut
//   BIAS, SOFTPLUS, CONV_EPI, CONV_BIAS   epilogues as in matvec.wgsl (CK, CKM: the conv's taps
//              and one less; the conv step is product_io.wgsl's)
//   ADD_RES    epilogue: y = · + resAdd[m, col] (same layout as y): the block's residual add
//              done once here, rather than by every workgroup of the next product (PRO_ADD)
//   KSPLIT     K is split into this many ranges of whole chunks, grid z over them: the workgroups
//              of range z write their partial sums ySplit elements after range 0's, for the
//              consumer to add up (no prologue or epilogue: those need the whole sum). It puts
//              more workgroups on a product with few outputs and a long K.
//   PREFETCH   load the next chunk into registers while the sums of this one run
//   ROTATE     workgroups start at different rounds of K (see the main loop)
//   SM         vec4s of workgroup memory (staging, or the partial sums, or Σx²)
//   NV = TN·TM; WR, XR: staging loads per thread and chunk (W, x); RV: partial sums per thread
//   and round of the final reduction (divides NV), NRR = NV / RV rounds

#include skinny_io

#include util

const TN = ${TN}u;
const TM = ${TM}u;
const NT = ${NT}u;
const MT = ${MT}u;
const KS = ${KS}u;
const BK = ${BK}u;
const T = NT * MT;         // threads per slice
const WG = T * KS;
const BN = NT * TN;
const BM = MT * TM;
const NV = ${NV}u;         // outputs per thread, TN · TM
const RV = ${RV}u;
const BK4 = BK / 4u;
const BKP = BK4 + 1u;      // vec4s per staged row
const SL = (BN + BM) * BKP; // vec4s per slice: W rows, then x rows
const WL = BN * BK / VEC;  // weight loads per slice and chunk
const WR = ${WR}u;         // ceil(WL / T)
const XL = BM * BK4;       // x vec4s per slice and chunk
const XR = ${XR}u;         // ceil(XL / T)

#if KSPLIT
const KSPLIT = ${KSPLIT}u;
#else
const KSPLIT = 1u;
#endif

var<workgroup> sm: array<vec4<f32>, ${SM}>;
// The end of this workgroup's range of K (p.K unless KSPLIT): loads past it read zeros.
var<private> kEnd: u32;
#if PRO_RMS
var<workgroup> rs: array<f32, BM>;
#endif

// One float of workgroup memory seen as an f32 array.
fn smSet(i: u32, v: f32) {
  sm[i / 4u][i % 4u] = v;
}
fn smGet(i: u32) -> f32 {
  return sm[i / 4u][i % 4u];
}

// x[m, k…k+3] (+ resIn), zero past K.
fn xraw(m: u32, k: u32) -> vec4<f32> {
#if XVEC
  var v = x[(p.xOff + m * p.xStride + k) >> 2u];
#if PRO_ADD
  v += resIn[(m * p.rStride + k) >> 2u];
#endif
  return v;
#else
  var v = vec4<f32>(0.0);
  let b = p.xOff + m * p.xStride + k;
  for (var j = 0u; j < 4u; j++) {
    if (k + j < kEnd) {
      v[j] = x[b + j];
    }
  }
  return v;
#endif
}

// The weights of chunk k0 this thread stages (zero past N and K).
fn load_w(wr: ptr<function, array<WV, WR>>, t: u32, n0: u32, k0: u32) {
#unroll R WR
  {
    let e = t + ${R}u * T;
    let n = n0 + e / (BK / VEC);
    let k = k0 + (e % (BK / VEC)) * VEC;
    var q = WV(0);
    if (e < WL && n < p.N && k < kEnd) {
      q = w[(n * p.wStride + k) / VEC];
    }
    (*wr)[${R}] = q;
  }
#endunroll
}

// The x values (+ resIn) of chunk k0 this thread stages (zero past M and K), and with PRO_RMS
// the norm's weights for them (loaded here with x, so that staging waits on no other load).
fn load_x(xr: ptr<function, array<vec4<f32>, XR>>, nr: ptr<function, array<vec4<f32>, XR>>,
    t: u32, m0: u32, k0: u32) {
#unroll R XR
  {
    let e = t + ${R}u * T;
    let m = m0 + e / BK4;
    let k = k0 + (e % BK4) * 4u;
    var v = vec4<f32>(0.0);
    var g = vec4<f32>(0.0);
    if (e < XL && m < p.M && k < kEnd) {
      v = xraw(m, k);
#if PRO_RMS
      g = normW[k >> 2u];
#endif
    }
    (*xr)[${R}] = v;
    (*nr)[${R}] = g;
  }
#endunroll
}

@compute @workgroup_size(WG)
fn skinny(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let s = lid / T;   // slice
  let t = lid % T;   // thread within the slice
  let nt = t % NT;
  let mt = t / NT;
  let n0 = wid.x * BN;
  let m0 = wid.y * BM;
  let wb = s * SL;        // this slice's W rows
  let xb = wb + BN * BKP; // and x rows
#if RES_OUT
  let writer = wid.x == 0u;
#endif
  var acc: array<f32, NV>;
#unroll V NV
  acc[${V}] = 0.0;
#endunroll
#if PRO_RMS
  var ss: array<f32, XR>;
#unroll R XR
  ss[${R}] = 0.0;
#endunroll
#endif
  // This workgroup's chunks of K: [c0, c0 + chunks).
  let allChunks = (p.K + BK - 1u) / BK;
  let perSplit = (allChunks + KSPLIT - 1u) / KSPLIT;
  let c0 = min(wid.z * perSplit, allChunks);
  let chunks = min(perSplit, allChunks - c0);
  kEnd = min(p.K, (c0 + chunks) * BK);
  let rounds = max((chunks + KS - 1u) / KS, 1u);
  // With ROTATE, workgroup i starts at round i mod rounds (the sums are order-free): every
  // workgroup reads the same rows of x, and in step they would all ask the same L2 lines at once.
#if ROTATE
  let rot = (wid.x + wid.y) % rounds;
#else
  let rot = 0u;
#endif
  // Each round: this slice's chunk goes registers → workgroup memory, then into the sums. With
  // PREFETCH the next chunk's loads are issued before the sums, so that they overlap.
  var wr: array<WV, WR>;
  var xr: array<vec4<f32>, XR>;
  var nr: array<vec4<f32>, XR>;
#if PREFETCH
  load_w(&wr, t, n0, (c0 + rot * KS + s) * BK);
  load_x(&xr, &nr, t, m0, (c0 + rot * KS + s) * BK);
#endif
  for (var it = 0u; it < rounds; it++) {
    let k0 = (c0 + ((it + rot) % rounds) * KS + s) * BK;
#if !PREFETCH
    load_w(&wr, t, n0, k0);
    load_x(&xr, &nr, t, m0, k0);
#endif
    // Weights: lanes hold consecutive 16-byte pieces of a row.
#unroll R WR
    {
      let e = t + ${R}u * T;
      if (e < WL) {
        let row = e / (BK / VEC);
        let g = e % (BK / VEC);
#if F16
        let q = wr[${R}];
        sm[wb + row * BKP + g * 2u] = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        sm[wb + row * BKP + g * 2u + 1u] = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
#else
        sm[wb + row * BKP + g] = wr[${R}];
#endif
      }
    }
#endunroll
    // x (normalised with PRO_RMS, up to the 1/rms applied at the end).
#unroll R XR
    {
      let e = t + ${R}u * T;
      if (e < XL) {
        let ml = e / BK4;
        let k4 = e % BK4;
        let m = m0 + ml;
        let k = k0 + k4 * 4u;
        var v = xr[${R}];
        if (m < p.M && k < kEnd) {
#if RES_OUT
          if (writer) {
            resOut[(m * p.rStride + k) >> 2u] = v;
          }
#endif
#if PRO_RMS
          ss[${R}] += dot(v, v);
          v *= nr[${R}];
#endif
        }
        sm[xb + ml * BKP + k4] = v;
      }
    }
#endunroll
    workgroupBarrier();
#if PREFETCH
    if (it + 1u < rounds) {
      let k1 = (c0 + ((it + 1u + rot) % rounds) * KS + s) * BK;
      load_w(&wr, t, n0, k1);
      load_x(&xr, &nr, t, m0, k1);
    }
#endif
    for (var q = 0u; q < BK4; q++) {
#unroll J TN
      let w${J} = sm[wb + (nt + NT * ${J}u) * BKP + q];
#endunroll
#unroll I TM
      let x${I} = sm[xb + (mt + MT * ${I}u) * BKP + q];
#endunroll
#unroll J TN
#unroll I TM
      acc[${J} * TM + ${I}] = fma(w${J}.w, x${I}.w, fma(w${J}.z, x${I}.z,
        fma(w${J}.y, x${I}.y, fma(w${J}.x, x${I}.x, acc[${J} * TM + ${I}]))));
#endunroll
#endunroll
    }
    workgroupBarrier();
  }
#if PRO_RMS
  // Σx² of each row: the staging threads' partial sums, [slice][e], then one thread per row.
#unroll R XR
  smSet(s * XR * T + ${R}u * T + t, ss[${R}]);
#endunroll
  workgroupBarrier();
  for (var ml = lid; ml < BM; ml += WG) {
    var tot = 0.0;
    for (var q = 0u; q < KS; q++) {
      for (var k4 = 0u; k4 < BK4; k4++) {
        tot += smGet(q * XR * T + ml * BK4 + k4);
      }
    }
    rs[ml] = 1.0 / sqrt(tot / f32(p.K) + p.eps);
  }
  workgroupBarrier();
#endif
  // The slices' sums, RV values a thread per round: [slice][thread][RV + 1].
#unroll Q NRR
  {
#unroll U RV
    smSet((s * T + t) * (RV + 1u) + ${U}u, acc[${Q} * RV + ${U}]);
#endunroll
    workgroupBarrier();
    // Output o of the round is value v = Q·RV + o / T of thread o % T.
    for (var o = lid; o < T * RV; o += WG) {
      let tt = o % T;
      let u = o / T;
      var r = 0.0;
      for (var q = 0u; q < KS; q++) {
        r += smGet((q * T + tt) * (RV + 1u) + u);
      }
      let v = ${Q}u * RV + u;
      let nl = tt % NT + NT * (v / TM);
      let ml = tt / NT + MT * (v % TM);
      let n = n0 + nl;
      let m = m0 + ml;
      if (n < p.N && m < p.M) {
#if PRO_RMS
        r *= rs[ml];
#endif
        let col = p.nBase + n;
        finish_output(m, col, p.yOff + wid.z * p.ySplit + m * p.yStride + col, r);
      }
    }
    workgroupBarrier();
  }
#endunroll
}
