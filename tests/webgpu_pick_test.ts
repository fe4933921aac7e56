/**
 * `MambaLM.prefillAndPick` on `webgpu` picks on the GPU (only the ids come back): the same tokens
 * as `prefill` on `ref` followed by each row's host sampler, with the streams carried on.
 */

import assert from "node:assert/strict";
import { MambaLM, Sampler, type SamplingOptions } from "../mod.ts";
import { oracleDir } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const ignore = !(await webgpuTestAdapter("webgpu pick tests"));

Deno.test({
  name: "webgpu: prefillAndPick picks on the device what ref's logits and the host samplers pick",
  ignore,
  async fn() {
    const dir = `${oracleDir()}/m1_d96_l64_vocab500`;
    const gpu = await MambaLM.load(dir, { backend: "webgpu" });
    const cpu = await MambaLM.load(dir, { backend: "ref" });
    try {
      let read = 0;
      const be = gpu.backend;
      const plainRead = be.read.bind(be);
      be.read = (a) => (read++, plainRead(a));
      const rows: SamplingOptions[] = [
        { temperature: 0.9, topK: 40, topP: 0.95, minP: 0.02, seed: 3 },
        { temperature: 0, repetitionPenalty: 1.5 },
        { temperature: 1.2, topP: 0.7, repetitionPenalty: 1.3, seed: 4 },
      ];
      const make = () => rows.map((o) => new Sampler({ ...o, vocabSize: 500 }));
      const [sg, sc] = [make(), make()];
      const prompt = [[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]];
      const [stg, stc] = [gpu.createState(3), cpu.createState(3)];
      const history = prompt.map((p) => [...p]);
      let ids = prompt;
      for (let round = 0; round < 6; round++) {
        const got = await gpu.prefillAndPick(stg, ids, sg, history);
        const logits = await cpu.prefill(stc, ids);
        const V = cpu.config.paddedVocabSize;
        const want = sc.map((s, b) => s.sample(logits.subarray(b * V, (b + 1) * V), history[b]));
        assert.deepEqual(got, want, `round ${round}`);
        got.forEach((t, b) => history[b].push(t));
        ids = got.map((t) => [t]);
      }
      assert.equal(read, 0, "the logits were read back");
    } finally {
      gpu.dispose();
      cpu.dispose();
    }
  },
});

Deno.test("prefillAndPick on ref and wasm: the host samplers on the logits", async () => {
  const dir = `${oracleDir()}/m1_d96_l64_vocab500`;
  for (const backend of ["ref", "wasm"] as const) {
    const lm = await MambaLM.load(dir, { backend });
    try {
      const o = { temperature: 0.8, topP: 0.9, seed: 11, vocabSize: 500 };
      const state = lm.createState(1);
      const picked = await lm.prefillAndPick(state, [[1, 2, 3]], [new Sampler(o)], [[1, 2, 3]]);
      const again = lm.createState(1);
      const logits = await lm.prefill(again, [[1, 2, 3]]);
      assert.deepEqual(picked, [new Sampler(o).sample(logits, [1, 2, 3])], backend);
      await assert.rejects(
        () => lm.prefillAndPick(state, [[1]], [], undefined),
        /0 samplers for 1 sequences/,
      );
    } finally {
      lm.dispose();
    }
  }
});
