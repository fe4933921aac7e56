/**
 * Sweeps the split of the decode matrix-vector kernel (`MatvecShape`: lanes per team, rows per
 * team, loads in flight) over a model's matrices, as decode runs them: a chain of dependent
 * dispatches in one pass, rotating over every layer's matrix so that the weights come from
 * memory and not from the L2 cache. Prints GPU µs per product and GB/s, best first.
 *
 * With `--kernel skinny`, the skinny tiled kernel (`wgsl/skinny.wgsl`, decode batches) instead:
 * its tiles (`SkinnyShape`: rows of W and of x per thread, threads along each, K slices, chunk
 * length) over the same products, against the default tile and the matrix-vector kernel's
 * default split (the best three again without prefetching the next chunk, `pf=0`);
 * `--tile tn=4,tm=4,nt=4` (repeatable) times given tiles only, and `--seconds S`
 * stops each product's sweep after S seconds (the tiles are tried in a shuffled order).
 * `--wide` widens the grid: 1 to 8 rows of W a thread, 1 to 16 K slices, chunks up to 64.
 *
 * ```sh
 * deno run -A bench/webgpu_matvec_sweep.ts --model mamba-2.8b --dtype f16 [--json f]
 * deno run -A bench/webgpu_matvec_sweep.ts --kernel skinny --batch 16 --batch 64 \
 *   --only in_proj+rms+residual --only out_proj --only x_proj --only lm_head
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import type {
  MatvecOptions,
  MatvecShape,
  SkinnyShape,
  WebGpuBackend,
} from "../src/backends/webgpu/backend.ts";
import type { GpuMatrix } from "../src/backends/webgpu/weights.ts";
import type { MambaConfig } from "../src/config.ts";
import { parseFields, randomGpuBackend, SKINNY_FIELDS } from "./webgpu_util.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    only: { type: "string", multiple: true },
    model: { type: "string", multiple: true, default: ["mamba-130m"] },
    dtype: { type: "string", multiple: true, default: ["f16"] },
    batch: { type: "string", multiple: true, default: ["1"] },
    kernel: { type: "string", default: "matvec" },
    tile: { type: "string", multiple: true },
    seconds: { type: "string" },
    wide: { type: "boolean" },
    top: { type: "string", default: "6" },
    json: { type: "string" },
  },
});
const rows: Record<string, unknown>[] = [];
const F32 = 4;
const skinny = opt.kernel === "skinny";
if (!skinny && opt.kernel !== "matvec") throw new Error("--kernel: matvec or skinny");

/** The matrix-vector splits to try at `M` rows. */
function matvecShapes(M: number): MatvecShape[] {
  const shapes: MatvecShape[] = [];
  for (const team of [32, 64, 128, 256]) {
    for (const rpt of [1, 2, 4, 8]) {
      for (const unr of [2, 4]) if (M * rpt <= 32) shapes.push({ team, rpt, unr });
    }
  }
  return shapes;
}

/**
 * The skinny tiles to try at `M` rows: rows of W (2, 4, 8) and of x (4, 8) per thread, 4 to 16
 * threads along W, every row of x in one tile (or two tiles), as many K slices as fill 256
 * threads (or half), chunks of 8 to 32 columns. Tiles that cannot run are skipped.
 */
function skinnyTiles(M: number): Partial<SkinnyShape>[] {
  if (opt.tile) return opt.tile.map((t) => parseFields(t, SKINNY_FIELDS, "--tile"));
  const tiles: Partial<SkinnyShape>[] = [];
  const wide = !!opt.wide;
  for (const tn of wide ? [1, 2, 4, 8] : [2, 4, 8]) {
    for (const tm of [4, 8]) {
      if (tm > M) continue;
      for (const mt of new Set([Math.ceil(M / tm), Math.ceil(M / tm / 2)])) {
        for (const nt of [4, 8, 16]) {
          const full = Math.floor(256 / (nt * mt));
          const splits = wide ? [full, full >> 1, full >> 2, 1] : [full, full >> 1];
          for (const ks of new Set(splits.map((k) => Math.max(1, k)))) {
            for (const bk of wide ? [8, 16, 32, 64] : [8, 16, 32]) {
              if (ks >= 1) tiles.push({ tn, tm, nt, mt, ks, bk });
            }
          }
        }
      }
    }
  }
  // A fixed shuffle, so that a sweep cut short by --seconds has still seen every kind of tile.
  let r = 12345;
  for (let i = tiles.length - 1; i > 0; i--) {
    r = (Math.imul(r, 1103515245) + 12345) >>> 0;
    const j = r % (i + 1);
    [tiles[i], tiles[j]] = [tiles[j], tiles[i]];
  }
  return tiles;
}

/** A variant of a product: a matrix-vector split, or a skinny tile. */
type Variant = { shape?: MatvecShape; tile?: Partial<SkinnyShape>; skinny?: boolean };

const describe = (v: Variant) =>
  v.tile
    ? "--tile " + Object.entries(v.tile).map(([k, x]) => `${k}=${x}`).join(",")
    : v.shape
    ? `t${v.shape.team} r${v.shape.rpt} u${v.shape.unr}${
      v.shape.stage === false ? " unstaged" : ""
    }`
    : v.skinny
    ? "skinny default"
    : "matvec default";

