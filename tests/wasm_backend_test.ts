/**
 * The `wasm` backend beyond the oracle suite: config variants the oracle cases do not cover
 * (LayerNorm, biases, untied LM head, several B/C groups split across ranks, `D_has_hdim`,
 * `dt_limit`, norm before gate, no gated norm), odd thread counts, chunked prefill, the state API
 * across threads and backends, reading any activation, and misuse errors. Every result is
 * compared with the `ref` backend on the same random weights.
 */

import assert from "node:assert/strict";
import {
  BackendError,
  InferenceState,
  MambaLM,
  type ModelWeights,
  parseConfig,
  Sampler,
  type StateTensors,
} from "../mod.ts";
import { randomWeights } from "../testing.ts";
import { WasmBackend, type WasmOptions } from "../src/backends/wasm/backend.ts";
import { SPLIT_SUM_MIN } from "../src/backends/wasm/engine.ts";
import { makeShards, maxRanks } from "../src/backends/wasm/plan.ts";
import { assertClose, loadExpected, oracleCases, oracleDir, TOL } from "./oracle_util.ts";

/** A small config in the mamba_ssm format. */
function config(ssm: Record<string, unknown>, top: Record<string, unknown> = {}) {
  return parseConfig({ d_model: 32, n_layer: 2, vocab_size: 101, ssm_cfg: ssm, ...top });
}

/** Random weights, with a separate (untied) LM head when the config says so. */
function weightsFor(cfg: ReturnType<typeof config>, seed = 7): ModelWeights {
  const w = randomWeights(cfg, { seed });
  if (cfg.tieEmbeddings) return w;
  const other = randomWeights(cfg, { seed: seed + 1 }).embedding;
  return { ...w, lmHead: other };
}

async function pair(cfg: ReturnType<typeof config>, opts: WasmOptions, seed = 7) {
  const w = weightsFor(cfg, seed);
  const ref = await MambaLM.fromWeights(cfg, w, { backend: "ref" });
  const wasm = new MambaLM(cfg, await WasmBackend.create({ config: cfg, weights: w }, opts));
  return { ref, wasm };
}

function ids(batch: number, len: number, vocab: number, salt = 0): number[][] {
  return Array.from(
    { length: batch },
    (_, b) => Array.from({ length: len }, (_, t) => (t * 31 + b * 17 + salt * 7 + 3) % vocab),
  );
}

/** forward, prefill + steps and the final states of `wasm` against `ref`. */
async function assertSame(ref: MambaLM, wasm: MambaLM, batch: number, len: number) {
  const V = ref.config.paddedVocabSize;
  const prompt = ids(batch, len, ref.config.vocabSize);
  const a = await ref.forward(prompt);
  const b = await wasm.forward(prompt);
  assertClose(b.data, a.data, TOL.logits, "forward logits");
  const sa = ref.createState(batch);
  const sb = wasm.createState(batch);
  const half = Math.max(1, len >> 1);
  let la = await ref.prefill(sa, prompt.map((r) => r.slice(0, half)));
  let lb = await wasm.prefill(sb, prompt.map((r) => r.slice(0, half)));
  assertClose(lb, la, TOL.logits, "prefill logits");
  for (let t = half; t < len; t++) {
    la = await ref.step(sa, prompt.map((r) => r[t]));
    lb = await wasm.step(sb, prompt.map((r) => r[t]));
    assertClose(lb, la, TOL.logits, `step ${t} logits`);
  }
  assert.equal(lb.length, batch * V);
  await sb.sync();
  for (let l = 0; l < ref.config.nLayer; l++) {
    assertClose(sb.conv[l], sa.conv[l], TOL.conv, `conv state ${l}`);
    assertClose(sb.ssm[l], sa.ssm[l], TOL.ssm, `ssm state ${l}`);
  }
}

