/**
 * The Mamba-2 mixer of the reference backend, following mamba_ssm's `Mamba2.forward` /
 * `Mamba2.step`.
 *
 * @module
 */

import type { MambaConfig } from "../../config.ts";
import { causalConv1d } from "./conv1d.ts";
import { columns, linear, rmsNorm, silu, softplus } from "./ops.ts";
import { ssdChunked, ssdRecurrent } from "./ssd.ts";
import type { RefLayer } from "./weights.ts";

/**
 * One sequence of `L` tokens: `x` `[L, dModel]` → `[L, dModel]`, updating `conv`
 * `[convDim, dConv]` and `ssm` `[nheads, headdim, dState]`. Sequences longer than one token use
 * the chunked SSD; single steps the recurrence (the two agree).
 */
export function mamba2Mixer(
  cfg: MambaConfig,
  w: RefLayer,
  x: Float32Array,
  L: number,
  conv: Float32Array,
  ssm: Float32Array,
): Float32Array {
  const { dModel, dInner, dState, dConv, nheads, headdim, ngroups, convDim } = cfg;
  const inDim = dInner + convDim + nheads;
  // in_proj → [z, xBC, dt].
  const zxbcdt = linear(x, w.inProj, L, dModel, inDim, w.inProjBias);
  const z = columns(zxbcdt, L, inDim, 0, dInner);
  const xBCraw = columns(zxbcdt, L, inDim, dInner, convDim);
  const dtRaw = columns(zxbcdt, L, inDim, dInner + convDim, nheads);
  // Causal depthwise conv + SiLU over x, B and C together, then split them.
  const xBC = causalConv1d(xBCraw, L, convDim, w.convWeight, dConv, w.convBias, conv).map(silu);
  const xs = columns(xBC, L, convDim, 0, dInner);
  const B = columns(xBC, L, convDim, dInner, ngroups * dState);
  const C = columns(xBC, L, convDim, dInner + ngroups * dState, ngroups * dState);
  // dt = softplus(dt + dt_bias), clamped to dt_limit; per-head log-decay a = dt · A.
  const [dtMin, dtMax] = cfg.dtLimit;
  const dt = dtRaw.map((v, i) =>
    Math.min(Math.max(softplus(v + w.dtBias[i % nheads]), dtMin), dtMax)
  );
  const a = dt.map((v, i) => v * w.A[i % nheads]);
  const X = xs.map((v, i) => v * dt[Math.floor(i / headdim)]);
  const args = { L, H: nheads, P: headdim, N: dState, G: ngroups, X, A: a, B, C, h: ssm };
  const y = L > 1 ? ssdChunked(args, cfg.chunkSize) : ssdRecurrent(args);
  // D skip, per head or per channel.
  for (let i = 0; i < L * dInner; i++) {
    const c = i % dInner;
    y[i] += xs[i] * (cfg.dHasHdim ? w.D[c] : w.D[Math.floor(c / headdim)]);
  }
  // Gate: RMSNorm(y · silu(z)) (or RMSNorm(y) · silu(z)) per group, or plain y · silu(z).
  const groupSize = dInner / ngroups;
  for (let t = 0; t < L; t++) {
    if (!cfg.gatedNorm) {
      for (let c = 0; c < dInner; c++) y[t * dInner + c] *= silu(z[t * dInner + c]);
      continue;
    }
    if (!cfg.normBeforeGate) {
      for (let c = 0; c < dInner; c++) y[t * dInner + c] *= silu(z[t * dInner + c]);
    }
    for (let g = 0; g < ngroups; g++) {
      rmsNorm(y, w.gatedNorm!, y, t * dInner + g * groupSize, groupSize, 1e-5, g * groupSize);
    }
    if (cfg.normBeforeGate) {
      for (let c = 0; c < dInner; c++) y[t * dInner + c] *= silu(z[t * dInner + c]);
    }
  }
  return linear(y, w.outProj, L, dInner, dModel, w.outProjBias);
}
