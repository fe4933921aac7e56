// Memory stays flat over a long stream (issue #11): 40k streamed tokens used to add ~0.24 MB
// per 1k tokens. The structure that grew was the repetition-penalty history, an array of every
// id seen (and a penalised sample cost O(tokens so far)); it is now one entry per distinct id.
// The 1M-token RSS figure is bench/stream_memory_bench.ts's (see bench/RESULTS.md).
import assert from "node:assert/strict";
import { generate, type InferenceStateLike, type StepModel, TokenHistory } from "../mod.ts";

Deno.test("TokenHistory: bounded by the vocabulary however many ids are pushed", () => {
  const h = new TokenHistory([5, 5, 7]);
  assert.deepEqual(h.ids, [5, 7]);
  for (let i = 0; i < 1_000_000; i++) h.push((i * 7919) % 300);
  assert.equal(h.ids.length, 300);
  assert.ok(h.has(299) && !h.has(300));
  h.push(-1);
  h.push(1.5);
  assert.equal(h.ids.length, 300);
});

/** A tiny state-free model whose logits are a fixed pseudo-random function of the last token. */
class TinyModel implements StepModel<InferenceStateLike> {
  readonly config = { vocabSize: 64, paddedVocabSize: 64 };
  #rows: Float32Array[] = Array.from(
    { length: 64 },
    (_, t) => Float32Array.from({ length: 64 }, (_, j) => Math.sin(t * 12.9898 + j * 78.233) * 3),
  );
  createState(batch = 1): InferenceStateLike {
    return { batch, clone: () => this.createState(batch) };
  }
  prefill(_s: InferenceStateLike, ids: number[][]): Promise<Float32Array> {
    return Promise.resolve(this.#rows[ids[0].at(-1)!]);
  }
  step(_s: InferenceStateLike, tokens: number[]): Promise<Float32Array> {
    return Promise.resolve(this.#rows[tokens[0]]);
  }
}

Deno.test("generate: the live heap does not grow with the stream (repetition penalty on)", async () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  const heap = () => {
    gc?.();
    return Deno.memoryUsage().heapUsed;
  };
  let n = 0;
  let atWarm = 0;
  const total = 300_000;
  for await (
    const _ of generate(new TinyModel(), [1, 2, 3], {
      maxNewTokens: total,
      repetitionPenalty: 1.2,
      temperature: 1,
      seed: 3,
      eosTokenId: null,
    })
  ) {
    if (++n === 30_000) atWarm = heap();
  }
  assert.equal(n, total);
  const growth = heap() - atWarm;
  // An array of every id would hold 270k more numbers here (over 2 MB with its spare capacity).
  assert.ok(
    growth < 512 * 1024,
    `heap grew by ${(growth / 1024).toFixed(0)} KiB over ${total - 30_000} tokens`,
  );
});
