/**
 * Micro-benchmark of the WebAssembly kernels: GEMV bandwidth (weight bytes streamed per second)
 * for the mamba-130m projection shapes with f32 / f16 / q8 weights, GEMM (prefill) throughput,
 * the scans, and a plain `Float32Array` sum as a memory-bandwidth baseline.
 *
 *     deno run -A bench/wasm_kernels_bench.ts [--quick]
 *     deno run -A bench/wasm_kernels_bench.ts --ab [--rounds N] [--files a.wasm,b.wasm] [--prefill N]
 *
 * `--ab` compares the two builds of the kernels instead (`wasm/mamba_kernels.wasm`, plain SIMD128,
 * against `wasm/mamba_kernels_relaxed.wasm`, relaxed SIMD with FMA; or any two module files given
 * as `--files a.wasm,b.wasm`): both are loaded in the same process, and each kernel runs on the
 * one and on the other instance in alternating order round after round. It prints the best time
 * of each and their ratio. Times are the process's CPU time (`process.cpuUsage`), not wall
 * time: on this shared VM other processes take the cores for long stretches, which wall time
 * counts and CPU time does not (a kernel runs on one thread). With `--prefill N` (not with
 * `--files`) it also prefills N tokens of mamba-130m and mamba2-130m (random weights in the
 * published shapes, f32 and f16) on the `wasm` backend with one thread, `simd: "plain"` against
 * `simd: "relaxed"`, interleaved the same way.
 *
 * @module
 */

import process from "node:process";
import { parseArgs } from "node:util";
import { MambaLM, parseConfig } from "../mod.ts";
import { PUBLIC_CONFIGS, randomWeights } from "../testing.ts";
import { WasmBackend } from "../src/backends/wasm/backend.ts";
import { SCAN_INTERLEAVED, SCAN_SOFTPLUS, WasmKernels } from "../src/backends/wasm/kernels.ts";

const args = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    ab: { type: "boolean", default: false },
    rounds: { type: "string", default: "7" },
    files: { type: "string" },
    prefill: { type: "string", default: "0" },
  },
});
const quick = args.values.quick;
const minMs = quick ? 60 : 300;

/** Runs `fn` repeatedly; returns the best per-call time in ms over 5 rounds of >= minMs/5. */
function time(fn: () => void): number {
  fn();
  let reps = 1;
  for (;;) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    const dt = performance.now() - t0;
    if (dt > minMs / 5) break;
    reps *= 2;
  }
  let best = Infinity;
  for (let round = 0; round < 5; round++) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    best = Math.min(best, (performance.now() - t0) / reps);
  }
  return best;
}

function rand(a: Float32Array, scale = 1): Float32Array {
  for (let i = 0; i < a.length; i++) a[i] = (Math.random() * 2 - 1) * scale;
  return a;
}

/** Nearest binary16 bit pattern of a finite number (subnormals included, as real weights have). */
function toF16(x: number): number {
  const s = x < 0 ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === 0) return s;
  let e = Math.floor(Math.log2(a));
  if (e < -14) return s | Math.round(a * 2 ** 24);
  let m = Math.round((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
  return s | ((e + 15) << 10) | m;
}

if (args.values.ab) {
  await abBench(Number(args.values.rounds));
  Deno.exit(0);
}

/** Calls per timing so that one timing lasts about `ms` milliseconds. */
function calibrate(fn: () => void, ms: number): number {
  fn();
  let reps = 1;
  for (;;) {
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) fn();
    if (performance.now() - t0 > ms) return reps;
    reps *= 2;
  }
}

/**
 * Plain vs relaxed build, kernel by kernel, rounds interleaved (see the module doc). Each case
 * sets up its data in both instances and returns one closure per instance.
 */
