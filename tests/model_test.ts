// Loading (sharded, tied, transformers names, bad files), input validation and the state API.
import assert from "node:assert/strict";
import {
  InferenceState,
  InputError,
  MambaError,
  MambaLM,
  parseSafetensors,
  WeightsError,
} from "../mod.ts";
import { oracleDir } from "./oracle_util.ts";
import { writeSafetensors } from "./safetensors_util.ts";

/** These tests are about loading and the model API, so they run on the reference backend. */
const REF = { backend: "ref" } as const;
const CASE = "m1_d64_l7";
const M2CASE = "m2_hd32_ds64_l7";

/** A temp copy of an oracle model whose tensors `edit` may change. */
async function tempModel(
  name: string,
  edit?: (t: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }>) => void,
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "mamba-test-" });
  await Deno.copyFile(`${oracleDir()}/${name}/config.json`, `${dir}/config.json`);
  const st = parseSafetensors(await Deno.readFile(`${oracleDir()}/${name}/model.safetensors`));
  const tensors: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }> = {};
  for (const [k, t] of st.tensors) {
    tensors[k] = { dtype: t.dtype, shape: [...t.shape], bytes: t.bytes };
  }
  edit?.(tensors);
  await Deno.writeFile(`${dir}/model.safetensors`, writeSafetensors(tensors));
  return dir;
}

async function rejectsWeights(dir: string, pattern: RegExp) {
  await assert.rejects(() => MambaLM.load(dir, REF), (e: unknown) => {
    assert.ok(e instanceof WeightsError, `expected WeightsError, got ${e}`);
    assert.match(e.message, pattern);
    return true;
  });
  await Deno.remove(dir, { recursive: true });
}

const ids = [[1, 5, 9, 2, 7]];

Deno.test("load: missing, extra and misshaped tensors are named", async () => {
  await rejectsWeights(
    await tempModel(CASE, (t) => delete t["backbone.layers.1.mixer.D"]),
    /missing tensor "backbone\.layers\.1\.mixer\.D" \(expected shape \[128\]\)/,
  );
  await rejectsWeights(
    await tempModel(CASE, (t) => {
      t["backbone.layers.0.mixer.extra"] = { dtype: "F32", shape: [1], bytes: new Uint8Array(4) };
    }),
    /unexpected tensor "backbone\.layers\.0\.mixer\.extra"/,
  );
  await rejectsWeights(
    await tempModel(CASE, (t) => {
      t["backbone.norm_f.weight"].shape = [32, 2];
    }),
    /tensor "backbone\.norm_f\.weight" has shape \[32,2\] but the config needs \[64\]/,
  );
});

Deno.test("load: truncated weights file", async () => {
  const dir = await tempModel(CASE);
  const bytes = await Deno.readFile(`${dir}/model.safetensors`);
  await Deno.writeFile(`${dir}/model.safetensors`, bytes.subarray(0, bytes.length - 100));
  await rejectsWeights(dir, /beyond the data/);
});

Deno.test("load: missing directory or config gives a clear error", async () => {
  await assert.rejects(() => MambaLM.load("/nonexistent/model", REF), (e: unknown) => {
    assert.ok(e instanceof MambaError);
    assert.match((e as Error).message, /no config\.json/);
    return true;
  });
});

