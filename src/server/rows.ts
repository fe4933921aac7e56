/**
 * Rows of batch states: the one state operation continuous batching needs. A batch is rebuilt
 * as a new state whose rows are copies of rows of other states (the survivors of the previous
 * batch, the prompts just prefilled); a finished sequence's row is copied out the same way.
 *
 * @module
 */

import type { MambaLM } from "../model.ts";
import { bindState, InferenceState, markComputed, zeroStateTensors } from "../state.ts";

/** Row `row` of `state`. */
export interface RowRef {
  /** The state holding the row. */
  readonly state: InferenceState;
  /** Which sequence of it. */
  readonly row: number;
}

/**
 * A new state of `parts.length` sequences, sequence `i` a copy of `parts[i]`. Runs of
 * consecutive rows of one state are copied at once. On backends with
 * {@link Backend.copyStateRows} the copies stay on the device; otherwise they go through the
 * host copies.
 */
export async function gatherRows(lm: MambaLM, parts: readonly RowRef[]): Promise<InferenceState> {
  const out = lm.createState(parts.length);
  const runs: { state: InferenceState; row: number; at: number; count: number }[] = [];
  parts.forEach((p, i) => {
    if (!Number.isInteger(p.row) || p.row < 0 || p.row >= p.state.batch) {
      throw new RangeError(`row ${p.row} of a state of ${p.state.batch} sequences`);
    }
    const last = runs.at(-1);
    if (last && last.state === p.state && last.row + last.count === p.row) last.count++;
    else runs.push({ state: p.state, row: p.row, at: i, count: 1 });
  });
  const be = lm.backend;
  if (be.copyStateRows) {
    const dst = await bindState(out, be);
    for (const r of runs) be.copyStateRows(await bindState(r.state, be), r.row, dst, r.at, r.count);
    markComputed(out);
    return out;
  }
  const host = zeroStateTensors(out.layout);
  for (const r of runs) {
    await r.state.sync();
    for (let l = 0; l < out.layout.nLayer; l++) {
      copyRows(r.state.conv[l], host.conv[l], r.state.batch, out.batch, r.row, r.at, r.count);
      copyRows(r.state.ssm[l], host.ssm[l], r.state.batch, out.batch, r.row, r.at, r.count);
    }
  }
  return new InferenceState(out.layout, host);
}

/**
 * A function that copies one row into a row of another state in place, on backends with
 * {@link Backend.copyStateRows}; undefined elsewhere.
 */
export function putRow(
  lm: MambaLM,
): ((from: RowRef, to: RowRef) => Promise<void>) | undefined {
  const be = lm.backend;
  if (!be.copyStateRows) return undefined;
  return async (from, to) => {
    for (const r of [from, to]) {
      if (!Number.isInteger(r.row) || r.row < 0 || r.row >= r.state.batch) {
        throw new RangeError(`row ${r.row} of a state of ${r.state.batch} sequences`);
      }
    }
    const src = await bindState(from.state, be);
    const dst = await bindState(to.state, be);
    be.copyStateRows!(src, from.row, dst, to.row, 1);
    markComputed(to.state);
  };
}

function copyRows(
  from: Float32Array,
  to: Float32Array,
  fromBatch: number,
  toBatch: number,
  fromRow: number,
  toRow: number,
  count: number,
): void {
  const row = from.length / fromBatch;
  if (to.length / toBatch !== row) throw new RangeError("states of different models");
  to.set(from.subarray(fromRow * row, (fromRow + count) * row), toRow * row);
}
