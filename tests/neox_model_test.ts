/**
 * GPT-NeoX model plumbing on the `ref` backend: config parsing, weight checks (legacy buffers
 * ignored), `loadModel`'s choice of class, the context and memory limits, and the KV cache's
 * growth, clone and bytes format. The numerics are in tests/neox_ref_test.ts.
 */

import assert from "node:assert/strict";
import {
  byteLevelTokenizerJSON,
  ConfigError,
  GptNeoXLM,
  InputError,
  KvCacheState,
  loadModel,
  MambaLM,
  parseNeoxConfig,
  parseSafetensors,
  Tokenizer,
  WeightsError,
} from "../mod.ts";
import { randomNeoxWeights } from "../testing.ts";
import { buildNeoxWeights, LEGACY_NEOX_BUFFER, ungroupQkv } from "../src/neox_weights.ts";
import { MemorySource } from "../src/byte_source.ts";
import { openSafetensors } from "../src/safetensors.ts";
import {
  collect,
  contiguousStrides,
  pickleStateDict,
  STORAGE_CLASS,
  writeZip,
} from "./torch_save_util.ts";
import { f32Tensor, writeSafetensors } from "./safetensors_util.ts";
import { neoxDir } from "./neox_util.ts";
import { assertClose, oracleCases, oracleDir } from "./oracle_util.ts";

const SMALL = {
  model_type: "gpt_neox",
  hidden_size: 32,
  num_attention_heads: 4,
  num_hidden_layers: 2,
  intermediate_size: 64,
  vocab_size: 40,
  rotary_pct: 0.5,
  max_position_embeddings: 16,
};

Deno.test("parseNeoxConfig: Pythia fields and defaults", () => {
  const c = parseNeoxConfig(SMALL);
  assert.equal(c.arch, "gpt_neox");
  assert.equal(c.headDim, 8);
  assert.equal(c.rotaryDim, 4);
  assert.equal(c.rotaryBase, 10000);
  assert.equal(c.parallelResidual, true);
  assert.equal(c.tieEmbeddings, false);
  assert.equal(c.nKvHeads, 4);
  assert.equal(c.maxPositions, 16);
  // Newer transformers spelling.
  const n = parseNeoxConfig({
    ...SMALL,
    rotary_pct: undefined,
    rope_parameters: { partial_rotary_factor: 1, rope_theta: 500 },
  });
  assert.equal(n.rotaryDim, 8);
  assert.equal(n.rotaryBase, 500);
});

Deno.test("parseNeoxConfig: errors name the field", () => {
  const bad = (patch: Record<string, unknown>, field: string) =>
    assert.throws(
      () => parseNeoxConfig({ ...SMALL, ...patch }),
      (e) => e instanceof ConfigError && e.message.includes(field),
    );
  bad({ hidden_size: undefined }, "hidden_size");
  bad({ num_attention_heads: 5 }, "num_attention_heads");
  bad({ hidden_act: "relu" }, "hidden_act");
  bad({ rotary_pct: 0.375 }, "rotary_pct"); // 3 of 8 channels: rotate-half needs an even count
  bad({ rope_scaling: { type: "linear" } }, "rope_scaling");
  bad({ use_parallel_residual: "yes" }, "use_parallel_residual");
});

Deno.test("ungroupQkv: [head, (q|k|v), d] rows become [q | k | v]", () => {
  // 2 heads, headDim 1, width 1: rows q0 k0 v0 q1 k1 v1 → q0 q1 k0 k1 v0 v1.
  const t = { dtype: "f32" as const, shape: [6, 1], data: new Float32Array([0, 1, 2, 3, 4, 5]) };
  assert.deepEqual([...ungroupQkv(t, 2, 1).data], [0, 3, 1, 4, 2, 5]);
});

/** The safetensors tensors of a case, as test specs. */
function caseTensors(dir: string) {
  const st = parseSafetensors(Deno.readFileSync(`${dir}/model.safetensors`));
  const specs: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }> = {};
  for (const [k, t] of st.tensors) {
    specs[k] = { dtype: t.dtype, shape: [...t.shape], bytes: t.bytes };
  }
  return specs;
}

