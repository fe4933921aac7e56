/**
 * A model moving down its list of backends when the device is lost, without a GPU: the loss is
 * simulated by giving a CPU backend a `lostReason` (what a WebGPU backend reports once its
 * device is gone). Both model classes, loaded from their fixtures and built from weights in
 * memory; the "no backend to move to" error; states and KV caches of the lost backend. The
 * WebGPU suites (tests/webgpu_lost_test.ts, tests/neox_webgpu_lost_test.ts) lose a real device.
 */

import assert from "node:assert/strict";
import { DeviceLostError, GptNeoXLM, MambaLM, parseNeoxConfig } from "../mod.ts";
import { randomNeoxWeights } from "../testing.ts";
import { neoxDir } from "./neox_util.ts";
import { assertClose, oracleDir } from "./oracle_util.ts";
import { quiet } from "./quiet.ts";

const TOL = { atol: 2e-4, rtol: 2e-4 };
/** One wasm thread: these models are tiny, and the machine is shared. */
const WASM = { threads: 1 };

/** Makes `backend` report a lost device, as a WebGPU backend does once its device is gone. */
function loseDevice(backend: object, reason = "simulated device loss"): void {
  Object.defineProperty(backend, "lostReason", { value: reason, configurable: true });
}

/** What the device-loss checks need of either model class. */
interface Movable {
  readonly backend: object;
  readonly backendName: string;
  forward(ids: number[][]): Promise<{ data: Float32Array }>;
}

/**
 * `lm` (backends wasm, then ref) loses its device; its next forward of `ids` moves it to ref and
 * gives the logits it gave `before`. Returns those and what the move logged.
 */
async function loseAndMoveToRef(
  lm: Movable,
  ids: number[][],
  before: { data: Float32Array },
): Promise<{ after: { data: Float32Array }; logged: string[] }> {
  loseDevice(lm.backend);
  const { value: after, logged } = await quiet(() => lm.forward(ids));
  assert.equal(lm.backendName, "ref");
  assertClose(after.data, before.data, TOL, "logits after the move");
  return { after, logged };
}

/**
 * `lm` (backends wasm, then ref) loses its device and moves to ref with the same logits;
 * `alone` (one backend) loses its device and says there is no backend to move to.
 */
async function assertMoveToRef(lm: Movable, alone: Movable): Promise<void> {
  const ids = [[1, 2, 3, 4]];
  await loseAndMoveToRef(lm, ids, await lm.forward(ids));

  loseDevice(alone.backend);
  await assert.rejects(() => alone.forward(ids), (e) => {
    assert.ok(e instanceof DeviceLostError);
    assert.match(e.message, /simulated device loss; no backend to move to/);
    return true;
  });
}

Deno.test("MambaLM device lost: load moves wasm → ref; synced states follow, others refuse", async () => {
  const lm = await MambaLM.load(`${oracleDir()}/m1_d64_l7`, {
    backend: ["wasm", "ref"],
    wasm: WASM,
    tokenizer: false,
  });
  try {
    assert.equal(lm.backendName, "wasm");
    const ids = [[5, 17, 3, 250, 9, 1]];
    const before = await lm.forward(ids);
    const synced = lm.createState(1);
    await lm.prefill(synced, [ids[0].slice(0, 3)]);
    await synced.sync();
    const dirty = lm.createState(1);
    await lm.prefill(dirty, [ids[0].slice(0, 3)]);

    const { logged } = await loseAndMoveToRef(lm, ids, before);
    assert.match(logged.join("\n"), /simulated device loss; moving the model to the "ref"/);

    const next = await lm.step(synced, [ids[0][3]]);
    const want = await lm.prefill(lm.createState(1), [ids[0].slice(0, 4)]);
    assertClose(next, want, TOL, "synced state after the move");
    await assert.rejects(() => lm.step(dirty, [ids[0][3]]), (e) => {
      assert.ok(e instanceof DeviceLostError);
      assert.match(e.message, /changed there since its last sync/);
      return true;
    });

    // ref was the end of the chain.
    loseDevice(lm.backend, "ref lost too");
    await assert.rejects(() => lm.forward(ids), /ref lost too; no backend to move to/);
  } finally {
    lm.dispose();
  }
});

Deno.test("MambaLM device lost: fromConfig keeps its weights for the move; one backend cannot move", async () => {
  const config = { d_model: 32, n_layer: 2, vocab_size: 64 };
  const lm = await MambaLM.fromConfig(config, { seed: 4, backend: ["wasm", "ref"], wasm: WASM });
  const alone = await MambaLM.fromConfig(config, { seed: 4, backend: "wasm", wasm: WASM });
  try {
    await assertMoveToRef(lm, alone);
    assert.equal(alone.backendName, "wasm");
  } finally {
    lm.dispose();
    alone.dispose();
  }
});

Deno.test("GptNeoXLM device lost: load moves wasm → ref; caches of the lost backend refuse", async () => {
  const lm = await GptNeoXLM.load(`${neoxDir()}/neox_d64_h4_l2_rot25`, {
    backend: ["wasm", "ref"],
    wasm: WASM,
    tokenizer: false,
  });
  try {
    assert.equal(lm.backendName, "wasm");
    const ids = [[5, 17, 3, 250, 9, 1]];
    const before = await lm.forward(ids);
    const cache = lm.createState(1);
    await lm.prefill(cache, [ids[0].slice(0, 3)]);

    const { after } = await loseAndMoveToRef(lm, ids, before);
    await assert.rejects(
      () => lm.step(cache, [ids[0][3]]),
      (e) => e instanceof DeviceLostError && /is gone with it: simulated/.test(e.message),
    );
    const fresh = lm.createState(1);
    const logits = await lm.prefill(fresh, [ids[0]]);
    const V = lm.config.paddedVocabSize;
    assertClose(logits, after.data.subarray(5 * V, 6 * V), TOL, "a fresh cache after the move");
  } finally {
    lm.dispose();
  }
});

Deno.test("GptNeoXLM device lost: fromWeights moves down its list; one backend cannot move", async () => {
  const config = parseNeoxConfig({
    model_type: "gpt_neox",
    hidden_size: 32,
    num_attention_heads: 4,
    num_hidden_layers: 2,
    intermediate_size: 64,
    vocab_size: 64,
  });
  const weights = randomNeoxWeights(config);
  const lm = await GptNeoXLM.fromWeights(config, weights, { backend: ["wasm", "ref"], wasm: WASM });
  const alone = await GptNeoXLM.fromWeights(config, weights, { backend: "ref" });
  try {
    await assertMoveToRef(lm, alone);
  } finally {
    lm.dispose();
    alone.dispose();
  }
});
