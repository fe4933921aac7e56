/**
 * Tests of the `webgpu` backend beyond the oracle suite: the code paths the oracle's short
 * prompts do not reach (chunked Mamba-1 scan, prompts split into slabs, the tiled matmul, f16
 * through shader-f16), fused decoding against the oracle's greedy tokens, and the GPU sampler
 * against the host sampler on the same logits and seed.
 */

import assert from "node:assert/strict";
import { type GenerateTokensOptions, type InferenceState, MambaLM, parseConfig } from "../mod.ts";
import { WebGpuBackend, type WebGpuOptions } from "../src/backends/webgpu/backend.ts";
import { preprocess } from "../src/backends/webgpu/shaders.ts";
import { Sampler, type SamplingOptions, validateSamplingOptions } from "../src/sampling.ts";
import { loadWeights, type WeightsDtype } from "../src/weights.ts";
import { randomWeights } from "../testing.ts";
import { assertClose, loadExpected, oracleDir, TOL } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const ignore = !(await webgpuTestAdapter("webgpu tests"));

Deno.test("webgpu: shader preprocessor", () => {
  const src = "a\n#if X\nb ${N}\n#elif !Y\nc\n#else\nd\n#endif\n#if !X\ne\n#endif";
  assert.equal(preprocess(src, { X: true, N: 3 }), "a\nb 3");
  assert.equal(preprocess(src, { X: false, Y: false }), "a\nc\ne");
  assert.equal(preprocess(src, { X: false, Y: true }), "a\nd\ne");
  assert.throws(() => preprocess("#if A\n", {}));
  assert.throws(() => preprocess("${M}", {}));
  const u = "#unroll I N\nx${I}\n#unroll J 2\ny${I}${J}\n#endunroll\n#endunroll";
  assert.equal(preprocess(u, { N: 2 }), "x0\ny00\ny01\nx1\ny10\ny11");
});

/** A model of an oracle case on a webgpu backend made with `options`. */
async function oracleModel(
  name: string,
  options: WebGpuOptions,
  dtype: WeightsDtype = "f32",
): Promise<MambaLM> {
  const dir = `${oracleDir()}/${name}`;
  const config = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
  const weights = await loadWeights(config, new URL(`file://${dir}/`), dtype);
  return new MambaLM(config, await WebGpuBackend.create({ config, weights }, options));
}

/** The tokens of fused decoding (`generateTokens`), one row per sequence. */
async function decodeRows(
  lm: MambaLM,
  state: InferenceState,
  last: number[],
  n: number,
  options: GenerateTokensOptions,
): Promise<number[][]> {
  const got: number[][] = last.map(() => []);
  for await (const block of lm.generateTokens(state, last, n, options)) {
    block.forEach((r, b) => got[b].push(...r));
  }
  return got;
}

/**
 * Greedy fused decoding of `n` tokens after prompts `ids`: all but their last token are
 * prefilled into a new state, the last one starts the decoding.
 */
async function greedyAfter(
  lm: MambaLM,
  ids: readonly (readonly number[])[],
  n: number,
  vocabSize: number,
): Promise<{ state: InferenceState; got: number[][] }> {
  const state = lm.createState(ids.length);
  await lm.prefill(state, ids.map((r) => r.slice(0, -1)));
  const got = await decodeRows(lm, state, ids.map((r) => r.at(-1)!), n, { topK: 1, vocabSize });
  return { state, got };
}

/** Forward logits and prefill states of every run of `name` against the oracle. */
async function checkCase(name: string, options: WebGpuOptions, dtype: WeightsDtype = "f32") {
  const exp = loadExpected(name);
  const lm = await oracleModel(name, options, dtype);
  const s = dtype === "f32" ? 1 : 300;
  const tol = (t: { atol: number; rtol: number }) => ({ atol: t.atol * s, rtol: t.rtol * s });
  try {
    for (const run of exp.json.runs) {
      const arr = (k: string) => exp.arrays.get(`${run.name}.${k}`)!.data;
      const full = await lm.forward(run.input_ids);
      assertClose(full.data, arr("logits"), tol(TOL.logits), `${name} ${run.name} logits`);
      const state = lm.createState(run.batch);
      await lm.prefill(state, run.input_ids);
      await state.sync();
      for (let l = 0; l < lm.config.nLayer; l++) {
        assertClose(state.conv[l], arr(`layers.${l}.conv_state`), tol(TOL.conv), `conv ${l}`);
        assertClose(state.ssm[l], arr(`layers.${l}.ssm_state`), tol(TOL.ssm), `ssm ${l}`);
      }
    }
  } finally {
    lm.dispose();
  }
}