const variants: [string, ReturnType<typeof config>][] = [
  [
    "mamba1, LayerNorm, biases, no conv bias, untied head",
    config(
      { bias: true, conv_bias: false, d_state: 8 },
      { rms_norm: false, tie_embeddings: false },
    ),
  ],
  ["mamba1, d_state 40, dt_rank 5", config({ d_state: 40, dt_rank: 5 })],
  [
    "mamba2, 4 groups split across ranks, D_has_hdim, dt_limit",
    config({
      layer: "Mamba2",
      d_state: 16,
      headdim: 8,
      ngroups: 4,
      D_has_hdim: true,
      dt_limit: [0.01, 0.05],
    }),
  ],
  [
    "mamba2, norm before gate, LayerNorm, biases",
    config(
      { layer: "Mamba2", d_state: 8, headdim: 16, norm_before_gate: true, bias: true },
      { rms_norm: false },
    ),
  ],
  [
    "mamba2, no gated norm, 2 groups, untied head",
    config(
      { layer: "Mamba2", d_state: 8, headdim: 8, ngroups: 2, rmsnorm: false },
      { tie_embeddings: false },
    ),
  ],
  // Split in units of 32 channels: 3 threads cut the first head in two.
  ["mamba2, 2 heads of 64", config({ layer: "Mamba2", d_state: 16, headdim: 64 }, { d_model: 64 })],
  // Split in units of 1 channel (6 is no multiple of 4): 3 threads cut heads off the lanes.
  ["mamba2, headdim 6", config({ layer: "Mamba2", d_state: 8, headdim: 6 }, { d_model: 48 })],
];

for (const [name, cfg] of variants) {
  for (const threads of [1, 2, 3]) {
    Deno.test(`wasm backend: ${name}, ${threads} thread(s), equals ref`, async () => {
      const { ref, wasm } = await pair(cfg, { threads, chunkTokens: 5 });
      try {
        await assertSame(ref, wasm, 2, 12);
        await assertSame(ref, wasm, 1, 1);
      } finally {
        wasm.dispose();
      }
    });
  }
}

// Long chunks (the variants above run chunks of 5 tokens): each rank computes its share of
// in_proj's B and C rows and the shares are swapped through the shared buffer.
for (const threads of [2, 3]) {
  Deno.test(`wasm backend: mamba2, long chunks (B/C rows shared out), ${threads} threads, equals ref`, async () => {
    const cfg = config({ layer: "Mamba2", d_state: 12, headdim: 8, bias: true });
    const { ref, wasm } = await pair(cfg, { threads, chunkTokens: 64 });
    try {
      await assertSame(ref, wasm, 2, 40);
      await assertSame(ref, wasm, 1, 17);
    } finally {
      wasm.dispose();
    }
  });
}

// Prefill's sums over the ranks past SPLIT_SUM_MIN floats ([rows, d_model]) are split between
// the ranks (each sums its columns, then all copy): 100 tokens of d_model 256 are 25,600.
for (const layer of ["Mamba1", "Mamba2"]) {
  Deno.test(`wasm backend: ${layer}, large sums over 3 ranks split between them, equals ref`, async () => {
    const ssm = layer === "Mamba2" ? { layer, d_state: 8, headdim: 16 } : { layer, d_state: 8 };
    const cfg = config(ssm, { d_model: 256 });
    assert.ok(100 * cfg.dModel >= SPLIT_SUM_MIN, "the prompt is long enough for the split sums");
    const { ref, wasm } = await pair(cfg, { threads: 3, chunkTokens: 128 });
    try {
      await assertSame(ref, wasm, 1, 100);
    } finally {
      wasm.dispose();
    }
  });
}