async function abBench(rounds: number): Promise<void> {
  const files = args.values.files?.split(",");
  if (files !== undefined && files.length !== 2) throw new Error("--files needs two .wasm files");
  const names = files ?? ["plain", "relaxed (FMA)"];
  const ks = await Promise.all(
    files?.map(async (f) => WasmKernels.create(await Deno.readFile(f))) ??
      (["plain", "relaxed"] as const).map(async (b) =>
        WasmKernels.create(await WasmKernels.compileBuild(b))
      ),
  );
  /** CPU time of this process in ms. */
  const cpuMs = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  type Case = { name: string; unit: (ms: number) => string; make: (k: WasmKernels) => () => void };
  const cases: Case[] = [];
  const gflops = (flop: number) => (ms: number) => `${(flop / ms / 1e6).toFixed(1)} GFLOP/s`;
  const gbs = (bytes: number) => (ms: number) => `${(bytes / ms / 1e6).toFixed(1)} GB/s`;
  const f16Of = (k: WasmKernels, w: Float32Array) => {
    const h = k.allocU16(w.length);
    const v = h.view;
    for (let i = 0; i < w.length; i++) v[i] = toF16(w[i]);
    return h;
  };
  // The same random data in both instances.
  const data = (n: number, scale = 1) => rand(new Float32Array(n), scale);
  // Projections of mamba-130m / mamba2-130m (N x K), and prefill chunks of M tokens.
  const gemms: [string, number, number, number][] = [
    ["130m in_proj", 3072, 768, 64],
    ["130m in_proj", 3072, 768, 256],
    ["130m out_proj", 768, 1536, 256],
    ["mamba2-130m in_proj", 3352, 768, 256],
  ];
  for (const [what, n, kk, m] of gemms) {
    const wf = data(n * kk, 0.05), xf = data(m * kk);
    for (const type of ["f32", "f16", "q8"] as const) {
      cases.push({
        name: `matmul_${type} ${what} ${n}x${kk}, M=${m}`,
        unit: gflops(2 * m * n * kk),
        make: (k) => {
          const x = k.upload(xf), y = k.allocF32(m * n);
          if (type === "f32") {
            const w = k.upload(wf);
            return () => k.matmulF32(x.ptr, kk, w.ptr, y.ptr, n, m, n, kk);
          }
          if (type === "f16") {
            const w = f16Of(k, wf);
            return () => k.matmulF16(x.ptr, kk, w.ptr, y.ptr, n, m, n, kk);
          }
          const w = k.upload(wf), q = k.allocQ8(n, kk);
          k.quantizeQ8(w.ptr, q.q.ptr, q.scales.ptr, n, kk);
          return () => k.matmulQ8(x.ptr, kk, q.q.ptr, q.scales.ptr, y.ptr, n, m, n, kk);
        },
      });
    }
  }
  // GEMV: in_proj cache-warm, and the 4 projections of 24 layers cycled from DRAM.
  {
    const n = 3072, kk = 768, wf = data(n * kk, 0.05), xf = data(kk);
    for (const type of ["f32", "f16", "q8"] as const) {
      cases.push({
        name: `matvec_${type} in_proj ${n}x${kk} (cache-warm)`,
        // q8: int8 weights and one f32 scale per 32.
        unit: gbs(n * kk * (type === "f32" ? 4 : type === "f16" ? 2 : 1.125)),
        make: (k) => {
          const x = k.upload(xf), y = k.allocF32(n);
          if (type === "f32") {
            const w = k.upload(wf);
            return () => k.matvecF32(w.ptr, x.ptr, y.ptr, n, kk);
          }
          if (type === "q8") {
            const w = k.upload(wf), q = k.allocQ8(n, kk);
            k.quantizeQ8(w.ptr, q.q.ptr, q.scales.ptr, n, kk);
            return () => k.matvecQ8(q.q.ptr, q.scales.ptr, x.ptr, y.ptr, n, kk);
          }
          const w = f16Of(k, wf);
          return () => k.matvecF16(w.ptr, x.ptr, y.ptr, n, kk, 0, n, false, true);
        },
      });
    }
  }
  if (!quick) {
    const proj: [number, number][] = [[3072, 768], [768, 1536], [80, 1536], [1536, 48]];
    const layers = 24;
    const mats = Array.from(
      { length: layers * 4 },
      (_, i) => data(proj[i % 4][0] * proj[i % 4][1], 0.05),
    );
    const xf = data(3072);
    const bytes = mats.reduce((a, w) => a + w.length, 0);
    for (const type of ["f32", "f16", "q8"] as const) {
      cases.push({
        name: `matvec_${type} 24 layers x 4 proj (from DRAM)`,
        unit: gbs(bytes * (type === "f32" ? 4 : type === "f16" ? 2 : 1.125)),
        make: (k) => {
          const x = k.upload(xf), y = k.allocF32(3072);
          if (type === "q8") {
            const qs = mats.map((w, i) => {
              const [n, kk] = proj[i % 4];
              const wp = k.upload(w), q = k.allocQ8(n, kk);
              k.quantizeQ8(wp.ptr, q.q.ptr, q.scales.ptr, n, kk);
              return q;
            });
            return () => {
              for (let i = 0; i < qs.length; i++) {
                const [n, kk] = proj[i % 4];
                k.matvecQ8(qs[i].q.ptr, qs[i].scales.ptr, x.ptr, y.ptr, n, kk);
              }
            };
          }
          const ws = mats.map((w) => type === "f32" ? k.upload(w).ptr : f16Of(k, w).ptr);
          return () => {
            for (let i = 0; i < ws.length; i++) {
              const [n, kk] = proj[i % 4];
              if (type === "f32") k.matvecF32(ws[i], x.ptr, y.ptr, n, kk);
              else k.matvecF16(ws[i], x.ptr, y.ptr, n, kk, 0, n, false, true);
            }
          };
        },
      });
    }
  }
  // The scans (exp-bound: the relaxed build spells pmin/pmax out, see simd.rs).
  {
    const dim = 1536, n = 16, l = 64;
    const af = data(dim * n).map((v) => -Math.abs(v) * 4), uf = data(l * dim), df = data(l * dim);
    const bcf = data(l * 2 * n), zf = data(l * dim), dd = data(dim), bias = data(dim);
    cases.push({
      name: "selective_scan seq 1536x16, L=64",
      unit: (ms) => `${(ms * 1000 / l).toFixed(2)} us/token`,
      make: (k) => {
        const h = k.allocF32(dim * n), a = k.upload(af), u = k.upload(uf), dl = k.upload(df);
        const bc = k.upload(bcf), z = k.upload(zf), d = k.upload(dd), b = k.upload(bias);
        const y = k.allocF32(l * dim);
        return () =>
          k.selectiveScan({
            h: h.ptr,
            u: u.ptr,
            ldu: dim,
            delta: dl.ptr,
            ldd: dim,
            a: a.ptr,
            b: bc.ptr,
            c: bc.at(n),
            ldbc: 2 * n,
            d: d.ptr,
            z: z.ptr,
            ldz: dim,
            dtBias: b.ptr,
            y: y.ptr,
            ldy: dim,
            l,
            dim,
            n,
            flags: SCAN_SOFTPLUS,
          });
      },
    });
  }
  {
    const nh = 24, p = 64, n = 128, l = 64;
    const af = data(nh).map((v) => -Math.abs(v)), xf = data(l * nh * p), dtf = data(l * nh);
    const bcf = data(l * 2 * n);
    cases.push({
      name: "ssd_scan seq 24x64x128, L=64",
      unit: (ms) => `${(ms * 1000 / l).toFixed(2)} us/token`,
      make: (k) => {
        const st = k.allocF32(nh * p * n), a = k.upload(af), x = k.upload(xf);
        const dt = k.upload(dtf), bc = k.upload(bcf), y = k.allocF32(l * nh * p);
        return () =>
          k.ssdScan({
            state: st.ptr,
            x: x.ptr,
            ldx: nh * p,
            dt: dt.ptr,
            lddt: nh,
            a: a.ptr,
            b: bc.ptr,
            c: bc.at(n),
            ldbc: 2 * n,
            y: y.ptr,
            ldy: nh * p,
            l,
            nheads: nh,
            headdim: p,
            n,
            flags: SCAN_SOFTPLUS,
          });
      },
    });
  }
  {
    const n = 1 << 16, xf = data(n, 8);
    cases.push({
      name: "softplus 65536",
      unit: (ms) => `${(n / ms / 1e6).toFixed(2)} G/s`,
      make: (k) => {
        const x = k.upload(xf), y = k.allocF32(n);
        return () => k.softplus(x.ptr, y.ptr, n);
      },
    });
  }
  const reps = cases.map(() => 0);
  const fns = cases.map((c) => ks.map((k) => c.make(k)));
  fns.forEach((f, i) => reps[i] = calibrate(f[0], quick ? 10 : 40));
  const best = cases.map(() => [Infinity, Infinity]);
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < cases.length; i++) {
      const order = (r + i) % 2 === 0 ? [0, 1] : [1, 0];
      for (const b of order) {
        const t0 = cpuMs();
        for (let j = 0; j < reps[i]; j++) fns[i][b]();
        best[i][b] = Math.min(best[i][b], (cpuMs() - t0) / reps[i]);
      }
    }
  }
  const nPrefill = Number(args.values.prefill);
  if (nPrefill > 0 && files === undefined) {
    for (const model of ["mamba-130m", "mamba2-130m"]) {
      const config = parseConfig(PUBLIC_CONFIGS[model]);
      const weights = randomWeights(config);
      for (const dtype of ["f32", "f16"] as const) {
        const lms = await Promise.all(
          (["plain", "relaxed"] as const).map(async (simd) =>
            new MambaLM(
              config,
              await WasmBackend.create({ config, weights }, { threads: 1, weights: dtype, simd }),
            )
          ),
        );
        const ids = Array.from({ length: nPrefill }, (_, i) => (i * 7919 + 13) % config.vocabSize);
        for (const lm of lms) await lm.prefill(lm.createState(1), [ids.slice(0, 16)]);
        const b = [Infinity, Infinity];
        for (let r = 0; r < Math.min(rounds, 3); r++) {
          for (const i of r % 2 === 0 ? [0, 1] : [1, 0]) {
            const t0 = cpuMs();
            await lms[i].prefill(lms[i].createState(1), [ids]);
            b[i] = Math.min(b[i], cpuMs() - t0);
          }
        }
        for (const lm of lms) lm.dispose();
        cases.push({
          name: `prefill-${nPrefill} ${model} ${dtype}, 1 thread`,
          unit: (ms) => `${(nPrefill / ms * 1000).toFixed(1)} tok/s`,
          make: () => () => {},
        });
        best.push(b);
      }
    }
  }
  console.log(`| kernel | ${names[0]} | ${names[1]} | speed ratio (2nd ÷ 1st) |`);
  console.log(`| --- | --- | --- | --- |`);
  for (let i = 0; i < cases.length; i++) {
    const [p, x] = best[i];
    const c = cases[i];
    console.log(`| ${c.name} | ${c.unit(p)} | ${c.unit(x)} | ${(p / x).toFixed(2)}× |`);
  }
}

