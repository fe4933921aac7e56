/**
 * A backend against `ref` on a random GPT-NeoX model at contexts the fixtures do not reach:
 * several key tiles and query tiles in prefill, decoding split over several slot ranges (with a
 * ragged last one), batch 2, a head width and rotary width that leave SIMD tails, and KV caches
 * that grow, are cloned and move between backends through bytes.
 */

import { type BackendChoice, GptNeoXLM, KvCacheState, parseNeoxConfig } from "../mod.ts";
import { randomNeoxWeights } from "../testing.ts";
import { assertClose } from "./oracle_util.ts";

/** Registers the comparison for `backend`. */
export function neoxLongContextSuite(backend: BackendChoice): void {
  Deno.test(`gpt_neox ${backend}: long context against ref`, async () => {
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
    const lm = await GptNeoXLM.fromWeights(cfg, weights, { backend });
    const tol = { atol: 2e-4, rtol: 2e-4 };
    try {
      const prompt = (b: number) => Array.from({ length: 300 }, (_, i) => (i * 13 + b * 7) % 64);
      const ids = [prompt(0), prompt(1)];
      const sRef = ref.createState(2);
      const s = lm.createState(2);
      assertClose(await lm.prefill(s, ids), await ref.prefill(sRef, ids), tol, "prefill 300");
      // Decode to 560 slots: 3 splits of 256, the last ragged.
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