Deno.test("wasm backend: thread count is capped by the slices, and validated", async () => {
  // 4 heads of 16 channels, split in units of 4 channels: at most 16 ranks, a quarter head each.
  const cfg = config({ layer: "Mamba2", d_state: 8, headdim: 16 });
  const w = randomWeights(cfg);
  const be = await WasmBackend.create({ config: cfg, weights: w }, { threads: 99 });
  assert.equal(be.threads, 16);
  assert.deepEqual(
    be.shards.map((s) => [s.c0, s.c1, s.h0, s.h1]),
    Array.from({ length: 16 }, (_, r) => [4 * r, 4 * r + 4, r >> 2, (r >> 2) + 1]),
  );
  be.dispose();
  await assert.rejects(
    () => WasmBackend.create({ config: cfg, weights: w }, { threads: 0 }),
    BackendError,
  );
  await assert.rejects(
    () => WasmBackend.create({ config: cfg, weights: w }, { chunkTokens: 1.5 }),
    BackendError,
  );
});

/** An oracle case's config. */
function oracleConfig(c: string) {
  return parseConfig(JSON.parse(Deno.readTextFileSync(`${oracleDir()}/${c}/config.json`)));
}

Deno.test("wasm plan: Mamba-2 splits d_inner in units of channels, within one unit at any thread count", () => {
  // mamba2-130m's shape: 24 heads of 64 channels, split in units of 32.
  const m2130 = parseConfig({
    d_model: 768,
    n_layer: 24,
    vocab_size: 50277,
    ssm_cfg: { layer: "Mamba2", headdim: 64, d_state: 128 },
    pad_vocab_size_multiple: 16,
  });
  const cases: [string, ReturnType<typeof config>, number][] = [
    ["mamba2-130m", m2130, 32],
    ["m2_hd16_ds16_l64", oracleConfig("m2_hd16_ds16_l64"), 4],
    ["m2_hd32_ds64_l7", oracleConfig("m2_hd32_ds64_l7"), 32],
    ["headdim 6", config({ layer: "Mamba2", d_state: 8, headdim: 6 }, { d_model: 48 }), 1],
  ];
  for (const [name, cfg, unit] of cases) {
    assert.equal(maxRanks(cfg), cfg.dInner / unit, name);
    for (let T = 1; T <= maxRanks(cfg); T++) {
      const shards = makeShards(cfg, T);
      const sizes = shards.map((s) => s.c1 - s.c0);
      assert.ok(Math.max(...sizes) - Math.min(...sizes) <= unit, `${name} ${T}: ${sizes}`);
      shards.forEach((s, r) => {
        assert.equal(s.c0, r === 0 ? 0 : shards[r - 1].c1, `${name} ${T} rank ${r}`);
        assert.equal(s.c0 % unit, 0, `${name} ${T} rank ${r}`);
        assert.ok(s.c1 > s.c0, `${name} ${T} rank ${r}`);
        assert.equal(s.h0, Math.floor(s.c0 / cfg.headdim));
        assert.equal(s.h1, Math.ceil(s.c1 / cfg.headdim));
      });
      assert.equal(shards[T - 1].c1, cfg.dInner);
    }
  }
  // mamba2-130m on 2 threads: 12 whole heads each, as when the split was by heads. On 16: 96
  // channels each (1.5 heads: 2 heads touched, 2·96 + 256 + 2 = 450 rows of in_proj), where the
  // split by heads gave 8 ranks 2 heads (514 rows) and 8 ranks 1 head (385 rows).
  assert.deepEqual(makeShards(m2130, 2).map((s) => [s.c0, s.c1, s.h0, s.h1]), [
    [0, 768, 0, 12],
    [768, 1536, 12, 24],
  ]);
  for (const s of makeShards(m2130, 16)) {
    assert.equal(s.c1 - s.c0, 96);
    assert.equal(s.h1 - s.h0, 2);
  }
  // The thread counts the oracle suite runs cut the 16-channel heads of its Mamba-2 cases.
  for (const c of ["m2_hd16_ds16_l64", "m2_d32_ds64_l1"]) {
    const cfg = oracleConfig(c);
    for (const T of [3, 5, 7, maxRanks(cfg)]) {
      assert.ok(makeShards(cfg, T).some((s) => s.c0 % cfg.headdim !== 0), `${c} ${T}`);
    }
  }
});