const M1 = ["m1_d64_l7", "m1_d96_l64_vocab500", "m1_f16_l64"];
const M2 = ["m2_hd16_ds16_l64", "m2_hd32_ds64_l7"];

Deno.test({
  name: "webgpu: chunked Mamba-1 scan (uneven chunks) matches the oracle",
  ignore,
  async fn() {
    for (const name of M1) await checkCase(name, { chunkedScanMin: 2, scanChunk: 5 });
  },
});

Deno.test({
  name: "webgpu: prompts split into slabs match the oracle",
  ignore,
  async fn() {
    // Slabs of a few tokens: every sequence of the batch on its own, state carried across.
    for (const name of [...M1, ...M2]) await checkCase(name, { slabBytes: 8192 });
  },
});

Deno.test({
  name: "webgpu: tiled matmul for every row count matches the oracle (f32 and f16 weights)",
  ignore,
  async fn() {
    for (const name of [...M1, ...M2]) await checkCase(name, { matvecMaxRows: 0 });
    for (const name of ["m1_d64_l7", "m2_hd16_ds16_l64"]) {
      await checkCase(name, { matvecMaxRows: 0 }, "f16");
    }
  },
});

Deno.test({
  name: "webgpu: f16 weights through shader-f16 match the oracle",
  ignore,
  async fn() {
    for (const name of ["m1_d96_l64_vocab500", "m2_hd32_ds64_l7"]) {
      await checkCase(name, { f16Native: true }, "f16");
    }
  },
});

Deno.test({
  name: "webgpu: long prompts (128×128 matmul, many SSD chunks, slabs) match the ref backend",
  ignore,
  async fn() {
    for (const ssm of [{}, { layer: "Mamba2", headdim: 32, d_state: 32, chunk_size: 64 }]) {
      for (const dtype of ["f32", "f16"] as const) {
        const config = parseConfig({ d_model: 128, n_layer: 2, vocab_size: 300, ssm_cfg: ssm });
        const weights = randomWeights(config, { dtype, seed: 5 });
        const ref = await MambaLM.fromWeights(config, weights, { backend: "ref" });
        const ids = [Array.from({ length: 300 }, (_, i) => (i * 31 + 7) % 300)];
        const want = await ref.forward(ids);
        for (const opts of [{}, { slabBytes: 64 * 1024, chunkedScanMin: 2 }]) {
          const lm = new MambaLM(config, await WebGpuBackend.create({ config, weights }, opts));
          try {
            const got = await lm.forward(ids);
            assertClose(got.data, want.data, TOL.logits, `${dtype} ${JSON.stringify(ssm)}`);
            const state = lm.createState(1);
            const last = await lm.prefill(state, ids);
            const V = config.paddedVocabSize;
            assertClose(last, want.data.subarray(299 * V), TOL.logits, "prefill");
          } finally {
            lm.dispose();
          }
        }
        ref.dispose();
      }
    }
  },
});

