/**
 * Causal depthwise 1-D convolution over a sequence, continuing from a conv state.
 *
 * @module
 */

/**
 * For one sequence: `x` `[L, C]` (token-major), taps `w` `[C, K]`, `state` `[C, K]` = the last K
 * inputs before this sequence, oldest first. Returns `[L, C]`:
 * `out[t, c] = b[c] + Σ_k w[c, k] · in[t − (K−1) + k, c]`, where inputs before t = 0 come from the
 * state. Then `state` is overwritten with the last K inputs (state ++ x). With a zero state this
 * is PyTorch's `conv1d(padding=K−1)[..., :L]`.
 */
export function causalConv1d(
  x: Float32Array,
  L: number,
  C: number,
  w: Float32Array,
  K: number,
  bias: Float32Array | undefined,
  state: Float32Array,
): Float32Array {
  const out = new Float32Array(L * C);
  // The input at time t (t may be negative, down to −K) for channel c.
  const input = (t: number, c: number) => (t >= 0 ? x[t * C + c] : state[c * K + K + t]);
  for (let t = 0; t < L; t++) {
    for (let c = 0; c < C; c++) {
      let acc = bias ? bias[c] : 0;
      for (let k = 0; k < K; k++) acc += w[c * K + k] * input(t - (K - 1) + k, c);
      out[t * C + c] = acc;
    }
  }
  const next = new Float32Array(C * K);
  for (let c = 0; c < C; c++) {
    for (let k = 0; k < K; k++) next[c * K + k] = input(L - K + k, c);
  }
  state.set(next);
  return out;
}
