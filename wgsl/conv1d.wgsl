// Causal depthwise conv1d over C channels with a K-tap window carried in a state, then SiLU.
//   out[t, c] = silu(bias[c] + Σ_k w[c, k] · in[t − (K−1) + k, c]),
// where inputs before t = 0 come from the state `[C, K]` (the last K inputs, oldest first).
//
// Entry points:
//   conv_seq    one thread per (token, channel) of `batch` sequences of `L` tokens
//   conv_state  then one thread per (sequence, channel): state ← the last K inputs (in place)
//   conv_step   L = 1: both at once
// Defines: BIAS.

struct P {
  C: u32,       // channels
  K: u32,       // taps
  L: u32,       // tokens per sequence
  batch: u32,   // sequences
  xStride: u32, // elements between input rows
  xOff: u32,    // element offset of input column 0 of row 0
  sOff: u32,    // first sequence's index in the state
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> state: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

#include util

// Input of sequence b at time t (t ≥ −K) for channel c.
fn input(b: u32, t: i32, c: u32) -> f32 {
  if (t >= 0) {
    return x[p.xOff + (b * p.L + u32(t)) * p.xStride + c];
  }
  return state[((p.sOff + b) * p.C + c) * p.K + u32(i32(p.K) + t)];
}

@compute @workgroup_size(64)
fn conv_seq(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let c = gid.x;
  if (c >= p.C) {
    return;
  }
  let rows = p.batch * p.L;
  for (var r = gid.y; r < rows; r += nwg.y) {
    let b = r / p.L;
    let t = i32(r % p.L);
#if BIAS
    var acc = bias[c];
#else
    var acc = 0.0;
#endif
    for (var k = 0u; k < p.K; k++) {
      acc += w[c * p.K + k] * input(b, t - i32(p.K) + 1 + i32(k), c);
    }
    out[r * p.C + c] = silu(acc);
  }
}

@compute @workgroup_size(64)
fn conv_state(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let b = gid.y;
  if (c >= p.C || b >= p.batch) {
    return;
  }
  // Ascending k reads index L + k ≥ k of the old state, so the update can be in place.
  for (var k = 0u; k < p.K; k++) {
    let v = input(b, i32(p.L) - i32(p.K) + i32(k), c);
    state[((p.sOff + b) * p.C + c) * p.K + k] = v;
  }
}

@compute @workgroup_size(64)
fn conv_step(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  let b = gid.y;
  if (c >= p.C || b >= p.batch) {
    return;
  }
  let s = ((p.sOff + b) * p.C + c) * p.K;
  let xin = x[p.xOff + b * p.xStride + c];
#if BIAS
  var acc = bias[c];
#else
  var acc = 0.0;
#endif
  for (var k = 0u; k + 1u < p.K; k++) {
    let v = state[s + k + 1u];
    acc += w[c * p.K + k] * v;
    state[s + k] = v;
  }
  acc += w[c * p.K + p.K - 1u] * xin;
  state[s + p.K - 1u] = xin;
  out[b * p.C + c] = silu(acc);
}