const k = await WasmKernels.create();
const rows: string[][] = [];
const print = (...c: (string | number)[]) => {
  rows.push(c.map(String));
  console.log(c.join("\t"));
};

// Baseline: plain JS sum over a Float32Array of the same size (cache-resident for small ones).
function jsSum(a: Float32Array): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (let i = 0; i < a.length; i += 4) {
    s0 += a[i];
    s1 += a[i + 1];
    s2 += a[i + 2];
    s3 += a[i + 3];
  }
  return s0 + s1 + s2 + s3;
}

console.log(
  "# GEMV (decode), mamba-130m shapes; GB/s = weight bytes / time (cache-warm unless said)",
);
print("shape (N x K)", "what", "f32 GB/s", "f16 GB/s", "q8 GB/s", "JS sum GB/s (f32 bytes)");
const shapes: [string, number, number][] = [
  ["in_proj", 3072, 768],
  ["x_proj", 80, 1536],
  ["dt_proj", 1536, 48],
  ["out_proj", 768, 1536],
  ["lm_head", 50280, 768],
];
let sink = 0;
for (const [what, n, kk] of shapes) {
  const mark = k.mark();
  const wf = rand(new Float32Array(n * kk), 0.05);
  const w32 = k.upload(wf);
  const w16 = k.allocU16(n * kk);
  const v16 = w16.view;
  for (let i = 0; i < wf.length; i++) v16[i] = toF16(wf[i]);
  const q = k.allocQ8(n, kk);
  k.quantizeQ8(w32.ptr, q.q.ptr, q.scales.ptr, n, kk);
  const x = k.upload(rand(new Float32Array(kk)));
  const y = k.allocF32(n);
  const t32 = time(() => k.matvecF32(w32.ptr, x.ptr, y.ptr, n, kk));
  const t16 = time(() => k.matvecF16(w16.ptr, x.ptr, y.ptr, n, kk));
  const tq8 = time(() => k.matvecQ8(q.q.ptr, q.scales.ptr, x.ptr, y.ptr, n, kk));
  const tjs = time(() => {
    sink += jsSum(wf);
  });
  const gb = (bytes: number, ms: number) => (bytes / ms / 1e6).toFixed(1);
  print(
    `${n} x ${kk}`,
    what,
    gb(n * kk * 4, t32),
    gb(n * kk * 2, t16),
    gb(n * kk + n * Math.ceil(kk / 32) * 4, tq8),
    gb(n * kk * 4, tjs),
  );
  k.reset(mark);
}

