/**
 * Batched fused decoding on the `webgpu` backend: batches of 8 to 64 sequences (the skinny
 * tiled product, `wgsl/skinny.wgsl`, and the separate scan step past 32 sequences) reproduce
 * the oracle's greedy tokens row by row, and leave the state a prefill of everything gives; the
 * skinny kernel's tiles and thresholds are swept on small oracle models.
 */

import assert from "node:assert/strict";
import { MambaLM, parseConfig } from "../mod.ts";
import { WebGpuBackend, type WebGpuOptions } from "../src/backends/webgpu/backend.ts";
import { loadWeights, type WeightsDtype } from "../src/weights.ts";
import { assertClose, loadExpected, oracleDir } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const ignore = !(await webgpuTestAdapter("webgpu batch tests"));

/** A model of an oracle case on a webgpu backend made with `options`. */
async function oracleModel(
  name: string,
  options: WebGpuOptions,
  dtype: WeightsDtype,
): Promise<MambaLM> {
  const dir = `${oracleDir()}/${name}`;
  const config = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
  const weights = await loadWeights(config, new URL(`file://${dir}/`), dtype);
  return new MambaLM(config, await WebGpuBackend.create({ config, weights }, options));
}

/** Runs `fn` on {@link oracleModel}'s model and frees it, whatever `fn` does. */
async function withOracleModel<T>(
  name: string,
  options: WebGpuOptions,
  dtype: WeightsDtype,
  fn: (lm: MambaLM, be: WebGpuBackend) => Promise<T> | T,
): Promise<T> {
  const lm = await oracleModel(name, options, dtype);
  try {
    return await fn(lm, lm.backend as WebGpuBackend);
  } finally {
    lm.dispose();
  }
}

/**
 * Decodes `batch` sequences at once, sequence b being the oracle's run row `b % rows` (so every
 * row's expected tokens are known), `n` greedy tokens by fused decoding; asserts the tokens,
 * then one more (unfused) step against a prefill of the prompt and everything decoded.
 */
async function checkBatch(
  name: string,
  batch: number,
  dtype: WeightsDtype,
  options: WebGpuOptions,
  n = 12,
): Promise<void> {
  const exp = loadExpected(name);
  const run = exp.json.runs.reduce((a, r) => r.batch > a.batch ? r : a);
  const rows = Array.from({ length: batch }, (_, b) => b % run.batch);
  const ids = rows.map((r) => run.input_ids[r]);
  const lm = await oracleModel(name, options, dtype);
  const what = `${name} ${dtype} batch ${batch} ${JSON.stringify(options)}`;
  try {
    const state = lm.createState(batch);
    await lm.prefill(state, ids.map((r) => r.slice(0, -1)));
    const got: number[][] = ids.map(() => []);
    const opts = { topK: 1, vocabSize: exp.json.padded_vocab_size, blockSize: 5 };
    for await (const block of lm.generateTokens(state, ids.map((r) => r.at(-1)!), n, opts)) {
      block.forEach((r, b) => got[b].push(...r));
    }
    assert.deepEqual(got, rows.map((r) => run.generated[r].slice(0, n)), what);
    const next = await lm.step(state, got.map((g) => g.at(-1)!));
    const ref = lm.createState(batch);
    const want = await lm.prefill(ref, ids.map((r, b) => [...r, ...got[b]]));
    const tol = dtype === "f32" ? 2e-4 : 2e-3;
    assertClose(next, want, { atol: tol, rtol: tol }, `${what}: state after decoding`);
  } finally {
    lm.dispose();
  }
}

const CASES = ["m1_d64_l7", "m2_hd16_ds16_l64"];

Deno.test({
  name: "webgpu: fused decoding of 8, 16, 33 and 64 sequences reproduces the oracle (f32, f16)",
  ignore,
  async fn() {
    for (const name of CASES) {
      for (const dtype of ["f32", "f16"] as const) {
        for (const batch of [8, 16, 33, 64]) await checkBatch(name, batch, dtype, {});
      }
    }
  },
});

