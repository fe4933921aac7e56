/**
 * Sweeps the prefill matrix products (src/backends/webgpu/matmul.ts) over the product shapes of
 * public models at long prompt lengths: the earlier 128×128 kernel (`matmul128`), the tiled
 * kernel (`wgsl/matmul_tiled.wgsl`) with its default tile and a set of others, and, for f16
 * weights on devices with `shader-f16`, the tiled kernel's packed f16 arithmetic (`hk` > 0).
 * Each product is timed on the GPU (timestamp queries around a pass of `reps` dispatches, best
 * of 3 after a compile-and-warm-up round) and reported in TFLOP/s and as a fraction of the
 * fp32 FMA peak (`--peak`, default 67 TFLOP/s: an H200's 132 SMs × 128 lanes × 2 × 1.98 GHz),
 * and of twice that (packed f16, HFMA2) for the f16-arithmetic variants. First it prints the
 * adapter's features and the limits that bound the kernels (subgroups or a cooperative-matrix
 * feature would be named there).
 *
 * The weights are random, uploaded as the backend stores them (f32, or f16 pairs; dt_proj is
 * f32 in both, as the backend keeps it); x and y are sized for the largest product.
 *
 * ```sh
 * deno run -A bench/webgpu_matmul_sweep.ts                      # H200: 3 models × 2k, 16k × f32, f16
 * deno run -A bench/webgpu_matmul_sweep.ts --json sweep.jsonl   # and one JSON line per timing
 * deno run -A bench/webgpu_matmul_sweep.ts --quick              # lavapipe: 130m shapes, 256 rows
 * deno run -A bench/webgpu_matmul_sweep.ts --model mamba2-2.7b --rows 16384 --dtype f16 \
 *   --only in_proj --tile bm=128,bn=128,tm=8,tn=8,bk=32,hk=16
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { WebGpuBackend } from "../src/backends/webgpu/backend.ts";
import {
  type MatmulKernel,
  type MatmulTile,
  matmulTileProblem,
  matmulTileThreads,
  parseMatmulTile,
} from "../src/backends/webgpu/matmul.ts";
import { type GpuMatrix, uploadF32, uploadMatrix } from "../src/backends/webgpu/weights.ts";
import { requestAdapter } from "../src/backends/quiet_adapter.ts";
import { type MambaConfig, parseConfig } from "../src/config.ts";
import { f32ArrayToF16 } from "../src/half.ts";
import type { HostTensor } from "../src/weights.ts";
import { PUBLIC_CONFIGS, randomWeights } from "../testing.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", multiple: true },
    dtype: { type: "string", multiple: true },
    rows: { type: "string", multiple: true },
    only: { type: "string", multiple: true },
    tile: { type: "string", multiple: true },
    peak: { type: "string", default: "67" },
    quick: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const quick = opt.quick;
const models = opt.model ??
  (quick ? ["mamba2-130m"] : ["mamba2-130m", "mamba2-2.7b", "mamba-2.8b"]);
const dtypes = (opt.dtype ?? ["f32", "f16"]) as ("f32" | "f16")[];
const rowCounts = (opt.rows ?? (quick ? ["256"] : ["2048", "16384"])).map(Number);
const peak = Number(opt.peak);
const F32 = 4;

/** A variant: a kernel, and for `tiled` a tile (fields not given come from the default). */
interface Variant {
  kernel: MatmulKernel;
  tile?: Partial<MatmulTile>;
}