Deno.test({
  name: "webgpu: fused decoding reproduces the oracle's greedy tokens and the step path's state",
  ignore,
  async fn() {
    const cases = [...M1, ...M2, "m1_d32_l1_dtrank8", "m2_d32_ds64_l1"];
    for (const name of cases) {
      const exp = loadExpected(name);
      const lm = await MambaLM.load(`${oracleDir()}/${name}`, { backend: "webgpu" });
      try {
        for (const run of exp.json.runs) {
          for (
            const [key, vocabSize] of [["generated", exp.json.padded_vocab_size], [
              "generated_real_vocab",
              exp.json.vocab_size,
            ]] as const
          ) {
            const want = run[key];
            if (!want) continue;
            const state = lm.createState(run.batch);
            if (run.prompt_len > 1) {
              await lm.prefill(state, run.input_ids.map((r) => r.slice(0, -1)));
            }
            const last = run.input_ids.map((r) => r.at(-1)!);
            // Small blocks, so several are in flight.
            const opts = { topK: 1, vocabSize, blockSize: 5 };
            const got = await decodeRows(lm, state, last, want[0].length, opts);
            assert.deepEqual(got, want, `${name} ${run.name} ${key}`);
            // The state has consumed the prompt and the first n − 1 tokens: one more step on
            // the last token must give the logits of a fresh prefill of all of it.
            const next = await lm.step(state, got.map((g) => g.at(-1)!));
            const ref = lm.createState(run.batch);
            const all = run.input_ids.map((r, b) => [...r, ...got[b]]);
            const want2 = await lm.prefill(ref, all);
            assertClose(next, want2, { atol: 2e-4, rtol: 2e-4 }, `${name} state after decode`);
          }
        }
      } finally {
        lm.dispose();
      }
    }
  },
});

Deno.test({
  name:
    "webgpu: every matvec split (rows per team, team width, loads in flight) decodes the oracle (the matrix-vector kernel up to 32 rows)",
  ignore,
  async fn() {
    const shapes = [
      { rpt: 2 },
      { rpt: 3, team: 64 },
      { rpt: 4, unr: 2 },
      { rpt: 8, team: 128 },
      { rpt: 4, stage: false },
    ];
    for (const matvecShape of shapes) {
      for (const name of ["m1_d96_l64_vocab500", "m2_hd16_ds16_l64"]) {
        const exp = loadExpected(name);
        const lm = await oracleModel(name, { matvecShape, skinnyMinRows: 33 });
        try {
          for (const run of exp.json.runs) {
            const V = exp.json.padded_vocab_size;
            const { state, got } = await greedyAfter(lm, run.input_ids, 16, V);
            const what = `${name} ${run.name} ${JSON.stringify(matvecShape)}`;
            assert.deepEqual(got, run.generated.map((g) => g.slice(0, 16)), what);
            // One step more (matvec) against a prefill of everything (matmul).
            const next = await lm.step(state, got.map((g) => g.at(-1)!));
            const ref = lm.createState(run.batch);
            const want = await lm.prefill(ref, run.input_ids.map((r, b) => [...r, ...got[b]]));
            assertClose(next, want, { atol: 2e-4, rtol: 2e-4 }, what);
          }
        } finally {
          lm.dispose();
        }
      }
    }
  },
});

Deno.test({
  name:
    "webgpu: fused decoding of 16 sequences at once on the matrix-vector kernel (teams of the default width and of 64 lanes)",
  ignore,
  async fn() {
    const name = "m1_d64_l7";
    const exp = loadExpected(name);
    const run = exp.json.runs.find((r) => r.batch === 2)!;
    const rows = Array.from({ length: 16 }, (_, b) => b % 2);
    for (const matvecShape of [{}, { team: 64 }]) {
      const lm = await oracleModel(name, { matvecShape, skinnyMinRows: 33 });
      try {
        const ids = rows.map((r) => run.input_ids[r]);
        const { got } = await greedyAfter(lm, ids, 24, exp.json.padded_vocab_size);
        const want = rows.map((r) => run.generated[r].slice(0, 24));
        assert.deepEqual(got, want, JSON.stringify(matvecShape));
      } finally {
        lm.dispose();
      }
    }
  },
});

Deno.test({
  name: "webgpu: fused decoding of one state with a larger block size than before",
  ignore,
  async fn() {
    // Growing the block reallocates the plan's output buffer; steps captured for the smaller
    // block must not keep writing into the old one.
    const name = "m1_d64_l7";
    const exp = loadExpected(name);
    const run = exp.json.runs[0];
    const lm = await oracleModel(name, {});
    try {
      const state = lm.createState(run.batch);
      await lm.prefill(state, run.input_ids.map((r) => r.slice(0, -1)));
      const got: number[][] = run.input_ids.map(() => []);
      let last = run.input_ids.map((r) => r.at(-1)!);
      for (const blockSize of [2, 8, 32]) {
        const opts = { topK: 1, vocabSize: exp.json.padded_vocab_size, blockSize };
        for await (const block of lm.generateTokens(state, last, 8, opts)) {
          block.forEach((r, b) => got[b].push(...r));
        }
        last = got.map((g) => g.at(-1)!);
      }
      assert.deepEqual(got, run.generated.map((g) => g.slice(0, 24)));
    } finally {
      lm.dispose();
    }
  },
});