// Decode-like: the four projections of 24 mamba-130m layers cycled (~340 MB f32), so every
// matrix comes from DRAM as in a real decode step (the table above is cache-warm).
if (!quick) {
  const layers = 24;
  const proj: [number, number][] = [[3072, 768], [768, 1536], [80, 1536], [1536, 48]];
  const mark = k.mark();
  const m32: number[] = [], m16: number[] = [], mq: [number, number][] = [];
  let b32 = 0, b16 = 0, bq = 0;
  for (let l = 0; l < layers; l++) {
    for (const [n, kk] of proj) {
      const a = k.upload(rand(new Float32Array(n * kk), 0.05));
      const h = k.allocU16(n * kk);
      const hv = h.view, av = a.view;
      for (let i = 0; i < hv.length; i++) hv[i] = toF16(av[i]);
      const q = k.allocQ8(n, kk);
      k.quantizeQ8(a.ptr, q.q.ptr, q.scales.ptr, n, kk);
      m32.push(a.ptr), m16.push(h.ptr), mq.push([q.q.ptr, q.scales.ptr]);
      b32 += n * kk * 4, b16 += n * kk * 2, bq += n * kk + n * Math.ceil(kk / 32) * 4;
    }
  }
  const x = k.upload(rand(new Float32Array(3072))), y = k.allocF32(3072);
  const each = (f: (i: number, n: number, kk: number) => void) => () => {
    for (let i = 0; i < m32.length; i++) f(i, proj[i % 4][0], proj[i % 4][1]);
  };
  const t32 = time(each((i, n, kk) => k.matvecF32(m32[i], x.ptr, y.ptr, n, kk)));
  const t16 = time(each((i, n, kk) => k.matvecF16(m16[i], x.ptr, y.ptr, n, kk)));
  const tq8 = time(each((i, n, kk) => k.matvecQ8(mq[i][0], mq[i][1], x.ptr, y.ptr, n, kk)));
  print(
    "24 layers x 4 proj",
    "from DRAM (decode-like)",
    (b32 / t32 / 1e6).toFixed(1),
    (b16 / t16 / 1e6).toFixed(1),
    (bq / tq8 / 1e6).toFixed(1),
  );
  print("", `ms per step: f32 ${t32.toFixed(1)}, f16 ${t16.toFixed(1)}, q8 ${tq8.toFixed(1)}`);
  k.reset(mark);
}

