/**
 * Choosing a backend: one name fails as that backend fails, `"auto"` and lists skip a backend
 * that cannot start (a bad option, a missing adapter, a limit too small) and take the next one,
 * and bad preferences name themselves.
 */

import assert from "node:assert/strict";
import { BackendError, MambaLM, parseConfig } from "../mod.ts";
import { randomWeights } from "../testing.ts";

const config = parseConfig({ d_model: 32, n_layer: 2, vocab_size: 64 });
const weights = randomWeights(config, { seed: 5 });

Deno.test("backend choice: a list skips a backend that cannot start", async () => {
  const lm = await MambaLM.fromWeights(config, weights, {
    backend: ["wasm", "ref"],
    wasm: { threads: 0 }, // wasm refuses this
  });
  try {
    assert.equal(lm.backendName, "ref");
    const ref = await MambaLM.fromWeights(config, weights, { backend: "ref" });
    const ids = [[1, 2, 3]];
    assert.deepEqual((await lm.forward(ids)).data, (await ref.forward(ids)).data);
    ref.dispose();
  } finally {
    lm.dispose();
  }
});

Deno.test("backend choice: one name fails as that backend fails", async () => {
  await assert.rejects(
    () => MambaLM.fromWeights(config, weights, { backend: "wasm", wasm: { threads: 0 } }),
    (e) => e instanceof BackendError && /threads must be a positive integer/.test(e.message),
  );
});

Deno.test("backend choice: bad preferences name themselves", async () => {
  await assert.rejects(
    () => MambaLM.fromWeights(config, weights, { backend: [] }),
    (e) => e instanceof BackendError && /empty list/.test(e.message),
  );
  await assert.rejects(
    // @ts-expect-error: not a backend name
    () => MambaLM.fromWeights(config, weights, { backend: ["ref", "cuda"] }),
    (e) => e instanceof BackendError && /"cuda" is not available/.test(e.message),
  );
  await assert.rejects(
    // @ts-expect-error: not a backend name
    () => MambaLM.fromWeights(config, weights, { backend: "cuda" }),
    (e) => e instanceof BackendError && /"cuda" is not available/.test(e.message),
  );
});

Deno.test("backend choice: auto takes a compiled backend here", async () => {
  const lm = await MambaLM.fromWeights(config, weights, { backend: "auto" });
  try {
    // wasm runs wherever Deno does; webgpu only on a hardware adapter.
    assert.notEqual(lm.backendName, "ref");
  } finally {
    lm.dispose();
  }
});
