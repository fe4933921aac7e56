// Abort is prompt (issue #11): long prompts are prefilled in chunks of about 50 ms of work and
// the signal is checked between them and between decoding blocks, on every backend; the model
// and the state stay usable, and chunked prefill computes what one-shot prefill does.
import assert from "node:assert/strict";
import { type InferenceState, MambaLM, type StepModel } from "../mod.ts";
import { REPO_ROOT } from "./text_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const DEMO = `${REPO_ROOT}models/demo`;

/** `lm` as a StepModel that counts the prompt tokens it was fed. */
function counting(lm: MambaLM) {
  const seen = { tokens: 0, calls: 0 };
  const model: StepModel<InferenceState> = {
    config: lm.config,
    tokenizer: lm.tokenizer,
    prefillChunkTokens: lm.prefillChunkTokens,
    createState: (b) => lm.createState(b),
    prefill: (s, ids) => {
      seen.tokens += ids[0].length;
      seen.calls++;
      return lm.prefill(s, ids);
    },
    step: (s, t) => lm.step(s, t),
  };
  return { model, seen };
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

// The GPU suites' rule: a software adapter only with MAMBA_TEST_WEBGPU=1 (see webgpu_util.ts).
const adapter = await webgpuTestAdapter("abort_test (webgpu)");

for (const backend of ["ref", "wasm", "webgpu"] as const) {
  // A real GPU may prefill the whole prompt within 50 ms: on webgpu only the tests that abort from
  // inside the model run.
  const ignore = backend === "webgpu" && !adapter;
  Deno.test({
    name:
      `abort (${backend}): fired 50 ms into a 20,000-token prompt, it stops between prefill chunks`,
    ignore: backend === "webgpu",
    fn: async () => {
      const lm = await MambaLM.load(DEMO, { backend });
      try {
        const chunk = lm.prefillChunkTokens;
        assert.ok(chunk >= 1 && chunk < 20_000, `chunk ${chunk}`);
        const before = await lm.complete("The whale", { topK: 1, maxNewTokens: 8 });
        const { model, seen } = counting(lm);
        const { complete } = await import("../src/generate.ts");
        const ac = new AbortController();
        const timer = setTimeout(() => ac.abort(), 50);
        const text = await complete(model, "x".repeat(20_000), { signal: ac.signal, topK: 1 });
        clearTimeout(timer);
        assert.equal(text, "");
        assert.ok(ac.signal.aborted);
        // It stopped at a chunk boundary, well before the end of the prompt.
        assert.ok(seen.tokens < 20_000, `fed ${seen.tokens} of 20000 prompt tokens`);
        assert.equal(seen.tokens % chunk, 0);
        assert.ok(seen.calls >= 1);
        // The model is still usable and unchanged.
        assert.equal(await lm.complete("The whale", { topK: 1, maxNewTokens: 8 }), before);
      } finally {
        lm.dispose();
      }
    },
  });

  Deno.test({
    name: `abort (${backend}): a given state is left advanced over whole chunks of the prompt`,
    ignore,
    fn: async () => {
      const lm = await MambaLM.load(DEMO, { backend });
      try {
        const chunk = lm.prefillChunkTokens;
        const ids = Array.from({ length: 8 * chunk }, (_, i) => 32 + (i * 7) % 90);
        const { model, seen } = counting(lm);
        const { complete } = await import("../src/generate.ts");
        const state = lm.createState(1);
        const ac = new AbortController();
        // Abort from inside the model after the third chunk (no clock involved).
        const inner = model.prefill;
        model.prefill = async (s, x) => {
          const r = await inner(s, x);
          if (seen.calls === 3) ac.abort();
          return r;
        };
        assert.equal(await complete(model, ids, { state, signal: ac.signal, topK: 1 }), "");
        assert.equal(seen.tokens, 3 * chunk);
        // The state equals one fed those 3 chunks at once.
        const want = lm.createState(1);
        await lm.prefill(want, [ids.slice(0, 3 * chunk)]);
        await state.sync();
        await want.sync();
        for (let l = 0; l < lm.config.nLayer; l++) {
          // Equal up to the rounding of products computed over different row counts.
          const ssm = maxAbsDiff(state.ssm[l], want.ssm[l]);
          const conv = maxAbsDiff(state.conv[l], want.conv[l]);
          assert.ok(
            ssm < 1e-3 && conv < 1e-3,
            `layer ${l}: ssm differs by ${ssm}, conv by ${conv}`,
          );
        }
        // And it continues: the rest of the prompt then gives the same logits as all at once.
        const rest = await lm.prefill(state, [ids.slice(3 * chunk)]);
        const whole = await lm.prefill(lm.createState(1), [ids]);
        assert.ok(maxAbsDiff(rest, whole) < 1e-3, `logits differ by ${maxAbsDiff(rest, whole)}`);
      } finally {
        lm.dispose();
      }
    },
  });

  Deno.test({
    name: `prefill in chunks (${backend}): the same continuation as one-shot prefill`,
    ignore,
    fn: async () => {
      const lm = await MambaLM.load(DEMO, { backend });
      try {
        // A prompt of three chunks and a bit (one byte per token).
        const prompt = "It is a truth universally acknowledged, that a single man in possession " +
          "of a good fortune, must be in want of a wife. ".repeat(20);
        const text = prompt.slice(0, 3 * lm.prefillChunkTokens + 7);
        assert.ok(new TextEncoder().encode(text).length > 3 * lm.prefillChunkTokens);
        const chunked = await lm.complete(text, { topK: 1, maxNewTokens: 24 });
        const { complete } = await import("../src/generate.ts");
        // The same model without a chunk size: one prefill call for the whole prompt.
        const oneShot: StepModel<InferenceState> = {
          config: lm.config,
          tokenizer: lm.tokenizer,
          createState: (b) => lm.createState(b),
          prefill: (s, ids) => lm.prefill(s, ids),
          step: (s, t) => lm.step(s, t),
        };
        assert.equal(chunked, await complete(oneShot, text, { topK: 1, maxNewTokens: 24 }));
      } finally {
        lm.dispose();
      }
    },
  });
}

Deno.test("abort (wasm): fused decoding stops within a block of the abort", async () => {
  const lm = await MambaLM.load(DEMO, { backend: "wasm" });
  try {
    assert.ok(lm.fusedDecoding);
    const block = lm.decodeBlockTokens;
    const ac = new AbortController();
    let n = 0;
    let atAbort = -1;
    for await (
      const _ of lm.generate("The", {
        signal: ac.signal,
        maxNewTokens: 1_000_000,
        eosTokenId: null,
      })
    ) {
      if (++n === 100) {
        ac.abort();
        atAbort = n;
      }
    }
    assert.ok(n - atAbort <= 1, `${n - atAbort} tokens after the abort`);
    // Blocks are sized to the budget: the demo model on wasm fits tens of tokens in one.
    assert.ok(block >= 1 && block <= 64);
  } finally {
    lm.dispose();
  }
});
