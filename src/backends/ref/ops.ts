/**
 * Elementwise and dense operations of the reference backend, written for reading, not speed.
 * Matrices are row-major; a weight `W` of a PyTorch `Linear` is `[outFeatures, inFeatures]`.
 *
 * @module
 */

/** `Y[m, n] = Σ_k X[m, k] · W[n, k] (+ bias[n])`: X `[M, K]`, W `[N, K]` → Y `[M, N]`. */
export function linear(
  x: Float32Array,
  w: Float32Array,
  M: number,
  K: number,
  N: number,
  bias?: Float32Array,
): Float32Array {
  const y = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let acc = 0;
      for (let k = 0; k < K; k++) acc += x[m * K + k] * w[n * K + k];
      y[m * N + n] = acc + (bias ? bias[n] : 0);
    }
  }
  return y;
}

/** `x · sigmoid(x)`. */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/** PyTorch's `softplus` (threshold 20: linear above it). */
export function softplus(x: number): number {
  return x > 20 ? x : Math.log1p(Math.exp(x));
}

/** RMSNorm of `n` values at `x[off…]`: `x / sqrt(mean(x²) + eps) · w`, written to `out[off…]`. */
export function rmsNorm(
  x: Float32Array,
  w: Float32Array,
  out: Float32Array,
  off: number,
  n: number,
  eps: number,
  wOff = 0,
): void {
  let ss = 0;
  for (let i = 0; i < n; i++) ss += x[off + i] * x[off + i];
  const r = 1 / Math.sqrt(ss / n + eps);
  for (let i = 0; i < n; i++) out[off + i] = x[off + i] * r * w[wOff + i];
}

/** LayerNorm of `n` values at `x[off…]`: `(x − mean) / sqrt(var + eps) · w + b`. */
export function layerNorm(
  x: Float32Array,
  w: Float32Array,
  b: Float32Array,
  out: Float32Array,
  off: number,
  n: number,
  eps: number,
): void {
  let mean = 0;
  for (let i = 0; i < n; i++) mean += x[off + i];
  mean /= n;
  let v = 0;
  for (let i = 0; i < n; i++) v += (x[off + i] - mean) ** 2;
  const r = 1 / Math.sqrt(v / n + eps);
  for (let i = 0; i < n; i++) out[off + i] = (x[off + i] - mean) * r * w[i] + b[i];
}

/** Copies columns `[c0, c0 + width)` of a `[rows, cols]` matrix into a new `[rows, width]` one. */
export function columns(
  x: Float32Array,
  rows: number,
  cols: number,
  c0: number,
  width: number,
): Float32Array {
  const out = new Float32Array(rows * width);
  for (let r = 0; r < rows; r++) {
    out.set(x.subarray(r * cols + c0, r * cols + c0 + width), r * width);
  }
  return out;
}

/**
 * The error function, from its complement in Chebyshev form (Numerical Recipes' `erfcc`):
 * relative error below 1.2e-7 everywhere, so float32-exact for GELU.
 */
export function erf(x: number): number {
  const z = Math.abs(x);
  const t = 1 / (1 + 0.5 * z);
  const poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
                t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
                                t * (-0.82215223 + t * 0.17087277))))))));
  const erfc = t * Math.exp(-z * z + poly);
  return x >= 0 ? 1 - erfc : erfc - 1;
}

/** Exact GELU: `x · Φ(x) = x/2 · (1 + erf(x/√2))` (PyTorch's `gelu`, not the tanh form). */
export function gelu(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}
