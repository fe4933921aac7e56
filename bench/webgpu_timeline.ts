/**
 * Where a fused decode call's wall time goes that its GPU time does not explain: one call is
 * timed pass by pass (each submission of a block is one compute pass, timestamped at its begin
 * and end), and the GPU's idle gaps between passes are split into those inside a block (the host
 * had not submitted the next steps yet) and those between blocks (the host was reading a block
 * back, which waits until the GPU is idle, and then encoding the next one's first step).
 *
 * ```sh
 * deno run -A bench/webgpu_timeline.ts --model mamba-130m --dtype f16 --batch 16 --decode 256
 * ```
 *
 * `--block N` sets the call's largest block (default 64, as `generateTokens`); `--growth G`,
 * `--first-submit N` and `--submit N` the decode plan's `blockGrowth`, `firstSubmitSteps` and
 * `submitSteps` (defaults as the library's); `--json FILE` appends the figures as one JSON line.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { MambaLM } from "../mod.ts";
import { randomGpuBackend } from "./webgpu_util.ts";

const { values: opt } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: "mamba-130m" },
    dtype: { type: "string", default: "f16" },
    batch: { type: "string", default: "16" },
    decode: { type: "string", default: "256" },
    block: { type: "string", default: "64" },
    growth: { type: "string" },
    "first-submit": { type: "string" },
    submit: { type: "string" },
    json: { type: "string" },
  },
});
const batch = Number(opt.batch);
const n = Number(opt.decode);
const blockSize = Number(opt.block);
const { config, be } = await randomGpuBackend(opt.model!, opt.dtype as "f32" | "f16");
const lm = new MambaLM(config, be);
const plan = be.decodePlan(batch);
if (opt.growth) plan.blockGrowth = Number(opt.growth);
if (opt["first-submit"]) plan.firstSubmitSteps = Number(opt["first-submit"]);
if (opt.submit) plan.submitSteps = Number(opt.submit);
const prompt = Array.from({ length: batch }, (_, b) => [1, 2, 3, 4, 5, 6, 7, 8 + b]);

/** A state with the prompt's first 7 tokens in (the 8th is the call's first). */
async function prompted() {
  const state = lm.createState(batch);
  await lm.prefill(state, prompt.map((r) => r.slice(0, 7)));
  return state;
}

/** One call of `count` tokens from `state`: the lengths of its blocks, and its wall seconds. */
async function call(
  state: Awaited<ReturnType<typeof prompted>>,
  count: number,
): Promise<{ lens: number[]; wall: number }> {
  const lens: number[] = [];
  const t0 = performance.now();
  const ids = prompt.map((r) => r[7]);
  for await (const block of lm.generateTokens(state, ids, count, { topK: 1, blockSize })) {
    lens.push(block[0].length);
  }
  return { lens, wall: (performance.now() - t0) / 1000 };
}

/** The passes a block of `len` steps takes: one per submission (the sampler's rule). */
function passesOf(len: number): number {
  let passes = 0;
  let flushed = 0;
  for (let i = 1; i <= len; i++) {
    if (plan.sampler.submitsAfter(i)) [passes, flushed] = [passes + 1, i];
  }
  return passes + (flushed < len ? 1 : 0);
}

// Warm-up: pipelines, buffers, and the GPU's clock.
const w0 = performance.now();
do await call(await prompted(), 32); while (performance.now() - w0 < 500);
const state = await prompted();
if (!be.rec.startTiming(n + 64)) {
  console.log("no timestamp-query: nothing to measure");
  Deno.exit(0);
}
const { lens, wall } = await call(state, n);
const spans = await be.rec.stopTimingSpans();
const expected = lens.reduce((a, l) => a + passesOf(l), 0);
if (spans.length !== expected) {
  throw new Error(`${spans.length} passes timed, ${expected} expected from blocks ${lens}`);
}

const us = (s: number) => s * 1e6;
let busy = 0;
let inside = 0;
let between = 0;
const boundaries: number[] = [];
let p = 0;
for (const len of lens) {
  const k = passesOf(len);
  for (let i = p; i < p + k; i++) {
    busy += spans[i][1] - spans[i][0];
    if (i + 1 < spans.length) {
      const gap = spans[i + 1][0] - spans[i][1];
      if (i === p + k - 1) {
        between += gap;
        boundaries.push(gap);
      } else inside += gap;
    }
  }
  p += k;
}
const span = spans.at(-1)![1];
const f = (s: number) => `${us(s).toFixed(0)} µs (${(us(s) / n).toFixed(1)} a step)`;
console.log(
  `${opt.model} ${opt.dtype} b${batch} ×${n}, blocks ${lens.join(" ")}: ${spans.length} passes`,
);
console.log(`  wall ${f(wall)}`);
console.log(`  GPU first begin → last end ${f(span)}`);
console.log(`  GPU busy ${f(busy)}`);
console.log(`  idle inside blocks ${f(inside)}`);
console.log(
  `  idle between blocks ${f(between)}: ${boundaries.map((g) => us(g).toFixed(0)).join(" ")} µs`,
);
console.log(
  `  wall outside the GPU's span ${f(wall - span)} (before the first pass, after the last)`,
);
if (opt.json) {
  const row = {
    model: opt.model,
    dtype: opt.dtype,
    batch,
    n,
    blocks: lens,
    blockGrowth: plan.blockGrowth,
    firstSubmitSteps: plan.firstSubmitSteps,
    submitSteps: plan.submitSteps,
    passes: spans.length,
    wallUs: us(wall),
    spanUs: us(span),
    busyUs: us(busy),
    insideUs: us(inside),
    betweenUs: boundaries.map(us),
    date: new Date().toISOString(),
  };
  await Deno.writeTextFile(opt.json, JSON.stringify(row) + "\n", { append: true });
}
lm.dispose();
