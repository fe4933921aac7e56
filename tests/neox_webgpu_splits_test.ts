/**
 * The `webgpu` backend's decoding attention against `ref` with few, long splits (many slots per
 * lane, the merge of long partials), step by step and fused, for head widths that take 16-byte
 * loads (32) and that do not (10).
 */

import { GptNeoXLM, parseNeoxConfig } from "../mod.ts";
import { randomNeoxWeights } from "../testing.ts";
import type { WebGpuTransformerBackend } from "../src/backends/webgpu/transformer.ts";
import assert from "node:assert/strict";
import { argmax, assertClose } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const cases = [
  { hidden: 64, heads: 2, rotaryPct: 0.25 },
  { hidden: 40, heads: 4, rotaryPct: 0.4 },
];

if (await webgpuTestAdapter("gpt_neox webgpu splits")) {
  for (const { hidden, heads, rotaryPct } of cases) {
    for (const groups of [1, 6]) {
      const hd = hidden / heads;
      Deno.test(`gpt_neox webgpu: head width ${hd}, ${groups} split workgroups`, async () => {
        const cfg = parseNeoxConfig({
          model_type: "gpt_neox",
          hidden_size: hidden,
          num_attention_heads: heads,
          num_hidden_layers: 2,
          intermediate_size: 2 * hidden,
          vocab_size: 72,
          rotary_pct: rotaryPct,
          max_position_embeddings: 1024,
          use_parallel_residual: true,
        });
        const weights = randomNeoxWeights(cfg, { seed: 5 + hd });
        const ref = await GptNeoXLM.fromWeights(cfg, weights, { backend: "ref" });
        const lm = await GptNeoXLM.fromWeights(cfg, weights, { backend: "webgpu" });
        // 1 workgroup: one split per head (about 500 slots, eight per lane); 6: three splits
        // per head with 2 heads, two with 4.
        (lm.backend as unknown as WebGpuTransformerBackend).splitGroups = groups;
        const tol = { atol: 2e-4, rtol: 2e-4 };
        try {
          const ids = [Array.from({ length: 480 }, (_, i) => (i * 11 + 3) % 72)];
          const s = lm.createState(1);
          const sRef = ref.createState(1);
          assertClose(await lm.prefill(s, ids), await ref.prefill(sRef, ids), tol, "prefill");
          for (let i = 0; i < 3; i++) {
            const t = [(i * 7) % 72];
            assertClose(await lm.step(s, t), await ref.step(sRef, t), tol, `step ${480 + i}`);
          }
          assert.ok(lm.fusedDecoding);
          const picked: number[] = [];
          for await (const b of lm.generateTokens(s, [9], 24, { topK: 1, blockSize: 8 })) {
            picked.push(...b[0]);
          }
          const want: number[] = [];
          let cur = 9;
          for (let i = 0; i < 24; i++) {
            cur = argmax(await ref.step(sRef, [cur]), 0, cfg.vocabSize);
            want.push(cur);
          }
          assert.deepEqual(picked, want);
          assertClose(await lm.step(s, [1]), await ref.step(sRef, [1]), tol, "after fused");
          s.free();
          sRef.free();
        } finally {
          lm.dispose();
          ref.dispose();
        }
      });
    }
  }
} else {
  Deno.test({
    name: "gpt_neox webgpu splits: skipped (no hardware WebGPU adapter here; see the line above)",
    ignore: true,
    fn() {},
  });
}
