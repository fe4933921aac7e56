/**
 * The `Mamba` / `Mamba2` blocks against the oracle models: a block given layer i's weights (read
 * from the case's model.safetensors with the prefix `backbone.layers.i.mixer.`) reproduces that
 * layer's effect. The model's per-layer hidden states come from the `ref` backend's primitives
 * (embedding, add + norm, mixer); the block's output plus the residual must equal the hidden
 * state after layer i, for the whole prompt and token by token, and the block's final conv / SSM
 * states must equal the oracle's states of layer i. After the last layer, the final norm and LM
 * head over the block's result must give the oracle's logits (and step logits), which ties the
 * block to the PyTorch reference directly. On `ref`, `wasm` and `webgpu` (when an adapter is
 * found).
 */

import assert from "node:assert/strict";
import {
  type BackendName,
  InferenceState,
  Mamba,
  Mamba2,
  type MambaConfig,
  type MixerBlock,
  parseConfig,
  WeightsError,
} from "../mod.ts";
import { type RefActivation, RefBackend } from "../src/backends/ref/backend.ts";
import { loadWeights } from "../src/weights.ts";
import { InputError } from "../src/errors.ts";
import { assertClose, loadExpected, oracleCases, oracleDir, TOL } from "./oracle_util.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
const BACKENDS: BackendName[] = adapter ? ["ref", "wasm", "webgpu"] : ["ref", "wasm"];
if (!adapter) console.error("blocks tests: no WebGPU adapter, webgpu skipped");

/** A block's options from a model config (every mixer field spelled out). */
function blockOf(
  cfg: MambaConfig,
  init: Parameters<typeof Mamba.create>[1],
): Promise<MixerBlock> {
  if (cfg.arch === "mamba1") {
    return Mamba.create({
      dModel: cfg.dModel,
      dState: cfg.dState,
      dConv: cfg.dConv,
      expand: cfg.expand,
      dtRank: cfg.dtRank,
      convBias: cfg.convBias,
      bias: cfg.bias,
    }, init);
  }
  return Mamba2.create({
    dModel: cfg.dModel,
    dState: cfg.dState,
    dConv: cfg.dConv,
    expand: cfg.expand,
    headdim: cfg.headdim,
    ngroups: cfg.ngroups,
    chunkSize: cfg.chunkSize,
    rmsnorm: cfg.gatedNorm,
    normBeforeGate: cfg.normBeforeGate,
    DHasHdim: cfg.dHasHdim,
    dtLimit: cfg.dtLimit,
    convBias: cfg.convBias,
    bias: cfg.bias,
  }, init);
}

/** Per layer: the block's input (normed), the residual, and the hidden state after the layer. */
interface LayerTrace {
  normed: Float32Array;
  residual: Float32Array;
  after: Float32Array;
}

/** The model's per-layer hidden states on the `ref` backend's primitives. */
function trace(ref: RefBackend, cfg: MambaConfig, ids: number[][]): LayerTrace[] {
  const batch = ids.length;
  const L = ids[0].length;
  const state = ref.createState(batch);
  let hidden = ref.embed(Int32Array.from(ids.flat()));
  let residual: RefActivation | null = null;
  const out: LayerTrace[] = [];
  for (let i = 0; i < cfg.nLayer; i++) {
    const r = ref.addNorm(hidden, residual, i);
    residual = r.residual;
    hidden = ref.mixer(i, r.normed, batch, L, state);
    const after = hidden.data.map((v, j) => v + residual!.data[j]);
    out.push({ normed: r.normed.data, residual: residual.data, after });
  }
  return out;
}

/** Rows `t` of each sequence of `[batch, L, d]` values: `[batch, d]`. */
function tokenRows(x: Float32Array, batch: number, L: number, d: number, t: number) {
  const out = new Float32Array(batch * d);
  for (let b = 0; b < batch; b++) out.set(x.subarray((b * L + t) * d, (b * L + t + 1) * d), b * d);
  return out;
}

/** Logits of the final norm + LM head over residual-stream values `[rows, d]` (ref backend). */
async function logitsOf(ref: RefBackend, stream: Float32Array, d: number): Promise<Float32Array> {
  const rows = stream.length / d;
  const { normed } = ref.addNorm(ref.upload(stream, rows, d), null, "final");
  return await ref.read(ref.lmHead(normed, 1, rows, false));
}

