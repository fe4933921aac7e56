/**
 * Mamba-2's SSD (state space duality): the scalar-decay SSM `h_t = exp(a_t)·h_{t−1} + x_t ⊗ B_t`,
 * `y_t = h_t · C_t`, per head. Two forms that must agree: the plain recurrence, and the chunked
 * form (mamba_ssm's `ssd_minimal_discrete`) that turns most of the work into matrix products.
 *
 * @module
 */

/** Inputs of the SSD for one sequence. */
export interface SsdArgs {
  /** Sequence length. */
  L: number;
  /** Heads. */
  H: number;
  /** Head dimension. */
  P: number;
  /** State size. */
  N: number;
  /** B/C groups; head h uses group `floor(h / (H / G))`. */
  G: number;
  /** `[L, H, P]`, already multiplied by dt. */
  X: Float32Array;
  /** `[L, H]` log-decays (dt · A, ≤ 0). */
  A: Float32Array;
  /** `[L, G, N]`. */
  B: Float32Array;
  /** `[L, G, N]`. */
  C: Float32Array;
  /** State `[H, P, N]`, read and updated. */
  h: Float32Array;
}

/** The recurrence, one token at a time. Returns Y `[L, H, P]`. */
export function ssdRecurrent(a: SsdArgs): Float32Array {
  const { L, H, P, N, G, X, A, B, C, h } = a;
  const Y = new Float32Array(L * H * P);
  for (let t = 0; t < L; t++) {
    for (let hd = 0; hd < H; hd++) {
      const g = Math.floor(hd / (H / G));
      const decay = Math.exp(A[t * H + hd]);
      for (let p = 0; p < P; p++) {
        const x = X[(t * H + hd) * P + p];
        let acc = 0;
        for (let n = 0; n < N; n++) {
          const i = (hd * P + p) * N + n;
          h[i] = decay * h[i] + x * B[(t * G + g) * N + n];
          acc += h[i] * C[(t * G + g) * N + n];
        }
        Y[(t * H + hd) * P + p] = acc;
      }
    }
  }
  return Y;
}

/**
 * The chunked form: the sequence is cut into chunks of `Q` tokens. Inside a chunk, with
 * `cum[t] = Σ_{s≤t} a_s` (within the chunk):
 *
 * - the state entering the chunk contributes `y_t += exp(cum[t]) · (h · C_t)`;
 * - tokens of the chunk contribute `y_t += Σ_{s≤t} (C_t · B_s) · exp(cum[t] − cum[s]) · x_s`
 *   (a masked, decayed "attention" matrix: this is the part that becomes matmuls on a GPU);
 * - the state leaving it is `exp(cum[Q−1]) · h + Σ_s exp(cum[Q−1] − cum[s]) · x_s ⊗ B_s`.
 *
 * Equal to {@link ssdRecurrent} up to rounding. Returns Y `[L, H, P]`.
 */
export function ssdChunked(a: SsdArgs, Q: number): Float32Array {
  const { L, H, P, N, G, X, A, B, C, h } = a;
  const Y = new Float32Array(L * H * P);
  const cum = new Float64Array(Q);
  const cb = new Float64Array(Q * Q);
  for (let hd = 0; hd < H; hd++) {
    const g = Math.floor(hd / (H / G));
    const bOf = (t: number, n: number) => B[(t * G + g) * N + n];
    const cOf = (t: number, n: number) => C[(t * G + g) * N + n];
    const xOf = (t: number, p: number) => X[(t * H + hd) * P + p];
    for (let t0 = 0; t0 < L; t0 += Q) {
      const q = Math.min(Q, L - t0);
      let s = 0;
      for (let i = 0; i < q; i++) cum[i] = s += A[(t0 + i) * H + hd];
      // Decayed C·B matrix of the chunk (lower triangle).
      for (let i = 0; i < q; i++) {
        for (let j = 0; j <= i; j++) {
          let dot = 0;
          for (let n = 0; n < N; n++) dot += cOf(t0 + i, n) * bOf(t0 + j, n);
          cb[i * Q + j] = dot * Math.exp(cum[i] - cum[j]);
        }
      }
      for (let p = 0; p < P; p++) {
        const hp = (hd * P + p) * N;
        for (let i = 0; i < q; i++) {
          let fromState = 0;
          for (let n = 0; n < N; n++) fromState += h[hp + n] * cOf(t0 + i, n);
          let inChunk = 0;
          for (let j = 0; j <= i; j++) inChunk += cb[i * Q + j] * xOf(t0 + j, p);
          Y[((t0 + i) * H + hd) * P + p] = Math.exp(cum[i]) * fromState + inChunk;
        }
        const last = cum[q - 1];
        for (let n = 0; n < N; n++) {
          let acc = Math.exp(last) * h[hp + n];
          for (let j = 0; j < q; j++) {
            acc += Math.exp(last - cum[j]) * xOf(t0 + j, p) * bOf(t0 + j, n);
          }
          h[hp + n] = acc;
        }
      }
    }
  }
  return Y;
}
