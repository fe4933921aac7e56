/**
 * A GPU device lost under a GPT-NeoX model (simulated by destroying the device): a model loaded
 * with a list of backends moves to the next one and computes the same numbers; a KV cache that
 * lived on the lost device says it is gone, and a fresh one works. In a file of its own, like
 * tests/webgpu_lost_test.ts (destroying the device disturbs other suites' models).
 */

import assert from "node:assert/strict";
import { DeviceLostError, GptNeoXLM, loadModel } from "../mod.ts";
import type { WebGpuTransformerBackend } from "../src/backends/webgpu/transformer.ts";
import { neoxDir } from "./neox_util.ts";
import { assertClose } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const adapter = await webgpuTestAdapter("gpt_neox webgpu device-loss test");

Deno.test({
  name: "gpt_neox webgpu lost: the model moves to the next backend; its old caches refuse",
  ignore: !adapter,
  async fn() {
    const lm = await loadModel(`${neoxDir()}/neox_d64_h4_l2_rot25`, {
      backend: ["webgpu", "wasm"],
      tokenizer: false,
    });
    assert.ok(lm instanceof GptNeoXLM);
    try {
      assert.equal(lm.backendName, "webgpu");
      const ids = [[5, 17, 3, 250, 9, 1]];
      const before = await lm.forward(ids);
      const cache = lm.createState(1);
      await lm.prefill(cache, [ids[0].slice(0, 3)]);
      const device = (lm.backend as WebGpuTransformerBackend).rec.device;
      device.destroy();
      await device.lost;
      const after = await lm.forward(ids);
      assert.equal(lm.backendName, "wasm");
      assertClose(after.data, before.data, { atol: 1e-4, rtol: 1e-4 }, "logits after the move");
      await assert.rejects(
        () => lm.step(cache, [ids[0][3]]),
        (e) => e instanceof DeviceLostError && /is gone with it/.test(e.message),
      );
      const fresh = lm.createState(1);
      const logits = await lm.prefill(fresh, [ids[0]]);
      const V = lm.config.paddedVocabSize;
      const last = after.data.subarray(5 * V, 6 * V);
      assertClose(logits, last, { atol: 1e-4, rtol: 1e-4 }, "a fresh cache on the new backend");
      fresh.free();
    } finally {
      lm.dispose();
    }
  },
});