/** The tiles tried on every product (f32 arithmetic), and with f16 weights the f16 ones. */
function variants(f16: boolean, shaderF16: boolean): Variant[] {
  if (opt.tile) {
    return opt.tile.map((t) => ({ kernel: "tiled", tile: parseMatmulTile(t, "--tile") }));
  }
  const v: Variant[] = [{ kernel: "matmul128" }, { kernel: "tiled", tile: {} }];
  const tiles: Partial<MatmulTile>[] = quick ? [{ bm: 128, bn: 128, tm: 8, tn: 8, bk: 8 }] : [
    { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16 },
    { bm: 128, bn: 128, tm: 8, tn: 8, bk: 8 },
    { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16, ur: 0 },
    { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16, tr: 0 },
    { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16, tr: 0, ur: 0 },
    { bm: 128, bn: 128, tm: 8, tn: 16, bk: 16 },
    { bm: 128, bn: 128, tm: 16, tn: 8, bk: 16 },
    { bm: 128, bn: 64, tm: 8, tn: 4, bk: 16 },
    { bm: 64, bn: 128, tm: 4, tn: 8, bk: 16 },
    { bm: 128, bn: 64, tm: 8, tn: 8, bk: 16 },
    { bm: 64, bn: 64, tm: 4, tn: 4, bk: 16 },
    { bm: 64, bn: 64, tm: 8, tn: 8, bk: 16 },
    { bm: 64, bn: 64, tm: 4, tn: 4, bk: 32 },
    { bm: 32, bn: 64, tm: 4, tn: 4, bk: 16 },
  ];
  for (const tile of tiles) v.push({ kernel: "tiled", tile: { ...tile, hk: 0 } });
  if (f16 && shaderF16) {
    const half: Partial<MatmulTile>[] = quick ? [{ hk: 16 }] : [
      { hk: 16 },
      { hk: 8 },
      { hk: 32 },
      { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16, hk: 16 },
      { bm: 128, bn: 128, tm: 8, tn: 8, bk: 32, hk: 16, tr: 0 },
      { bm: 128, bn: 128, tm: 8, tn: 8, bk: 32, hk: 32 },
      { bm: 128, bn: 128, tm: 8, tn: 16, bk: 32, hk: 16 },
      { bm: 128, bn: 64, tm: 8, tn: 4, bk: 32, hk: 16 },
      { bm: 64, bn: 64, tm: 4, tn: 4, bk: 32, hk: 16 },
    ];
    for (const tile of half) v.push({ kernel: "tiled", tile });
  }
  return v;
}

const describe = (t: MatmulTile) => {
  const extra = (t.hk ? ` hk${t.hk}` : "") + (t.ur === 0 ? " ur0" : "") +
    (t.tr === 0 ? " tr0" : "");
  return `${t.bm}x${t.bn} ${t.tm}x${t.tn} bk${t.bk}${extra} (${matmulTileThreads(t)} threads)`;
};

/** One product of a model: name, weight shape, and what the backend runs it with. */
interface Product {
  what: string;
  N: number;
  K: number;
  bias: boolean;
  softplus: boolean;
  /** Always f32 (dt_proj). */
  f32: boolean;
  /** Distance between x rows (x_proj's output for dt_proj). */
  xStride: number;
}

/** The products of one layer of `c` run at prefill. */
function products(c: MambaConfig): Product[] {
  const p = (what: string, N: number, K: number, extra: Partial<Product> = {}): Product => ({
    what,
    N,
    K,
    bias: c.bias,
    softplus: false,
    f32: false,
    xStride: K,
    ...extra,
  });
  if (c.arch === "mamba2") {
    const inDim = 2 * c.dInner + 2 * c.ngroups * c.dState + c.nheads;
    return [p("in_proj", inDim, c.dModel), p("out_proj", c.dModel, c.dInner)];
  }
  const xdw = c.dtRank + 2 * c.dState;
  return [
    p("in_proj", 2 * c.dInner, c.dModel),
    p("x_proj", xdw, c.dInner, { bias: false }),
    p("dt_proj", c.dInner, c.dtRank, { bias: true, softplus: true, f32: true, xStride: xdw }),
    p("out_proj", c.dModel, c.dInner),
  ];
}

/** A random `[N, K]` matrix: a random block of 2^20 values tiled over it (fast for GBs). */
function randomMatrix(N: number, K: number, f16: boolean, seed: number): HostTensor {
  let s = seed >>> 0;
  const block = Float32Array.from({ length: 1 << 20 }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return (s / 2 ** 32 - 0.5) * 0.1;
  });
  const fill = <T extends Float32Array | Uint16Array>(out: T, b: T): T => {
    for (let i = 0; i < out.length; i += b.length) {
      out.set(b.subarray(0, Math.min(b.length, out.length - i)), i);
    }
    return out;
  };
  return f16
    ? { dtype: "f16", shape: [N, K], data: fill(new Uint16Array(N * K), f32ArrayToF16(block)) }
    : { dtype: "f32", shape: [N, K], data: fill(new Float32Array(N * K), block) };
}

