// Exact GELU in place (see gelu_erf in util.wgsl). Decoding folds it into the matrix-vector
// kernel's epilogue instead (GELU in matvec.wgsl).

struct P {
  n: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

#include util

@compute @workgroup_size(256)
fn gelu(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  for (var i = gid.x + gid.y * nwg.x * 256u; i < p.n; i += nwg.x * nwg.y * 256u) {
    x[i] = gelu_erf(x[i]);
  }
}