Deno.test("wasm backend: Mamba-2 states move between thread counts that cut heads", async () => {
  for (const c of ["m2_hd16_ds16_l64", "m2_d32_ds64_l1"]) {
    const lms = new Map<number, MambaLM>();
    try {
      for (const threads of [1, 5, 7]) {
        lms.set(
          threads,
          await MambaLM.load(`${oracleDir()}/${c}`, { backend: "wasm", wasm: { threads } }),
        );
      }
      const cfg = lms.get(1)!.config;
      const prompt = ids(2, 9, cfg.vocabSize);
      // The public layout is the same at any thread count: a random state uploaded to the ranks
      // and downloaded again comes back bit for bit.
      for (const [threads, lm] of lms) {
        const be = lm.backend as WasmBackend;
        assert.equal(be.threads, threads);
        let seed = 12345;
        const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 30 - 1;
        const host: StateTensors = {
          conv: Array.from(
            { length: cfg.nLayer },
            () => Float32Array.from({ length: 2 * cfg.convDim * cfg.dConv }, rnd),
          ),
          ssm: Array.from(
            { length: cfg.nLayer },
            () => Float32Array.from({ length: 2 * cfg.dInner * cfg.dState }, rnd),
          ),
        };
        const h = be.createState(2);
        be.uploadState(h, host);
        const back = await be.downloadState(h);
        be.freeState(h);
        for (let l = 0; l < cfg.nLayer; l++) {
          assert.deepEqual(back.conv[l], host.conv[l], `${c} ${threads} threads conv ${l}`);
          assert.deepEqual(back.ssm[l], host.ssm[l], `${c} ${threads} threads ssm ${l}`);
        }
      }
      // Each thread count's prefill state, read in the public layout, equals one thread's.
      const saved = new Map<number, Uint8Array>();
      for (const [threads, lm] of lms) {
        const s = lm.createState(2);
        await lm.prefill(s, prompt);
        saved.set(threads, await s.toBytes());
        if (threads === 1) continue;
        const one = InferenceState.fromBytes(saved.get(1)!);
        for (let l = 0; l < cfg.nLayer; l++) {
          assertClose(s.conv[l], one.conv[l], TOL.conv, `${c} ${threads} threads conv ${l}`);
          assertClose(s.ssm[l], one.ssm[l], TOL.ssm, `${c} ${threads} threads ssm ${l}`);
        }
      }
      // A state saved at one thread count continues at another like where it was made.
      for (const [a, b] of [[5, 1], [1, 5], [7, 5], [1, 7]]) {
        const here = await lms.get(a)!.step(InferenceState.fromBytes(saved.get(a)!), [5, 6]);
        const there = await lms.get(b)!.step(InferenceState.fromBytes(saved.get(a)!), [5, 6]);
        assertClose(there, here, TOL.logits, `${c} saved at ${a} threads, run at ${b}`);
      }
    } finally {
      for (const lm of lms.values()) lm.dispose();
    }
  }
});

Deno.test("wasm backend: chunked prefill equals one pass, and long forwards chunk", async () => {
  const cfg = config({ d_state: 8 });
  const w = randomWeights(cfg);
  const one = new MambaLM(
    cfg,
    await WasmBackend.create({ config: cfg, weights: w }, { threads: 2 }),
  );
  const chunked = new MambaLM(
    cfg,
    await WasmBackend.create({ config: cfg, weights: w }, { threads: 2, chunkTokens: 7 }),
  );
  try {
    const prompt = ids(3, 40, cfg.vocabSize);
    const a = await one.forward(prompt);
    const b = await chunked.forward(prompt);
    assertClose(b.data, a.data, TOL.logits, "forward");
    const sa = one.createState(3);
    const sb = chunked.createState(3);
    assertClose(await chunked.prefill(sb, prompt), await one.prefill(sa, prompt), TOL.logits, "p");
    await sa.sync();
    await sb.sync();
    for (let l = 0; l < cfg.nLayer; l++) assertClose(sb.ssm[l], sa.ssm[l], TOL.ssm, "ssm");
  } finally {
    one.dispose();
    chunked.dispose();
  }
});