/** The buffers older Pythia checkpoints carry: a boolean causal mask, a score, frequencies. */
const LEGACY_BUFFERS = {
  "gpt_neox.layers.0.attention.bias": {
    dtype: "BOOL",
    shape: [1, 1, 2, 2],
    bytes: Uint8Array.of(1, 0, 1, 1),
  },
  "gpt_neox.layers.0.attention.masked_bias": f32Tensor([], [-1e9]),
  "gpt_neox.layers.0.attention.rotary_emb.inv_freq": f32Tensor([2], [1, 0.01]),
  "gpt_neox.layers.1.attention.bias": {
    dtype: "BOOL",
    shape: [1, 1, 2, 2],
    bytes: Uint8Array.of(1, 0, 1, 1),
  },
};

const openSt = (bytes: Uint8Array, ignore?: (name: string) => boolean) =>
  openSafetensors(new MemorySource(bytes, "model.safetensors"), ignore);
const isLegacy = (name: string) => LEGACY_NEOX_BUFFER.test(name);

Deno.test("weights: legacy buffers ignored, unknown / missing / misshaped tensors refused", async () => {
  const dir = `${neoxDir()}/neox_d64_h4_l2_rot25`;
  const cfg = parseNeoxConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
  const specs = caseTensors(dir);
  const build = async (s: typeof specs) =>
    buildNeoxWeights(cfg, [await openSt(writeSafetensors(s), isLegacy)]);
  const legacy = { ...specs, ...LEGACY_BUFFERS };
  assert.equal((await build(legacy)).layers.length, 2);
  // Only ignored names may have other dtypes: a BOOL tensor is refused otherwise.
  await assert.rejects(
    openSt(writeSafetensors(legacy)),
    (e) => e instanceof WeightsError && /unsupported dtype "BOOL"/.test(e.message),
  );
  await assert.rejects(
    build({ ...specs, "gpt_neox.extra.weight": f32Tensor([1], [0]) }),
    (e) => e instanceof WeightsError && e.message.includes("gpt_neox.extra.weight"),
  );
  const missing = { ...specs };
  delete missing["embed_out.weight"];
  await assert.rejects(
    build(missing),
    (e) => e instanceof WeightsError && e.message.includes("embed_out.weight"),
  );
  await assert.rejects(
    build({ ...specs, "gpt_neox.final_layer_norm.bias": f32Tensor([3], [0, 0, 0]) }),
    (e) => e instanceof WeightsError && e.message.includes("final_layer_norm.bias"),
  );
  const extraLayer = {
    ...specs,
    "gpt_neox.layers.2.input_layernorm.weight": f32Tensor([64], new Float32Array(64)),
  };
  await assert.rejects(
    build(extraLayer),
    (e) =>
      e instanceof WeightsError && /num_hidden_layers 2, but the weights hold 3/.test(e.message),
  );
});

