// Mamba-1 selective scan, one thread per (sequence, channel c), the NS state values in registers:
//   h = exp(δ·A[c]) ⊙ h + δ·B_t·u;   y = (⟨h, C_t⟩ + D[c]·u) · silu(z).
//
// Entry points:
//   scan_seq          L tokens one after the other (δ precomputed, after softplus)
//   scan_step         one token, δ = softplus(xdbl[:dtRank] · Wdt[c] + dtBias[c]) fused in
//   scan_chunk_local  chunked form, phase 1: each chunk of Q tokens scanned from h = 0
//   scan_chunk_pass   phase 2: per (channel, n), the states entering each chunk, sequentially
//   scan_chunk_out    phase 3: each chunk rescanned from its entering state, with outputs
// Defines: NS (state size); XS (scan_step_lanes: x_proj's row comes in XS partial sums, p.xSplit
// elements apart, added up while the workgroup stages its row; see skinny.wgsl's KSPLIT); DTL
// (scan_step_lanes: dt_rank / 4 rounded up, the values of dt_proj's row a lane holds).

struct P {
  D: u32,         // channels (d_inner)
  L: u32,         // tokens per sequence
  batch: u32,
  dtRank: u32,
  xdStride: u32,  // row stride of xdbl = dtRank + 2·NS; B at column dtRank, C at dtRank + NS
  zStride: u32,   // row stride of the tensor holding z
  zOff: u32,      // column of z
  sOff: u32,      // first sequence's index in the state
  Q: u32,         // chunk length (chunked form)
  nChunks: u32,
  wdtStride: u32, // elements per row of wdt
  xSplit: u32,    // XS: elements between two partial sums of xdbl
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read> delta: array<f32>;
@group(0) @binding(3) var<storage, read> xdbl: array<f32>;
@group(0) @binding(4) var<storage, read> zsrc: array<f32>;
@group(0) @binding(5) var<storage, read> A: array<f32>;
@group(0) @binding(6) var<storage, read> Dskip: array<f32>;
@group(0) @binding(7) var<storage, read_write> state: array<f32>;
@group(0) @binding(8) var<storage, read_write> y: array<f32>;
@group(0) @binding(9) var<storage, read> wdt: array<f32>;
@group(0) @binding(10) var<storage, read> dtBias: array<f32>;
@group(0) @binding(11) var<storage, read_write> chunkH: array<f32>;
@group(0) @binding(12) var<storage, read_write> chunkSum: array<f32>;

#include util

const NS = ${NS}u;

fn out_value(row: u32, c: u32, acc: f32, ut: f32) -> f32 {
  let z = zsrc[row * p.zStride + p.zOff + c];
  return (acc + Dskip[c] * ut) * silu(z);
}

// Advances h by token `row` of channel c with step d; returns ⟨h, C⟩. (Literal indices only:
// h stays in registers.)
fn advance(h: ptr<function, array<f32, NS>>, row: u32, c: u32, d: f32, ut: f32) -> f32 {
  let bc = row * p.xdStride + p.dtRank;
  let du = d * ut;
  var acc = 0.0;
#unroll N NS
  {
    let hn = exp(d * A[c * NS + ${N}u]) * (*h)[${N}] + du * xdbl[bc + ${N}u];
    (*h)[${N}] = hn;
    acc += hn * xdbl[bc + NS + ${N}u];
  }
#endunroll
  return acc;
}

fn load_h(h: ptr<function, array<f32, NS>>, src: u32) {
#unroll N NS
  (*h)[${N}] = state[src + ${N}u];
#endunroll
}

fn store_h(h: ptr<function, array<f32, NS>>, dst: u32) {
#unroll N NS
  state[dst + ${N}u] = (*h)[${N}];
#endunroll
}

@compute @workgroup_size(64)
fn scan_seq(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let b = gid.y;
  if (c >= p.D || b >= p.batch) {
    return;
  }
  let s = ((p.sOff + b) * p.D + c) * NS;
  var h: array<f32, NS>;
  load_h(&h, s);
  for (var t = 0u; t < p.L; t++) {
    let row = b * p.L + t;
    let ut = u[row * p.D + c];
    let acc = advance(&h, row, c, delta[row * p.D + c], ut);
    y[row * p.D + c] = out_value(row, c, acc, ut);
  }
  store_h(&h, s);
}

@compute @workgroup_size(64)
fn scan_step(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let b = gid.y;
  if (c >= p.D || b >= p.batch) {
    return;
  }
  var lin = 0.0;
  for (var r = 0u; r < p.dtRank; r++) {
    lin += xdbl[b * p.xdStride + r] * wdt[c * p.wdtStride + r];
  }
  let d = softplus(lin + dtBias[c]);
  let s = ((p.sOff + b) * p.D + c) * NS;
  var h: array<f32, NS>;
  load_h(&h, s);
  let ut = u[b * p.D + c];
  let acc = advance(&h, b, c, d, ut);
  y[b * p.D + c] = out_value(b, c, acc, ut);
  store_h(&h, s);
}

// scan_step with four lanes per (channel, sequence), each a quarter of the state: four times
// the threads, each lane's state slice next to its neighbours' (coalesced), and dt_proj's dot
// product split over the lanes. At batch 16 one thread per channel left the SMs mostly idle,
// each thread a long chain of dependent loads. Requires NS % 4 == 0; compiled where DTL is given.
#if DTL
const LANES = 4u;
const NSL = ${NSL}u; // NS / LANES, a define because #unroll counts with it
const STEP_CHANNELS = 64u; // channels per workgroup of 256
var<workgroup> laneSum: array<f32, 256>;
#if XS
// The sequence's row of xdbl (dt_rank + 2·NS values), summed over its XS partial sums: every
// channel of the workgroup reads all of it.
var<workgroup> xrow: array<f32, ${XDW}>;
#endif

// Column i of sequence b's row of xdbl (staged with XS).
fn xd(b: u32, i: u32) -> f32 {
#if XS
  return xrow[i];
#else
  return xdbl[b * p.xdStride + i];
#endif
}

@compute @workgroup_size(256)
fn scan_step_lanes(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let lane = lid % LANES;
  let group = lid - lane;
  let c = wid.x * STEP_CHANNELS + lid / LANES;
  let b = wid.y;
  let valid = c < p.D;
  // What does not depend on x_proj's row is loaded before that row is staged, so that these
  // loads are in flight together instead of each waiting behind a barrier: this lane's part of
  // dt_proj's row, its quarter of the state and of A, and u, the bias, z and D. (On the H200,
  // mamba-130m f16 at batch 16, the step went from 207 to 147 µs a layer.)
  var wv: array<f32, ${DTL}>;
  var hv: array<f32, ${NSL}>;
  var av: array<f32, ${NSL}>;
  var ut = 0.0;
  var bias = 0.0;
  var zt = 0.0;
  var dk = 0.0;
  let s = ((p.sOff + b) * p.D + c) * NS + lane * NSL;
  let a = c * NS + lane * NSL;
  if (valid) {
#unroll R DTL
    {
      let r = lane + ${R}u * LANES;
      wv[${R}] = select(0.0, wdt[c * p.wdtStride + min(r, p.dtRank - 1u)], r < p.dtRank);
    }
#endunroll
#unroll J NSL
    hv[${J}] = state[s + ${J}u];
    av[${J}] = A[a + ${J}u];
#endunroll
    ut = u[b * p.D + c];
    bias = dtBias[c];
    zt = zsrc[b * p.zStride + p.zOff + c];
    dk = Dskip[c];
  }
#if XS
  for (var i = lid; i < p.xdStride; i += 256u) {
    var v = 0.0;
    for (var q = 0u; q < ${XS}u; q++) {
      v += xdbl[q * p.xSplit + b * p.xdStride + i];
    }
    xrow[i] = v;
  }
  workgroupBarrier();
#endif
  var lin = 0.0;
  if (valid) {
#unroll R DTL
    lin += xd(b, lane + ${R}u * LANES) * wv[${R}];
#endunroll
  }
  laneSum[lid] = lin;
  workgroupBarrier();
  let d = softplus(laneSum[group] + laneSum[group + 1u] + laneSum[group + 2u] +
    laneSum[group + 3u] + bias);
  workgroupBarrier();
  var acc = 0.0;
  if (valid) {
    let du = d * ut;
    let bc = p.dtRank + lane * NSL;
#unroll J NSL
    {
      let hn = exp(d * av[${J}]) * hv[${J}] + du * xd(b, bc + ${J}u);
      state[s + ${J}u] = hn;
      acc += hn * xd(b, bc + NS + ${J}u);
    }
#endunroll
  }
  laneSum[lid] = acc;
  workgroupBarrier();
  if (valid && lane == 0u) {
    let total = laneSum[group] + laneSum[group + 1u] + laneSum[group + 2u] + laneSum[group + 3u];
    y[b * p.D + c] = (total + dk * ut) * silu(zt);
  }
}
#endif

// chunkH[((b · nChunks + k) · D + c) · NS + n], chunkSum[(b · nChunks + k) · D + c].
@compute @workgroup_size(64)
fn scan_chunk_local(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let k = gid.y;
  let b = gid.z;
  if (c >= p.D || k >= p.nChunks || b >= p.batch) {
    return;
  }
  var h: array<f32, NS>;
#unroll N NS
  h[${N}] = 0.0;
#endunroll
  var sum = 0.0;
  let t1 = min(p.L, (k + 1u) * p.Q);
  for (var t = k * p.Q; t < t1; t++) {
    let row = b * p.L + t;
    let d = delta[row * p.D + c];
    sum += d;
    advance(&h, row, c, d, u[row * p.D + c]);
  }
  let o = (b * p.nChunks + k) * p.D + c;
  chunkSum[o] = sum;
#unroll N NS
  chunkH[o * NS + ${N}u] = h[${N}];
#endunroll
}

@compute @workgroup_size(64)
fn scan_chunk_pass(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x; // c · NS + n
  let b = gid.y;
  if (i >= p.D * NS || b >= p.batch) {
    return;
  }
  let c = i / NS;
  let s = (p.sOff + b) * p.D * NS + i;
  var h = state[s];
  for (var k = 0u; k < p.nChunks; k++) {
    let o = (b * p.nChunks + k) * p.D + c;
    let local = chunkH[o * NS + i % NS];
    chunkH[o * NS + i % NS] = h;
    h = exp(A[i] * chunkSum[o]) * h + local;
  }
  state[s] = h;
}

@compute @workgroup_size(64)
fn scan_chunk_out(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let k = gid.y;
  let b = gid.z;
  if (c >= p.D || k >= p.nChunks || b >= p.batch) {
    return;
  }
  let o = (b * p.nChunks + k) * p.D + c;
  var h: array<f32, NS>;
#unroll N NS
  h[${N}] = chunkH[o * NS + ${N}u];
#endunroll
  let t1 = min(p.L, (k + 1u) * p.Q);
  for (var t = k * p.Q; t < t1; t++) {
    let row = b * p.L + t;
    let ut = u[row * p.D + c];
    let acc = advance(&h, row, c, delta[row * p.D + c], ut);
    y[row * p.D + c] = out_value(row, c, acc, ut);
  }
}