Deno.test("wasm backend: states save, restore, clone and move between backends", async () => {
  const lm = await MambaLM.load(`${oracleDir()}/m2_hd16_ds16_l64`, {
    backend: "wasm",
    wasm: { threads: 2 },
  });
  const ref = await MambaLM.load(`${oracleDir()}/m2_hd16_ds16_l64`, { backend: "ref" });
  try {
    const prompt = ids(2, 9, lm.config.vocabSize);
    const s = lm.createState(2);
    await lm.prefill(s, prompt);
    // A clone branches: stepping it leaves the original as it was.
    const c = s.clone();
    await lm.step(c, [1, 2]);
    const saved = InferenceState.fromBytes(await s.toBytes());
    const x = await lm.step(s, [5, 6]);
    // Restored on wasm, and moved to ref: both continue like the original.
    assertClose(await lm.step(saved, [5, 6]), x, TOL.logits, "restored");
    const moved = InferenceState.fromBytes(await c.toBytes());
    const viaRef = ref.createState(2);
    await ref.prefill(viaRef, prompt);
    await ref.step(viaRef, [1, 2]);
    assertClose(await ref.step(moved, [3, 4]), await ref.step(viaRef, [3, 4]), TOL.logits, "ref");
    // And back: a ref-computed state continues on wasm.
    assertClose(await lm.step(viaRef, [7, 8]), await ref.step(moved, [7, 8]), TOL.logits, "back");
    // Reset zeroes the wasm copy.
    s.reset();
    const fresh = lm.createState(2);
    assertClose(await lm.step(s, [9, 9]), await lm.step(fresh, [9, 9]), TOL.logits, "reset");
  } finally {
    lm.dispose();
  }
});

Deno.test("wasm backend: any activation can be read; misuse is refused", async () => {
  const cfg = config({ d_state: 8 });
  const w = randomWeights(cfg);
  const refLm = await MambaLM.fromWeights(cfg, w, { backend: "ref" });
  const be = await WasmBackend.create({ config: cfg, weights: w }, { threads: 2 });
  try {
    const toks = new Int32Array([3, 1, 4, 1, 5]);
    const e = be.embed(toks);
    const { normed } = be.addNorm(e, null, 0);
    const got = await be.read(normed);
    const r = refLm.backend;
    const want = await r.read(r.addNorm(r.embed(toks), null, 0).normed);
    assertClose(got, want, TOL.logits, "normed");
    // An activation is used once, and does not outlive its read.
    const e2 = be.embed(toks);
    const { normed: n2, residual: r2 } = be.addNorm(e2, null, 0);
    assert.throws(() => be.addNorm(e2, null, 0), BackendError);
    assert.throws(() => be.embed(toks), BackendError); // one embed per read
    await be.read(n2);
    assert.throws(() => be.addNorm(r2, null, 1), BackendError);
    // Freed states are refused.
    const st = be.createState(1);
    be.freeState(st);
    be.freeState(st);
    await assert.rejects(() => be.downloadState(st), BackendError);
  } finally {
    be.dispose();
  }
  assert.throws(() => be.embed(new Int32Array([1])), BackendError);
  be.dispose();
});

Deno.test("wasm backend: f16 and q8 storage read half and about a quarter of the bytes", async () => {
  const cfg = config({ d_state: 8 }, { d_model: 64 });
  const w = randomWeights(cfg);
  const sizes: number[] = [];
  for (const weights of ["f32", "f16", "q8"] as const) {
    const be = await WasmBackend.create({ config: cfg, weights: w }, { threads: 2, weights });
    sizes.push(be.weightBytesPerToken);
    be.dispose();
  }
  assert.ok(Math.abs(sizes[1] / sizes[0] - 0.5) < 0.05, `f16 ${sizes[1]} vs f32 ${sizes[0]}`);
  assert.ok(sizes[2] / sizes[0] < 0.4, `q8 ${sizes[2]} vs f32 ${sizes[0]}`);
});

