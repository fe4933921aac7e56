/**
 * `MambaLM.fromConfig` and the blocks' initialisation against the reference's formulas
 * (`mamba_ssm` `_init_weights` and the `Mamba` / `Mamba2` constructors): per tensor kind, the
 * mean, the standard deviation and the range of the drawn values, with tolerances of five
 * standard errors of each statistic for the tensor's sample size. The model's weights are read
 * back from what `lm.save` wrote, so the whole path from the config to the file is checked.
 */

import assert from "node:assert/strict";
import {
  byteLevelTokenizerJSON,
  Mamba,
  Mamba2,
  MambaLM,
  parseSafetensors,
  tensorToF32,
  Tokenizer,
} from "../mod.ts";

/** `n` standard errors. */
const Z = 5;

function stats(
  v: Float32Array,
): { n: number; mean: number; std: number; min: number; max: number } {
  let s = 0, min = Infinity, max = -Infinity;
  for (const x of v) {
    s += x;
    if (x < min) min = x;
    if (x > max) max = x;
  }
  const mean = s / v.length;
  let q = 0;
  for (const x of v) q += (x - mean) ** 2;
  return { n: v.length, mean, std: Math.sqrt(q / v.length), min, max };
}

/** Values drawn from U(lo, hi): mean, std, bounds, and that the draws reach near both ends. */
function checkUniform(v: Float32Array, lo: number, hi: number, what: string): void {
  const { n, mean, std, min, max } = stats(v);
  const w = hi - lo;
  const sigma = w / Math.sqrt(12);
  assert.ok(Math.abs(mean - (lo + hi) / 2) <= Z * sigma / Math.sqrt(n), `${what}: mean ${mean}`);
  // Var of the sample variance of a uniform: (μ4 − σ⁴)/n with μ4 = w⁴/80.
  const seVar = Math.sqrt((w ** 4 / 80 - sigma ** 4) / n);
  assert.ok(
    Math.abs(std * std - sigma * sigma) <= Z * seVar,
    `${what}: std ${std}, want ${sigma} (n ${n})`,
  );
  const eps = 1e-6 * Math.max(Math.abs(lo), Math.abs(hi));
  assert.ok(
    min >= lo - eps && max <= hi + eps,
    `${what}: range [${min}, ${max}] not in [${lo}, ${hi}]`,
  );
  // P(no draw in the top 30/n of the range) = (1 − 30/n)ⁿ ≈ e⁻³⁰.
  const edge = Math.min(w, 30 * w / n);
  assert.ok(min <= lo + edge && max >= hi - edge, `${what}: range [${min}, ${max}] too narrow`);
}

/** Values drawn from N(0, std²): mean, std, and the share within one std (68.27 %). */
function checkNormal(v: Float32Array, sigma: number, what: string): void {
  const { n, mean, std } = stats(v);
  assert.ok(Math.abs(mean) <= Z * sigma / Math.sqrt(n), `${what}: mean ${mean}`);
  // Var of the sample variance of a normal: 2σ⁴/n.
  assert.ok(
    Math.abs(std * std - sigma * sigma) <= Z * Math.sqrt(2 / n) * sigma * sigma,
    `${what}: std ${std}, want ${sigma}`,
  );
  const p = 0.6826894921370859;
  const inside = v.filter((x) => Math.abs(x) <= sigma).length / n;
  assert.ok(Math.abs(inside - p) <= Z * Math.sqrt(p * (1 - p) / n), `${what}: ${inside} within 1σ`);
}

function checkConstant(v: Float32Array, c: number, what: string): void {
  assert.ok(v.every((x) => x === Math.fround(c)), `${what}: not all ${c}`);
}

/** dt biases: softplus(bias) = dt, log dt uniform in [log dtMin, log dtMax] (floor below). */
function checkDtBias(v: Float32Array, dtMin: number, dtMax: number, what: string): void {
  const logDt = v.map((b) => Math.log(Math.log1p(Math.exp(b))));
  checkUniform(logDt, Math.log(dtMin), Math.log(dtMax), `${what} (log softplus)`);
}

