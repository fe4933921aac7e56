// Mamba-1's decode step for one token of a few sequences, x_proj included: for sequence b,
//   xdbl = x_proj(u[b])                 (dt_rank + 2·NS values: δ's input, B, C)
//   δ[c] = softplus(xdbl[:dt_rank] · Wdt[c] + dtBias[c])
//   h[c] = exp(δ·A[c]) ⊙ h[c] + δ·B·u[b, c];   y[b, c] = (⟨h[c], C⟩ + D[c]·u[b, c]) · silu(z[b, c]).
// Run as two kernels (x_proj, then scan_step_lanes of selective_scan.wgsl), the scan waits for a
// product of ~0.25 MB (mamba-130m) that costs a whole dispatch and barrier. Here each workgroup
// computes its sequence's xdbl itself, from u staged in workgroup memory, before scanning its CH
// channels: x_proj's weights are read once per workgroup (from L2 after the first), and there
// is one dispatch a layer fewer. Worth it while x_proj's weights are small (see the backend).
//
// Grid: (ceil(D / CH), batch); 256 threads. Phase 1: 8 teams of 32 lanes, team g summing outputs
// j = g, g + 8, …, lane l the columns 8l + 256i (8 a load), the 32 partial sums of each output
// met in workgroup memory. Phase 2: CH / 64 passes of 64 channels, four lanes a channel, each a
// quarter of the state (as scan_step_lanes).
//
// Defines: NS (state size, a multiple of 4), XW (dt_rank + 2·NS), UD (D / 4: vec4s of u),
// CH (channels per workgroup, a multiple of 64), F16 (x_proj's weights as f16 pairs in u32).

struct P {
  D: u32,         // channels (d_inner); a multiple of 8
  dtRank: u32,
  wxStride: u32,  // elements per row of x_proj's weights (a multiple of 8)
  zStride: u32,   // row stride of the tensor holding z
  zOff: u32,      // column of z
  sOff: u32,      // first sequence's index in the state
  wdtStride: u32, // elements per row of dt_proj's weights
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> u: array<vec4<f32>>;
#if F16
@group(0) @binding(2) var<storage, read> wx: array<vec4<u32>>;
#else
@group(0) @binding(2) var<storage, read> wx: array<vec4<f32>>;
#endif
@group(0) @binding(3) var<storage, read> zsrc: array<f32>;
@group(0) @binding(4) var<storage, read> A: array<f32>;
@group(0) @binding(5) var<storage, read> Dskip: array<f32>;
@group(0) @binding(6) var<storage, read_write> state: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<storage, read> wdt: array<f32>;
@group(0) @binding(9) var<storage, read> dtBias: array<f32>;

#include util

const NS = ${NS}u;
const XW = ${XW}u;
const CH = ${CH}u;
const LANES = 4u;
const NSL = NS / LANES;

var<workgroup> us: array<vec4<f32>, ${UD}>;
var<workgroup> part: array<f32, XW * 32u>;
var<workgroup> xd: array<f32, XW>;
var<workgroup> laneSum: array<f32, 256>;

// Eight weights of x_proj's row j from column k (k a multiple of 8), as two vec4s.
fn wx8(j: u32, k: u32) -> array<vec4<f32>, 2> {
#if F16
  let q = wx[(j * p.wxStride + k) / 8u];
  return array<vec4<f32>, 2>(
    vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)),
    vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)),
  );
#else
  let i = (j * p.wxStride + k) / 4u;
  return array<vec4<f32>, 2>(wx[i], wx[i + 1u]);
#endif
}

@compute @workgroup_size(256)
fn scan_step_xproj(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
) {
  let b = wid.y;
  // u[b] into workgroup memory.
  for (var i = lid; i < p.D / 4u; i += 256u) {
    us[i] = u[b * (p.D / 4u) + i];
  }
  workgroupBarrier();
  // Phase 1: xdbl of sequence b.
  let team = lid / 32u;
  let lane = lid % 32u;
  for (var j = team; j < XW; j += 8u) {
    var acc = 0.0;
    for (var k = lane * 8u; k < p.D; k += 256u) {
      let w = wx8(j, k);
      acc += dot(w[0], us[k / 4u]) + dot(w[1], us[k / 4u + 1u]);
    }
    part[j * 32u + lane] = acc;
  }
  workgroupBarrier();
  for (var j = lid; j < XW; j += 256u) {
    var s = 0.0;
    for (var l = 0u; l < 32u; l++) {
      s += part[j * 32u + l];
    }
    xd[j] = s;
  }
  workgroupBarrier();
  // Phase 2: the scan step of this workgroup's channels, 64 a pass.
  let ln = lid % LANES;
  let group = lid - ln;
  for (var pi = 0u; pi < CH / 64u; pi++) {
    let c = wid.x * CH + pi * 64u + lid / LANES;
    let valid = c < p.D;
    var lin = 0.0;
    if (valid) {
      for (var r = ln; r < p.dtRank; r += LANES) {
        lin += xd[r] * wdt[c * p.wdtStride + r];
      }
    }
    laneSum[lid] = lin;
    workgroupBarrier();
    let d = softplus(laneSum[group] + laneSum[group + 1u] + laneSum[group + 2u] +
      laneSum[group + 3u] + select(0.0, dtBias[min(c, p.D - 1u)], valid));
    workgroupBarrier();
    var acc = 0.0;
    var ut = 0.0;
    if (valid) {
      ut = us[c / 4u][c % 4u];
      let du = d * ut;
      let s = ((p.sOff + b) * p.D + c) * NS + ln * NSL;
      let bc = p.dtRank + ln * NSL;
      let a = c * NS + ln * NSL;
      for (var j = 0u; j < NSL; j++) {
        let hn = exp(d * A[a + j]) * state[s + j] + du * xd[bc + j];
        state[s + j] = hn;
        acc += hn * xd[bc + NS + j];
      }
    }
    laneSum[lid] = acc;
    workgroupBarrier();
    if (valid && ln == 0u) {
      let total = laneSum[group] + laneSum[group + 1u] + laneSum[group + 2u] + laneSum[group + 3u];
      let z = zsrc[b * p.zStride + p.zOff + c];
      y[b * p.D + c] = (total + Dskip[c] * ut) * silu(z);
    }
    workgroupBarrier();
  }
}
