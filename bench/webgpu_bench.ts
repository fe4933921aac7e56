/**
 * Benchmark of the `webgpu` backend on random weights in the public shapes: fused greedy decode
 * (batch 1 and 16), prefill, and the memory bandwidth of the largest matrix-vector products.
 *
 * ```sh
 * deno run -A bench/webgpu_bench.ts                          # the full set (for an H200)
 * deno run -A bench/webgpu_bench.ts --model mamba-130m --dtype f16 --decode 256 --batch 1
 * deno run -A bench/webgpu_bench.ts --check                  # webgpu vs ref on small models
 *                                                            # (and fused batches of 16 and 64)
 * deno run -A bench/webgpu_bench.ts --json                   # results as JSON on stdout
 * # batched decode, one run per combination of the backend's batch options:
 * deno run -A bench/webgpu_bench.ts --model mamba-130m --dtype f16 --batch 16 --batch 64 \
 *   --skinny-min 8 --skinny-min 33 --regs 0 --regs 1 --tile tn=4,tm=4,nt=8
 * ```
 *
 * `--skinny-min N` (WebGpuOptions.skinnyMinRows: decode products of N+ rows use the skinny tiled
 * kernels), `--scan-lanes 0|1` (scanStepLanes: the separate scan step with four lanes
 * per channel), `--res-epi 0|1` (residualInOutProj: the residual added in out_proj's epilogue),
 * `--rotate 0|1` (skinnyRotate: the skinny kernel's workgroups start at different chunks of K),
 * `--xproj-split N` (xProjSplit: Mamba-1's x_proj split along K into N parts past batch 8),
 * `--regs 0|1` (skinnyRegs: the skinny products with their weights in registers),
 * `--regs-lm-head 0|1` (regsLmHead: the LM head too) and `--tile tn=…,tm=…,nt=…,mt=…,ks=…,bk=…` (skinnyShape, for every
 * product) may each be given several times; every combination gets a model of its own.
 * `--growth N` (the decode plan's blockGrowth) and `--block N` (generateTokens' blockSize, the
 * most tokens a block) may too; their combinations run on the same model.
 *
 * Decode: an 8-token prompt (7 prefilled, the 8th fed by the fused decoder), then `--decode`
 * greedy tokens; rate = batch × tokens / wall time from the call to the last block, the mean of
 * 3 calls without timestamp queries after a warm-up that ends with one untimed call of the same
 * length, as `mamba_ssm_baseline.py` times its own (plus the steady
 * rate after the first block, and the GPU time per token from a fourth call with them). The
 * steady rate reads high: the blocks in flight when the first one arrives are already partly
 * done (with 3 in flight it read 1.3-1.5× the whole call's rate, with 2 1.1-1.5×), so compare
 * the whole-call rate with `mamba_ssm`'s, which also times whole calls.
 * Prefill: one `prefill` of `--prefill` tokens after a warm-up of the same length; wall time,
 * and GPU time from timestamp queries. Bandwidth: weight bytes / GPU time of back-to-back
 * products with the LM head and layer 0's in_proj.
 *
 * Weights: `randomWeights`, with its `fast` fill (a random block tiled over each large matrix) for
 * models over 1B parameters so the set stays within minutes.
 *
 * @module
 */

import { printUsage } from "./usage.ts";
import { parseArgs } from "node:util";
import { MambaLM, parseConfig } from "../mod.ts";
import { PUBLIC_CONFIGS, randomWeights } from "../testing.ts";
import { WebGpuBackend, type WebGpuOptions } from "../src/backends/webgpu/backend.ts";
import { gpuContext } from "../src/backends/webgpu/device.ts";
import { parseFields, SKINNY_FIELDS } from "./webgpu_util.ts";

/** One measured figure. */
export interface WebGpuBenchResult {
  /** Model shape name. */
  model: string;
  /** Weight dtype. */
  weights: "f32" | "f16";
  /** What was measured. */
  kind: "decode" | "prefill" | "bandwidth" | "check";
  /** Sequences. */
  batch?: number;
  /** Tokens generated or prefilled. */
  tokens?: number;
  /** Tokens per second (all sequences), wall clock. */
  tokPerS?: number;
  /** Decode rate after the first block (reads high: see the module's notes). */
  steadyTokPerS?: number;
  /** GPU seconds per token (decode) or per call (prefill), from timestamps. */
  gpuSeconds?: number;
  /** Tokens per second if only GPU time counted. */
  gpuTokPerS?: number;
  /** Matrix for bandwidth. */
  matrix?: string;
  /** Achieved bandwidth, GB/s. */
  gbPerS?: number;
  /** Free-form note. */
  note?: string;
  /** Backend options of the run (the batch options swept). */
  options?: WebGpuOptions;
  /** Decode only: the plan's block growth and the call's most tokens a block, when swept. */
  blocks?: { growth?: number; size?: number };
}