/** A model from `config`, saved and read back as float32 tensors by name. */
async function savedTensors(
  config: Record<string, unknown>,
  seed: number,
): Promise<Map<string, Float32Array>> {
  const lm = await MambaLM.fromConfig(config, { seed });
  const dir = await Deno.makeTempDir();
  try {
    await lm.save(dir);
    const st = parseSafetensors(await Deno.readFile(`${dir}/model.safetensors`));
    return new Map([...st.tensors].map(([k, t]) => [k, tensorToF32(t)]));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** All layers' tensors of one kind (`mixer.in_proj.weight`, …) in one sample. */
function pooled(t: Map<string, Float32Array>, suffix: string): Float32Array {
  const parts = [...t].filter(([k]) => /^backbone\.layers\.\d+\./.test(k) && k.endsWith(suffix));
  assert.ok(parts.length > 0, `no tensor ends in ${suffix}`);
  const out = new Float32Array(parts.reduce((a, [, v]) => a + v.length, 0));
  let o = 0;
  for (const [, v] of parts) {
    out.set(v, o);
    o += v.length;
  }
  return out;
}

Deno.test("init: the statistics check tells a normal from a uniform (it can fail)", () => {
  const n = 20000;
  let s = 12345;
  const u = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const uniform = new Float32Array(n).map(() => (2 * u() - 1) * 0.02 * Math.sqrt(3));
  const normal = new Float32Array(n).map(() =>
    0.02 * Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u())
  );
  checkUniform(uniform, -0.02 * Math.sqrt(3), 0.02 * Math.sqrt(3), "uniform");
  checkNormal(normal, 0.02, "normal");
  assert.throws(() => checkNormal(uniform, 0.02, "uniform as normal"));
  assert.throws(() => checkUniform(normal, -0.02 * Math.sqrt(3), 0.02 * Math.sqrt(3), "n as u"));
  assert.throws(() => checkUniform(uniform, -0.021 * Math.sqrt(3), 0.021 * Math.sqrt(3), "wide"));
});

Deno.test("init: Mamba-1 model (mamba_ssm config, LayerNorm, biases, untied head)", async () => {
  const cfg = {
    d_model: 64,
    n_layer: 6,
    vocab_size: 1000,
    rms_norm: false,
    tie_embeddings: false,
    ssm_cfg: { bias: true, dt_min: 0.002, dt_max: 0.05, dt_scale: 2 },
  };
  const t = await savedTensors(cfg, 11);
  const d = 64, dInner = 128, dtRank = 4, nLayer = 6;
  checkNormal(t.get("backbone.embedding.weight")!, 0.02, "embedding");
  checkUniform(t.get("lm_head.weight")!, -1 / Math.sqrt(d), 1 / Math.sqrt(d), "lm_head");
  checkUniform(pooled(t, "in_proj.weight"), -1 / Math.sqrt(d), 1 / Math.sqrt(d), "in_proj");
  checkConstant(pooled(t, "in_proj.bias"), 0, "in_proj.bias");
  checkUniform(pooled(t, "conv1d.weight"), -0.5, 0.5, "conv1d.weight"); // 1/√d_conv
  checkUniform(pooled(t, "conv1d.bias"), -0.5, 0.5, "conv1d.bias");
  const xb = 1 / Math.sqrt(dInner);
  checkUniform(pooled(t, "x_proj.weight"), -xb, xb, "x_proj");
  const dtStd = dtRank ** -0.5 * 2;
  checkUniform(pooled(t, "dt_proj.weight"), -dtStd, dtStd, "dt_proj.weight");
  checkDtBias(pooled(t, "dt_proj.bias"), 0.002, 0.05, "dt_proj.bias");
  const ob = 1 / Math.sqrt(dInner) / Math.sqrt(nLayer);
  checkUniform(pooled(t, "out_proj.weight"), -ob, ob, "out_proj (rescaled)");
  checkConstant(pooled(t, "out_proj.bias"), 0, "out_proj.bias");
  checkConstant(pooled(t, "mixer.D"), 1, "D");
  const aLog = t.get("backbone.layers.3.mixer.A_log")!;
  for (let c = 0; c < dInner; c++) {
    for (let n = 0; n < 16; n++) assert.equal(aLog[c * 16 + n], Math.fround(Math.log(n + 1)));
  }
  checkConstant(pooled(t, "norm.weight"), 1, "norm.weight");
  checkConstant(pooled(t, "norm.bias"), 0, "norm.bias");
  checkConstant(t.get("backbone.norm_f.weight")!, 1, "norm_f.weight");
  checkConstant(t.get("backbone.norm_f.bias")!, 0, "norm_f.bias");
  // Seeded: the same seed the same weights, another seed others.
  const again = await savedTensors(cfg, 11);
  assert.deepEqual(
    again.get("backbone.layers.2.mixer.x_proj.weight"),
    t.get("backbone.layers.2.mixer.x_proj.weight"),
  );
  const other = await savedTensors(cfg, 12);
  assert.notDeepEqual(
    other.get("backbone.layers.2.mixer.x_proj.weight"),
    t.get("backbone.layers.2.mixer.x_proj.weight"),
  );
});

Deno.test("init: Mamba-2 model (transformers config, tied head)", async () => {
  const cfg = {
    model_type: "mamba2",
    hidden_size: 64,
    num_hidden_layers: 8,
    vocab_size: 512,
    state_size: 32,
    head_dim: 8,
    n_groups: 2,
    expand: 2,
    time_step_min: 0.001,
    time_step_max: 0.1,
    time_step_floor: 1e-4,
    initializer_range: 0.1, // transformers' own init; fromConfig follows mamba_ssm's 0.02
  };
  const t = await savedTensors(cfg, 5);
  const d = 64, dInner = 128, nLayer = 8;
  const emb = t.get("backbone.embedding.weight")!;
  checkNormal(emb, 0.02, "embedding");
  assert.deepEqual(t.get("lm_head.weight"), emb, "tied lm_head is the embedding");
  checkUniform(pooled(t, "in_proj.weight"), -1 / Math.sqrt(d), 1 / Math.sqrt(d), "in_proj");
  checkUniform(pooled(t, "conv1d.weight"), -0.5, 0.5, "conv1d.weight");
  checkUniform(pooled(t, "conv1d.bias"), -0.5, 0.5, "conv1d.bias");
  const aLog = pooled(t, "mixer.A_log");
  assert.equal(aLog.length, nLayer * 16);
  checkUniform(aLog.map(Math.exp), 1, 16, "exp(A_log)");
  checkDtBias(pooled(t, "mixer.dt_bias"), 0.001, 0.1, "dt_bias");
  checkConstant(pooled(t, "mixer.D"), 1, "D");
  checkConstant(pooled(t, "mixer.norm.weight"), 1, "gated norm");
  const ob = 1 / Math.sqrt(dInner) / Math.sqrt(nLayer);
  checkUniform(pooled(t, "out_proj.weight"), -ob, ob, "out_proj (rescaled)");
});

Deno.test("init: mamba_ssm's Mamba-2 settings (A_init_range, conv_init, D_has_hdim, dt floor)", async () => {
  const t = await savedTensors({
    d_model: 32,
    n_layer: 4,
    vocab_size: 64,
    ssm_cfg: {
      layer: "Mamba2",
      d_state: 16,
      headdim: 4,
      A_init_range: [2, 4],
      conv_init: 0.1,
      D_has_hdim: true,
      dt_min: 1e-5,
      dt_max: 1e-3,
      dt_init_floor: 1e-4,
    },
  }, 3);
  checkUniform(pooled(t, "mixer.A_log").map(Math.exp), 2, 4, "exp(A_log)");
  checkUniform(pooled(t, "conv1d.weight"), -0.1, 0.1, "conv1d.weight (conv_init)");
  assert.equal(t.get("backbone.layers.0.mixer.D")!.length, 64);
  // dt below the floor is raised to it: softplus(bias) >= 1e-4, and about half the draws are.
  const dt = pooled(t, "mixer.dt_bias").map((b) => Math.log1p(Math.exp(b)));
  assert.ok(dt.every((x) => x >= 1e-4 * (1 - 1e-5) && x <= 1e-3 * (1 + 1e-5)));
  const floored = dt.filter((x) => Math.abs(x - 1e-4) < 1e-9).length / dt.length;
  assert.ok(Math.abs(floored - 0.5) <= Z * Math.sqrt(0.25 / dt.length), `floored ${floored}`);
});

Deno.test("init: constant dt_proj; blocks keep PyTorch's defaults (no _init_weights)", async () => {
  const t = await savedTensors({
    d_model: 32,
    n_layer: 2,
    vocab_size: 64,
    ssm_cfg: { dt_init: "constant", dt_rank: 8 },
  }, 1);
  checkConstant(pooled(t, "dt_proj.weight"), 8 ** -0.5, "dt_proj.weight");
  // A block alone is mamba_ssm's module as constructed: biases and out_proj as nn.Linear draws.
  const block = await Mamba.create({ dModel: 128, bias: true, dtMin: 0.01, dtMax: 0.02 }, {
    seed: 2,
  });
  const w = block.stateDict();
  const f = (k: string) => w.get(k)!.tensor.data as Float32Array;
  checkUniform(f("in_proj.bias"), -1 / Math.sqrt(128), 1 / Math.sqrt(128), "block in_proj.bias");
  checkUniform(f("out_proj.weight"), -1 / 16, 1 / 16, "block out_proj"); // 1/√256, not rescaled
  checkUniform(f("out_proj.bias"), -1 / 16, 1 / 16, "block out_proj.bias");
  checkDtBias(f("dt_proj.bias"), 0.01, 0.02, "block dt_proj.bias");
  assert.deepEqual(w.get("A_log")!.shape, [256, 16]);
  const b2 = await Mamba2.create({ dModel: 64, AInitRange: [1, 2] }, { seed: 2 });
  const w2 = b2.stateDict();
  assert.deepEqual(w2.get("in_proj.weight")!.shape, [2 * 128 + 2 * 128 + 2, 64]);
  checkUniform((w2.get("A_log")!.tensor.data as Float32Array).map(Math.exp), 1, 2, "block A");
});

Deno.test("init: configure, then generate text and tokens (temperature 0.7, topP 0.9)", async () => {
  const config = {
    d_model: 64,
    n_layer: 2,
    vocab_size: 256,
    ssm_cfg: { layer: "Mamba2", d_state: 32, headdim: 16 },
  };
  const tokenizer = Tokenizer.fromJSON(byteLevelTokenizerJSON());
  const lm = await MambaLM.fromConfig(config, { seed: 0, tokenizer });
  const sampling = { maxNewTokens: 12, temperature: 0.7, topP: 0.9, seed: 42 };
  const pieces: string[] = [];
  const ids: number[] = [];
  for await (const t of lm.generate("Call me", sampling)) {
    pieces.push(t.text);
    ids.push(t.id);
  }
  assert.equal(ids.length, 12);
  assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < 256));
  assert.equal(pieces.join(""), await lm.complete("Call me", sampling)); // seeded: the same text
  // Without a tokenizer, token ids in and out; the same ids as the text prompt's bytes.
  const bare = await MambaLM.fromConfig(config, { seed: 0 });
  const byIds: number[] = [];
  const prompt = [...new TextEncoder().encode("Call me")];
  for await (const t of bare.generate(prompt, sampling)) byIds.push(t.id);
  assert.deepEqual(byIds, ids);
  await assert.rejects(async () => {
    for await (const _ of bare.generate("text", sampling)) break;
  });
});