Deno.test({
  name: "webgpu: fused decoding with separate norm kernels reproduces the oracle's greedy tokens",
  ignore,
  async fn() {
    for (const name of ["m1_d64_l7", "m2_hd16_ds16_l64"]) {
      const exp = loadExpected(name);
      const lm = await oracleModel(name, { fuseNorm: false });
      try {
        for (const run of exp.json.runs) {
          const { got } = await greedyAfter(lm, run.input_ids, 32, exp.json.padded_vocab_size);
          assert.deepEqual(got, run.generated, `${name} ${run.name}`);
        }
      } finally {
        lm.dispose();
      }
    }
  },
});

Deno.test({
  name: "webgpu: the GPU sampler picks what the host sampler picks (same logits, same seed)",
  ignore,
  async fn() {
    const lm = await MambaLM.load(`${oracleDir()}/m1_d96_l64_vocab500`, { backend: "webgpu" });
    try {
      const be = lm.backend as WebGpuBackend;
      const B = 3;
      const V = lm.config.paddedVocabSize; // 512
      const plan = be.decodePlan(B);
      let x = 12345;
      const rand = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) / 2 ** 32);
      const sets: SamplingOptions[] = [
        { temperature: 0.7 },
        { temperature: 1.3, topK: 20 },
        { topP: 0.8 },
        { temperature: 0.9, topK: 50, topP: 0.95, minP: 0.02 },
        { minP: 0.1, repetitionPenalty: 1.5 },
        { topK: 1, repetitionPenalty: 2 },
        { temperature: 0 },
        { topK: 7, topP: 0.5 },
      ];
      for (const [i, opts] of sets.entries()) {
        const o = { ...opts, seed: 100 + i, vocabSize: 500 };
        const cpu = new Sampler(o);
        const s = validateSamplingOptions(o);
        const history = Array.from({ length: B }, () => [] as number[]);
        for (let step = 0; step < 20; step++) {
          const logits = new Float32Array(B * V);
          for (let j = 0; j < logits.length; j++) logits[j] = (rand() - 0.5) * 8;
          // Some ties and repeated values, as real logits have.
          logits[3] = logits[7] = logits[11];
          const gpu = await plan.sampleLogits(logits, s, {
            seed: step === 0 ? o.seed : undefined,
            history,
          });
          const want = Array.from(
            { length: B },
            (_, b) => cpu.sample(logits.subarray(b * V, (b + 1) * V), history[b]),
          );
          assert.deepEqual(gpu, want, `options ${JSON.stringify(o)}, step ${step}`);
          want.forEach((t, b) => history[b].push(t));
        }
      }
    } finally {
      lm.dispose();
    }
  },
});

Deno.test({
  name: "webgpu: sampled fused decoding equals step-by-step decoding with the host sampler",
  ignore,
  async fn() {
    const name = "m2_hd16_ds16_l64";
    const gpu = await MambaLM.load(`${oracleDir()}/${name}`, { backend: "webgpu" });
    const cpu = await MambaLM.load(`${oracleDir()}/${name}`, { backend: "ref" });
    try {
      const prompt = [[1, 2, 3, 4], [9, 8, 7, 6]];
      const opts = { temperature: 0.8, topK: 30, topP: 0.9, seed: 7, repetitionPenalty: 1.2 };
      const run = async (lm: MambaLM) => {
        const state = lm.createState(2);
        await lm.prefill(state, prompt.map((r) => r.slice(0, -1)));
        const got: number[][] = [[], []];
        const it = lm.generateTokens(state, prompt.map((r) => r.at(-1)!), 24, {
          ...opts,
          history: prompt.map((r) => r.slice(0, -1)),
        });
        for await (const block of it) block.forEach((r, b) => got[b].push(...r));
        return got;
      };
      assert.deepEqual(await run(gpu), await run(cpu));
    } finally {
      gpu.dispose();
      cpu.dispose();
    }
  },
});