const log = (msg: string) => console.error(`[${(performance.now() / 1000).toFixed(1)}s] ${msg}`);

async function buildModel(
  name: string,
  dtype: "f32" | "f16",
  options: WebGpuOptions = {},
  extra: Record<string, unknown> = {},
): Promise<MambaLM> {
  const raw = PUBLIC_CONFIGS[name];
  if (!raw) throw new Error(`unknown model ${name} (one of ${Object.keys(PUBLIC_CONFIGS)})`);
  const config = parseConfig({ ...raw, ...extra });
  const t0 = performance.now();
  const small = config.dModel * config.dModel * config.nLayer < 1e8;
  const weights = randomWeights(config, { dtype, fast: !small });
  const t1 = performance.now();
  const lm = new MambaLM(config, await WebGpuBackend.create({ config, weights }, options));
  log(
    `${name} ${dtype}: weights ${((t1 - t0) / 1000).toFixed(1)} s, upload ${
      ((performance.now() - t1) / 1000).toFixed(1)
    } s`,
  );
  return lm;
}

const gpu = (lm: MambaLM) => lm.backend as WebGpuBackend;

type DecodeFigures = Pick<
  WebGpuBenchResult,
  "tokPerS" | "steadyTokPerS" | "gpuSeconds" | "gpuTokPerS"
>;

/** Decode figures with the plan's block growth set to `blocks.growth` for the time of the run. */
async function decode(
  lm: MambaLM,
  batch: number,
  n: number,
  blocks: { growth?: number; size?: number } = {},
): Promise<DecodeFigures> {
  const plan = gpu(lm).decodePlan(batch);
  const growth = plan.blockGrowth;
  if (blocks.growth !== undefined) plan.blockGrowth = blocks.growth;
  try {
    return await decodeCalls(lm, batch, n, blocks.size);
  } finally {
    plan.blockGrowth = growth;
  }
}

async function decodeCalls(
  lm: MambaLM,
  batch: number,
  n: number,
  blockSize: number | undefined,
): Promise<DecodeFigures> {
  const V = lm.config.vocabSize;
  const prompt = Array.from({ length: batch }, (_, b) => [1, 2, 3, 4, 5, 6, 7, 8 + b]);
  const run = async (count: number, time: boolean) => {
    const state = lm.createState(batch);
    await lm.prefill(state, prompt.map((r) => r.slice(0, 7)));
    // Room for every pass of the call: a block's steps go in submissions of one pass each.
    const timing = time && gpu(lm).rec.startTiming(count + 64);
    const t0 = performance.now();
    let first = 0;
    let firstLen = 0;
    let got = 0;
    for await (
      const block of lm.generateTokens(state, prompt.map((r) => r[7]), count, {
        topK: 1,
        blockSize,
      })
    ) {
      if (!first) [first, firstLen] = [performance.now(), block[0].length];
      got += block[0].length;
      if (block.some((r) => r.some((t) => t < 0 || t >= V))) throw new Error("bad token id");
    }
    const t1 = performance.now();
    const passes = timing ? await gpu(lm).rec.stopTiming() : [];
    if (got !== count) throw new Error(`decoded ${got} of ${count}`);
    return {
      seconds: (t1 - t0) / 1000,
      steadySeconds: (t1 - first) / 1000,
      firstLen,
      gpuSec: passes.reduce((a, b) => a + b, 0),
    };
  };
  // Warm-up: pipelines, decode buffers, and half a second of work so the GPU clock has ramped
  // up from idle; then one untimed call of the measured length, as `mamba_ssm_baseline.py` warms
  // up (on the H200, after the short calls alone, a model's first measured 256-token calls read
  // up to 12% lower than the next ones).
  const w0 = performance.now();
  do await run(32, false); while (performance.now() - w0 < 500);
  await run(n, false);
  // The whole-call rate as `mamba_ssm_baseline.py` times its own: the mean of 3 calls, with no
  // timestamp queries in them; then one call with them for the GPU time.
  type Call = Awaited<ReturnType<typeof run>>;
  const calls: Call[] = [];
  for (let i = 0; i < 3; i++) calls.push(await run(n, false));
  const sum = (f: (c: Call) => number) => calls.reduce((a, c) => a + f(c), 0);
  const timed = await run(n, true);
  return {
    tokPerS: (3 * n * batch) / sum((c) => c.seconds),
    steadyTokPerS: sum((c) => (n - c.firstLen) * batch) / sum((c) => c.steadySeconds),
    gpuSeconds: timed.gpuSec ? timed.gpuSec / n : undefined,
    gpuTokPerS: timed.gpuSec ? (n * batch) / timed.gpuSec : undefined,
  };
}

