/**
 * A backend against `ref` on a random GPT-NeoX model at contexts the fixtures do not reach:
 * several key tiles and query tiles in prefill, decoding split over several slot ranges (with a
 * ragged last one), batch 2, a head width and rotary width that leave SIMD tails, and KV caches
 * that grow, are cloned and move between backends through bytes.
 */

import { type BackendChoice, GptNeoXLM, KvCacheState, parseNeoxConfig } from "../mod.ts";
import { randomNeoxWeights } from "../testing.ts";
import assert from "node:assert/strict";
import { argmax, assertClose } from "./oracle_util.ts";

/** Registers the comparison for `backend`. */
export function neoxLongContextSuite(backend: BackendChoice, wasm?: { threads: number }): void {
  const label = wasm ? ` (${wasm.threads} thread${wasm.threads > 1 ? "s" : ""})` : "";
  Deno.test(`gpt_neox ${backend}${label}: long context against ref`, async () => {
    const cfg = parseNeoxConfig({
      model_type: "gpt_neox",
      hidden_size: 48,
      num_attention_heads: 4, // head width 12: a SIMD tail
      num_hidden_layers: 2,
      intermediate_size: 96,
      vocab_size: 64,
      rotary_pct: 0.5, // 6 rotary channels: half 3, a tail
      max_position_embeddings: 1024,
      use_parallel_residual: true,
    });
    const weights = randomNeoxWeights(cfg, { seed: 11 });
    const ref = await GptNeoXLM.fromWeights(cfg, weights, { backend: "ref" });
    const lm = await GptNeoXLM.fromWeights(cfg, weights, { backend, wasm });
    const tol = { atol: 2e-4, rtol: 2e-4 };
    try {
      const prompt = (b: number) => Array.from({ length: 300 }, (_, i) => (i * 13 + b * 7) % 64);
      const ids = [prompt(0), prompt(1)];
      const sRef = ref.createState(2);
      const s = lm.createState(2);
      assertClose(await lm.prefill(s, ids), await ref.prefill(sRef, ids), tol, "prefill 300");
      // Decode to 560 slots: split over several slot ranges, the last ragged.
      let fork: KvCacheState | undefined;
      for (let i = 0; i < 260; i++) {
        const t = [(i * 5) % 64, (i * 3 + 1) % 64];
        const got = await lm.step(s, t);
        const want = await ref.step(sRef, t);
        if (i % 37 === 0 || i === 259) assertClose(got, want, tol, `step ${300 + i}`);
        if (i === 200) fork = s.clone();
      }
      // The fork continues from position 501 like a fresh ref cache restored from its bytes.
      const restored = KvCacheState.fromBytes(await fork!.toBytes());
      const a = await lm.step(fork!, [1, 2]);
      const b = await ref.step(restored, [1, 2]);
      assertClose(a, b, tol, "fork against ref through bytes");
      // Decoding many tokens at once (fused on the device where the backend can) from position
      // 560 gives ref's greedy tokens, and leaves a cache ref can continue from.
      if (backend === "webgpu") assert.ok(lm.fusedDecoding, "webgpu decodes on the device");
      const start = [3, 4];
      const picked: number[][] = [[], []];
      for await (const block of lm.generateTokens(s, start, 40, { topK: 1, blockSize: 16 })) {
        block.forEach((row, b) => picked[b].push(...row));
      }
      let cur = start;
      const refPicked: number[][] = [[], []];
      for (let i = 0; i < 40; i++) {
        const logits = await ref.step(sRef, cur);
        cur = cur.map((_, b) => argmax(logits, b * cfg.paddedVocabSize, cfg.vocabSize));
        cur.forEach((id, b) => refPicked[b].push(id));
      }
      assert.deepEqual(picked, refPicked);
      assert.equal(s.length, sRef.length);
      // A consumer that stops after the first block: the cache says how far the device went.
      const before = s.length;
      let yielded = 0;
      for await (const block of lm.generateTokens(s, [5, 6], 64, { topK: 1, blockSize: 8 })) {
        yielded += block[0].length;
        break;
      }
      assert.ok(s.length >= before + yielded && s.length <= before + 64, `length ${s.length}`);
      const moved = KvCacheState.fromBytes(await s.toBytes());
      assertClose(await lm.step(s, [7, 8]), await ref.step(moved, [7, 8]), tol, "after a stop");
      moved.free();
      // Full forward of a 200-token batch: query tiles against several key tiles.
      const f1 = await lm.forward([prompt(0).slice(0, 200)]);
      const f2 = await ref.forward([prompt(0).slice(0, 200)]);
      assertClose(f1.data, f2.data, tol, "forward 200");
      for (const st of [s, sRef, fork!, restored]) st.free();
    } finally {
      lm.dispose();
      ref.dispose();
    }
  });
}

/**
 * Grouped-query attention (2 KV heads for 8 query heads, as mamba_ssm's attention layers allow;
 * GPT-NeoX itself never groups) and no rotary embedding, against `ref`: prefill over several
 * tiles, then decoding across a split boundary, batch 2.
 */
export function gqaSuite(backend: BackendChoice, wasm?: { threads: number }): void {
  const label = wasm ? ` (${wasm.threads} thread${wasm.threads > 1 ? "s" : ""})` : "";
  Deno.test(`attention ${backend}${label}: grouped-query heads, no rotary, against ref`, async () => {
    const base = parseNeoxConfig({
      model_type: "gpt_neox",
      hidden_size: 64,
      num_attention_heads: 8,
      num_hidden_layers: 2,
      intermediate_size: 128,
      vocab_size: 80,
      rotary_pct: 0,
      max_position_embeddings: 512,
      use_parallel_residual: false,
    });
    const cfg = { ...base, nKvHeads: 2 };
    const weights = randomNeoxWeights(cfg, { seed: 21 });
    assert.deepEqual(weights.layers[0].qkv.shape, [(8 + 2 * 2) * 8, 64]);
    const ref = await GptNeoXLM.fromWeights(cfg, weights, { backend: "ref" });
    const lm = await GptNeoXLM.fromWeights(cfg, weights, { backend, wasm });
    const tol = { atol: 2e-4, rtol: 2e-4 };
    try {
      const ids = [0, 1].map((b) => Array.from({ length: 250 }, (_, i) => (i * 7 + b * 3) % 80));
      const s = lm.createState(2);
      const sRef = ref.createState(2);
      assertClose(await lm.prefill(s, ids), await ref.prefill(sRef, ids), tol, "prefill 250");
      for (let i = 0; i < 12; i++) {
        const t = [(i * 5) % 80, (i * 11) % 80];
        assertClose(await lm.step(s, t), await ref.step(sRef, t), tol, `step ${250 + i}`);
      }
      s.free();
      sRef.free();
    } finally {
      lm.dispose();
      ref.dispose();
    }
  });
}
