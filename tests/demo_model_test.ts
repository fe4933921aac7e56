/**
 * The demo model shipped in models/demo (a byte-level Mamba-2 trained by tools/train_demo): its
 * files are what the training script wrote, and the reference backend reproduces the training
 * script's float32 loss on a held-out slice of the validation text.
 */
import assert from "node:assert/strict";
import { MambaLM, parseSafetensors } from "../mod.ts";

const DIR = new URL("../models/demo/", import.meta.url);

interface TrainingInfo {
  config: Record<string, unknown>;
  safetensors_bytes: number;
  padded_vocab_size: number;
  n_params: number;
  final: { val_bits_per_byte: number };
  parity: {
    text_sha256: string;
    byte_offset: number;
    length: number;
    mean_nll_nats_f32: number;
    mean_nll_nats_f64_sequential: number;
    logits_probe: Record<string, number[]>;
  };
}

async function readInfo(): Promise<TrainingInfo> {
  return JSON.parse(await Deno.readTextFile(new URL("training.json", DIR)));
}

async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** JSR refuses published files over 4 MB. */
const JSR_FILE_LIMIT = 4_000_000;

Deno.test("demo model: files match training.json (config, f16 tensors, size, shards)", async () => {
  const info = await readInfo();
  const config = JSON.parse(await Deno.readTextFile(new URL("config.json", DIR)));
  assert.deepEqual(config, info.config);
  assert.equal(config.vocab_size, 257);
  assert.equal(config.tie_embeddings, true);
  // The weights ship as shards under JSR's limit, listed in a transformers-style index whose
  // total_size is the sum of the tensors' bytes (training.json's file size less the header).
  const index = JSON.parse(
    await Deno.readTextFile(new URL("model.safetensors.index.json", DIR)),
  );
  const shardNames = [...new Set(Object.values(index.weight_map as Record<string, string>))];
  assert.ok(shardNames.length >= 2, `${shardNames.length} shards`);
  const tensors = new Map<string, { dtype: string; shape: readonly number[]; bytes: Uint8Array }>();
  let dataBytes = 0;
  for (const shard of shardNames.sort()) {
    const bytes = await Deno.readFile(new URL(shard, DIR));
    assert.ok(bytes.length <= JSR_FILE_LIMIT, `${shard} is ${bytes.length} bytes`);
    for (const [name, t] of parseSafetensors(bytes, shard).tensors) {
      assert.equal(index.weight_map[name], shard, `${name} is in ${shard}`);
      assert.ok(!tensors.has(name), `${name} appears twice`);
      tensors.set(name, t);
      dataBytes += t.bytes.length;
    }
  }
  assert.equal(tensors.size, Object.keys(index.weight_map).length);
  assert.equal(index.metadata.total_size, dataBytes);
  assert.ok(dataBytes < info.safetensors_bytes && dataBytes > info.safetensors_bytes - 10_000);
  const names = [...tensors.keys()];
  assert.ok(names.includes("lm_head.weight") && names.includes("backbone.norm_f.weight"));
  let params = 0;
  for (const [name, t] of tensors) {
    assert.equal(t.dtype, "F16", name);
    if (name !== "lm_head.weight") params += t.shape.reduce((a, b) => a * b, 1);
  }
  assert.equal(params, info.n_params);
  const emb = tensors.get("backbone.embedding.weight")!;
  assert.deepEqual(emb.shape, [info.padded_vocab_size, config.d_model]);
  assert.ok(info.final.val_bits_per_byte <= 1.5, `val ${info.final.val_bits_per_byte} bits/byte`);
});

Deno.test("demo model: ref backend reproduces the training script's NLL on the parity slice", async () => {
  const info = await readInfo();
  const p = info.parity;
  // The slice is val.txt[byte_offset, byte_offset + length), stored so that CI needs no corpus.
  const text = await Deno.readFile(new URL("parity_slice.txt", DIR));
  assert.equal(p.byte_offset, 0);
  assert.equal(text.length, p.length);
  assert.equal(await sha256Hex(text), p.text_sha256);

  const lm = await MambaLM.load(DIR, { backend: "ref" });
  try {
    // Byte-level ids, no BOS/EOT: exactly the ids the Python evaluation used.
    const ids = Array.from(text);
    const { data, shape } = await lm.forward([ids]);
    const [batch, L, V] = shape;
    assert.deepEqual([batch, L, V], [1, ids.length, info.padded_vocab_size]);

    // Same convention as tools/train_demo/train.py: log-softmax over the full padded vocab (as
    // PyTorch's cross-entropy over the padded lm_head), position t predicts byte t+1, mean over
    // the L-1 predictions, natural log. Accumulated in float64.
    let total = 0;
    for (let t = 0; t < L - 1; t++) {
      const row = data.subarray(t * V, (t + 1) * V);
      let max = -Infinity;
      for (const v of row) if (v > max) max = v;
      let sum = 0;
      for (const v of row) sum += Math.exp(v - max);
      total += max + Math.log(sum) - row[ids[t + 1]];
    }
    const nll = total / (L - 1);
    const diff = Math.abs(nll - p.mean_nll_nats_f32);
    assert.ok(
      diff <= 1e-3,
      `mean NLL ${nll} vs training.json ${p.mean_nll_nats_f32} (diff ${diff})`,
    );

    // A few raw logits against the float64 sequential-scan evaluation of the same weights.
    for (const [pos, want] of Object.entries(p.logits_probe)) {
      const t = Number(pos);
      for (let j = 0; j < want.length; j++) {
        const got = data[t * V + j];
        assert.ok(Math.abs(got - want[j]) <= 5e-3, `logit[${t}][${j}] ${got} vs ${want[j]}`);
      }
    }
  } finally {
    lm.dispose();
  }
});