async function prefill(
  lm: MambaLM,
  len: number,
): Promise<Pick<WebGpuBenchResult, "tokPerS" | "gpuSeconds" | "gpuTokPerS">> {
  const ids = [Array.from({ length: len }, (_, i) => (i * 7919 + 13) % lm.config.vocabSize)];
  // Warm-up: pipelines, buffer pool, GPU clock.
  const w0 = performance.now();
  do await lm.prefill(lm.createState(1), ids); while (performance.now() - w0 < 500);
  const state = lm.createState(1);
  const timing = gpu(lm).rec.startTiming(4096);
  const t0 = performance.now();
  await lm.prefill(state, ids);
  const t1 = performance.now();
  const passes = timing ? await gpu(lm).rec.stopTiming() : [];
  const gpuSec = passes.reduce((a, b) => a + b, 0);
  return {
    tokPerS: len / ((t1 - t0) / 1000),
    gpuSeconds: timing ? gpuSec : undefined,
    gpuTokPerS: timing ? len / gpuSec : undefined,
  };
}

/** Per-kernel GPU time of `run` (each dispatch in a timestamped pass of its own). */
async function profile(lm: MambaLM, what: string, per: number, run: () => Promise<void>) {
  const rec = gpu(lm).rec;
  if (!rec.startProfile()) return;
  await run();
  const prof = await rec.stopProfile();
  const rows = [...prof.entries()].sort((a, b) => b[1].seconds - a[1].seconds);
  const total = rows.reduce((a, [, e]) => a + e.seconds, 0);
  const short = (l: string) => l.replace(/,?[A-Z0-9_]+=false/g, "").replace(/:(\w+):/, ":$1 ");
  log(`profile ${what}: ${(total / per * 1e3).toFixed(3)} ms per ${per > 1 ? "step" : "call"}`);
  for (const [label, e] of rows.slice(0, 14)) {
    console.error(
      `  ${(100 * e.seconds / total).toFixed(1).padStart(5)}%  ${
        (e.seconds / e.count * 1e6).toFixed(1).padStart(8)
      } µs × ${(e.count / per).toFixed(0).padStart(4)}  ${short(label).slice(0, 110)}`,
    );
  }
}

async function bandwidth(lm: MambaLM): Promise<{ matrix: string; gbPerS: number }[]> {
  const be = gpu(lm);
  const out = [];
  for (
    const [matrix, W, reps] of [
      ["lm_head", be.weights.lmHead, 20],
      ["layers.0.in_proj", be.weights.layers[0].inProj, 100],
      ["layers.0.out_proj", be.weights.layers[0].outProj, 100],
    ] as const
  ) {
    const { seconds, bytes } = await be.timeMatvec(W, reps);
    out.push({ matrix: `${matrix} [${W.N}×${W.K}]`, gbPerS: bytes / seconds / 1e9 });
    if (W.f16 && be.ctx.shaderF16) {
      const r = await be.timeMatvec(W, reps, 1, true);
      out.push({
        matrix: `${matrix} [${W.N}×${W.K}] shader-f16`,
        gbPerS: r.bytes / r.seconds / 1e9,
      });
    }
  }
  return out;
}

/**
 * Fused greedy decoding of `batch` different prompts at once on webgpu (the skinny kernel, the
 * separate scan step past 32 sequences) against ref's steps, row by row.
 */