for (const c of oracleCases().filter((c) => c.kind === "model")) {
  for (const backend of BACKENDS) {
    Deno.test({
      name: `blocks ${backend}: ${c.case} (every layer, every run)`,
      sanitizeResources: false,
      sanitizeOps: false,
      fn: async () => {
        const dir = `${oracleDir()}/${c.case}`;
        const cfg = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
        const weights = await loadWeights(cfg, new URL(`file://${dir}/`), "f32");
        const ref = new RefBackend({ config: cfg, weights });
        const exp = loadExpected(c.case);
        const d = cfg.dModel;
        const tol = backend === "ref" ? { atol: 1e-6, rtol: 1e-6 } : TOL.logits;
        for (let i = 0; i < cfg.nLayer; i++) {
          const block = await blockOf(cfg, {
            weights: `${dir}/model.safetensors`,
            prefix: `backbone.layers.${i}.mixer`,
            backend,
            wasm: { threads: 2 },
          });
          try {
            assert.equal(block.backendName, backend);
            for (const run of exp.json.runs) {
              const { batch, prompt_len: L } = run;
              const layers = trace(ref, cfg, run.input_ids);
              const { normed, residual, after } = layers[i];
              const what = `${run.name} layer ${i}`;
              // Whole prompt from an empty state.
              const y = await block.forward({ data: normed, shape: [batch, L, d] });
              assert.deepEqual(y.shape, [batch, L, d]);
              const full = y.data.map((v, j) => v + residual[j]);
              assertClose(full, after, tol, `${what}: forward + residual`);
              // Whole prompt into a state: the oracle's states of layer i.
              const state = block.createState(batch);
              await block.forward({ data: normed, shape: [batch, L, d] }, state);
              await state.sync();
              const want = (k: string) => exp.arrays.get(`${run.name}.layers.${i}.${k}`)!.data;
              assertClose(state.conv[0], want("conv_state"), TOL.conv, `${what}: conv state`);
              assertClose(state.ssm[0], want("ssm_state"), TOL.ssm, `${what}: ssm state`);
              // Token by token from an empty state.
              const stepState = block.createState(batch);
              const stepped = new Float32Array(batch * L * d);
              for (let t = 0; t < L; t++) {
                const x = tokenRows(normed, batch, L, d, t);
                const shape = t % 2 ? [batch, d] : [batch, 1, d]; // both forms of step's input
                const o = await block.step(stepState, { data: x, shape });
                assert.deepEqual(o.shape, shape);
                for (let b = 0; b < batch; b++) {
                  const at = (b * L + t) * d;
                  for (let k = 0; k < d; k++) {
                    stepped[at + k] = o.data[b * d + k] + residual[at + k];
                  }
                }
              }
              assertClose(stepped, after, tol, `${what}: steps + residual`);
              await stepState.sync();
              assertClose(stepState.conv[0], want("conv_state"), TOL.conv, `${what}: step conv`);
              assertClose(stepState.ssm[0], want("ssm_state"), TOL.ssm, `${what}: step ssm`);
              if (i === cfg.nLayer - 1) {
                // The block's result through the final norm and LM head: the oracle's logits.
                const logits = exp.arrays.get(`${run.name}.logits`)!.data;
                const stepLogits = exp.arrays.get(`${run.name}.step_logits`)!.data;
                assertClose(await logitsOf(ref, full, d), logits, TOL.logits, `${what}: logits`);
                assertClose(
                  await logitsOf(ref, stepped, d),
                  stepLogits,
                  TOL.logits,
                  `${what}: step logits`,
                );
              }
            }
          } finally {
            block.dispose();
          }
        }
      },
    });
  }
}

Deno.test("blocks: another layer's weights do not reproduce a layer (the check can fail)", async () => {
  const dir = `${oracleDir()}/m2_hd32_ds64_l7`;
  const cfg = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
  const ref = new RefBackend({
    config: cfg,
    weights: await loadWeights(cfg, new URL(`file://${dir}/`), "f32"),
  });
  const run = loadExpected("m2_hd32_ds64_l7").json.runs[0];
  const { normed, residual, after } = trace(ref, cfg, run.input_ids)[1];
  const wrong = await blockOf(cfg, {
    weights: `${dir}/model.safetensors`,
    prefix: "backbone.layers.2.mixer.",
  });
  const y = await wrong.forward({ data: normed, shape: [1, run.prompt_len, cfg.dModel] });
  assert.throws(() =>
    assertClose(y.data.map((v, j) => v + residual[j]), after, TOL.logits, "wrong layer")
  );
});

