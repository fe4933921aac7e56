// Mamba-2's gated RMSNorm, one workgroup per (row, group) of `groupSize` channels:
//   out = RMSNorm(y)·w                (y already multiplied by silu(z))   or, with
//   out = RMSNorm(y)·w · silu(z)      NORM_BEFORE_GATE.
// Eps is p.eps (1e-5 in mamba_ssm).

struct P {
  rows: u32,
  dInner: u32,
  groupSize: u32,
  eps: f32,
  zStride: u32,
  zOff: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> y: array<f32>;
#if NORM_BEFORE_GATE
@group(0) @binding(2) var<storage, read> zsrc: array<f32>;
#endif
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

#include util

const WG = 256u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn gated_norm(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  let g = wid.y;
  for (var r = wid.x; r < p.rows; r += nwg.x) {
    let base = r * p.dInner + g * p.groupSize;
    var ss = 0.0;
    for (var i = lid; i < p.groupSize; i += WG) {
      let v = y[base + i];
      ss += v * v;
    }
    red[lid] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
      if (lid < s) {
        red[lid] += red[lid + s];
      }
      workgroupBarrier();
    }
    let rs = 1.0 / sqrt(red[0] / f32(p.groupSize) + p.eps);
    workgroupBarrier();
    for (var i = lid; i < p.groupSize; i += WG) {
      let c = g * p.groupSize + i;
      var v = y[base + i] * rs * w[c];
#if NORM_BEFORE_GATE
      v *= silu(zsrc[r * p.zStride + p.zOff + c]);
#endif
      out[base + i] = v;
    }
  }
}