Deno.test({
  name: "webgpu: a kernel the device cannot compile fails the next read, naming the kernel",
  ignore,
  async fn() {
    const lm = await oracleModel("m1_d64_l7", {});
    try {
      const ids = [[1, 2, 3]];
      const want = (await lm.forward(ids)).data;
      // NS = 0 declares `array<f32, 0>`: valid to the preprocessor, rejected by WGSL.
      (lm.backend as WebGpuBackend).pipeline("selective_scan", "scan_step", { NS: 0 });
      await assert.rejects(
        () => lm.forward(ids),
        (e: Error) =>
          e.name === "BackendError" && e.message.includes("selective_scan:scan_step:NS=0"),
      );
      // Reported once; the backend goes on computing.
      const again = (await lm.forward(ids)).data;
      assertClose(again, want, { atol: 0, rtol: 0 }, "after the failed kernel");
      // Fused decoding reads its blocks through the sampler: the same check before each block.
      const state = lm.createState(1);
      await lm.prefill(state, ids);
      (lm.backend as WebGpuBackend).pipeline("selective_scan", "scan_seq", { NS: 0 });
      await assert.rejects(
        () => decodeRows(lm, state, [4], 4, { topK: 1 }),
        (e: Error) => e.name === "BackendError" && e.message.includes("scan_seq:NS=0"),
      );
    } finally {
      lm.dispose();
    }
  },
});

Deno.test({
  name:
    "webgpu: timing passes counts every pass in order, and refuses a sum that would leave some out",
  ignore,
  async fn() {
    const lm = await oracleModel("m1_d64_l7", {}, "f32");
    try {
      const be = lm.backend as WebGpuBackend;
      if (!be.rec.ctx.timestamps) {
        assert.equal(be.rec.startTiming(4), false);
        return;
      }
      const state = lm.createState(2);
      await lm.prefill(state, [[1, 2, 3], [4, 5, 6]]);
      const decode = async () => {
        for await (const _ of lm.generateTokens(state, [7, 8], 12, { topK: 1, blockSize: 4 })) {
          // drain
        }
      };
      // 12 tokens in blocks of 4, 8: several submissions, each a pass.
      assert.ok(be.rec.startTiming(1));
      await decode();
      await assert.rejects(() => be.rec.stopTiming(), /passes past the 1 that startTiming/);
      assert.ok(be.rec.startTiming(256));
      await decode();
      const passes = await be.rec.stopTiming();
      assert.ok(passes.length > 1, `${passes.length} passes`);
      assert.ok(passes.every((t) => t >= 0 && t < 10), JSON.stringify(passes));
      // The spans: from the first pass's beginning, each pass beginning after the one before.
      assert.ok(be.rec.startTiming(256));
      await decode();
      const spans = await be.rec.stopTimingSpans();
      assert.equal(spans.length, passes.length);
      assert.equal(spans[0][0], 0);
      spans.forEach(([b, e], i) => {
        assert.ok(b <= e && (i === 0 || b >= spans[i - 1][0]), JSON.stringify(spans));
      });
    } finally {
      lm.dispose();
    }
  },
});

Deno.test({
  name: "webgpu: fused decoding's blocks grow by the plan's blockGrowth, tokens unchanged",
  ignore,
  async fn() {
    const lm = await oracleModel("m1_d64_l7", {}, "f32");
    try {
      const be = lm.backend as WebGpuBackend;
      const run = async (growth: number) => {
        be.decodePlan(2).blockGrowth = growth;
        const state = lm.createState(2);
        await lm.prefill(state, [[1, 2, 3], [4, 5, 6]]);
        const lens: number[] = [];
        const got: number[][] = [[], []];
        for await (const block of lm.generateTokens(state, [7, 8], 44, { topK: 1 })) {
          lens.push(block[0].length);
          block.forEach((r, b) => got[b].push(...r));
        }
        return { lens, got };
      };
      const two = await run(2);
      const four = await run(4);
      assert.deepEqual(two.lens, [8, 16, 20]);
      assert.deepEqual(four.lens, [8, 32, 4]);
      assert.deepEqual(four.got, two.got);
    } finally {
      lm.dispose();
    }
  },
});