Deno.test({
  name:
    "webgpu: the staged skinny kernel and the matrix-vector kernel where the defaults pick others; both forms of the scan steps",
  ignore,
  async fn() {
    for (const name of CASES) {
      await checkBatch(name, 8, "f32", { skinnyMinRows: 8, skinnyRegs: false });
      await checkBatch(name, 16, "f16", { skinnyMinRows: 33 });
    }
    // The scan step as one thread per (channel, sequence) and as four lanes, from one sequence.
    for (const scanStepLanes of [false, true]) {
      await checkBatch("m1_d64_l7", 1, "f32", { scanStepLanes });
    }
    // The four-lane step with x_proj's row in parts (16 sequences), and with a dt_rank (6) that
    // is not a multiple of the lanes and 3 parts.
    await checkBatch("m1_d64_l7", 16, "f16", {});
    await checkBatch("m1_d96_l64_vocab500", 9, "f16", { skinnyMinRows: 9, xProjSplit: 3 });
    // Mamba-2's SSD step, the vec4 form (the default) and the scalar one.
    await checkBatch("m2_hd16_ds16_l64", 3, "f32", { ssdStepVec: false });
    // The residual added in in_proj's prologue rather than out_proj's epilogue.
    for (const name of CASES) {
      await checkBatch(name, 16, "f16", { residualInOutProj: false });
    }
    // One sequence, every product (prefill's short rows too) through the skinny kernel; the
    // vocabulary of 500 is not a multiple of any tile and dt_proj's K of 6 not of 4.
    await checkBatch("m1_d96_l64_vocab500", 3, "f16", { skinnyMinRows: 1 });
  },
});

Deno.test({
  name:
    "webgpu: Mamba-1's x_proj split along K (xProjSplit), its parts added by the scan step, reproduces the oracle",
  ignore,
  async fn() {
    // The split is taken where it applies (else the checks below would test the unsplit path),
    // and only there: not at batch 1 (the matrix-vector kernel), nor for Mamba-2.
    await withOracleModel("m1_d64_l7", { xProjSplit: 4 }, "f16", (_, be) => {
      assert.equal(be.xProjSplit(16), 4);
      assert.equal(be.xProjSplit(1), 1);
    });
    await withOracleModel("m2_hd16_ds16_l64", { xProjSplit: 4 }, "f32", (_, be) => {
      assert.equal(be.xProjSplit(16), 1);
    });
    await assert.rejects(
      () => checkBatch("m1_d64_l7", 16, "f32", { xProjSplit: 0 }),
      /xProjSplit must be an integer from 1 to 64/,
    );
    // x_proj's K is 128 here (8 chunks of 16): 3 parts of 3, 3 and 2 chunks; 8 of one; 16, of
    // which half get no chunk and write zeros. f32 and f16 weights, 16 and 33 sequences; a model
    // whose dt_rank (6) is not a multiple of the four lanes.
    for (const dtype of ["f32", "f16"] as const) {
      for (const [batch, split] of [[16, 3], [16, 8], [33, 16], [33, 2]]) {
        await checkBatch("m1_d64_l7", batch, dtype, { xProjSplit: split });
      }
    }
    await checkBatch("m1_d96_l64_vocab500", 9, "f16", { xProjSplit: 5, skinnyMinRows: 9 });
    // Unsplit (the other tests of this file run the default split).
    await checkBatch("m1_d64_l7", 16, "f16", { xProjSplit: 1 });
  },
});

