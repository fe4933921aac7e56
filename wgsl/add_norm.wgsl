// Residual add + norm, one workgroup per row:
//   res = hidden (+ resIn);  normed = RMSNorm(res)·w   or   LayerNorm(res)·w + b.
// Defines: HAS_RES (add resIn), LAYER_NORM, HAS_RES2 (add hidden2 too: the two branches of a
// parallel residual, summed here rather than by a kernel of their own), NORM2 (LAYER_NORM only:
// also normed2 = LayerNorm(res)·w2 + b2, the second norm of a parallel-residual block, which
// reads the same residual).

struct P {
  rows: u32,
  d: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> hidden: array<f32>;
#if HAS_RES
@group(0) @binding(2) var<storage, read> resIn: array<f32>;
#endif
@group(0) @binding(3) var<storage, read> w: array<f32>;
#if LAYER_NORM
@group(0) @binding(4) var<storage, read> b: array<f32>;
#endif
@group(0) @binding(5) var<storage, read_write> resOut: array<f32>;
@group(0) @binding(6) var<storage, read_write> normed: array<f32>;
#if HAS_RES2
@group(0) @binding(7) var<storage, read> hidden2: array<f32>;
#endif
#if NORM2
@group(0) @binding(8) var<storage, read> w2: array<f32>;
@group(0) @binding(9) var<storage, read> b2: array<f32>;
@group(0) @binding(10) var<storage, read_write> normed2: array<f32>;
#endif

const WG = 256u;
var<workgroup> red: array<f32, WG>;

fn sum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (lid < s) {
      red[lid] += red[lid + s];
    }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(WG)
fn add_norm(
  @builtin(local_invocation_index) lid: u32,
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) nwg: vec3u,
) {
  for (var r = wid.x; r < p.rows; r += nwg.x) {
    let base = r * p.d;
    var s1 = 0.0;
    var s2 = 0.0;
    for (var i = lid; i < p.d; i += WG) {
#if HAS_RES2
      let h = hidden[base + i] + hidden2[base + i];
#else
      let h = hidden[base + i];
#endif
#if HAS_RES
      let x = h + resIn[base + i];
#else
      let x = h;
#endif
      resOut[base + i] = x;
      s1 += x;
      s2 += x * x;
    }
#if LAYER_NORM
    let mean = sum(lid, s1) / f32(p.d);
    var v = 0.0;
    for (var i = lid; i < p.d; i += WG) {
      let c = resOut[base + i] - mean;
      v += c * c;
    }
    let rs = 1.0 / sqrt(sum(lid, v) / f32(p.d) + p.eps);
    for (var i = lid; i < p.d; i += WG) {
      let c = (resOut[base + i] - mean) * rs;
      normed[base + i] = c * w[i] + b[i];
#if NORM2
      normed2[base + i] = c * w2[i] + b2[i];
#endif
    }
#else
    let rs = 1.0 / sqrt(sum(lid, s2) / f32(p.d) + p.eps);
    for (var i = lid; i < p.d; i += WG) {
      normed[base + i] = resOut[base + i] * rs * w[i];
    }
#endif
  }
}