// 5, 7 and 64 threads (capped to what each case allows) cut the Mamba-2 cases' heads.
Deno.test("wasm backend: fused greedy decoding reproduces the oracle, 1 to 64 threads", async () => {
  for (const c of oracleCases().filter((c) => c.kind === "model")) {
    const exp = loadExpected(c.case);
    for (const threads of [1, 2, 5, 7, 64]) {
      const lm = await MambaLM.load(`${oracleDir()}/${c.case}`, {
        backend: "wasm",
        wasm: { threads },
      });
      try {
        for (const run of exp.json.runs) {
          for (
            const [key, vocabSize] of [
              ["generated", lm.config.paddedVocabSize],
              ["generated_real_vocab", lm.config.vocabSize],
            ] as const
          ) {
            const want = run[key];
            if (!want) continue;
            const state = lm.createState(run.batch);
            const last = run.input_ids.map((r) => r[r.length - 1]);
            if (run.prompt_len > 1) {
              await lm.prefill(
                state,
                run.input_ids.map((r) => r.slice(0, -1)),
              );
            }
            const got: number[][] = run.input_ids.map(() => []);
            const opts = { topK: 1, vocabSize, blockSize: 8 };
            for await (const block of lm.generateTokens(state, last, want[0].length, opts)) {
              block.forEach((ids, b) => got[b].push(...ids));
            }
            assert.deepEqual(got, want, `${c.case} ${run.name} ${key} ${threads} thread(s)`);
          }
        }
      } finally {
        lm.dispose();
      }
    }
  }
});

Deno.test("wasm backend: fused sampled decoding equals stepping with the host sampler", async () => {
  const lm = await MambaLM.load(`${oracleDir()}/m1_d96_l64_vocab500`, {
    backend: "wasm",
    wasm: { threads: 2 },
  });
  try {
    const opts = { temperature: 0.8, topP: 0.9, repetitionPenalty: 1.3, seed: 5 };
    const prompt = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]];
    const history = prompt.map((p) => p.slice(0, -1));
    const a = lm.createState(2);
    await lm.prefill(a, history);
    const fused: number[][] = [[], []];
    for await (
      const block of lm.generateTokens(a, [5, 3], 40, { ...opts, history, blockSize: 16 })
    ) {
      block.forEach((ids, b) => fused[b].push(...ids));
    }
    // The same by hand: one step at a time, one sampler for the batch.
    const b = lm.createState(2);
    await lm.prefill(b, history);
    const sampler = new Sampler({ ...opts, vocabSize: lm.config.vocabSize });
    const hist = prompt.map((p) => [...p]);
    const stepped: number[][] = [[], []];
    const V = lm.config.paddedVocabSize;
    let cur = [5, 3];
    for (let i = 0; i < 40; i++) {
      const logits = await lm.step(b, cur);
      cur = cur.map((_, r) => sampler.sample(logits.subarray(r * V, (r + 1) * V), hist[r]));
      cur.forEach((t, r) => {
        hist[r].push(t);
        stepped[r].push(t);
      });
    }
    assert.deepEqual(fused, stepped);
    // Both states consumed the same tokens (the fused run does not feed its last pick).
    assert.deepEqual(
      await lm.step(a, [fused[0][39], fused[1][39]]),
      await lm.step(b, [stepped[0][39], stepped[1][39]]),
    );
  } finally {
    lm.dispose();
  }
});

Deno.test("wasm backend: a failure on the ranks surfaces as BackendError and breaks the backend", async () => {
  const cfg = config({ d_state: 8 });
  const be = await WasmBackend.create({ config: cfg, weights: randomWeights(cfg) }, { threads: 2 });
  try {
    // Far more sequences than a rank's 4 GiB memory can hold: every rank fails to allocate.
    be.createState(2 ** 24);
    await assert.rejects(() => be.read(be.embed(new Int32Array([1]))), BackendError);
    assert.throws(() => be.embed(new Int32Array([1])), /failed earlier/);
  } finally {
    be.dispose();
  }
});
