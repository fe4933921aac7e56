/**
 * The Mamba-1 mixer of the reference backend, following mamba_ssm's `Mamba.forward` / `Mamba.step`.
 *
 * @module
 */

import type { MambaConfig } from "../../config.ts";
import { causalConv1d } from "./conv1d.ts";
import { columns, linear, silu, softplus } from "./ops.ts";
import { selectiveScan } from "./selective_scan.ts";
import type { RefLayer } from "./weights.ts";

/**
 * One sequence of `L` tokens: `x` `[L, dModel]` → `[L, dModel]`, updating `conv` `[dInner, dConv]`
 * and `ssm` `[dInner, dState]`.
 */
export function mamba1Mixer(
  cfg: MambaConfig,
  w: RefLayer,
  x: Float32Array,
  L: number,
  conv: Float32Array,
  ssm: Float32Array,
): Float32Array {
  const { dModel, dInner, dState, dConv, dtRank } = cfg;
  // in_proj → x (the SSM input) and z (the gate).
  const xz = linear(x, w.inProj, L, dModel, 2 * dInner, w.inProjBias);
  const xs = columns(xz, L, 2 * dInner, 0, dInner);
  const z = columns(xz, L, 2 * dInner, dInner, dInner);
  // Causal depthwise conv + SiLU.
  const u = causalConv1d(xs, L, dInner, w.convWeight, dConv, w.convBias, conv).map(silu);
  // Input-dependent Δ, B, C.
  const xDbl = linear(u, w.xProj!, L, dInner, dtRank + 2 * dState);
  const dtLow = columns(xDbl, L, dtRank + 2 * dState, 0, dtRank);
  const B = columns(xDbl, L, dtRank + 2 * dState, dtRank, dState);
  const C = columns(xDbl, L, dtRank + 2 * dState, dtRank + dState, dState);
  const delta = linear(dtLow, w.dtProjWeight!, L, dtRank, dInner, w.dtBias).map(softplus);
  const y = selectiveScan({
    L,
    D: dInner,
    N: dState,
    G: 1,
    u,
    delta,
    A: w.A,
    B,
    C,
    Dskip: w.D,
    z,
    h: ssm,
  });
  return linear(y, w.outProj, L, dInner, dModel, w.outProjBias);
}
