// Exact GELU in place: x/2 · (1 + erf(x/√2)) (PyTorch's default, not the tanh form). erf comes
// from its complement in Chebyshev form (Numerical Recipes' erfcc, relative error < 1.2e-7), as
// in the ref and wasm backends.

struct P {
  n: u32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

fn erf(v: f32) -> f32 {
  let z = abs(v);
  let t = 1.0 / (1.0 + 0.5 * z);
  let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277))))))));
  let erfc = t * exp(-z * z + poly);
  return select(erfc - 1.0, 1.0 - erfc, v >= 0.0);
}

@compute @workgroup_size(256)
fn gelu(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  for (var i = gid.x + gid.y * nwg.x * 256u; i < p.n; i += nwg.x * nwg.y * 256u) {
    let v = x[i];
    x[i] = 0.5 * v * (1.0 + erf(v * 0.70710678118654752));
  }
}
