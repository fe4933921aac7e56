/**
 * Repeated calls on the `webgpu` backends reuse their activation buffers: a call that left one
 * activation out of the pool (the final norm's residual did) made a new buffer every call, and
 * with it a new bind group for every kernel that touched the rotated buffers.
 */

import assert from "node:assert/strict";
import { GptNeoXLM, MambaLM, parseNeoxConfig } from "../mod.ts";
import { randomNeoxWeights } from "../testing.ts";
import { gpuContext } from "../src/backends/webgpu/device.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const ignore = !(await webgpuTestAdapter("webgpu reuse tests"));

/** Counts the GPU buffers labelled "activation" or "*_state.*" and the bind groups made. */

async function counting(fn: () => Promise<unknown>): Promise<{ buffers: number; groups: number }> {
  const device = (await gpuContext()).device;
  const made = { buffers: 0, groups: 0 };
  const createBuffer = device.createBuffer;
  const createBindGroup = device.createBindGroup;
  device.createBuffer = function (d: GPUBufferDescriptor) {
    if (d.label === "activation" || /_state\./.test(d.label ?? "")) made.buffers++;
    return createBuffer.call(this, d);
  };
  device.createBindGroup = function (d: GPUBindGroupDescriptor) {
    made.groups++;
    return createBindGroup.call(this, d);
  };
  try {
    await fn();
  } finally {
    device.createBuffer = createBuffer;
    device.createBindGroup = createBindGroup;
  }
  return made;
}

Deno.test({
  name: "webgpu: repeated calls and fresh states make no new buffers or bind groups",
  ignore,
  fn: async () => {
    const lm = await MambaLM.fromConfig(
      { d_model: 64, n_layer: 3, vocab_size: 96, ssm_cfg: {} },
      { seed: 3, backend: "webgpu" },
    );
    try {
      const state = lm.createState(1);
      const calls = async () => {
        await lm.prefill(state, [[1, 2, 3, 4, 5]]);
        await lm.step(state, [6]);
      };
      // Warm: the pools fill, and the order buffers come out of them settles.
      for (let i = 0; i < 10; i++) await calls();
      const made = await counting(async () => {
        for (let i = 0; i < 5; i++) await calls();
      });
      assert.deepEqual(made, { buffers: 0, groups: 0 });
      state.release();
      // A fresh state per request, as the server makes them: a freed state's buffers come back.
      const request = async () => {
        const s = lm.createState(1);
        await lm.prefill(s, [[7, 8, 9]]);
        s.release();
      };
      for (let i = 0; i < 10; i++) await request();
      const fresh = await counting(async () => {
        for (let i = 0; i < 5; i++) await request();
      });
      assert.deepEqual(fresh, { buffers: 0, groups: 0 });
      // Reused buffers start from zero: the same prompt gives the same logits as the first time.
      const a = lm.createState(1);
      const first = await lm.prefill(a, [[7, 8, 9]]);
      await lm.prefill(a, [[1, 2]]);
      a.release();
      const b = lm.createState(1);
      assert.deepEqual(await lm.prefill(b, [[7, 8, 9]]), first);
      b.release();
    } finally {
      lm.dispose();
    }
  },
});

Deno.test({
  name: "webgpu gpt_neox: repeated prefills make no new activation buffers",
  ignore,
  fn: async () => {
    const cfg = parseNeoxConfig({
      model_type: "gpt_neox",
      hidden_size: 48,
      num_attention_heads: 4,
      num_hidden_layers: 2,
      intermediate_size: 96,
      vocab_size: 64,
      rotary_pct: 0.5,
      max_position_embeddings: 256,
      use_parallel_residual: true,
    });
    const lm = await GptNeoXLM.fromWeights(cfg, randomNeoxWeights(cfg, { seed: 5 }), {
      backend: "webgpu",
    });
    try {
      const run = async () => {
        const s = lm.createState(1);
        await lm.prefill(s, [[1, 2, 3, 4, 5, 6, 7]]);
        s.free();
      };
      for (let i = 0; i < 10; i++) await run();
      const made = await counting(async () => {
        for (let i = 0; i < 5; i++) await run();
      });
      assert.equal(made.buffers, 0);
    } finally {
      lm.dispose();
    }
  },
});