// DRAM-sized baseline (well beyond the caches).
{
  const big = rand(new Float32Array(64 << 20 >> 2));
  const t = time(() => {
    sink += jsSum(big);
  });
  print("64 MiB", "JS Float32Array sum", "", "", "", (big.length * 4 / t / 1e6).toFixed(1));
}

// f16 GEMV speed vs the share of subnormal weights (they cost a slow path in the FPU).
{
  const n = 3072, kk = 768;
  const mark = k.mark();
  const w = k.allocU16(n * kk), x = k.upload(rand(new Float32Array(kk))), y = k.allocF32(n);
  for (const frac of [0, 0.001, 0.01]) {
    const v = w.view;
    for (let i = 0; i < v.length; i++) {
      v[i] = Math.random() < frac
        ? toF16((Math.random() - 0.5) * 1e-4) | 0
        : toF16((Math.random() - 0.5) * 0.1);
    }
    let subs = 0;
    for (let i = 0; i < v.length; i++) if ((v[i] & 0x7c00) === 0 && (v[i] & 0x3ff) !== 0) subs++;
    const t = time(() => k.matvecF16(w.ptr, x.ptr, y.ptr, n, kk));
    print(
      `${n} x ${kk}`,
      `f16, ${(100 * subs / v.length).toFixed(2)}% subnormal`,
      "",
      (n * kk * 2 / t / 1e6).toFixed(1),
    );
  }
  k.reset(mark);
}