/** GPU seconds per product: one pass of `reps` products over the layers' matrices. */
async function time(
  be: WebGpuBackend,
  mats: readonly GpuMatrix[],
  o: (i: number) => Omit<MatvecOptions, "shape">,
  variant: Variant,
  reps: number,
): Promise<number> {
  const run = () => {
    for (let i = 0; i < reps; i++) be.matvec(mats[i % mats.length], { ...o(i), ...variant });
  };
  run(); // compile
  let best = Infinity;
  for (let round = 0; round < 3; round++) {
    // Work submitted just before the timed pass: the GPU lowers its clock while it idles (as it
    // does while the next tile's pipeline compiles), and a pass timed then measures the clock.
    run();
    run();
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
    for (const M of opt.batch.map(Number)) await sweep(name, dtype, config, be, M);
    be.dispose();
  }
}

async function sweep(
  name: string,
  dtype: string,
  config: MambaConfig,
  be: WebGpuBackend,
  M: number,
): Promise<void> {
  const L = be.weights.layers;
  const D = config.dModel;
  const maxK = Math.max(D, config.dInner) * 2;
  const x = be.temp(M * maxK * F32);
  const y = be.temp(M * Math.max(4 * config.dInner, config.paddedVocabSize) * F32);
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
    // Decode's in_proj when out_proj adds the residual (WebGpuOptions.residualInOutProj).
    ["in_proj + rms + conv", inProj, (i) => ({ ...rms(i), ...conv(i) })],
    ["out_proj", L.map((l) => l.outProj), plain(L[0].outProj)],
    [
      "out_proj + residual",
      L.map((l) => l.outProj),
      () => ({ ...plain(L[0].outProj)(), y: res1, yStride: D, addRes: res0 }),
    ],
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
    // Prefix match without spaces: --only in_proj+rms+residual is "in_proj + rms + residual + conv".
    const bare = (t: string) => t.replaceAll(" ", "");
    if (opt.only && !opt.only.some((p) => bare(what).startsWith(bare(p)))) continue;
    const W = mats[0];
    const bytes = W.parts.reduce((a, p) => a + p.buf.size, 0);
    const flops = 2 * M * W.N * W.K;
    const reps = what === "lm_head" ? 20 : 2 * L.length;
    const rmsCase = what.includes("rms");
    const matvecOk = M <= 32 &&
      !(rmsCase && !(M <= 4 || M * W.K * 4 <= be.ctx.maxWorkgroupStorage - 15 * 1024));
    const results: { variant: Variant; us: number }[] = [];
    const tryTime = async (variant: Variant) => {
      try {
        results.push({ variant, us: (await time(be, mats, o, variant, reps)) * 1e6 });
      } catch (e) {
        if ((e as Error).name !== "BackendError") throw e;
      }
    };
    if (matvecOk) await tryTime({ skinny: false });
    await tryTime({ skinny: true });
    if (skinny) {
      // --seconds bounds the sweep of each product (the tiles are in a shuffled order).
      const t0 = performance.now();
      for (const tile of skinnyTiles(M)) {
        if (opt.seconds && performance.now() - t0 > Number(opt.seconds) * 1000) break;
        await tryTime({ tile, skinny: true });
      }
      // The best few again without the prefetch of the next chunk.
      const best = results.filter((r) => r.variant.tile).sort((a, b) => a.us - b.us).slice(0, 3);
      for (const r of best) await tryTime({ tile: { ...r.variant.tile, pf: 0 }, skinny: true });
    } else if (matvecOk) {
      for (const shape of matvecShapes(M)) {
        const vec = W.f16 ? 8 : 4;
        if (W.K < shape.team * vec) continue;
        await tryTime({ shape, skinny: false });
        if (rmsCase) await tryTime({ shape: { ...shape, stage: false }, skinny: false });
      }
    }
    results.sort((a, b) => a.us - b.us);
    const fmt = (r: { variant: Variant; us: number }) =>
      `${r.us.toFixed(1)} µs ${(bytes / r.us / 1e3).toFixed(0)} GB/s ` +
      `${(flops / r.us / 1e6).toFixed(1)} TFLOP/s ${describe(r.variant)}`;
    const def = be.matvecShape(W, M);
    const tile = be.skinnyShape(W, M);
    const tried = results.length;
    const base = (skinnyDefault: boolean) =>
      results.find((r) =>
        !r.variant.shape && !r.variant.tile && r.variant.skinny === skinnyDefault
      );
    const mv = base(false);
    const sk = base(true);
    console.log(
      `${name} ${dtype} b${M} ${what} [${W.N}×${W.K}] ${(bytes / 1e6).toFixed(1)} MB: ` +
        (mv ? `matvec default (t${def.team} r${def.rpt} u${def.unr}) ${fmt(mv)}; ` : "") +
        (sk ? `skinny default (${describe({ tile })}) ${fmt(sk)}` : "") +
        ` [${tried} variants]`,
    );
    for (const r of results.slice(0, Number(opt.top))) console.log(`    ${fmt(r)}`);
    for (const r of results) {
      rows.push({
        model: name,
        dtype,
        batch: M,
        what,
        N: W.N,
        K: W.K,
        bytes,
        kernel: r.variant.skinny ? "skinny" : "matvec",
        shape: r.variant.shape,
        tile: r.variant.tile ?? (r.variant.skinny ? tile : undefined),
        us: r.us,
      });
    }
  }
  be.freeState(state);
  for (const b of [x, y, res0, res1, convOut]) be.release(b);
}
if (opt.json) {
  await Deno.writeTextFile(opt.json, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}