export async function checkBatch(ref: MambaLM, wg: MambaLM, batch: number): Promise<string> {
  const V = ref.config.vocabSize;
  const n = 16;
  const prompts = Array.from(
    { length: batch },
    (_, b) => Array.from({ length: 9 }, (_, i) => (b * 131 + i * 37 + 5) % V),
  );
  const sr = ref.createState(batch);
  await ref.prefill(sr, prompts.map((r) => r.slice(0, -1)));
  let logits = await ref.step(sr, prompts.map((r) => r.at(-1)!));
  const want: number[][] = prompts.map(() => []);
  const P = ref.config.paddedVocabSize;
  for (let i = 0; i < n; i++) {
    const next = want.map((row, b) => {
      let best = 0;
      for (let v = 1; v < V; v++) if (logits[b * P + v] > logits[b * P + best]) best = v;
      row.push(best);
      return best;
    });
    if (i < n - 1) logits = await ref.step(sr, next);
  }
  const sw = wg.createState(batch);
  await wg.prefill(sw, prompts.map((r) => r.slice(0, -1)));
  const got: number[][] = prompts.map(() => []);
  const opts = { topK: 1, vocabSize: V };
  for await (const blk of wg.generateTokens(sw, prompts.map((r) => r.at(-1)!), n, opts)) {
    blk.forEach((r, b) => got[b].push(...r));
  }
  const same = got.filter((r, b) => r.join() === want[b].join()).length;
  return `${same === batch ? "PASS" : "FAIL"} fused greedy tokens (${n} a row) equal to ref's ` +
    `in ${same}/${batch} rows`;
}

/** webgpu against ref on small random models (both mixers, f32 and f16 weights). */
async function check(): Promise<WebGpuBenchResult[]> {
  const out: WebGpuBenchResult[] = [];
  const argmax = (x: Float32Array, o: number, n: number) => {
    let b = 0;
    for (let i = 1; i < n; i++) if (x[o + i] > x[o + b]) b = i;
    return b;
  };
  // d_model 256 takes the matrix-vector kernel's several-rows path; 2048 also its unstaged
  // RMSNorm prologue (rows of 2k+ columns).
  for (
    const [layer, dModel] of [["Mamba1", 256], ["Mamba2", 256], ["Mamba1", 2048], [
      "Mamba2",
      2048,
    ]] as const
  ) {
    for (const dtype of ["f32", "f16"] as const) {
      for (const f16Native of dtype === "f16" && dModel === 256 ? [false, true] : [false]) {
        const config = parseConfig({
          d_model: dModel,
          n_layer: dModel === 256 ? 3 : 2,
          vocab_size: 1000,
          ssm_cfg: layer === "Mamba2" ? { layer, headdim: 32, chunk_size: 32 } : {},
        });
        const weights = randomWeights(config, { dtype, seed: 3 });
        const ref = await MambaLM.fromWeights(config, weights, { backend: "ref" });
        const wg = new MambaLM(
          config,
          await WebGpuBackend.create({ config, weights }, { f16Native }),
        );
        const ids = [Array.from({ length: 100 }, (_, i) => (i * 37) % 1000)];
        const a = await ref.forward(ids);
        const b = await wg.forward(ids);
        let maxErr = 0;
        let maxRef = 0;
        for (let i = 0; i < a.data.length; i++) {
          maxErr = Math.max(maxErr, Math.abs(a.data[i] - b.data[i]));
          maxRef = Math.max(maxRef, Math.abs(a.data[i]));
        }
        // Greedy decode: fused on the GPU against ref steps.
        const sr = ref.createState(1);
        let logits = await ref.prefill(sr, [ids[0].slice(0, 99)]);
        logits = await ref.step(sr, [ids[0][99]]);
        const want: number[] = [];
        for (let i = 0; i < 24; i++) {
          want.push(argmax(logits, 0, config.vocabSize));
          if (i < 23) logits = await ref.step(sr, [want[i]]);
        }
        const sw = wg.createState(1);
        await wg.prefill(sw, [ids[0].slice(0, 99)]);
        const got: number[] = [];
        for await (const blk of wg.generateTokens(sw, [ids[0][99]], 24, { topK: 1 })) {
          got.push(...blk[0]);
        }
        let same = 0;
        while (same < 24 && got[same] === want[same]) same++;
        const ok = maxErr <= 1e-3 * Math.max(1, maxRef) && same === 24;
        const note = `${ok ? "PASS" : "FAIL"} max |Δlogit| ${maxErr.toExponential(2)} ` +
          `(max |logit| ${maxRef.toFixed(2)}), greedy tokens equal for ${same}/24` +
          (f16Native ? " (shader-f16)" : "");
        log(`check ${layer} d_model ${dModel} ${dtype}: ${note}`);
        out.push({ model: `random-${layer}-${dModel}`, weights: dtype, kind: "check", note });
        if (dModel === 256 && !f16Native) {
          for (const batch of [16, 64]) {
            const bnote = await checkBatch(ref, wg, batch);
            log(`check ${layer} d_model ${dModel} ${dtype} batch ${batch}: ${bnote}`);
            out.push({
              model: `random-${layer}-${dModel}`,
              weights: dtype,
              kind: "check",
              batch,
              note: bnote,
            });
          }
        }
        ref.dispose();
        wg.dispose();
      }
    }
  }
  return out;
}

