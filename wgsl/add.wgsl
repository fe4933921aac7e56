// Element-wise sum in place: a += b (the two branches of a parallel residual).

struct P {
  n: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;

@compute @workgroup_size(256)
fn add(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  for (var i = gid.x + gid.y * nwg.x * 256u; i < p.n; i += nwg.x * nwg.y * 256u) {
    a[i] += b[i];
  }
}
