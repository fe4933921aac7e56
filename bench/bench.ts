/**
 * `deno task bench`: decode and prefill throughput of one or more backends on random weights in
 * the shapes of the published checkpoints (or on a model directory), measured in one run so the
 * figures can be stated as ratios.
 *
 * ```sh
 * deno task bench                                   # mamba-130m + mamba2-130m: auto vs ref
 * deno task bench --model mamba-130m --backend wasm --backend ref --decode 64 --prefill 512
 * deno task bench --model models/demo --json
 * deno task bench --compare --help                  # Mamba against a Transformer (bench/compare.ts)
 * ```
 *
 * @module
 */

import { printUsage } from "./usage.ts";
import { parseArgs } from "node:util";
import { type BackendChoice, MambaLM, parseConfig } from "../mod.ts";
import { PUBLIC_CONFIGS, randomWeights } from "../testing.ts";

/** One measured figure. */
export interface BenchResult {
  model: string;
  backend: string;
  weights: string;
  batch: number;
  /** Decode tokens per second (per sequence × batch). */
  decodeTokPerS?: number;
  /** Prefill tokens per second. */
  prefillTokPerS?: number;
  prefillLen?: number;
}

async function loadModel(name: string, backend: BackendChoice, weights: "f32" | "f16") {
  if (PUBLIC_CONFIGS[name]) {
    const config = parseConfig(PUBLIC_CONFIGS[name]);
    return await MambaLM.fromWeights(config, randomWeights(config, { dtype: weights }), {
      backend,
    });
  }
  return await MambaLM.load(name, { backend, weightsDtype: weights });
}

/** Greedy decode of `n` tokens after an 8-token prompt; returns tokens/s over the decode only. */
async function decodeRate(lm: MambaLM, n: number, batch: number): Promise<number> {
  const V = lm.config.paddedVocabSize;
  const state = lm.createState(batch);
  const prompt = Array.from({ length: batch }, (_, b) => [1, 2, 3, 4, 5, 6, 7, 8 + b]);
  let logits = await lm.prefill(state, prompt);
  const argmax = (b: number) => {
    let best = 0;
    for (let i = 1; i < lm.config.vocabSize; i++) {
      if (logits[b * V + i] > logits[b * V + best]) best = i;
    }
    return best;
  };
  // Warm-up steps (JIT, pipeline creation) are not timed.
  for (let i = 0; i < 2; i++) logits = await lm.step(state, prompt.map((_, b) => argmax(b)));
  const t0 = performance.now();
  for (let i = 0; i < n; i++) logits = await lm.step(state, prompt.map((_, b) => argmax(b)));
  return (n * batch) / ((performance.now() - t0) / 1000);
}

async function prefillRate(lm: MambaLM, len: number): Promise<number> {
  const ids = [Array.from({ length: len }, (_, i) => (i * 7919) % lm.config.vocabSize)];
  await lm.prefill(lm.createState(1), [ids[0].slice(0, 8)]); // warm-up
  const t0 = performance.now();
  await lm.prefill(lm.createState(1), ids);
  return len / ((performance.now() - t0) / 1000);
}

if (import.meta.main && Deno.args.includes("--compare")) {
  const { compareMain } = await import("./compare.ts");
  await compareMain(Deno.args);
} else if (import.meta.main) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean", short: "h" },
      model: { type: "string", multiple: true },
      backend: { type: "string", multiple: true },
      weights: { type: "string", default: "f32" },
      decode: { type: "string", default: "32" },
      prefill: { type: "string", default: "0" },
      batch: { type: "string", default: "1" },
      json: { type: "boolean" },
    },
  });
  if (v.help) {
    await printUsage(import.meta.url);
    Deno.exit(0);
  }
  const models = v.model ?? ["mamba-130m", "mamba2-130m"];
  // The best backend here, and the reference as the same-run baseline.
  const backends = (v.backend ?? ["auto", "ref"]) as BackendChoice[];
  const results: BenchResult[] = [];
  for (const model of models) {
    for (const backend of backends) {
      const lm = await loadModel(model, backend, v.weights as "f32" | "f16");
      const r: BenchResult = {
        model,
        backend: lm.backendName,
        weights: v.weights!,
        batch: Number(v.batch),
      };
      if (Number(v.decode) > 0) r.decodeTokPerS = await decodeRate(lm, Number(v.decode), r.batch);
      if (Number(v.prefill) > 0) {
        r.prefillLen = Number(v.prefill);
        r.prefillTokPerS = await prefillRate(lm, r.prefillLen);
      }
      lm.dispose();
      results.push(r);
      if (!v.json) {
        console.log(
          `${model} ${r.backend} ${r.weights} batch ${r.batch}: decode ${
            r.decodeTokPerS?.toFixed(1) ?? "-"
          } tok/s, prefill${r.prefillLen ? `-${r.prefillLen}` : ""} ${
            r.prefillTokPerS?.toFixed(1) ?? "-"
          } tok/s`,
        );
      }
    }
  }
  if (v.json) console.log(JSON.stringify(results, null, 2));
}