Deno.test("loadModel: a Pythia checkpoint with legacy buffers, as safetensors and as pytorch_model.bin", async () => {
  const src = `${neoxDir()}/neox_d64_h4_l2_rot25`;
  const specs = { ...caseTensors(src), ...LEGACY_BUFFERS };
  const want = await (await loadModel(src, { backend: "ref" })).forward([[1, 2, 3]]);
  const tmp = await Deno.makeTempDir({ prefix: "mamba_neox_" });
  try {
    await Deno.copyFile(`${src}/config.json`, `${tmp}/config.json`);
    await Deno.writeFile(`${tmp}/model.safetensors`, writeSafetensors(specs));
    const st = await loadModel(tmp, { backend: "ref" });
    assert.deepEqual((await st.forward([[1, 2, 3]])).data, want.data);
    st.dispose();
    // The same tensors through torch.save's zip format (a BoolStorage among them).
    await Deno.remove(`${tmp}/model.safetensors`);
    const entries = Object.entries(specs);
    const pickle = pickleStateDict(entries.map(([name, t], i) => ({
      name,
      key: String(i),
      storageClass: t.dtype === "BOOL" ? "BoolStorage" : STORAGE_CLASS[t.dtype],
      storageNumel: t.shape.reduce((a, b) => a * b, 1),
      offset: 0,
      shape: t.shape,
      stride: contiguousStrides(t.shape),
    })));
    const bin = await collect((sink) =>
      writeZip(sink, [
        { name: "archive/data.pkl", data: pickle },
        { name: "archive/byteorder", data: new TextEncoder().encode("little") },
        ...entries.map(([, t], i) => ({ name: `archive/data/${i}`, data: t.bytes })),
      ])
    );
    await Deno.writeFile(`${tmp}/pytorch_model.bin`, bin);
    const pt = await loadModel(tmp, { backend: "ref" });
    assert.ok(pt instanceof GptNeoXLM);
    assert.deepEqual((await pt.forward([[1, 2, 3]])).data, want.data);
    pt.dispose();
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("loadModel: GptNeoXLM for gpt_neox, MambaLM for Mamba configs", async () => {
  const neox = await loadModel(`${neoxDir()}/neox_d64_h4_l2_rot25`, { backend: "ref" });
  assert.ok(neox instanceof GptNeoXLM);
  assert.equal(neox.config.arch, "gpt_neox");
  neox.dispose();
  const mambaCase = oracleCases().find((c) => c.kind === "model")!;
  const mamba = await loadModel(`${oracleDir()}/${mambaCase.case}`, { backend: "ref" });
  assert.ok(mamba instanceof MambaLM);
  mamba.dispose();
  await assert.rejects(loadModel("/nonexistent/model"), /no config\.json/);
});

Deno.test("context limits: maxContext and maxKvBytes are checked before any work", async () => {
  const cfg = parseNeoxConfig(SMALL);
  const lm = await GptNeoXLM.fromWeights(cfg, randomNeoxWeights(cfg));
  const state = lm.createState(1);
  await lm.prefill(state, [Array.from({ length: 15 }, (_, i) => i)]);
  await lm.step(state, [1]); // 16 = max_position_embeddings
  await assert.rejects(
    lm.step(state, [2]),
    (e) => e instanceof InputError && /maxContext 16 \(max_position_embeddings\)/.test(e.message),
  );
  assert.equal(state.length, 16, "a refused step leaves the cache as it was");
  await assert.rejects(lm.forward([Array(17).fill(0)]), InputError);
  // 2 layers × k,v × 4 heads × 8 channels × 4 bytes = 512 bytes per token.
  const capped = await GptNeoXLM.fromWeights(cfg, randomNeoxWeights(cfg), { maxKvBytes: 512 * 4 });
  const s = capped.createState(1);
  await capped.prefill(s, [[1, 2, 3, 4]]);
  await assert.rejects(
    capped.step(s, [5]),
    (e) => e instanceof InputError && e.message.includes("maxKvBytes"),
  );
  assert.throws(() => new GptNeoXLM(cfg, lm.backend, undefined, { maxContext: 0 }), InputError);
});

Deno.test("KV cache: grows past its capacity, clones independently, round-trips bytes", async () => {
  const cfg = parseNeoxConfig({ ...SMALL, max_position_embeddings: 200 });
  const lm = await GptNeoXLM.fromWeights(cfg, randomNeoxWeights(cfg, { seed: 3 }));
  const ids = Array.from({ length: 40 }, (_, i) => (i * 7) % 40);
  const full = await lm.forward([ids]);
  const V = cfg.paddedVocabSize;
  // Token by token through several capacity doublings (16 → 32 → 64).
  const state = lm.createState(1);
  let last: Float32Array = new Float32Array();
  for (const id of ids) last = await lm.step(state, [id]);
  const want = full.data.subarray(39 * V, 40 * V);
  for (let i = 0; i < V; i++) assert.ok(Math.abs(last[i] - want[i]) < 1e-4, `logit ${i}`);
  assert.equal(state.byteLength, 40 * 512);
  const bytes = await state.toBytes();
  assert.throws(() => KvCacheState.fromBytes(bytes.subarray(0, bytes.length - 4)), InputError);
  const bad = bytes.slice();
  bad[0] = 0;
  assert.throws(() => KvCacheState.fromBytes(bad), /wrong magic/);
  const again = KvCacheState.fromBytes(bytes);
  assert.deepEqual(await again.toBytes(), bytes);
  // A batch-2 cache does not fit a batch-1 call, nor does another model's.
  await assert.rejects(lm.step(lm.createState(2), [1]), /2 sequences but 1/);
  const other = parseNeoxConfig({ ...SMALL, num_hidden_layers: 3 });
  const lm2 = await GptNeoXLM.fromWeights(other, randomNeoxWeights(other));
  await assert.rejects(lm2.step(state, [1]), /does not fit/);
  state.free();
  await assert.rejects(lm.step(state, [1]), /freed/);
});

Deno.test("GptNeoXLM: generate and complete through the shared helpers", async () => {
  const cfg = parseNeoxConfig({ ...SMALL, max_position_embeddings: 64 });
  const lm = await GptNeoXLM.fromWeights(cfg, randomNeoxWeights(cfg, { seed: 5 }));
  const toks: number[] = [];
  for await (const t of lm.generate([1, 2, 3], { maxNewTokens: 8, topK: 1 })) toks.push(t.id);
  assert.equal(toks.length, 8);
  // Greedy decoding by hand gives the same tokens.
  const state = lm.createState(1);
  let logits = await lm.prefill(state, [[1, 2, 3]]);
  const V = cfg.paddedVocabSize;
  const byHand: number[] = [];
  for (let i = 0; i < 8; i++) {
    let best = 0;
    for (let v = 1; v < cfg.vocabSize; v++) if (logits[v] > logits[best]) best = v;
    byHand.push(best);
    if (i < 7) logits = await lm.step(state, [best]);
  }
  assert.deepEqual(toks, byHand);
  assert.equal(logits.length, V);
  await assert.rejects(lm.complete("text", { maxNewTokens: 2 }), /tokenizer/);
});

Deno.test("GptNeoXLM: text through a tokenizer — generateBatch and textStream", async () => {
  const cfg = parseNeoxConfig({ ...SMALL, vocab_size: 260, max_position_embeddings: 512 });
  const tokenizer = Tokenizer.fromJSON(byteLevelTokenizerJSON());
  const lm = await GptNeoXLM.fromWeights(cfg, randomNeoxWeights(cfg, { seed: 9 }), { tokenizer });
  const opts = { maxNewTokens: 6, topK: 1, vocabSize: 256 };
  const [a, b] = await lm.generateBatch(["Hello", "Hi there"], opts);
  assert.equal(a, await lm.complete("Hello", opts));
  assert.equal(b, await lm.complete("Hi there", opts));
  // A text stream keeps one cache across chunks: its memory grows with the text.
  const stream = lm.textStream({ maxNewTokens: 4, topK: 1, vocabSize: 256 });
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const out: string[] = [];
  const reading = (async () => {
    for (;;) {
      const r = await reader.read();
      if (r.done) return;
      out.push(r.value);
    }
  })();
  await writer.write("abc");
  await writer.write("def");
  await writer.close();
  await reading;
  assert.ok(out.join("").length > 0);
});

Deno.test("long inputs run in chunks: forward and prefill equal unchunked runs", async () => {
  const cfg = parseNeoxConfig({ ...SMALL, max_position_embeddings: 2048 });
  const lm = await GptNeoXLM.fromWeights(cfg, randomNeoxWeights(cfg, { seed: 4 }));
  const V = cfg.paddedVocabSize;
  // Batch 2: at most 1024 tokens per sequence per pass, so 1100 tokens take two.
  const ids = [0, 1].map((b) => Array.from({ length: 1100 }, (_, i) => (i * 11 + b) % 40));
  const full = await lm.forward(ids);
  const tol = { atol: 1e-4, rtol: 1e-4 };
  const whole = lm.createState(2);
  const last = await lm.prefill(whole, ids);
  const split = lm.createState(2);
  const head = await lm.prefill(split, ids.map((r) => r.slice(0, 1000)));
  const tail = await lm.prefill(split, ids.map((r) => r.slice(1000)));
  for (let b = 0; b < 2; b++) {
    const row = (t: number) => full.data.subarray((b * 1100 + t) * V, (b * 1100 + t + 1) * V);
    assertClose(head.subarray(b * V, (b + 1) * V), row(999), tol, `row ${b} at 999`);
    assertClose(tail.subarray(b * V, (b + 1) * V), row(1099), tol, `row ${b} at 1099`);
    assertClose(last.subarray(b * V, (b + 1) * V), row(1099), tol, `chunked prefill row ${b}`);
  }
  assert.equal(whole.length, 1100);
});