Deno.test("load: tied embeddings without lm_head, transformers key names, sharded files", async () => {
  const ref = await MambaLM.load(`${oracleDir()}/${CASE}`, REF);
  const want = await ref.forward(ids);
  // No lm_head.weight, and the transformers spelling "embeddings".
  const dir = await tempModel(CASE, (t) => {
    delete t["lm_head.weight"];
    t["backbone.embeddings.weight"] = t["backbone.embedding.weight"];
    delete t["backbone.embedding.weight"];
  });
  const tied = await MambaLM.load(dir, REF);
  assert.deepEqual((await tied.forward(ids)).data, want.data);
  // The same tensors split over two shards with an index.
  const st = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
  const names = [...st.tensors.keys()];
  const shard = (part: string[]) =>
    writeSafetensors(Object.fromEntries(part.map((k) => {
      const t = st.tensors.get(k)!;
      return [k, { dtype: t.dtype, shape: [...t.shape], bytes: t.bytes }];
    })));
  const half = Math.floor(names.length / 2);
  const weightMap: Record<string, string> = {};
  names.forEach((k, i) => weightMap[k] = i < half ? "a.safetensors" : "b.safetensors");
  await Deno.writeFile(`${dir}/a.safetensors`, shard(names.slice(0, half)));
  await Deno.writeFile(`${dir}/b.safetensors`, shard(names.slice(half)));
  await Deno.remove(`${dir}/model.safetensors`);
  await Deno.writeTextFile(
    `${dir}/model.safetensors.index.json`,
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  const progress: number[] = [];
  const sharded = await MambaLM.load(dir, { ...REF, onProgress: (n) => progress.push(n) });
  assert.deepEqual(progress, [1, 2]);
  assert.deepEqual((await sharded.forward(ids)).data, want.data);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("load: f16 weights kept as stored compute the same as widened ones", async () => {
  const a = await MambaLM.load(`${oracleDir()}/m1_f16_l64`, { ...REF, weightsDtype: "as-stored" });
  const b = await MambaLM.load(`${oracleDir()}/m1_f16_l64`, { ...REF, weightsDtype: "f32" });
  assert.deepEqual((await a.forward(ids)).data, (await b.forward(ids)).data);
});

Deno.test("input: bad token ids and batches give InputError", async () => {
  const lm = await MambaLM.load(`${oracleDir()}/${CASE}`, REF);
  const V = lm.config.paddedVocabSize;
  const bad = async (f: () => Promise<unknown>, pattern: RegExp) => {
    await assert.rejects(f, (e: unknown) => {
      assert.ok(e instanceof InputError, `expected InputError, got ${e}`);
      assert.match((e as Error).message, pattern);
      return true;
    });
  };
  await bad(() => lm.forward([[1, NaN]]), /token id NaN at \[0\]\[1\]/);
  await bad(() => lm.forward([[1, V]]), new RegExp(`token id ${V} .* \\[0, ${V}\\)`));
  await bad(() => lm.forward([[-1]]), /token id -1/);
  await bad(() => lm.forward([[1.5]]), /token id 1\.5/);
  await bad(() => lm.forward([[1, 2], [3]]), /same length/);
  await bad(() => lm.forward([]), /non-empty/);
  await bad(() => lm.forward([[]]), /at least one token/);
  const state = lm.createState(2);
  await bad(() => lm.step(state, [1]), /holds 2 sequences but 1/);
  const other = await MambaLM.load(`${oracleDir()}/${M2CASE}`, REF);
  await bad(() => other.step(state, [1, 2]), /does not fit this model/);
  assert.throws(() => lm.createState(0), InputError);
  // Nothing was corrupted by the rejected calls.
  const fresh = lm.createState(2);
  assert.deepEqual(await lm.step(state, [1, 2]), await lm.step(fresh, [1, 2]));
});

Deno.test("state: layout, bytes round trip, clone independence, reset", async () => {
  const lm = await MambaLM.load(`${oracleDir()}/${M2CASE}`, REF);
  const c = lm.config;
  const state = lm.createState(1);
  assert.deepEqual(state.layout.convShape, [1, c.convDim, c.dConv]);
  assert.deepEqual(state.layout.ssmShape, [1, c.nheads, c.headdim, c.dState]);
  assert.equal(state.byteLength, 4 * c.nLayer * (c.convDim * c.dConv + c.dInner * c.dState));
  await lm.prefill(state, [[3, 1, 4, 1, 5]]);
  const bytes = await state.toBytes();
  const restored = InferenceState.fromBytes(bytes);
  assert.deepEqual(restored.layout, state.layout);
  assert.deepEqual(restored.ssm, state.ssm);
  const branch = state.clone();
  const a = await lm.step(state, [9]);
  const b = await lm.step(restored, [9]);
  assert.deepEqual(a, b);
  // The branch did not move when state did.
  const c1 = await lm.step(branch, [2]);
  const c2 = await lm.step(InferenceState.fromBytes(bytes), [2]);
  assert.deepEqual(c1, c2);
  state.reset();
  assert.ok(state.ssm.every((s) => s.every((v) => v === 0)));
  assert.deepEqual(await lm.step(state, [3]), await lm.step(lm.createState(1), [3]));
});

Deno.test("state: fromBytes rejects garbage and truncation", () => {
  assert.throws(() => InferenceState.fromBytes(new Uint8Array(4)), /too short/);
  assert.throws(() => InferenceState.fromBytes(new Uint8Array(64)), /wrong magic/);
  const s = new InferenceState({
    arch: "mamba1",
    nLayer: 1,
    batch: 1,
    convShape: [1, 4, 4],
    ssmShape: [1, 4, 2],
  });
  return s.toBytes().then((bytes) => {
    assert.equal(InferenceState.fromBytes(bytes).byteLength, s.byteLength);
    assert.throws(() => InferenceState.fromBytes(bytes.subarray(0, bytes.length - 4)), /expected/);
  });
});
