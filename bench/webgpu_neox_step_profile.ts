/**
 * Where the time of one fused GPT-NeoX decode step goes on the GPU, at given contexts: the
 * step the backend recorded for fused decoding (the model up to the logits, then the pick) is
 * replayed back to back at a fixed position and timed by the timestamps of one pass around many
 * steps; then again without each kernel group (its marginal cost) and with only that group; then
 * the wall clock of `generateTokens` at that context. The cache is reserved and declared full up
 * to the context without being prefilled (its values do not change the kernels' speed), so a
 * 32k context costs no prefill.
 *
 * ```sh
 * deno run -A bench/webgpu_neox_step_profile.ts --model pythia-1.4b --context 2048 --context 32768
 * ```
 *
 * Options: `--model NAME` (a `PUBLIC_NEOX_CONFIGS` shape, random weights), `--dtype f16|f32`,
 * `--batch N`, `--context N` (repeatable), `--reps N` (steps per timed pass), `--decode N`
 * (tokens of the wall-clock run), `--no-labels`, `--json FILE`. Sampling as `bench --compare`:
 * temperature 0.7, top-p 0.9, repetition penalty 1.2.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { GptNeoXLM } from "../src/neox_model.ts";
import { parseNeoxConfig } from "../src/neox_config.ts";
import { advanceKv, bindKv } from "../src/kv_state.ts";
import { validateSamplingOptions } from "../src/sampling.ts";
import type { WebGpuTransformerBackend } from "../src/backends/webgpu/transformer.ts";
import { PUBLIC_NEOX_CONFIGS, randomNeoxWeights } from "../testing.ts";
import { timeReplay } from "./webgpu_util.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "pythia-1.4b" },
    dtype: { type: "string", default: "f16" },
    batch: { type: "string", default: "1" },
    context: { type: "string", multiple: true, default: ["2048", "32768"] },
    reps: { type: "string", default: "20" },
    decode: { type: "string", default: "256" },
    "no-labels": { type: "boolean" },
    json: { type: "string" },
  },
});
const reps = Number(opt.reps);
const batch = Number(opt.batch);
const decode = Number(opt.decode);
const contexts = opt.context.map(Number);
const raw = PUBLIC_NEOX_CONFIGS[opt.model];
if (!raw) throw new Error(`unknown model ${opt.model} (${Object.keys(PUBLIC_NEOX_CONFIGS)})`);
const config = parseNeoxConfig(raw);
const dtype = opt.dtype as "f16" | "f32";
const maxContext = Math.max(...contexts) + decode + 64;
const lm = await GptNeoXLM.fromWeights(config, randomNeoxWeights(config, { dtype, fast: true }), {
  backend: "webgpu",
  maxContext,
});
const be = lm.backend as unknown as WebGpuTransformerBackend;
const dev = be.rec.device;
const sampling = { temperature: 0.7, topP: 0.9, repetitionPenalty: 1.2, seed: 1 };
const resolved = validateSamplingOptions({ ...sampling, vocabSize: config.vocabSize });
const rows: Record<string, unknown>[] = [];

/** A kernel label without its false / zero defines. */
const short = (label: string) => label.replace(/[A-Z0-9_]+=(false|0)(,|$)/g, "").slice(0, 120);

console.log(`${opt.model} ${dtype} b${batch} on ${be.ctx.adapterInfo}`);
for (const context of contexts) {
  const state = lm.createState(batch);
  const kv = bindKv(state, lm.backend);
  lm.backend.reserveKv(kv, context + decode + 32);
  advanceKv(state, context);
  const start = Array.from({ length: batch }, (_, b) => 1 + b);
  // A short run records the step at this cache's capacity.
  for await (const _ of lm.generateTokens(state, start, 4, sampling)) { /* warm-up */ }
  const step = be.decodeStepCommands(batch, resolved, config.vocabSize);
  if (!step) throw new Error("no fused decoding step was recorded");
  const full = await timeReplay(dev, step, reps);
  const kvBytes = 2 * config.nLayer * batch * config.nKvHeads * context * config.headDim * 4;
  console.log(
    `context ${context}: ${step.length} dispatches, ${full.toFixed(1)} µs/step GPU ` +
      `(${(1e6 / full).toFixed(0)} tok/s; KV cache ${(kvBytes / 2 ** 30).toFixed(2)} GiB)`,
  );
  rows.push({ model: opt.model, dtype, batch, context, what: "step", n: step.length, us: full });
  const labels = [...new Set(step.map((c) => c.label))];
  for (const label of opt["no-labels"] ? [] : labels) {
    const n = step.filter((c) => c.label === label).length;
    const without = await timeReplay(dev, step.filter((c) => c.label !== label), reps);
    const only = await timeReplay(dev, step.filter((c) => c.label === label), reps);
    console.log(
      `  ${(full - without).toFixed(1).padStart(7)} µs marginal  ${
        only.toFixed(1).padStart(7)
      } µs alone  ×${String(n).padStart(3)}  ${short(label)}`,
    );
    rows.push({
      model: opt.model,
      dtype,
      batch,
      context,
      label,
      n,
      marginalUs: full - without,
      aloneUs: only,
    });
  }
  const t0 = performance.now();
  let got = 0;
  for await (const b of lm.generateTokens(state, start, decode, sampling)) got += b[0].length;
  const us = (performance.now() - t0) * 1e3 / got;
  console.log(`  generateTokens wall: ${us.toFixed(1)} µs/token (${(1e6 / us).toFixed(0)} tok/s)`);
  rows.push({ model: opt.model, dtype, batch, context, what: "decode wall", us });
  lm.backend.freeKv(kv);
}
lm.dispose();
if (opt.json) {
  await Deno.writeTextFile(opt.json, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
}
