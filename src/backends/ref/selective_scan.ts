/**
 * The Mamba-1 selective scan (mamba_ssm's `selective_scan_ref`), continuing from a state.
 *
 * @module
 */

import { silu } from "./ops.ts";

/** Inputs of {@link selectiveScan} for one sequence; all arrays token-major. */
export interface SelectiveScanArgs {
  /** Sequence length. */
  L: number;
  /** Channels. */
  D: number;
  /** State size per channel. */
  N: number;
  /** Number of B/C groups (channel c uses group `floor(c / (D / G))`). */
  G: number;
  /** Input `[L, D]`. */
  u: Float32Array;
  /** Step size `[L, D]`, after bias and softplus. */
  delta: Float32Array;
  /** `[D, N]` (negative: A = −exp(A_log)). */
  A: Float32Array;
  /** `[L, G, N]`. */
  B: Float32Array;
  /** `[L, G, N]`. */
  C: Float32Array;
  /** Skip `[D]`, optional. */
  Dskip?: Float32Array;
  /** Gate `[L, D]`, optional: `y · silu(z)`. */
  z?: Float32Array;
  /** State `[D, N]`, read and updated. */
  h: Float32Array;
}

/**
 * Per token t and channel c: `h = exp(δ·A) ⊙ h + δ·B_t·u`, `y = ⟨h, C_t⟩ + D·u`, `y ·= silu(z)`.
 * Returns y `[L, D]`; leaves the final state in `h`.
 */
export function selectiveScan(a: SelectiveScanArgs): Float32Array {
  const { L, D, N, G, u, delta, A, B, C, h } = a;
  const y = new Float32Array(L * D);
  const channelsPerGroup = D / G;
  for (let t = 0; t < L; t++) {
    for (let c = 0; c < D; c++) {
      const g = Math.floor(c / channelsPerGroup);
      const d = delta[t * D + c];
      const ut = u[t * D + c];
      let acc = 0;
      for (let n = 0; n < N; n++) {
        const i = c * N + n;
        const bc = (t * G + g) * N + n;
        h[i] = Math.exp(d * A[i]) * h[i] + d * B[bc] * ut;
        acc += h[i] * C[bc];
      }
      if (a.Dskip) acc += a.Dskip[c] * ut;
      if (a.z) acc *= silu(a.z[t * D + c]);
      y[t * D + c] = acc;
    }
  }
  return y;
}
