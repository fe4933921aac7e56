/**
 * Tests of the prefill matrix products of the `webgpu` backend (src/backends/webgpu/matmul.ts):
 * every kernel and a range of tiles against a float64 product on the host, on shapes that are
 * not multiples of any tile, with offsets and strides as the model uses them, f16 weights, bias,
 * softplus, W split in row ranges, and packed f16 arithmetic where the device has `shader-f16`;
 * then the oracle cases with the tiled kernel's f16 arithmetic on.
 */

import assert from "node:assert/strict";
import { MambaLM, parseConfig } from "../mod.ts";
import { WebGpuBackend } from "../src/backends/webgpu/backend.ts";
import {
  defaultMatmulTile,
  type MatmulKernel,
  type MatmulTile,
  matmulTileBytes,
  matmulTileProblem,
  parseMatmulKernel,
  parseMatmulTile,
} from "../src/backends/webgpu/matmul.ts";
import { type GpuMatrix, uploadF32, uploadMatrix } from "../src/backends/webgpu/weights.ts";
import { f16ArrayToF32, f32ArrayToF16 } from "../src/half.ts";
import { loadWeights } from "../src/weights.ts";
import { randomWeights } from "../testing.ts";
import { assertClose, loadExpected, oracleDir, TOL } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const ignore = !(await webgpuTestAdapter("webgpu matmul tests"));

const smem = (be: WebGpuBackend) => be.ctx.maxWorkgroupStorage;

/** A deterministic generator of values in [−1, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  };
}

/** A small backend to record products with (its own weights are not used). */
async function smallBackend(): Promise<WebGpuBackend> {
  const config = parseConfig({ d_model: 32, n_layer: 1, vocab_size: 64 });
  return await WebGpuBackend.create({ config, weights: randomWeights(config, { seed: 1 }) });
}

interface Case {
  M: number;
  N: number;
  K: number;
  xOff: number;
  xStride: number;
  yOff: number;
  yStride: number;
  f16: boolean;
  bias: boolean;
  softplus: boolean;
  /** Rows of W in the first part (the rest in a second), or 0 for one part. */
  split: number;
}

/** W uploaded as the backend stores it, split in two row ranges when `c.split` asks. */
function upload(be: WebGpuBackend, w: Float32Array, c: Case): GpuMatrix {
  const tensor = (n0: number, n: number) =>
    c.f16
      ? {
        dtype: "f16" as const,
        shape: [n, c.K],
        data: f32ArrayToF16(w.subarray(n0 * c.K, (n0 + n) * c.K)),
      }
      : { dtype: "f32" as const, shape: [n, c.K], data: w.subarray(n0 * c.K, (n0 + n) * c.K) };
  if (!c.split) return uploadMatrix(be.rec, tensor(0, c.N), "W");
  const a = uploadMatrix(be.rec, tensor(0, c.split), "W0");
  const b = uploadMatrix(be.rec, tensor(c.split, c.N - c.split), "W1");
  return {
    ...a,
    N: c.N,
    parts: [a.parts[0], { buf: b.parts[0].buf, n0: c.split, n: c.N - c.split }],
  };
}

/** softplus with PyTorch's threshold, in float64. */
const softplus = (v: number) => v > 20 ? v : Math.log1p(Math.exp(v));

/**
 * Runs the product of case `c` with `kernel` and `tile` and checks every output against float64
 * (relative to Σ|x·w| of the output, so the bound does not depend on cancellation), and that
 * the elements of y outside the product are untouched.
 */
