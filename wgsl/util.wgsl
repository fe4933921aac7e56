// Shared scalar helpers, pulled in with `#include util`.

// log(1 + y) for y in [0, 1], accurate without relying on log() near 1:
// 2·atanh(s) with s = y / (2 + y) ≤ 1/3, as an odd series.
fn log1p_small(y: f32) -> f32 {
  let s = y / (2.0 + y);
  let s2 = s * s;
  var t = 1.0 / 15.0;
  t = t * s2 + 1.0 / 13.0;
  t = t * s2 + 1.0 / 11.0;
  t = t * s2 + 1.0 / 9.0;
  t = t * s2 + 1.0 / 7.0;
  t = t * s2 + 1.0 / 5.0;
  t = t * s2 + 1.0 / 3.0;
  t = t * s2 + 1.0;
  return 2.0 * s * t;
}

// PyTorch's softplus (threshold 20): log(1 + exp(x)), x itself above 20.
fn softplus(x: f32) -> f32 {
  if (x > 20.0) {
    return x;
  }
  return max(x, 0.0) + log1p_small(exp(-abs(x)));
}

fn silu(x: f32) -> f32 {
  return x / (1.0 + exp(-x));
}

// Exact GELU, x/2 · (1 + erf(x/√2)) (PyTorch's default, not the tanh form). erf comes from its
// complement in Chebyshev form (Numerical Recipes' erfcc, relative error < 1.2e-7), as in the
// ref and wasm backends.
fn gelu_erf(v: f32) -> f32 {
  let x = v * 0.70710678118654752;
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
    t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
    t * (-0.82215223 + t * 0.17087277))))))));
  let erfc = t * exp(-z * z + poly);
  return 0.5 * v * (1.0 + select(erfc - 1.0, 1.0 - erfc, x >= 0.0));
}
