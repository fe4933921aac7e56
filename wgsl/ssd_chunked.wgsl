// Mamba-2 SSD over whole sequences, in chunks of Q tokens (mamba_ssm's chunked form):
//   ssd_dt_cumsum   dt = clamp(softplus(dtRaw + dtBias)), cum = running Σ dt·A within each chunk
//   ssd_chunk_cb    per (chunk, group): the lower-triangular C·Bᵀ of the chunk
//   ssd_chunk_state per (chunk, head): the chunk's own final state, from zero:
//                   S[p, n] = Σ_s exp(cum_last − cum_s)·(x_s[p]·dt_s)·B_s[n]
//   ssd_state_pass  per (head, p, n): the state entering each chunk, sequentially over chunks
//                   (written over S), and the final state
//   ssd_chunk_out   per (chunk, head): y_i = Σ_{j≤i} CB[i, j]·exp(cum_i − cum_j)·x_j·dt_j
//                   + exp(cum_i)·(S_in · C_i) + D·x_i, and with GATE y ·= silu(z_i)
// Rows are sequence-major: row b·L + t. Defines: Q (chunk length ≤ 64), EPT = ceil(Q²/256),
// GATE, D_HDIM.

struct P {
  H: u32,
  P: u32,
  N: u32,
  G: u32,
  batch: u32,
  L: u32,
  nChunks: u32,
  inStride: u32, // row stride of zxbcdt (z at column 0, dtRaw at dtOff)
  dtOff: u32,
  convDim: u32,  // row stride of xbc (x at 0, B at H·P, C at H·P + G·N)
  dtMin: f32,
  dtMax: f32,
  sOff: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> zxbcdt: array<f32>;
@group(0) @binding(2) var<storage, read> xbc: array<f32>;
@group(0) @binding(3) var<storage, read> dtBias: array<f32>;
@group(0) @binding(4) var<storage, read> A: array<f32>;
@group(0) @binding(5) var<storage, read> Dskip: array<f32>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<storage, read_write> dtv: array<f32>;   // [rows, H]
@group(0) @binding(9) var<storage, read_write> cum: array<f32>;   // [rows, H]
@group(0) @binding(10) var<storage, read_write> cb: array<f32>;   // [batch, nChunks, G, Q, Q]
@group(0) @binding(11) var<storage, read_write> chunkS: array<f32>; // [batch, nChunks, H, P, N]

#include util

const Q = ${Q}u;
const WG = 256u;
const NT = 32u;

fn chunk_len(k: u32) -> u32 {
  return min(Q, p.L - k * Q);
}

@compute @workgroup_size(64)
fn ssd_dt_cumsum(@builtin(global_invocation_id) gid: vec3u) {
  let h = gid.x;
  let k = gid.y;
  let b = gid.z;
  if (h >= p.H || k >= p.nChunks || b >= p.batch) {
    return;
  }
  var s = 0.0;
  for (var i = 0u; i < chunk_len(k); i++) {
    let row = b * p.L + k * Q + i;
    let dt = clamp(softplus(zxbcdt[row * p.inStride + p.dtOff + h] + dtBias[h]), p.dtMin, p.dtMax);
    dtv[row * p.H + h] = dt;
    s += dt * A[h];
    cum[row * p.H + h] = s;
  }
}

var<workgroup> cs: array<f32, Q * NT>;
var<workgroup> bs: array<f32, Q * NT>;
const EPT = ${EPT}u; // ceil(Q·Q / WG)

@compute @workgroup_size(WG)
fn ssd_chunk_cb(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let k = wid.x;
  let g = wid.y;
  let b = wid.z;
  let q = chunk_len(k);
  let row0 = b * p.L + k * Q;
  let bo = p.H * p.P + g * p.N;
  let co = bo + p.G * p.N;
  var acc: array<f32, EPT>;
#unroll R EPT
  acc[${R}] = 0.0;
#endunroll
  for (var n0 = 0u; n0 < p.N; n0 += NT) {
    for (var e = lid; e < Q * NT; e += WG) {
      let i = e / NT;
      let n = n0 + e % NT;
      var cv = 0.0;
      var bv = 0.0;
      if (i < q && n < p.N) {
        cv = xbc[(row0 + i) * p.convDim + co + n];
        bv = xbc[(row0 + i) * p.convDim + bo + n];
      }
      cs[e] = cv;
      bs[e] = bv;
    }
    workgroupBarrier();
#unroll R EPT
    {
      let e = lid + ${R}u * WG;
      let i = e / Q;
      let j = e % Q;
      if (e < Q * Q && j <= i) {
        var d = 0.0;
        for (var n = 0u; n < NT; n++) {
          d += cs[i * NT + n] * bs[j * NT + n];
        }
        acc[${R}] += d;
      }
    }
#endunroll
    workgroupBarrier();
  }
  let o = ((b * p.nChunks + k) * p.G + g) * Q * Q;
#unroll R EPT
  if (lid + ${R}u * WG < Q * Q) {
    cb[o + lid + ${R}u * WG] = acc[${R}];
  }
#endunroll
}

var<workgroup> wsh: array<f32, Q>;
var<workgroup> dtsh: array<f32, Q>;

@compute @workgroup_size(WG)
fn ssd_chunk_state(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let k = wid.x;
  let h = wid.y;
  let b = wid.z;
  let q = chunk_len(k);
  let row0 = b * p.L + k * Q;
  let g = h / (p.H / p.G);
  let last = cum[(row0 + q - 1u) * p.H + h];
  for (var i = lid; i < Q; i += WG) {
    if (i < q) {
      wsh[i] = exp(last - cum[(row0 + i) * p.H + h]);
      dtsh[i] = dtv[(row0 + i) * p.H + h];
    }
  }
  workgroupBarrier();
  let bo = p.H * p.P + g * p.N;
  let o = ((b * p.nChunks + k) * p.H + h) * p.P * p.N;
  for (var e = lid; e < p.P * p.N; e += WG) {
    let pp = e / p.N;
    let n = e % p.N;
    var s = 0.0;
    for (var i = 0u; i < q; i++) {
      let row = row0 + i;
      let xdt = xbc[row * p.convDim + h * p.P + pp] * dtsh[i];
      s += wsh[i] * xdt * xbc[row * p.convDim + bo + n];
    }
    chunkS[o + e] = s;
  }
}

@compute @workgroup_size(64)
fn ssd_state_pass(@builtin(global_invocation_id) gid: vec3u) {
  let e = gid.x; // p · N + n
  let h = gid.y;
  let b = gid.z;
  if (e >= p.P * p.N || h >= p.H || b >= p.batch) {
    return;
  }
  let si = ((p.sOff + b) * p.H + h) * p.P * p.N + e;
  var s = state[si];
  for (var k = 0u; k < p.nChunks; k++) {
    let lastRow = b * p.L + k * Q + chunk_len(k) - 1u;
    let o = ((b * p.nChunks + k) * p.H + h) * p.P * p.N + e;
    let own = chunkS[o];
    chunkS[o] = s;
    s = exp(cum[lastRow * p.H + h]) * s + own;
  }
  state[si] = s;
}

var<workgroup> lm: array<f32, Q * Q>;
var<workgroup> cumsh: array<f32, Q>;

@compute @workgroup_size(WG)
fn ssd_chunk_out(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let k = wid.x;
  let h = wid.y;
  let b = wid.z;
  let q = chunk_len(k);
  let row0 = b * p.L + k * Q;
  let g = h / (p.H / p.G);
  for (var i = lid; i < Q; i += WG) {
    if (i < q) {
      cumsh[i] = cum[(row0 + i) * p.H + h];
      dtsh[i] = dtv[(row0 + i) * p.H + h];
    }
  }
  workgroupBarrier();
  let cbo = ((b * p.nChunks + k) * p.G + g) * Q * Q;
  for (var e = lid; e < Q * Q; e += WG) {
    let i = e / Q;
    let j = e % Q;
    var v = 0.0;
    if (j <= i && i < q) {
      v = cb[cbo + e] * exp(cumsh[i] - cumsh[j]);
    }
    lm[e] = v;
  }
  workgroupBarrier();
  let dInner = p.H * p.P;
  let co = dInner + p.G * p.N + g * p.N;
  let so = ((b * p.nChunks + k) * p.H + h) * p.P * p.N;
  for (var e = lid; e < q * p.P; e += WG) {
    let i = e / p.P;
    let pp = e % p.P;
    let ch = h * p.P + pp;
    var inChunk = 0.0;
    for (var j = 0u; j <= i; j++) {
      let xdt = xbc[(row0 + j) * p.convDim + ch] * dtsh[j];
      inChunk += lm[i * Q + j] * xdt;
    }
    var fromState = 0.0;
    for (var n = 0u; n < p.N; n++) {
      fromState += chunkS[so + pp * p.N + n] * xbc[(row0 + i) * p.convDim + co + n];
    }
    let xi = xbc[(row0 + i) * p.convDim + ch];
#if D_HDIM
    var r = exp(cumsh[i]) * fromState + inChunk + xi * Dskip[ch];
#else
    var r = exp(cumsh[i]) * fromState + inChunk + xi * Dskip[h];
#endif
#if GATE
    r *= silu(zxbcdt[(row0 + i) * p.inStride + ch]);
#endif
    y[(row0 + i) * dInner + ch] = r;
  }
}

// ---------------------------------------------------------------------------------------------
// Register-tiled forms of ssd_chunk_state and ssd_chunk_out (head dim ≤ 16·PT, state ≤ 16·NB):
// each thread owns a 16-strided tile of outputs and the operands go through workgroup memory in
// slices of 16 along the reduction.

const PT = ${PT}u;  // ceil(P / 16)
const NB = ${NB}u;  // ceil(N / 16)
const TI = (Q + 15u) / 16u;
const PP = 16u * PT;
const NN = 16u * NB;

var<workgroup> xw: array<f32, 16u * PP>;   // [s][p]
var<workgroup> bt: array<f32, 16u * NN>;   // [s][n]

@compute @workgroup_size(WG)
fn ssd_chunk_state2(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let k = wid.x;
  let h = wid.y;
  let b = wid.z;
  let q = chunk_len(k);
  let row0 = b * p.L + k * Q;
  let g = h / (p.H / p.G);
  let last = cum[(row0 + q - 1u) * p.H + h];
  let bo = p.H * p.P + g * p.N;
  let tp = lid / 16u;
  let tn = lid % 16u;
  var acc: array<f32, PT * NB>;
#unroll A PT
#unroll B NB
  acc[${A}u * NB + ${B}u] = 0.0;
#endunroll
#endunroll
  for (var s0 = 0u; s0 < q; s0 += 16u) {
    for (var e = lid; e < 16u * PP; e += WG) {
      let s = e / PP;
      let pc = e % PP;
      var v = 0.0;
      if (s0 + s < q && pc < p.P) {
        let row = row0 + s0 + s;
        let wt = exp(last - cum[row * p.H + h]) * dtv[row * p.H + h];
        v = xbc[row * p.convDim + h * p.P + pc] * wt;
      }
      xw[e] = v;
    }
    for (var e = lid; e < 16u * NN; e += WG) {
      let s = e / NN;
      let n = e % NN;
      var v = 0.0;
      if (s0 + s < q && n < p.N) {
        v = xbc[(row0 + s0 + s) * p.convDim + bo + n];
      }
      bt[e] = v;
    }
    workgroupBarrier();
    for (var s = 0u; s < 16u; s++) {
#unroll B NB
      let b${B} = bt[s * NN + tn + 16u * ${B}u];
#endunroll
#unroll A PT
      {
        let xa = xw[s * PP + tp + 16u * ${A}u];
#unroll B NB
        acc[${A}u * NB + ${B}u] = fma(xa, b${B}, acc[${A}u * NB + ${B}u]);
#endunroll
      }
#endunroll
    }
    workgroupBarrier();
  }
  let o = ((b * p.nChunks + k) * p.H + h) * p.P * p.N;
#unroll A PT
#unroll B NB
  {
    let pc = tp + 16u * ${A}u;
    let n = tn + 16u * ${B}u;
    if (pc < p.P && n < p.N) {
      chunkS[o + pc * p.N + n] = acc[${A}u * NB + ${B}u];
    }
  }
#endunroll
#endunroll
}

var<workgroup> ct: array<f32, 16u * TI * 16u>; // [i][n slice]
var<workgroup> ht: array<f32, PP * 16u>;       // [p][n slice]

@compute @workgroup_size(WG)
fn ssd_chunk_out2(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3u) {
  let k = wid.x;
  let h = wid.y;
  let b = wid.z;
  let q = chunk_len(k);
  let row0 = b * p.L + k * Q;
  let g = h / (p.H / p.G);
  for (var i = lid; i < Q; i += WG) {
    if (i < q) {
      cumsh[i] = cum[(row0 + i) * p.H + h];
      dtsh[i] = dtv[(row0 + i) * p.H + h];
    }
  }
  workgroupBarrier();
  let cbo = ((b * p.nChunks + k) * p.G + g) * Q * Q;
  for (var e = lid; e < Q * Q; e += WG) {
    let i = e / Q;
    let j = e % Q;
    var v = 0.0;
    if (j <= i && i < q) {
      v = cb[cbo + e] * exp(cumsh[i] - cumsh[j]);
    }
    lm[e] = v;
  }
  let ti = lid / 16u;
  let tp = lid % 16u;
  var acc1: array<f32, TI * PT>;
  var acc2: array<f32, TI * PT>;
#unroll A TI_
#unroll B PT
  acc1[${A}u * PT + ${B}u] = 0.0;
  acc2[${A}u * PT + ${B}u] = 0.0;
#endunroll
#endunroll
  // Σ_j L[i, j]·x_j·dt_j, 16 tokens j at a time.
  for (var j0 = 0u; j0 < q; j0 += 16u) {
    workgroupBarrier();
    for (var e = lid; e < 16u * PP; e += WG) {
      let jj = e / PP;
      let pc = e % PP;
      var v = 0.0;
      if (j0 + jj < q && pc < p.P) {
        v = xbc[(row0 + j0 + jj) * p.convDim + h * p.P + pc] * dtsh[j0 + jj];
      }
      xw[e] = v;
    }
    workgroupBarrier();
    for (var jj = 0u; jj < 16u; jj++) {
      let j = min(j0 + jj, Q - 1u); // past q: xw is zero
#unroll B PT
      let x${B} = xw[jj * PP + tp + 16u * ${B}u];
#endunroll
#unroll A TI_
      {
        let la = lm[min(ti + 16u * ${A}u, Q - 1u) * Q + j];
#unroll B PT
        acc1[${A}u * PT + ${B}u] = fma(la, x${B}, acc1[${A}u * PT + ${B}u]);
#endunroll
      }
#endunroll
    }
  }
  // Σ_n C_i[n]·S_in[p, n], 16 state values at a time.
  let co = p.H * p.P + p.G * p.N + g * p.N;
  let so = ((b * p.nChunks + k) * p.H + h) * p.P * p.N;
  for (var n0 = 0u; n0 < p.N; n0 += 16u) {
    workgroupBarrier();
    for (var e = lid; e < 16u * TI * 16u; e += WG) {
      let i = e / 16u;
      let nn = e % 16u;
      var v = 0.0;
      if (i < q && n0 + nn < p.N) {
        v = xbc[(row0 + i) * p.convDim + co + n0 + nn];
      }
      ct[e] = v;
    }
    for (var e = lid; e < PP * 16u; e += WG) {
      let pc = e / 16u;
      let nn = e % 16u;
      var v = 0.0;
      if (pc < p.P && n0 + nn < p.N) {
        v = chunkS[so + pc * p.N + n0 + nn];
      }
      ht[e] = v;
    }
    workgroupBarrier();
    for (var nn = 0u; nn < 16u; nn++) {
#unroll B PT
      let h${B} = ht[(tp + 16u * ${B}u) * 16u + nn];
#endunroll
#unroll A TI_
      {
        let ca = ct[(ti + 16u * ${A}u) * 16u + nn];
#unroll B PT
        acc2[${A}u * PT + ${B}u] = fma(ca, h${B}, acc2[${A}u * PT + ${B}u]);
#endunroll
      }
#endunroll
    }
  }
  let dInner = p.H * p.P;
#unroll A TI_
#unroll B PT
  {
    let i = ti + 16u * ${A}u;
    let pc = tp + 16u * ${B}u;
    if (i < q && pc < p.P) {
      let ch = h * p.P + pc;
      let xi = xbc[(row0 + i) * p.convDim + ch];
#if D_HDIM
      let dv = Dskip[ch];
#else
      let dv = Dskip[h];
#endif
      var r = exp(cumsh[i]) * acc2[${A}u * PT + ${B}u] + acc1[${A}u * PT + ${B}u] + xi * dv;
#if GATE
      r *= silu(zxbcdt[(row0 + i) * p.inStride + ch]);
#endif
      y[(row0 + i) * dInner + ch] = r;
    }
  }
#endunroll
#endunroll
}