async function check(
  be: WebGpuBackend,
  c: Case,
  kernel: MatmulKernel,
  tile: Partial<MatmulTile>,
  relTol: number,
): Promise<void> {
  const r = rng(c.M * 7919 + c.N * 31 + c.K);
  const w = Float32Array.from({ length: c.N * c.K }, r);
  // f16 weights: the reference uses the values as rounded.
  const wRef = c.f16 ? f16ArrayToF32(f32ArrayToF16(w)) : w;
  const xLen = c.xOff + (c.M - 1) * c.xStride + c.K;
  const x = Float32Array.from({ length: xLen }, () => 2 * r());
  const biasV = Float32Array.from({ length: c.N }, r);
  const yLen = c.yOff + (c.M - 1) * c.yStride + c.N + 3;
  const W = upload(be, w, c);
  const xb = be.temp(xLen * 4);
  const yb = be.temp(yLen * 4);
  const bb = c.bias ? uploadF32(be.rec, biasV, "bias") : undefined;
  const sentinel = 12345.5;
  be.rec.write(xb, 0, x);
  be.rec.write(yb, 0, new Float32Array(yLen).fill(sentinel));
  be.matmul(W, {
    bias: bb,
    x: xb,
    xOff: c.xOff,
    xStride: c.xStride,
    M: c.M,
    y: yb,
    yOff: c.yOff,
    yStride: c.yStride,
    softplus: c.softplus,
    kernel,
    tile,
  });
  const got = new Float32Array(await be.rec.read(yb, 0, yLen * 4));
  const what = `${kernel} ${JSON.stringify(tile)} ${JSON.stringify(c)}`;
  const inside = new Uint8Array(yLen);
  let worst = 0;
  for (let m = 0; m < c.M; m++) {
    for (let n = 0; n < c.N; n++) {
      let s = 0;
      let mag = 0;
      for (let k = 0; k < c.K; k++) {
        const p = x[c.xOff + m * c.xStride + k] * wRef[n * c.K + k];
        s += p;
        mag += Math.abs(p);
      }
      if (c.bias) {
        s += biasV[n];
        mag += Math.abs(biasV[n]);
      }
      if (c.softplus) s = softplus(s);
      const i = c.yOff + m * c.yStride + n;
      inside[i] = 1;
      const err = Math.abs(got[i] - s) / (mag + 1e-3);
      if (!(err <= relTol)) {
        assert.fail(`${what}: y[${m}, ${n}] = ${got[i]}, want ${s} (relative error ${err})`);
      }
      worst = Math.max(worst, err);
    }
  }
  for (let i = 0; i < yLen; i++) {
    if (!inside[i] && got[i] !== sentinel) assert.fail(`${what}: y[${i}] outside was written`);
  }
  be.release(xb);
  be.release(yb);
  for (const p of W.parts) p.buf.buffer.destroy();
  bb?.buffer.destroy();
}

/** Shapes: none a multiple of a tile, K from 4 (one stage) to several stages with a tail. */
const CASES: Case[] = [
  // in_proj-like: rows of x at an offset into the hidden states, y packed.
  {
    M: 133,
    N: 200,
    K: 68,
    xOff: 8,
    xStride: 72,
    yOff: 0,
    yStride: 200,
    f16: false,
    bias: false,
    softplus: false,
    split: 0,
  },
  // out_proj-like into a slab of the residual stream, with bias, W in two parts.
  {
    M: 70,
    N: 161,
    K: 148,
    xOff: 0,
    xStride: 148,
    yOff: 5 * 161,
    yStride: 165,
    f16: false,
    bias: true,
    softplus: false,
    split: 97,
  },
  // dt_proj-like: x is a column range of x_proj's output, softplus(· + bias).
  {
    M: 257,
    N: 96,
    K: 12,
    xOff: 4,
    xStride: 44,
    yOff: 3,
    yStride: 99,
    f16: false,
    bias: true,
    softplus: true,
    split: 0,
  },
  // f16 weights, W split, odd everything.
  {
    M: 45,
    N: 131,
    K: 100,
    xOff: 0,
    xStride: 100,
    yOff: 1,
    yStride: 137,
    f16: true,
    bias: true,
    softplus: false,
    split: 40,
  },
  // One row, K of one vec4.
  {
    M: 1,
    N: 40,
    K: 4,
    xOff: 0,
    xStride: 4,
    yOff: 0,
    yStride: 40,
    f16: true,
    bias: false,
    softplus: true,
    split: 0,
  },
];