// ---------------------------------------------------------------- the device

const adapter = await requestAdapter({ powerPreference: "high-performance" });
if (!adapter) throw new Error("no WebGPU adapter");
const features = [...adapter.features].sort();
const L = adapter.limits;
const sgInfo = adapter.info as unknown as { subgroupMinSize?: number; subgroupMaxSize?: number };
const special = features.filter((f) => /subgroup|cooperative|matrix/i.test(f));
console.log(
  `adapter: ${adapter.info.vendor} ${adapter.info.architecture} ${adapter.info.device} ` +
    `${adapter.info.description}`.trim(),
);
console.log(`features: ${features.join(", ")}`);
console.log(
  special.length
    ? `NOTE: subgroup / matrix features present: ${special.join(", ")} (subgroup size ` +
      `${sgInfo.subgroupMinSize ?? "?"}–${sgInfo.subgroupMaxSize ?? "?"})`
    : "no subgroup or cooperative-matrix feature",
);
console.log(
  `limits: maxComputeWorkgroupStorageSize ${L.maxComputeWorkgroupStorageSize}, ` +
    `maxComputeInvocationsPerWorkgroup ${L.maxComputeInvocationsPerWorkgroup}, ` +
    `maxStorageBufferBindingSize ${L.maxStorageBufferBindingSize}, ` +
    `maxBufferSize ${L.maxBufferSize}, ` +
    `maxComputeWorkgroupsPerDimension ${L.maxComputeWorkgroupsPerDimension}`,
);

// A small backend for its device, recorder and pipelines (its own weights are not used).
const tiny = parseConfig({ d_model: 32, n_layer: 1, vocab_size: 64 });
const be = await WebGpuBackend.create({ config: tiny, weights: randomWeights(tiny, { seed: 1 }) });
if (!be.ctx.timestamps) throw new Error("this device has no timestamp-query: cannot time kernels");
const smem = be.ctx.maxWorkgroupStorage;
console.log(`device: ${be.ctx.adapterInfo}; shader-f16 ${be.ctx.shaderF16}; peak ${peak} TFLOP/s`);

/** GPU seconds per product: the best of 3 timed passes of `reps` products. */
async function time(run: () => void, reps: number): Promise<number> {
  run(); // compile, warm up
  be.rec.flush();
  let best = Infinity;
  for (let round = 0; round < 3; round++) {
    be.rec.startTiming(1);
    for (let i = 0; i < reps; i++) run();
    const [t] = await be.rec.stopTiming();
    best = Math.min(best, t / reps);
  }
  be.rec.checkErrors();
  return best;
}