console.log("\n# GEMM (prefill) vs M x GEMV, in_proj 3072 x 768; GFLOP/s = 2*M*N*K / time");
print("M", "f32 GFLOP/s", "f16 GFLOP/s", "q8 GFLOP/s", "speedup vs M x matvec (f32 / f16 / q8)");
{
  const n = 3072, kk = 768;
  for (const m of [1, 4, 16, 64, 256]) {
    const mark = k.mark();
    const wf = rand(new Float32Array(n * kk), 0.05);
    const w32 = k.upload(wf);
    const w16 = k.allocU16(n * kk);
    const v16 = w16.view;
    for (let i = 0; i < wf.length; i++) v16[i] = toF16(wf[i]);
    const q = k.allocQ8(n, kk);
    k.quantizeQ8(w32.ptr, q.q.ptr, q.scales.ptr, n, kk);
    const x = k.upload(rand(new Float32Array(m * kk)));
    const y = k.allocF32(m * n);
    const t32 = time(() => k.matmulF32(x.ptr, kk, w32.ptr, y.ptr, n, m, n, kk));
    const t16 = time(() => k.matmulF16(x.ptr, kk, w16.ptr, y.ptr, n, m, n, kk));
    const tq8 = time(() => k.matmulQ8(x.ptr, kk, q.q.ptr, q.scales.ptr, y.ptr, n, m, n, kk));
    const tmv32 = time(() => {
      for (let t = 0; t < m; t++) k.matvecF32(w32.ptr, x.at(t * kk), y.at(t * n), n, kk);
    });
    const tmv16 = time(() => {
      for (let t = 0; t < m; t++) k.matvecF16(w16.ptr, x.at(t * kk), y.at(t * n), n, kk);
    });
    const tmvq8 = time(() => {
      for (let t = 0; t < m; t++) {
        k.matvecQ8(q.q.ptr, q.scales.ptr, x.at(t * kk), y.at(t * n), n, kk);
      }
    });
    const gf = (ms: number) => (2 * m * n * kk / ms / 1e6).toFixed(1);
    const sp = (a: number, b: number) => (a / b).toFixed(2) + "x";
    print(
      m,
      gf(t32),
      gf(t16),
      gf(tq8),
      `${sp(tmv32, t32)} / ${sp(tmv16, t16)} / ${sp(tmvq8, tq8)}`,
    );
    k.reset(mark);
  }
}

