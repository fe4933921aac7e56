import assert from "node:assert/strict";
import { ConfigError, parseConfig } from "../mod.ts";

Deno.test("config: mamba_ssm Mamba-1 defaults (mamba-130m)", () => {
  const c = parseConfig({
    d_model: 768,
    d_intermediate: 0,
    n_layer: 24,
    vocab_size: 50277,
    ssm_cfg: {},
    attn_layer_idx: [],
    attn_cfg: {},
    rms_norm: true,
    residual_in_fp32: true,
    fused_add_norm: true,
    pad_vocab_size_multiple: 8,
    tie_embeddings: true,
  });
  assert.equal(c.arch, "mamba1");
  assert.equal(c.dInner, 1536);
  assert.equal(c.dtRank, 48);
  assert.equal(c.dState, 16);
  assert.equal(c.dConv, 4);
  assert.equal(c.paddedVocabSize, 50280);
  assert.equal(c.convDim, 1536);
  assert.equal(c.convBias, true);
  assert.equal(c.bias, false);
});

Deno.test("config: mamba_ssm Mamba-2 defaults (mamba2-130m)", () => {
  const c = parseConfig({
    d_model: 768,
    n_layer: 24,
    vocab_size: 50277,
    ssm_cfg: { layer: "Mamba2" },
    pad_vocab_size_multiple: 16,
  });
  assert.equal(c.arch, "mamba2");
  assert.equal(c.dState, 128);
  assert.equal(c.headdim, 64);
  assert.equal(c.nheads, 24);
  assert.equal(c.ngroups, 1);
  assert.equal(c.chunkSize, 256);
  assert.equal(c.convDim, 1536 + 256);
  assert.equal(c.gatedNorm, true);
  assert.equal(c.normBeforeGate, false);
  assert.equal(c.paddedVocabSize, 50288);
  assert.deepEqual(c.dtLimit, [0, Infinity]);
});

Deno.test("config: transformers mamba and mamba2", () => {
  const m1 = parseConfig({
    model_type: "mamba",
    architectures: ["MambaForCausalLM"],
    hidden_size: 768,
    num_hidden_layers: 24,
    vocab_size: 50280,
    state_size: 16,
    conv_kernel: 4,
    expand: 2,
    intermediate_size: 1536,
    time_step_rank: 48,
    use_bias: false,
    use_conv_bias: true,
    layer_norm_epsilon: 1e-5,
    torch_dtype: "float32",
  });
  assert.equal(m1.arch, "mamba1");
  assert.equal(m1.dtRank, 48);
  assert.equal(m1.paddedVocabSize, 50280);
  const m2 = parseConfig({
    model_type: "mamba2",
    hidden_size: 768,
    num_hidden_layers: 24,
    vocab_size: 50288,
    num_heads: 24,
    head_dim: 64,
    n_groups: 1,
    state_size: 128,
    chunk_size: 256,
    time_step_limit: [0, null],
  });
  assert.equal(m2.arch, "mamba2");
  assert.equal(m2.nheads, 24);
  assert.deepEqual(m2.dtLimit, [0, Infinity]);
  assert.throws(
    () =>
      parseConfig({
        model_type: "mamba2",
        hidden_size: 768,
        num_hidden_layers: 2,
        vocab_size: 10,
        num_heads: 7,
      }),
    (e) => e instanceof ConfigError && e.field === "num_heads",
  );
});

function rejects(raw: unknown, field: string, pattern?: RegExp) {
  assert.throws(() => parseConfig(raw), (e: unknown) => {
    assert.ok(e instanceof ConfigError, `expected ConfigError, got ${e}`);
    assert.equal(e.field, field);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("config: unsupported or contradictory fields name the field", () => {
  const base = { d_model: 64, n_layer: 2, vocab_size: 100 };
  rejects({ ...base, attn_layer_idx: [1] }, "attn_layer_idx", /not supported/);
  rejects({ ...base, d_intermediate: 128 }, "d_intermediate", /not supported/);
  rejects({ ...base, ssm_cfg: { layer: "Mamba3" } }, "ssm_cfg.layer");
  rejects(
    { ...base, ssm_cfg: { layer: "Mamba2", headdim: 48 } },
    "ssm_cfg.headdim",
    /does not divide/,
  );
  rejects({ ...base, ssm_cfg: { layer: "Mamba2", headdim: 16, ngroups: 3 } }, "ssm_cfg.ngroups");
  rejects({ ...base, ssm_cfg: { layer: "Mamba2", d_ssm: 64 } }, "ssm_cfg.d_ssm", /partial SSM/);
  rejects({ ...base, ssm_cfg: { headdim: 16 } }, "ssm_cfg.headdim", /unknown field/);
  rejects({ ...base, ssm_cfg: { d_state: "16" } }, "ssm_cfg.d_state", /integer/);
  rejects({ ...base, d_model: -1 }, "d_model", /positive/);
  rejects({ n_layer: 2, vocab_size: 100 }, "d_model", /required/);
  rejects({ ...base, rms_norm: "yes" }, "rms_norm");
  rejects({ ...base, frobnicate: 1 }, "frobnicate", /unknown field/);
  rejects({ ...base, model_type: "llama" }, "model_type");
  rejects([1, 2], "(root)");
});

Deno.test("config: fields that do not change inference are accepted", () => {
  const c = parseConfig({
    d_model: 64,
    n_layer: 2,
    vocab_size: 100,
    architectures: ["MambaLMHeadModel"],
    torch_dtype: "float16",
    ssm_cfg: { dt_min: 0.001, dt_max: 0.1, use_fast_path: true, layer: "Mamba1" },
  });
  assert.equal(c.arch, "mamba1");
  assert.equal(c.dtRank, 4);
});