const rows: Record<string, unknown>[] = [];
const summary: string[] = [];
const t0 = performance.now();
for (const name of models) {
  const raw = PUBLIC_CONFIGS[name];
  if (!raw) throw new Error(`unknown model ${name} (one of ${Object.keys(PUBLIC_CONFIGS)})`);
  const config = parseConfig(raw);
  const prods = products(config).filter((p) => !opt.only || opt.only.includes(p.what));
  const maxRows = Math.max(...rowCounts);
  const xb = be.temp(maxRows * Math.max(...prods.map((p) => p.xStride)) * F32);
  const yb = be.temp(maxRows * Math.max(...prods.map((p) => p.N)) * F32);
  // Random x (not zeros: the FMAs' power, and so the clock, may depend on the data).
  const xBlock = randomMatrix(1, 1 << 20, false, 7).data as Float32Array;
  for (let off = 0; off < xb.size; off += xBlock.byteLength) {
    const n = Math.min(xBlock.length, (xb.size - off) / F32);
    be.rec.write(xb, off, xBlock.subarray(0, n));
  }
  for (const dtype of dtypes) {
    for (const prod of prods) {
      const f16 = dtype === "f16" && !prod.f32;
      const W: GpuMatrix = uploadMatrix(
        be.rec,
        randomMatrix(prod.N, prod.K, f16, prod.N + prod.K),
        prod.what,
      );
      const bias = prod.bias ? uploadF32(be.rec, new Float32Array(prod.N), "bias") : undefined;
      for (const M of rowCounts) {
        const flops = 2 * M * prod.N * prod.K;
        // Passes of ~0.1 TFLOP on a GPU (a few ms), ~2 GFLOP on a CPU (--quick).
        const reps = Math.max(1, Math.min(50, Math.ceil((quick ? 2e9 : 1e11) / flops)));
        const head = `${name} ${dtype} M=${M} ${prod.what} [${prod.N}×${prod.K}]`;
        const results: { label: string; us: number; tflops: number; frac: number }[] = [];
        const seen = new Set<string>();
        for (const v of variants(f16, be.ctx.shaderF16)) {
          const tile = be.matmulTile(W, M, v.tile);
          if (v.kernel === "tiled" && matmulTileProblem(tile, smem)) continue;
          // A listed tile that is the default tile (of this shape) is timed once, as the default.
          const key = v.kernel === "tiled" ? JSON.stringify({ ur: 1, tr: 1, ...tile }) : v.kernel;
          if (seen.has(key)) continue;
          seen.add(key);
          const run = () =>
            be.matmul(W, {
              bias,
              x: xb,
              xOff: 0,
              xStride: prod.xStride,
              M,
              y: yb,
              yOff: 0,
              yStride: prod.N,
              softplus: prod.softplus,
              kernel: v.kernel,
              tile: v.tile,
            });
          const us = (await time(run, reps)) * 1e6;
          const tflops = flops / us / 1e6;
          // f16 arithmetic runs against the packed-f16 peak, twice the fp32 one.
          const half = v.kernel === "tiled" && tile.hk > 0;
          const frac = tflops / (half ? 2 * peak : peak);
          const label = v.kernel === "tiled"
            ? `tiled ${describe(tile)}${Object.keys(v.tile ?? {}).length ? "" : " [default]"}`
            : v.kernel === "matmul128" && (M < 128 || prod.N < 128)
            ? "matmul128 (ran simple: smaller than one 128×128 tile)"
            : v.kernel;
          results.push({ label, us, tflops, frac });
          rows.push({
            model: name,
            dtype,
            M,
            what: prod.what,
            N: prod.N,
            K: prod.K,
            kernel: v.kernel,
            tile: v.kernel === "tiled" ? tile : undefined,
            default: v.kernel === "tiled" && !Object.keys(v.tile ?? {}).length,
            us,
            tflops,
            peakFraction: frac,
            peakTflops: half ? 2 * peak : peak,
          });
        }
        const pct = (f: number) => `${(100 * f).toFixed(0)}%`;
        const fmt = (r: typeof results[number]) =>
          `${r.us.toFixed(1).padStart(9)} µs ${r.tflops.toPrecision(3).padStart(5)} TFLOP/s ` +
          `${pct(r.frac).padStart(4)} of peak  ${r.label}`;
        const base = results.find((r) => r.label.startsWith("matmul128"));
        const def = results.find((r) => r.label.endsWith("[default]"));
        const best = [...results].sort((a, b) => a.us - b.us)[0];
        console.log(`${head}:`);
        for (const r of [...results].sort((a, b) => a.us - b.us)) console.log(`  ${fmt(r)}`);
        const fig = (r: typeof results[number] | undefined) =>
          r ? `${r.tflops.toPrecision(3)} TFLOP/s (${pct(r.frac)})` : "-";
        const line = `${head}: matmul128 ${fig(base)}, tiled default ${fig(def)}, best ${
          fig(best)
        } ${best.label}`;
        summary.push(line);
      }
      for (const p of W.parts) p.buf.buffer.destroy();
      bias?.buffer.destroy();
    }
  }
  be.release(xb);
  be.release(yb);
}
console.log(`\nsummary (fp32 peak ${peak} TFLOP/s, packed f16 ${2 * peak}):`);
for (const s of summary) console.log(s);
console.log(`sweep took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
if (opt.json) {
  await Deno.writeTextFile(opt.json, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}
be.dispose();