if (!quick) {
  console.log("\n# DRAM-resident weights: 16384 x 2048 (128 MiB f32), M = 32 tokens");
  print("type", "GEMM GFLOP/s", "M x GEMV GFLOP/s", "speedup");
  const n = 16384, kk = 2048, m = 32;
  const mark = k.mark();
  const wf = rand(new Float32Array(n * kk), 0.05);
  const w32 = k.upload(wf);
  const w16 = k.allocU16(n * kk);
  const v16 = w16.view;
  for (let i = 0; i < wf.length; i++) v16[i] = toF16(wf[i]);
  const q = k.allocQ8(n, kk);
  k.quantizeQ8(w32.ptr, q.q.ptr, q.scales.ptr, n, kk);
  const x = k.upload(rand(new Float32Array(m * kk)));
  const y = k.allocF32(m * n);
  const gf = (ms: number) => (2 * m * n * kk / ms / 1e6).toFixed(1);
  const rows: [string, () => void, () => void][] = [
    ["f32", () => k.matmulF32(x.ptr, kk, w32.ptr, y.ptr, n, m, n, kk), () => {
      for (let t = 0; t < m; t++) k.matvecF32(w32.ptr, x.at(t * kk), y.at(t * n), n, kk);
    }],
    ["f16", () => k.matmulF16(x.ptr, kk, w16.ptr, y.ptr, n, m, n, kk), () => {
      for (let t = 0; t < m; t++) k.matvecF16(w16.ptr, x.at(t * kk), y.at(t * n), n, kk);
    }],
    ["q8", () => k.matmulQ8(x.ptr, kk, q.q.ptr, q.scales.ptr, y.ptr, n, m, n, kk), () => {
      for (let t = 0; t < m; t++) {
        k.matvecQ8(q.q.ptr, q.scales.ptr, x.at(t * kk), y.at(t * n), n, kk);
      }
    }],
  ];
  for (const [name, mm, mv] of rows) {
    const a = time(mm), b = time(mv);
    print(name, gf(a), gf(b), (b / a).toFixed(2) + "x");
  }
  k.reset(mark);
}