Deno.test({
  name:
    "webgpu: every skinny tile (rows per thread, threads, K slices, chunk), with and without the rotated walk along K, decodes the oracle",
  ignore,
  async fn() {
    const tiles = [
      { tn: 1, tm: 1, nt: 8, mt: 4, ks: 1, bk: 8 },
      { tn: 2, tm: 8, nt: 16, mt: 1, ks: 3, bk: 16, pf: 0 },
      { tn: 4, tm: 4, nt: 4, mt: 2, ks: 7, bk: 8, pf: 0 },
      { tn: 8, tm: 2, nt: 2, mt: 3, ks: 5, bk: 32 },
      { tn: 4, tm: 4, nt: 32, mt: 2, ks: 1, bk: 8 },
      { tn: 3, tm: 5, nt: 5, mt: 2 },
    ];
    // Each tile on one of the two mixers, alternately (the tests are slow on lavapipe).
    for (const [i, skinnyShape] of tiles.entries()) {
      const o = { skinnyMinRows: 1, skinnyShape, skinnyRegs: false };
      if (i % 2) await checkBatch("m1_d64_l7", 13, "f16", o, 8);
      else await checkBatch("m2_hd16_ds16_l64", 7, "f32", o, 8);
    }
    // Every workgroup walking K from chunk 0 (WebGpuOptions.skinnyRotate off; on above).
    const straight = {
      skinnyMinRows: 1,
      skinnyShape: tiles[0],
      skinnyRotate: false,
      skinnyRegs: false,
    };
    await checkBatch("m1_d64_l7", 13, "f16", straight, 8);
  },
});

Deno.test({
  name:
    "webgpu: the register product (skinnyRegs) decodes the oracle with its default tile and odd ones",
  ignore,
  async fn() {
    // Where it applies by default: up to 16 rows of x, and not to a vocabulary of rows.
    await withOracleModel("m1_d64_l7", {}, "f16", (_, be) => {
      const inProj = be.weights.layers[0].inProj;
      assert.ok(be.usesRegs(inProj, 16) && !be.usesRegs(inProj, 17));
      assert.ok(!be.usesRegs({ ...inProj, N: 50280 }, 16));
    });
    // The default tile at 16 sequences (two tiles of x) and 11 (the second one short).
    for (const name of CASES) {
      await checkBatch(name, 16, "f16", { skinnyRegs: true });
      await checkBatch(name, 11, "f32", { skinnyRegs: true, skinnyMinRows: 11 }, 8);
    }
    // Tiles that leave lanes, rows of x and rows of W partly empty, several passes along K, and
    // odd strides of the final sums; every product through it (a vocabulary of 500).
    const tiles = [
      { tn: 1, nc: 4, kl: 8, mb: 5, kp: 1 },
      { tn: 3, nc: 2, kl: 16, mb: 7, kp: 2 },
      { tn: 4, nc: 8, kl: 32, mb: 16, kp: 4 },
      { tn: 2, nc: 16, kl: 4, mb: 3, kp: 3 },
    ];
    for (const [i, regsShape] of tiles.entries()) {
      const o = { skinnyMinRows: 1, skinnyRegs: true, regsShape };
      if (i % 2) await checkBatch("m1_d96_l64_vocab500", 13, "f16", o, 8);
      else await checkBatch("m2_hd16_ds16_l64", 7, "f32", o, 8);
    }
    // The residual in in_proj's prologue: those products stay on the staged kernel.
    await checkBatch("m1_d64_l7", 16, "f16", { skinnyRegs: true, residualInOutProj: false }, 8);
    // A tile that cannot run names itself.
    for (const regsShape of [{ nc: 16, kl: 32 }, { kp: 0 }]) {
      const o = { skinnyMinRows: 1, skinnyRegs: true, regsShape };
      await withOracleModel("m1_d64_l7", o, "f32", async (lm) => {
        await assert.rejects(
          async () => await lm.forward([[1, 2, 3]]),
          (e: Error) => e.name === "BackendError" && e.message.includes("register tile"),
        );
      });
    }
  },
});

Deno.test({
  name: "webgpu: a skinny tile that cannot run is a BackendError naming the tile",
  ignore,
  async fn() {
    for (const skinnyShape of [{ nt: 64, mt: 8 }, { bk: 12 }, { tn: 0 }, { pf: 2 }]) {
      const o = { skinnyMinRows: 1, skinnyShape, skinnyRegs: false };
      await withOracleModel("m1_d64_l7", o, "f32", async (lm) => {
        await assert.rejects(
          async () => await lm.forward([[1, 2, 3]]),
          (e: Error) => e.name === "BackendError" && e.message.includes("skinny tile"),
        );
      });
    }
  },
});
