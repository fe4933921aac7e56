/**
 * `deno task bench --compare` (bench/compare.ts) on tiny random models: the report has a row per
 * model, batch and context, prefill only up to --max-prefill, the large batch where the KV
 * caches fit the budget, and the SVG a line per series. No speed is asserted (benchmarks measure
 * speed; this checks the tool).
 */

import assert from "node:assert/strict";
import { compareSvg, compareTable, runCompare } from "../bench/compare.ts";

Deno.test("bench --compare: rows, batches, prefill limit, SVG and table", async () => {
  const progress: number[] = [];
  const report = await runCompare({
    backend: "ref",
    pair: "tiny",
    weights: "f32",
    contexts: [8, 16, 64],
    maxPrefill: 16,
    decode: 4,
    maxBatch: 4,
    // tiny-pythia's KV cache: 2 layers × (k, v) × 64 × 4 bytes = 1 KiB per token.
    memory: 64 * 1024,
    sampling: { temperature: 0.7, topP: 0.9, repetitionPenalty: 1.2, seed: 1 },
    onProgress: (done) => progress.push(done),
  });
  const key = (r: { model: string; batch: number; context: number }) =>
    `${r.model}/${r.batch}/${r.context}`;
  // With room for 4 decoded + 8 more tokens, a sequence needs 20 KiB at context 8 (64 KiB fit
  // 3, so batch 2), 28 KiB at 16 (batch 2), 76 KiB at 64 (no large batch).
  assert.deepEqual(report.rows.map(key), [
    "tiny-mamba/1/8",
    "tiny-pythia/1/8",
    "tiny-mamba/2/8",
    "tiny-pythia/2/8",
    "tiny-mamba/1/16",
    "tiny-pythia/1/16",
    "tiny-mamba/2/16",
    "tiny-pythia/2/16",
    "tiny-mamba/1/64",
    "tiny-pythia/1/64",
  ]);
  for (const r of report.rows) {
    assert.equal(r.error, undefined, key(r));
    assert.ok(r.decodeTokPerS! > 0, key(r));
    // Prefill is measured at batch 1 up to max-prefill only.
    assert.equal(r.prefillS !== undefined, r.batch === 1 && r.context <= 16, key(r));
  }
  const kv = report.rows.filter((r) => r.arch === "gpt_neox" && r.batch === 1);
  assert.deepEqual(kv.map((r) => r.stateBytesPerSeq), [8, 16, 64].map((c) => c * 1024));
  const mamba = report.rows.filter((r) => r.arch !== "gpt_neox");
  assert.ok(mamba.every((r) => r.stateBytesPerSeq === mamba[0].stateBytesPerSeq));
  assert.equal(progress.at(-1), report.rows.length);
  const svg = compareSvg(report);
  assert.equal(svg.match(/<polyline /g)?.length, 2 * 4); // 2 panels × (2 models × 2 batches)
  assert.match(compareTable(report), /batch 1, context 64: \d+\.\d\d×/);
});