console.log(
  "\n# scans (per token, whole layer), mamba-130m (d_inner 1536, N 16) / mamba2-130m (24 heads x 64, N 128)",
);
{
  const dim = 1536, n = 16, l = 64;
  const mark = k.mark();
  const h = k.allocF32(dim * n),
    a = k.upload(rand(new Float32Array(dim * n)).map((v) => -Math.abs(v) * 4));
  const u = k.upload(rand(new Float32Array(l * dim))),
    dl = k.upload(rand(new Float32Array(l * dim)));
  const bc = k.upload(rand(new Float32Array(l * 2 * n))),
    z = k.upload(rand(new Float32Array(l * dim)));
  const d = k.upload(rand(new Float32Array(dim))), bias = k.upload(rand(new Float32Array(dim)));
  const y = k.allocF32(l * dim);
  const run = (len: number) =>
    k.selectiveScan({
      h: h.ptr,
      u: u.ptr,
      ldu: dim,
      delta: dl.ptr,
      ldd: dim,
      a: a.ptr,
      b: bc.ptr,
      c: bc.at(n),
      ldbc: 2 * n,
      d: d.ptr,
      z: z.ptr,
      ldz: dim,
      dtBias: bias.ptr,
      y: y.ptr,
      ldy: dim,
      l: len,
      dim,
      n,
      flags: 1,
    });
  print("selective_scan step (1536 x 16)", (time(() => run(1)) * 1000).toFixed(1) + " us");
  print("selective_scan seq L=64", (time(() => run(l)) * 1000 / l).toFixed(1) + " us/token");
  const hi = k.allocF32(dim * n), ai = k.allocF32(dim * n);
  k.interleave4(a.ptr, ai.ptr, dim, n);
  const step = () =>
    k.selectiveScan({
      h: hi.ptr,
      u: u.ptr,
      ldu: dim,
      delta: dl.ptr,
      ldd: dim,
      a: ai.ptr,
      b: bc.ptr,
      c: bc.at(n),
      ldbc: 2 * n,
      d: d.ptr,
      z: z.ptr,
      ldz: dim,
      dtBias: bias.ptr,
      y: y.ptr,
      ldy: dim,
      l: 1,
      dim,
      n,
      flags: SCAN_SOFTPLUS | SCAN_INTERLEAVED,
    });
  print("selective_scan step, interleaved h/A", (time(step) * 1000).toFixed(1) + " us");
  const state = k.allocF32(dim * 2 * n),
    cs = k.allocF32(dim * 4),
    cw = k.upload(rand(new Float32Array(dim * 4)));
  print(
    "conv1d seq L=64 (1536 ch)",
    (time(() => k.conv1dSeq(cs.ptr, u.ptr, dim, cw.ptr, d.ptr, y.ptr, dim, l, 4, 0, dim, true)) *
      1000 / l)
      .toFixed(2) + " us/token",
  );
  void state;
  k.reset(mark);
}
{
  const nh = 24, p = 64, n = 128, l = 64;
  const mark = k.mark();
  const st = k.allocF32(nh * p * n),
    a = k.upload(rand(new Float32Array(nh)).map((v) => -Math.abs(v)));
  const x = k.upload(rand(new Float32Array(l * nh * p))),
    dt = k.upload(rand(new Float32Array(l * nh)));
  const bc = k.upload(rand(new Float32Array(l * 2 * n)));
  const y = k.allocF32(l * nh * p);
  const run = (len: number) =>
    k.ssdScan({
      state: st.ptr,
      x: x.ptr,
      ldx: nh * p,
      dt: dt.ptr,
      lddt: nh,
      a: a.ptr,
      b: bc.ptr,
      c: bc.at(n),
      ldbc: 2 * n,
      y: y.ptr,
      ldy: nh * p,
      l: len,
      nheads: nh,
      headdim: p,
      n,
      flags: 1,
    });
  print("ssd step (24 x 64 x 128)", (time(() => run(1)) * 1000).toFixed(1) + " us");
  print("ssd seq L=64", (time(() => run(l)) * 1000 / l).toFixed(1) + " us/token");
  k.reset(mark);
}
{
  // ssd_step as in mamba2-130m decoding on one of 2 ranks: 12 heads x 64 x 128 per layer, the
  // layers' states (9.4 MB per rank) cycled through 4x that much memory so that they come from
  // DRAM, as they do between the weight streams of a decode step.
  const nh = 12, p = 64, n = 128, layers = 96, per = nh * p * n;
  const mark = k.mark();
  const st = k.allocF32(layers * per);
  const a = k.upload(rand(new Float32Array(nh)).map((v) => -Math.abs(v)));
  const x = k.upload(rand(new Float32Array(nh * p))), dt = k.upload(rand(new Float32Array(nh)));
  const bc = k.upload(rand(new Float32Array(2 * n))), d = k.upload(rand(new Float32Array(nh)));
  const y = k.allocF32(nh * p);
  const ms = time(() => {
    for (let i = 0; i < layers; i++) {
      k.ssdStep(
        st.ptr + i * per * 4,
        x.ptr,
        dt.ptr,
        a.ptr,
        bc.ptr,
        bc.at(n),
        d.ptr,
        0,
        y.ptr,
        nh,
        p,
        n,
        1,
        0,
        nh,
        1,
      );
    }
  });
  print(
    "ssd step from DRAM (12 x 64 x 128 x 24 layers)",
    `${(ms / 4).toFixed(3)} ms/token, ${(2 * layers * per * 4 / ms / 1e6).toFixed(1)} GB/s r+w`,
  );
  k.reset(mark);
}
if (sink === 42) console.log(sink);
