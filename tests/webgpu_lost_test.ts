/**
 * A GPU device lost while a model uses it (simulated by destroying the device): the backend
 * refuses with a clear {@link DeviceLostError}, a model loaded with a list of backends (or
 * `"auto"`) moves to the next one and computes the same numbers, states whose host copy was up to
 * date carry on, and a state changed on the lost device says so instead of running on garbage.
 *
 * In a file of its own: destroying the process-wide device would disturb other suites' models.
 */

import assert from "node:assert/strict";
import { DeviceLostError, MambaLM } from "../mod.ts";
import type { WebGpuBackend } from "../src/backends/webgpu/backend.ts";
import { assertClose, oracleDir } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const ignore = !(await webgpuTestAdapter("webgpu device-loss tests"));

const dir = () => `${oracleDir()}/m1_d64_l7`;
const TOL = { atol: 2e-4, rtol: 2e-4 };

/** Destroys the model's GPU device and waits until it reports the loss. */
async function loseDevice(lm: MambaLM): Promise<void> {
  const device = (lm.backend as WebGpuBackend).rec.device;
  device.destroy();
  await device.lost;
}

Deno.test({
  name: "webgpu lost: the model moves to the next backend; synced states follow, others refuse",
  ignore,
  async fn() {
    const lm = await MambaLM.load(dir(), { backend: ["webgpu", "wasm"], tokenizer: false });
    try {
      assert.equal(lm.backendName, "webgpu");
      const ids = [[5, 17, 3, 250, 9, 1]];
      const before = await lm.forward(ids);
      const synced = lm.createState(1);
      await lm.prefill(synced, [ids[0].slice(0, 3)]);
      await synced.sync();
      const dirty = lm.createState(1);
      await lm.prefill(dirty, [ids[0].slice(0, 3)]);

      const old = lm.backend;
      await loseDevice(lm);
      assert.match(old.lostReason ?? "", /WebGPU device lost/);
      assert.throws(() => old.embed(new Int32Array([1])), DeviceLostError);

      const after = await lm.forward(ids);
      assert.equal(lm.backendName, "wasm");
      assertClose(after.data, before.data, TOL, "logits after the move");

      // The synced state continues where it was: its next step equals a fresh prefill's.
      const next = await lm.step(synced, [ids[0][3]]);
      const fresh = lm.createState(1);
      const want = await lm.prefill(fresh, [ids[0].slice(0, 4)]);
      assertClose(next, want, TOL, "synced state after the move");
      await assert.rejects(() => lm.step(dirty, [ids[0][3]]), (e) => {
        assert.ok(e instanceof DeviceLostError);
        assert.match(e.message, /changed there since its last sync/);
        return true;
      });
    } finally {
      lm.dispose();
    }
  },
});

Deno.test({
  name: "webgpu lost: decoding in flight fails with DeviceLostError; webgpu alone cannot move",
  ignore,
  async fn() {
    const lm = await MambaLM.load(dir(), { backend: "webgpu", tokenizer: false });
    try {
      const state = lm.createState(1);
      await lm.prefill(state, [[5, 17, 3]]);
      let blocks = 0;
      await assert.rejects(async () => {
        for await (const _ of lm.generateTokens(state, [250], 200, { topK: 1, blockSize: 4 })) {
          if (++blocks === 1) await loseDevice(lm);
        }
      }, DeviceLostError);
      assert.ok(blocks >= 1);
      await assert.rejects(() => lm.forward([[1, 2]]), (e) => {
        assert.ok(e instanceof DeviceLostError);
        assert.match(e.message, /no backend to move to/);
        return true;
      });
    } finally {
      lm.dispose();
    }
  },
});