Deno.test("blocks: weights from a state dict, with and without a prefix, and errors", async () => {
  const dir = `${oracleDir()}/m1_d64_l7`;
  const file = Deno.readFileSync(`${dir}/model.safetensors`);
  const cfg = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
  const x = {
    data: new Float32Array(3 * cfg.dModel).map((_, i) => Math.cos(i)),
    shape: [1, 3, 64],
  };
  const byFile = await Mamba.create({ dModel: 64 }, {
    weights: file,
    prefix: "backbone.layers.1.mixer.",
  });
  // The same layer as a prefix-free state dict of plain float32 tensors.
  const dict: Record<string, { data: Float32Array; shape: readonly number[] }> = {};
  for (const [name, t] of byFile.stateDict()) {
    assert.equal(t.tensor.dtype, "f32");
    dict[name] = { data: t.tensor.data as Float32Array, shape: t.shape };
  }
  assert.deepEqual(dict["conv1d.weight"].shape, [128, 1, 4]);
  const byDict = await Mamba.create({ dModel: 64 }, { weights: dict });
  assert.deepEqual((await byDict.forward(x)).data, (await byFile.forward(x)).data);
  // f16 storage: the same weights rounded, close results.
  const half = await Mamba.create({ dModel: 64 }, { weights: dict, weightsDtype: "f16" });
  assertClose((await half.forward(x)).data, (await byFile.forward(x)).data, {
    atol: 2e-3,
    rtol: 2e-2,
  }, "f16");
  // Two mixers and no prefix: the error says to pick one.
  await assert.rejects(() => Mamba.create({ dModel: 64 }, { weights: file }), /prefix/);
  // Options that do not fit the weights name the tensor under the caller's prefix.
  await assert.rejects(
    () =>
      Mamba.create({ dModel: 64, dState: 8 }, { weights: file, prefix: "backbone.layers.0.mixer" }),
    (e: Error) =>
      e instanceof WeightsError &&
      /\"backbone\.layers\.0\.mixer\.x_proj\.weight\" has shape \[36,128\]/.test(e.message),
  );
  await assert.rejects(() => Mamba2.create({ dModel: 64, headdim: 48 }), /Mamba2 option headdim/);
  await assert.rejects(() => Mamba.create({ dModel: 64, dtInit: "x" as "random" }), /dtInit/);
  await assert.rejects(
    () => Mamba.create({ dModel: 64 }, { seed: 0.5 }),
    /seed must be an integer/,
  );
  await assert.rejects(
    () => byFile.forward({ data: new Float32Array(64), shape: [1, 64] }),
    InputError,
  );
  await assert.rejects(() => byFile.step(byFile.createState(2), x), InputError);
  const m2 = await Mamba2.create({ dModel: 32, dState: 16, headdim: 16 }, { seed: 0 });
  await assert.rejects(
    () => byFile.step(m2.createState(1), { data: new Float32Array(64), shape: [1, 64] }),
    /does not fit/,
  );
});

Deno.test("blocks: states save, restore and fork like the model's", async () => {
  const block = await Mamba2.create({ dModel: 32, dState: 16, headdim: 8, chunkSize: 4 }, {
    seed: 7,
  });
  const L = 6;
  const x = {
    data: new Float32Array(2 * L * 32).map((_, i) => Math.sin(0.3 * i)),
    shape: [2, L, 32],
  };
  const full = await block.forward(x);
  const state = block.createState(2);
  await assert.rejects(
    () => block.forward({ data: new Float32Array(0), shape: [2, 0, 32] }),
    InputError,
  );
  const head = (n: number) => {
    const out = new Float32Array(2 * n * 32);
    for (let b = 0; b < 2; b++) {
      out.set(x.data.subarray(b * L * 32, (b * L + n) * 32), b * n * 32);
    }
    return out;
  };
  await block.forward({ data: head(L - 1), shape: [2, L - 1, 32] }, state);
  const saved = InferenceState.fromBytes(await state.toBytes());
  const fork = state.clone();
  const last = tokenRows(x.data, 2, L, 32, L - 1);
  const want = tokenRows(full.data, 2, L, 32, L - 1);
  for (const s of [state, saved, fork]) {
    const y = await block.step(s, { data: last, shape: [2, 32] });
    assertClose(y.data, want, { atol: 1e-5, rtol: 1e-4 }, "continued");
  }
  // The same seed gives the same block, another seed another one.
  const again = await Mamba2.create({ dModel: 32, dState: 16, headdim: 8, chunkSize: 4 }, {
    seed: 7,
  });
  assert.deepEqual((await again.forward(x)).data, full.data);
  const other = await Mamba2.create({ dModel: 32, dState: 16, headdim: 8, chunkSize: 4 }, {
    seed: 8,
  });
  assert.notDeepEqual((await other.forward(x)).data, full.data);
});

