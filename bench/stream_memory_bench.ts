/**
 * Memory over a long stream: generates `--tokens` tokens (default 1,000,000) in one generation
 * from the bundled demo model and samples the process's RSS and V8 heap every `--every` tokens
 * (default 10,000). Memory must stay flat: everything kept per stream (state, sampler, repetition
 * history, text pipeline) is bounded, so after warm-up the slope is noise.
 *
 * ```sh
 * deno run -A --v8-flags=--expose-gc bench/stream_memory_bench.ts                 # 1M tokens, wasm
 * deno run -A --v8-flags=--expose-gc bench/stream_memory_bench.ts --tokens 100000 --path fused
 * ```
 *
 * `--path host` (default) steps the model once per token and samples on the host, as the CLI
 * does; `--path fused` lets the backend run its decoding loop (`generateTokens`), as
 * `MambaLM.generate` does on wasm and webgpu. With `--expose-gc` the heap figure is taken after a
 * full collection (the RSS figure never forces one). `--json` prints every sample.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type BackendChoice,
  generate,
  type InferenceState,
  MambaLM,
  type StepModel,
} from "../mod.ts";

const { values: v } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string", default: new URL("../models/demo", import.meta.url).pathname },
    backend: { type: "string", default: "wasm" },
    threads: { type: "string", default: "1" },
    tokens: { type: "string", default: "1000000" },
    every: { type: "string", default: "10000" },
    path: { type: "string", default: "host" },
    "repetition-penalty": { type: "string", default: "1.1" },
    json: { type: "boolean", default: false },
  },
});
const total = Number(v.tokens);
const every = Number(v.every);
const MB = 1024 * 1024;

const lm = await MambaLM.load(v.model, {
  backend: v.backend as BackendChoice,
  wasm: { threads: Number(v.threads) },
});
/** The model as the CLI sees it: prefill and step only (no fused decoding). */
const hostOnly: StepModel<InferenceState> = {
  config: lm.config,
  tokenizer: lm.tokenizer,
  createState: (b) => lm.createState(b),
  prefill: (s, ids) => lm.prefill(s, ids),
  step: (s, t) => lm.step(s, t),
};
const model: StepModel<InferenceState> = v.path === "fused" ? lm : hostOnly;
const gc = (globalThis as { gc?: () => void }).gc;

interface Sample {
  tokens: number;
  seconds: number;
  rssMiB: number;
  heapMiB: number;
}
const samples: Sample[] = [];
const t0 = performance.now();
let n = 0;
let chars = 0;
for await (
  const t of generate(model, "The state of the Union", {
    maxNewTokens: total,
    eosTokenId: null,
    temperature: 0.9,
    repetitionPenalty: Number(v["repetition-penalty"]),
    seed: 1,
  })
) {
  chars += t.text.length;
  if (++n % every === 0) {
    const rss = Deno.memoryUsage().rss / MB;
    gc?.();
    const heap = Deno.memoryUsage().heapUsed / MB;
    samples.push({
      tokens: n,
      seconds: (performance.now() - t0) / 1000,
      rssMiB: rss,
      heapMiB: heap,
    });
    if (v.json) console.log(JSON.stringify(samples.at(-1)));
  }
}
const seconds = (performance.now() - t0) / 1000;
lm.dispose();

/** Least-squares slope of `y` over tokens, in MiB per 100k tokens, from the samples given. */
function slope(s: Sample[], y: (x: Sample) => number): number {
  const xs = s.map((p) => p.tokens / 1e5);
  const ys = s.map(y);
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += (xs[i] - mx) * (ys[i] - my);
    den += (xs[i] - mx) ** 2;
  }
  return den > 0 ? num / den : 0;
}

// Warm-up (allocator, JIT, first blocks) is excluded from the slope: the first 10% of samples.
const steady = samples.slice(Math.floor(samples.length / 10));
const f = (x: number) => x.toFixed(1);
const rss = samples.map((s) => s.rssMiB);
const heap = samples.map((s) => s.heapMiB);
console.log(
  `${n} tokens (${chars} chars) on ${v.backend}, path ${v.path}, in ${f(seconds)} s ` +
    `(${f(n / seconds)} tok/s); ${samples.length} samples every ${every}\n` +
    `RSS  MiB: start ${f(rss[0])}, end ${f(rss.at(-1)!)}, max ${f(Math.max(...rss))}, ` +
    `slope ${slope(steady, (s) => s.rssMiB).toFixed(3)} MiB per 100k tokens\n` +
    `heap MiB: start ${f(heap[0])}, end ${f(heap.at(-1)!)}, max ${f(Math.max(...heap))}, ` +
    `slope ${slope(steady, (s) => s.heapMiB).toFixed(3)} MiB per 100k tokens` +
    (gc ? " (after gc)" : " (no --expose-gc: heap includes garbage)"),
);
