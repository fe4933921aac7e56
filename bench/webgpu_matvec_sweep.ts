/**
 * Sweeps the split of the decode matrix-vector kernel (`MatvecShape`: lanes per team, rows per
 * team, loads in flight) over a model's matrices, as decode runs them: a chain of dependent
 * dispatches in one pass, rotating over every layer's matrix so that the weights come from
 * memory and not from the L2 cache. Prints GPU µs per product and GB/s, best first.
 *
 * ```sh
 * deno run -A bench/webgpu_matvec_sweep.ts --model mamba-2.8b --dtype f16 [--json f]
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { MatvecOptions, MatvecShape, WebGpuBackend } from "../src/backends/webgpu/backend.ts";
import type { GpuMatrix } from "../src/backends/webgpu/weights.ts";
import { randomGpuBackend } from "./webgpu_util.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    only: { type: "string" },
    model: { type: "string", multiple: true, default: ["mamba-130m"] },
    dtype: { type: "string", multiple: true, default: ["f16"] },
    batch: { type: "string", default: "1" },
    top: { type: "string", default: "6" },
    json: { type: "string" },
  },
});
const M = Number(opt.batch);
const rows: Record<string, unknown>[] = [];
const F32 = 4;

const shapes: MatvecShape[] = [];
for (const team of [32, 64, 128, 256]) {
  for (const rpt of [1, 2, 4, 8]) {
    for (const unr of [2, 4]) if (M * rpt <= 32) shapes.push({ team, rpt, unr });
  }
}

/** GPU seconds per product: one pass of `reps` products over the layers' matrices. */
async function time(
  be: WebGpuBackend,
  mats: readonly GpuMatrix[],
  o: (i: number) => Omit<MatvecOptions, "shape">,
  shape: MatvecShape | undefined,
  reps: number,
): Promise<number> {
  const run = () => {
    for (let i = 0; i < reps; i++) be.matvec(mats[i % mats.length], { ...o(i), shape });
  };
  run(); // compile
  let best = Infinity;
  for (let round = 0; round < 3; round++) {
    be.rec.startTiming(1);
    run();
    const [t] = await be.rec.stopTiming();
    best = Math.min(best, t / reps);
  }
  return best;
}

for (const name of opt.model) {
  for (const dtype of opt.dtype as ("f32" | "f16")[]) {
    const { config, be } = await randomGpuBackend(name, dtype);
    const L = be.weights.layers;
    const D = config.dModel;
    const maxK = Math.max(D, config.dInner) * 2;
    const x = be.temp(M * maxK * F32);
    const y = be.temp(M * 4 * config.dInner * F32);
    const [res0, res1] = [be.temp(M * D * F32), be.temp(M * D * F32)];
    const convOut = be.temp(M * config.convDim * F32);
    const state = be.createState(M);
    be.rec.clear(x);
    const plain = (W: GpuMatrix) => () => ({
      x,
      xOff: 0,
      xStride: W.K,
      M,
      y,
      yOff: 0,
      yStride: W.N,
    });
    const inProj = L.map((l) => l.inProj);
    const m1 = config.arch === "mamba1";
    // The fused prologue and epilogue of decode's in_proj, for layer i % nLayer.
    const rms = (i: number) => ({
      ...plain(inProj[0])(),
      x: res0,
      xStride: D,
      rms: { weight: L[i % L.length].norm.weight, eps: 1e-5 },
    });
    const res = () => ({ resIn: res0, resOut: res1 });
    const conv = (i: number) => ({
      conv: {
        state: state.conv[i % L.length],
        weight: L[i % L.length].convWeight,
        bias: L[i % L.length].convBias,
        out: convOut,
        lo: m1 ? 0 : config.dInner,
        C: m1 ? config.dInner : config.convDim,
      },
    });
    const cases: [string, GpuMatrix[], (i: number) => Omit<MatvecOptions, "shape">][] = [
      ["in_proj", inProj, plain(inProj[0])],
      ["in_proj + rms + residual + conv", inProj, (i) => ({ ...rms(i), ...res(), ...conv(i) })],
      ["in_proj + conv", inProj, (i) => ({ ...plain(inProj[0])(), ...conv(i) })],
      ["in_proj + rms", inProj, rms],
      ["out_proj", L.map((l) => l.outProj), plain(L[0].outProj)],
      [
        "out_proj + rms",
        L.map((l) => l.outProj),
        () => ({
          ...plain(L[0].outProj)(),
          rms: { weight: x, eps: 1e-5 }, // any K floats: the timing does not depend on them
        }),
      ],
      ["lm_head", [be.weights.lmHead], plain(be.weights.lmHead)],
    ];
    if (m1) cases.push(["x_proj", L.map((l) => l.xProj!), plain(L[0].xProj!)]);
    for (const [what, mats, o] of cases) {
      if (opt.only && !what.startsWith(opt.only)) continue;
      const W = mats[0];
      const bytes = W.parts.reduce((a, p) => a + p.buf.size, 0);
      const reps = what === "lm_head" ? 20 : 2 * L.length;
      if (what.includes("rms") && !(M * W.K * 4 <= be.ctx.maxWorkgroupStorage - 15 * 1024)) {
        continue;
      }
      const results: { shape: MatvecShape | undefined; us: number }[] = [];
      const base = await time(be, mats, o, undefined, reps);
      results.push({ shape: undefined, us: base * 1e6 });
      const rms = what.includes("rms");
      for (const shape of shapes) {
        const vec = W.f16 ? 8 : 4;
        if (W.K < shape.team * vec) continue;
        results.push({ shape, us: (await time(be, mats, o, shape, reps)) * 1e6 });
        if (rms) {
          const s2 = { ...shape, stage: false };
          results.push({ shape: s2, us: (await time(be, mats, o, s2, reps)) * 1e6 });
        }
      }
      results.sort((a, b) => a.us - b.us);
      const fmt = (r: { shape: MatvecShape | undefined; us: number }) =>
        `${r.us.toFixed(1)} µs ${(bytes / r.us / 1e3).toFixed(0)} GB/s ` +
        (r.shape
          ? `t${r.shape.team} r${r.shape.rpt} u${r.shape.unr}${
            r.shape.stage === false ? " unstaged" : ""
          }`
          : "default");
      const def = be.matvecShape(W, M);
      console.log(
        `${name} ${dtype} b${M} ${what} [${W.N}×${W.K}] ${(bytes / 1e6).toFixed(1)} MB: default ` +
          `(t${def.team} r${def.rpt} u${def.unr}) ${fmt(results.find((r) => !r.shape)!)}`,
      );
      for (const r of results.slice(0, Number(opt.top))) console.log(`    ${fmt(r)}`);
      for (const r of results) {
        rows.push({ model: name, dtype, batch: M, what, N: W.N, K: W.K, bytes, ...r });
      }
    }
    be.freeState(state);
    be.dispose();
  }
}
if (opt.json) {
  await Deno.writeTextFile(opt.json, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}