if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean", short: "h" },
      model: { type: "string", multiple: true },
      dtype: { type: "string", multiple: true },
      decode: { type: "string", default: "256" },
      batch: { type: "string", multiple: true },
      prefill: { type: "string", multiple: true },
      bandwidth: { type: "boolean", default: true },
      "no-bandwidth": { type: "boolean" },
      check: { type: "boolean" },
      info: { type: "boolean" },
      profile: { type: "boolean" },
      json: { type: "boolean" },
      out: { type: "string" },
      "skinny-min": { type: "string", multiple: true },
      "scan-lanes": { type: "string", multiple: true },
      "res-epi": { type: "string", multiple: true },
      rotate: { type: "string", multiple: true },
      "xproj-split": { type: "string", multiple: true },
      regs: { type: "string", multiple: true },
      "regs-lm-head": { type: "string", multiple: true },
      tile: { type: "string", multiple: true },
      growth: { type: "string", multiple: true },
      block: { type: "string", multiple: true },
    },
  });
  if (v.help) {
    await printUsage(import.meta.url);
    Deno.exit(0);
  }
  const results: WebGpuBenchResult[] = [];
  const emit = (r: WebGpuBenchResult) => {
    results.push(r);
    if (v.out) Deno.writeTextFileSync(v.out, JSON.stringify(r) + "\n", { append: true });
    const f = (x?: number, d = 0) => x === undefined ? "-" : x.toFixed(d);
    const opts =
      (r.options && Object.keys(r.options).length ? ` ${JSON.stringify(r.options)}` : "") +
      (r.blocks ? ` blocks ${JSON.stringify(r.blocks)}` : "");
    if (r.kind === "decode" || r.kind === "prefill") {
      log(
        `${r.model} ${r.weights}${opts} ${r.kind} b${r.batch} ×${r.tokens}: ${f(r.tokPerS)} tok/s` +
          (r.steadyTokPerS ? ` (steady ${f(r.steadyTokPerS)})` : "") +
          (r.gpuTokPerS ? `, GPU-only ${f(r.gpuTokPerS)} tok/s` : "") +
          (r.gpuSeconds ? ` (${f(r.gpuSeconds * 1e3, 3)} ms)` : ""),
      );
    } else if (r.kind === "bandwidth") {
      log(`${r.model} ${r.weights} matvec ${r.matrix}: ${f(r.gbPerS)} GB/s`);
    }
  };
  const ctx = await gpuContext();
  const info = {
    adapter: ctx.adapterInfo,
    shaderF16: ctx.shaderF16,
    timestamps: ctx.timestamps,
    subgroupSize: ctx.subgroupSize,
    maxBinding: ctx.maxBinding,
    maxBuffer: ctx.maxBuffer,
    maxWorkgroupStorage: ctx.maxWorkgroupStorage,
    features: [...ctx.device.features],
    date: new Date().toISOString(),
  };
  log(`adapter: ${JSON.stringify(info)}`);
  if (v.check) { for (const r of await check()) emit(r); }

  type Task = {
    model: string;
    dtype: "f32" | "f16";
    batches: number[];
    prefill: number[];
    options?: WebGpuOptions;
  };
  let tasks: Task[];
  const dtypes = (v.dtype ?? ["f32", "f16"]) as ("f32" | "f16")[];
  if (v.model) {
    tasks = v.model.flatMap((model) =>
      dtypes.map((dtype) => ({
        model,
        dtype,
        batches: (v.batch ?? ["1"]).map(Number),
        prefill: (v.prefill ?? []).map(Number),
      }))
    );
  } else if (v.check || v.info) {
    tasks = [];
  } else {
    // The full set of the issue.
    tasks = [
      ...dtypes.map((dtype) => ({ model: "mamba-130m", dtype, batches: [1, 16], prefill: [] })),
      ...dtypes.map((dtype) => ({
        model: "mamba2-130m",
        dtype,
        batches: [1],
        prefill: dtype === "f32" ? [2048, 16384] : [2048],
      })),
      ...dtypes.map((dtype) => ({ model: "mamba-2.8b", dtype, batches: [1], prefill: [] })),
      ...dtypes.map((dtype) => ({
        model: "mamba2-2.7b",
        dtype,
        batches: [1],
        prefill: dtype === "f16" ? [2048, 16384] : [],
      })),
    ];
  }
  const n = Number(v.decode);
  // Every combination of the batch options given (one model each).
  let variants: WebGpuOptions[] = [{}];
  const cross = <T>(vals: T[] | undefined, set: (o: WebGpuOptions, x: T) => WebGpuOptions) => {
    if (vals) variants = variants.flatMap((o) => vals.map((x) => set(o, x)));
  };
  cross(v["skinny-min"]?.map(Number), (o, x) => ({ ...o, skinnyMinRows: x }));
  cross(v["scan-lanes"]?.map((x) => x !== "0"), (o, x) => ({ ...o, scanStepLanes: x }));
  cross(v["res-epi"]?.map((x) => x !== "0"), (o, x) => ({ ...o, residualInOutProj: x }));
  cross(v.rotate?.map((x) => x !== "0"), (o, x) => ({ ...o, skinnyRotate: x }));
  cross(v["xproj-split"]?.map(Number), (o, x) => ({ ...o, xProjSplit: x }));
  cross(v.regs?.map((x) => x !== "0"), (o, x) => ({ ...o, skinnyRegs: x }));
  cross(v["regs-lm-head"]?.map((x) => x !== "0"), (o, x) => ({ ...o, regsLmHead: x }));
  cross(
    v.tile?.map((t) => parseFields(t, SKINNY_FIELDS, "--tile")),
    (o, x) => ({ ...o, skinnyShape: x }),
  );
  tasks = tasks.flatMap((t) => variants.map((options) => ({ ...t, options })));
  for (const t of tasks) {
    const options = t.options ?? {};
    const lm = await buildModel(t.model, t.dtype, options);
    try {
      for (const batch of t.batches) {
        for (const growth of v.growth?.map(Number) ?? [undefined]) {
          for (const size of v.block?.map(Number) ?? [undefined]) {
            if (n <= 0) continue;
            const blocks = { growth, size };
            const r = await decode(lm, batch, n, blocks);
            emit({
              model: t.model,
              weights: t.dtype,
              kind: "decode",
              batch,
              tokens: n,
              ...r,
              options,
              ...(growth ?? size ? { blocks } : {}),
            });
          }
        }
        if (n > 0 && v.profile) {
          await profile(lm, `${t.model} ${t.dtype} decode b${batch}`, 4, async () => {
            const state = lm.createState(batch);
            const first = Array.from({ length: batch }, (_, b) => 5 + b);
            for await (const _ of lm.generateTokens(state, first, 4, { topK: 1 })) { /**/ }
          });
        }
      }
      for (const len of t.prefill) {
        const r = await prefill(lm, len);
        emit({ model: t.model, weights: t.dtype, kind: "prefill", batch: 1, tokens: len, ...r });
        if (v.profile) {
          const ids = [
            Array.from({ length: len }, (_, i) => (i * 7919 + 13) % lm.config.vocabSize),
          ];
          await profile(lm, `${t.model} ${t.dtype} prefill ${len}`, 1, async () => {
            await lm.prefill(lm.createState(1), ids);
          });
        }
      }
      if (v.bandwidth && !v["no-bandwidth"]) {
        for (const r of await bandwidth(lm)) {
          emit({ model: t.model, weights: t.dtype, kind: "bandwidth", ...r });
        }
      }
    } catch (e) {
      log(`${t.model} ${t.dtype}: ERROR ${(e as Error).stack}`);
      emit({ model: t.model, weights: t.dtype, kind: "check", note: `error: ${e}` });
    } finally {
      lm.dispose();
    }
  }
  if (v.json) console.log(JSON.stringify({ info, results }, null, 2));
}