Deno.test({
  name: "blocks wasm: uploads in chunks over 4 ranks, and a block on 4 ranks",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const { WasmBackend } = await import("../src/backends/wasm/backend.ts");
    const dir = `${oracleDir()}/m2_hd16_ds16_l64`;
    const cfg = parseConfig(JSON.parse(Deno.readTextFileSync(`${dir}/config.json`)));
    const weights = await loadWeights(cfg, new URL(`file://${dir}/`), "f32");
    const ref = new RefBackend({ config: cfg, weights });
    const run = loadExpected("m2_hd16_ds16_l64").json.runs[1];
    const { batch, prompt_len: L } = run;
    const layer = trace(ref, cfg, run.input_ids)[1];
    // Chunks of 5 tokens: each chunk copies its slice of the staged rows.
    const wasm = await WasmBackend.create({ config: cfg, weights }, { threads: 4, chunkTokens: 5 });
    try {
      assert.equal(wasm.threads, 4);
      const state = wasm.createState(batch);
      const y = await wasm.read(
        wasm.mixer(1, wasm.upload(layer.normed, batch * L, cfg.dModel), batch, L, state),
      );
      const after = y.map((v, j) => v + layer.residual[j]);
      assertClose(after, layer.after, TOL.logits, "chunked upload");
      // The staged rows must be the ones given: a shifted input gives another result.
      const shifted = layer.normed.map((_, j) =>
        layer.normed[(j + cfg.dModel) % layer.normed.length]
      );
      const fresh = wasm.createState(batch); // state ops first: they end a program's segment
      const z = await wasm.read(
        wasm.mixer(1, wasm.upload(shifted, batch * L, cfg.dModel), batch, L, fresh),
      );
      assert.throws(() => assertClose(z, y, TOL.logits, "shifted"));
    } finally {
      wasm.dispose();
    }
    // A block whose placeholder vocabulary leaves some ranks without rows.
    const opts = { dModel: 32, dState: 16, headdim: 8 };
    const x = { data: new Float32Array(2 * 9 * 32).map((_, i) => Math.sin(i)), shape: [2, 9, 32] };
    const onRef = await Mamba2.create(opts, { seed: 3 });
    const onWasm = await Mamba2.create(opts, { seed: 3, backend: "wasm", wasm: { threads: 4 } });
    try {
      assertClose(
        (await onWasm.forward(x)).data,
        (await onRef.forward(x)).data,
        TOL.logits,
        "4 ranks",
      );
    } finally {
      onWasm.dispose();
    }
  },
});

/** Options the oracle cases do not cover: every backend must agree with `ref` on them. */
const VARIANTS: {
  name: string;
  make: (init: Parameters<typeof Mamba.create>[1]) => Promise<MixerBlock>;
}[] = [
  {
    name: "Mamba bias, no conv bias, dtRank 3, dState 8, dConv 3",
    make: (i) =>
      Mamba.create({ dModel: 24, bias: true, convBias: false, dtRank: 3, dState: 8, dConv: 3 }, i),
  },
  {
    name: "Mamba2 ngroups 2, bias, D per channel, norm before gate",
    make: (i) =>
      Mamba2.create({
        dModel: 32,
        dState: 16,
        headdim: 8,
        ngroups: 2,
        bias: true,
        DHasHdim: true,
        normBeforeGate: true,
        chunkSize: 4,
      }, i),
  },
  {
    name: "Mamba2 without the gated norm, dt limit, no conv bias",
    make: (i) =>
      Mamba2.create({
        dModel: 32,
        dState: 8,
        headdim: 16,
        rmsnorm: false,
        dtLimit: [0.01, 0.05],
        convBias: false,
        chunkSize: 8,
      }, i),
  },
];

for (const backend of BACKENDS.filter((b) => b !== "ref")) {
  Deno.test({
    name: `blocks ${backend}: options beyond the oracle's agree with ref`,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: async () => {
      for (const v of VARIANTS) {
        const ref = await v.make({ seed: 21 });
        const other = await v.make({ seed: 21, backend, wasm: { threads: 2 } });
        try {
          const d = ref.dModel;
          const [batch, L] = [2, 11];
          const x = {
            data: new Float32Array(batch * L * d).map((_, i) => Math.sin(0.7 * i) * 2),
            shape: [batch, L, d],
          };
          const want = await ref.forward(x);
          assertClose((await other.forward(x)).data, want.data, TOL.logits, `${v.name}: forward`);
          const state = other.createState(batch);
          for (let t = 0; t < L; t++) {
            const y = await other.step(state, {
              data: tokenRows(x.data, batch, L, d, t),
              shape: [batch, d],
            });
            assertClose(
              y.data,
              tokenRows(want.data, batch, L, d, t),
              TOL.logits,
              `${v.name}: step ${t}`,
            );
          }
        } finally {
          other.dispose();
        }
      }
    },
  });
}
