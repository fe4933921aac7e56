/**
 * `MambaLM.save`: what it writes loads back bit-exactly (weights and logits; f32, f16, bf16;
 * one file or shards with the index), and a model loaded from an oracle case saves to a file
 * byte-identical to the case's `model.safetensors` (written by the reference's tools), with a
 * `config.json` that parses to the same config.
 */

import assert from "node:assert/strict";
import { MambaError, MambaLM, parseConfig, parseSafetensors, tensorToF32 } from "../mod.ts";
import { f16ArrayToF32 } from "../src/half.ts";
import { initModelWeights } from "../src/init.ts";
import { f32ArrayToBf16 } from "../src/save.ts";
import { type HostTensor, loadWeights, type ModelWeights } from "../src/weights.ts";
import { oracleCases, oracleDir } from "./oracle_util.ts";

/** Every tensor of two weight sets, as stored: same dtype, same bits. */
function assertSameWeights(a: ModelWeights, b: ModelWeights, what: string): void {
  const same = (x: HostTensor | undefined, y: HostTensor | undefined, name: string) => {
    assert.equal(x?.dtype, y?.dtype, `${what}: ${name} dtype`);
    assert.deepEqual(x?.shape, y?.shape, `${what}: ${name} shape`);
    assert.deepEqual(x?.data, y?.data, `${what}: ${name} values`);
  };
  same(a.embedding, b.embedding, "embedding");
  same(a.lmHead, b.lmHead, "lm_head");
  same(a.normF.weight, b.normF.weight, "norm_f");
  same(a.normF.bias, b.normF.bias, "norm_f.bias");
  a.layers.forEach((l, i) => {
    for (const key of Object.keys(l) as (keyof typeof l)[]) {
      if (key === "norm") {
        same(l.norm.weight, b.layers[i].norm.weight, `${i}.norm`);
        same(l.norm.bias, b.layers[i].norm.bias, `${i}.norm.bias`);
      } else same(l[key] as HostTensor, b.layers[i][key] as HostTensor, `${i}.${key}`);
    }
  });
}

const IDS = [[1, 5, 9, 2, 7, 3]];