/** Tiles of every kind: the defaults', narrow and wide micro-tiles, stages of 4 to 32 columns. */
const TILES: Partial<MatmulTile>[] = [
  {},
  { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16 },
  { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16, tr: 0 },
  { bm: 128, bn: 128, tm: 8, tn: 8, bk: 8 },
  { bm: 128, bn: 128, tm: 8, tn: 8, bk: 8, ur: 0, tr: 0 },
  { bm: 128, bn: 64, tm: 8, tn: 4, bk: 16 },
  { bm: 64, bn: 128, tm: 4, tn: 8, bk: 8 },
  { bm: 64, bn: 64, tm: 4, tn: 4, bk: 32 },
  { bm: 64, bn: 64, tm: 8, tn: 8, bk: 4 },
  { bm: 64, bn: 64, tm: 8, tn: 8, bk: 4, tr: 0 },
  { bm: 32, bn: 96, tm: 4, tn: 12, bk: 12 },
  { bm: 32, bn: 64, tm: 4, tn: 4, bk: 16 },
  { bm: 128, bn: 128, tm: 8, tn: 16, bk: 8 },
  { bm: 64, bn: 128, tm: 16, tn: 8, bk: 16 },
];

Deno.test("webgpu matmul: tile validation and defaults", () => {
  const limit = 48 * 1024;
  for (const t of TILES.slice(1)) {
    assert.equal(matmulTileProblem({ hk: 0, ...t } as MatmulTile, limit), undefined);
  }
  const bad = { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16, hk: 0 };
  assert.match(matmulTileProblem({ ...bad, bm: 48 }, limit)!, /multiples of 32/);
  assert.match(matmulTileProblem({ ...bad, tm: 6 }, limit)!, /tm and tn/);
  assert.match(matmulTileProblem({ ...bad, bk: 6 }, limit)!, /bk/);
  assert.match(matmulTileProblem({ ...bad, hk: 3 }, limit)!, /hk/);
  assert.match(matmulTileProblem({ ...bad, tm: 4, tn: 4 }, limit)!, /1024 threads/);
  assert.match(matmulTileProblem({ ...bad, bk: 32 }, limit)!, /workgroup memory/);
  // Big products get the big tile, small ones smaller tiles; stages shrink to fit.
  assert.deepEqual(defaultMatmulTile(16384, 3352, limit, false), {
    bm: 128,
    bn: 128,
    tm: 8,
    tn: 8,
    bk: 8,
    hk: 0,
  });
  assert.equal(defaultMatmulTile(16384, 768, limit, false).bn, 128);
  assert.equal(defaultMatmulTile(2048, 768, limit, false).bm, 64);
  assert.equal(defaultMatmulTile(2048, 192, limit, false).bm, 32);
  assert.equal(defaultMatmulTile(2048, 192, limit, false).tm, 4);
  assert.equal(defaultMatmulTile(16384, 3352, 20 * 1024, false).bk, 8);
  assert.deepEqual(defaultMatmulTile(16384, 3352, limit, true), {
    bm: 128,
    bn: 128,
    tm: 8,
    tn: 8,
    bk: 32,
    hk: 16,
  });
  assert.equal(defaultMatmulTile(16384, 3352, 20 * 1024, true).hk, 16);
  assert.equal(defaultMatmulTile(16384, 3352, 10 * 1024, true).hk, 8);
  // Per-thread rows take one vec4 more per thread row and stage buffer.
  const t = { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16, hk: 0 };
  assert.equal(matmulTileBytes({ ...t, tr: 0 }), 32768);
  assert.equal(matmulTileBytes(t), 32768 + 2 * 32 * 16);
  assert.equal(matmulTileBytes({ ...t, hk: 16 }), (32768 + 2 * 32 * 16) / 2);
  assert.equal(defaultMatmulTile(16384, 3352, limit, false, { bk: 8, tn: 4 }).tn, 4);
  assert.deepEqual(parseMatmulTile("bm=64,tn=4,hk=0", "--tile"), { bm: 64, tn: 4, hk: 0 });
  assert.throws(() => parseMatmulTile("bm=64,tx=4", "--tile"), /--tile: bad field "tx=4"/);
  assert.throws(() => parseMatmulTile("bk=1.5", "X"), /X: bad field "bk=1.5"/);
});

Deno.test("webgpu matmul: kernel names", () => {
  assert.equal(parseMatmulKernel("matmul128", "MAMBA_WEBGPU_MATMUL"), "matmul128");
  assert.equal(parseMatmulKernel("tiled", "X"), "tiled");
  assert.throws(
    () => parseMatmulKernel("fast", "MAMBA_WEBGPU_MATMUL"),
    /MAMBA_WEBGPU_MATMUL: "fast"/,
  );
});