Deno.test("save: f32 and f16, one file, load back bit-exactly (weights and logits)", async () => {
  const raw = {
    d_model: 64,
    n_layer: 3,
    vocab_size: 250,
    tie_embeddings: false,
    rms_norm: false,
    ssm_cfg: { bias: true },
  };
  const config = parseConfig(raw);
  for (const dtype of ["f32", "f16"] as const) {
    const lm = await MambaLM.fromConfig(raw, { seed: 4, weightsDtype: dtype });
    const dir = await Deno.makeTempDir();
    try {
      const files = await lm.save(dir);
      assert.deepEqual(files, ["config.json", "model.safetensors"]);
      const json = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
      assert.deepEqual(Object.keys(json).sort(), [
        "attn_cfg",
        "attn_layer_idx",
        "d_intermediate",
        "d_model",
        "fused_add_norm",
        "n_layer",
        "pad_vocab_size_multiple",
        "residual_in_fp32",
        "rms_norm",
        "ssm_cfg",
        "tie_embeddings",
        "vocab_size",
      ]);
      assert.deepEqual(parseConfig(json), config);
      const st = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
      assert.ok(st.tensors.has("lm_head.weight"));
      assert.equal(st.metadata.format, "pt");
      for (const t of st.tensors.values()) assert.equal(t.dtype, dtype.toUpperCase());
      const want = initModelWeights(config, 4, undefined, undefined, dtype);
      const got = await loadWeights(config, new URL(`file://${dir}/`), "as-stored");
      assertSameWeights(got, want, dtype);
      const back = await MambaLM.load(dir, { backend: "ref", weightsDtype: "as-stored" });
      assert.deepEqual((await back.forward(IDS)).data, (await lm.forward(IDS)).data);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

for (const dtype of ["f32", "f16"] as const) {
  Deno.test(`save: ${dtype} shards with the index over maxShardBytes; stale files go`, async () => {
    const raw = {
      d_model: 32,
      n_layer: 4,
      vocab_size: 100,
      ssm_cfg: { layer: "Mamba2", d_state: 16, headdim: 8 },
    };
    const lm = await MambaLM.fromConfig(raw, { seed: 9, weightsDtype: dtype });
    const dir = await Deno.makeTempDir();
    try {
      const one = await lm.save(dir);
      assert.deepEqual(one, ["config.json", "model.safetensors"]);
      const files = await lm.save(dir, { maxShardBytes: 20_000 });
      const shards = files.filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));
      assert.ok(shards.length > 2, `${shards.length} shards`);
      assert.equal(files.at(-1), "model.safetensors.index.json");
      // The single file of the first save is gone (the index would win anyway).
      await assert.rejects(() => Deno.stat(`${dir}/model.safetensors`), Deno.errors.NotFound);
      const index = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`));
      assert.deepEqual(Object.keys(index), ["metadata", "weight_map"]);
      let total = 0;
      const seen = new Set<string>();
      for (const shard of shards) {
        const bytes = await Deno.readFile(`${dir}/${shard}`);
        const st = parseSafetensors(bytes);
        let data = 0;
        for (const [name, t] of st.tensors) {
          assert.equal(index.weight_map[name], shard, name);
          seen.add(name);
          data += t.bytes.byteLength;
        }
        // Each shard within the limit, unless it holds a single larger tensor.
        assert.ok(data <= 20_000 || st.tensors.size === 1, `${shard}: ${data} bytes`);
        total += data;
      }
      assert.equal(index.metadata.total_size, total);
      assert.deepEqual([...seen].sort(), Object.keys(index.weight_map).sort());
      assert.ok(seen.has("lm_head.weight"));
      const config = parseConfig(raw);
      assertSameWeights(
        await loadWeights(config, new URL(`file://${dir}/`), "as-stored"),
        initModelWeights(config, 9, undefined, undefined, dtype),
        `${dtype} shards`,
      );
      const back = await MambaLM.load(dir, { backend: "ref", weightsDtype: "as-stored" });
      assert.deepEqual((await back.forward(IDS)).data, (await lm.forward(IDS)).data);
      // Back to one file: the index goes.
      await lm.save(dir);
      await assert.rejects(
        () => Deno.stat(`${dir}/model.safetensors.index.json`),
        Deno.errors.NotFound,
      );
      const again = await MambaLM.load(dir, { backend: "ref", weightsDtype: "as-stored" });
      assert.deepEqual((await again.forward(IDS)).data, (await lm.forward(IDS)).data);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("save: bf16 rounds to nearest even and loads back as those values", async () => {
  const lm = await MambaLM.fromConfig({ d_model: 32, n_layer: 2, vocab_size: 64 }, { seed: 2 });
  const dir = await Deno.makeTempDir();
  try {
    await lm.save(dir, { dtype: "bf16" });
    const st = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
    const config = parseConfig({ d_model: 32, n_layer: 2, vocab_size: 64 });
    const f32 = initModelWeights(config, 2);
    const emb = st.tensors.get("backbone.embedding.weight")!;
    assert.equal(emb.dtype, "BF16");
    const want = f32ArrayToBf16(f32.embedding.data as Float32Array);
    assert.deepEqual(new Uint16Array(emb.bytes.slice().buffer), want);
    const got = tensorToF32(emb);
    const src = f32.embedding.data as Float32Array;
    for (let i = 0; i < src.length; i++) {
      assert.ok(Math.abs(got[i] - src[i]) <= Math.abs(src[i]) * 2 ** -8, `element ${i}`);
    }
    // Round to nearest even on ties, NaN stays NaN, infinities stay.
    const ties = new Float32Array(
      new Uint32Array([0x3f808000, 0x3f818000, 0x7fc00001, 0xff800000]).buffer,
    );
    assert.deepEqual([...f32ArrayToBf16(ties)], [0x3f80, 0x3f82, 0x7fc0, 0xff80]);
    const back = await MambaLM.load(dir, { backend: "ref" });
    assert.equal(back.config.dModel, 32);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("save: an oracle model saves to the reference's file, byte for byte", async () => {
  for (const c of oracleCases().filter((c) => c.kind === "model")) {
    const src = `${oracleDir()}/${c.case}`;
    const lm = await MambaLM.load(src, { backend: "ref", weightsDtype: "as-stored" });
    const dir = await Deno.makeTempDir();
    try {
      await lm.save(dir);
      const want = await Deno.readFile(`${src}/model.safetensors`);
      const got = await Deno.readFile(`${dir}/model.safetensors`);
      assert.equal(got.length, want.length, c.case);
      assert.ok(got.every((v, i) => v === want[i]), `${c.case}: bytes differ`);
      const cfg = (p: string) => parseConfig(JSON.parse(Deno.readTextFileSync(p)));
      assert.deepEqual(cfg(`${dir}/config.json`), cfg(`${src}/config.json`), c.case);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
  // f16 widened at load and saved as f16 again: the stored halves come back.
  const src = `${oracleDir()}/m1_f16_l64`;
  const lm = await MambaLM.load(src, { backend: "ref" });
  const dir = await Deno.makeTempDir();
  try {
    await lm.save(dir, { dtype: "f16" });
    const a = parseSafetensors(await Deno.readFile(`${src}/model.safetensors`)).tensors;
    const b = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`)).tensors;
    for (const [name, t] of a) {
      assert.deepEqual(b.get(name)!.bytes, t.bytes, name);
      assert.deepEqual(
        f16ArrayToF32(new Uint16Array(b.get(name)!.bytes.slice().buffer)),
        tensorToF32(t),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("save: errors name the option", async () => {
  const lm = await MambaLM.fromConfig({ d_model: 16, n_layer: 1, vocab_size: 16 }, { seed: 0 });
  await assert.rejects(() => lm.save("/tmp/x", { dtype: "f8" as "f16" }), /dtype/);
  await assert.rejects(() => lm.save("/tmp/x", { maxShardBytes: 0 }), /maxShardBytes/);
  await assert.rejects(() => lm.save("https://example.com/m"), /cannot write/);
  const bare = new MambaLM(lm.config, lm.backend);
  await assert.rejects(() => bare.save("/tmp/x"), MambaError);
});