Deno.test({
  name: "webgpu matmul: every kernel and tile matches float64 (odd shapes, strides, f16, parts)",
  ignore,
  async fn() {
    const be = await smallBackend();
    try {
      const ran = new Set<string>();
      for (const c of CASES) {
        await check(be, c, "simple", {}, 1e-5);
        await check(be, c, "matmul128", {}, 1e-5);
        for (const tile of TILES) {
          if (matmulTileProblem({ ...be.matmulTile(be.weights.lmHead, c.M), ...tile }, smem(be))) {
            continue; // larger than this device's workgroup memory
          }
          await check(be, c, "tiled", tile, 1e-5);
          ran.add(JSON.stringify(tile));
        }
      }
      // Workgroup memory of 32 KiB (lavapipe) leaves out two tiles; WebGPU guarantees 16 KiB.
      assert.ok(ran.size >= TILES.length - (smem(be) >= 32768 ? 2 : 6), `tiles run: ${ran.size}`);
      // K not a multiple of 4, x at an odd offset: the tiled kernel falls back to `simple`.
      const odd = { ...CASES[0], K: 37, xOff: 3, xStride: 41 };
      await check(be, odd, "tiled", {}, 1e-5);
      // A tile that cannot run is refused, naming it.
      await assert.rejects(
        () => check(be, CASES[0], "tiled", { bm: 40 }, 1e-5),
        /matmul tile .*"bm":40.*multiples of 32/,
      );
    } finally {
      be.dispose();
    }
  },
});

Deno.test({
  name: "webgpu matmul: packed f16 arithmetic is within f16 rounding (shader-f16 devices)",
  ignore,
  async fn() {
    const be = await smallBackend();
    try {
      if (!be.ctx.shaderF16) {
        console.error("webgpu matmul: no shader-f16 on this device, f16 arithmetic not tested");
        return;
      }
      for (const c of CASES) {
        const tiles = [
          { hk: 8 },
          { hk: 16 },
          { bm: 64, bn: 64, tm: 4, tn: 4, bk: 32, hk: 32 },
          { bm: 128, bn: 128, tm: 8, tn: 16, bk: 16, hk: 16 },
          { bm: 128, bn: 128, tm: 8, tn: 8, bk: 16, hk: 8, tr: 0 },
        ];
        for (const tile of tiles) {
          // x rounded to f16 (2^-11 relative) and runs of up to 16 products summed in f16.
          await check(be, c, "tiled", tile, 8e-3);
        }
      }
    } finally {
      be.dispose();
    }
  },
});

const ORACLE_CASES = [
  "m1_d64_l7",
  "m1_d96_l64_vocab500",
  "m1_f16_l64",
  "m2_hd16_ds16_l64",
  "m2_hd32_ds64_l7",
];

Deno.test({
  name: "webgpu matmul: oracle cases with f16 weights and packed f16 arithmetic",
  ignore,
  async fn() {
    // The f16 tolerance of tests/webgpu_test.ts (300× the f32 one), every product tiled.
    const s = 300;
    const tol = (t: { atol: number; rtol: number }) => ({ atol: t.atol * s, rtol: t.rtol * s });
    for (const name of ORACLE_CASES) {
      const exp = loadExpected(name);
      const dir = `${oracleDir()}/${name}`;
      const config = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
      const weights = await loadWeights(config, new URL(`file://${dir}/`), "f16");
      const be = await WebGpuBackend.create({ config, weights }, {
        matvecMaxRows: 0,
        matmulF16Math: true,
      });
      const lm = new MambaLM(config, be);
      try {
        if (!be.ctx.shaderF16) {
          console.error("webgpu matmul: no shader-f16 on this device, oracle f16 math skipped");
          return;
        }
        for (const run of exp.json.runs) {
          const full = await lm.forward(run.input_ids);
          const want = exp.arrays.get(`${run.name}.logits`)!.data;
          assertClose(full.data, want, tol(TOL.logits), `${name} ${run.name} logits`);
        }
      } finally {
        lm.dispose();
      }
    }
  },
});
