import assert from "node:assert/strict";
import {
  applyRepetitionPenalty,
  argmax,
  Sampler,
  type SamplingOptions,
  SamplingOptionsError,
  validateSamplingOptions,
} from "../src/sampling.ts";
import { Xoshiro128 } from "../src/rng.ts";
import { InputError, MambaError } from "../src/errors.ts";

// ---- PRNG ----

Deno.test("xoshiro128**: matches the reference output for state {1, 2, 3, 4}", () => {
  // Values from the reference C implementation (Blackman & Vigna) seeded with s = {1, 2, 3, 4}.
  const rng = Xoshiro128.fromState([1, 2, 3, 4]);
  const got = Array.from({ length: 6 }, () => rng.nextUint32());
  assert.deepEqual(got, [11520, 0, 5927040, 70819200, 2031721883, 1637235492]);
});

Deno.test("xoshiro128**: seeds are reproducible, distinct, and floats are uniform in [0, 1)", () => {
  const seq = (seed: number) => {
    const r = new Xoshiro128(seed);
    return Array.from({ length: 8 }, () => r.nextUint32());
  };
  assert.deepEqual(seq(42), seq(42));
  assert.notDeepEqual(seq(42), seq(43));
  assert.notDeepEqual(seq(0), seq(2 ** 32)); // the high half of the seed counts
  assert.notDeepEqual(seq(1), seq(-1));
  const a = new Xoshiro128(3);
  const b = a.clone();
  assert.equal(a.nextFloat(), b.nextFloat());
  assert.throws(() => new Xoshiro128(1.5), MambaError);
  const r = new Xoshiro128(123);
  const bins = new Array(10).fill(0);
  const N = 100_000;
  for (let i = 0; i < N; i++) {
    const u = r.nextFloat();
    assert.ok(u >= 0 && u < 1);
    bins[Math.floor(u * 10)]++;
  }
  assert.ok(chiSquare(bins, new Array(10).fill(0.1), N) < CHI2_999[9]);
});

// ---- validation ----

Deno.test("validateSamplingOptions: defaults", () => {
  const r = validateSamplingOptions({ seed: 5 });
  assert.deepEqual({ ...r }, {
    temperature: 1,
    topK: 0,
    topP: 1,
    minP: 0,
    repetitionPenalty: 1,
    seed: 5,
    vocabSize: undefined,
    greedy: false,
  });
  assert.equal(validateSamplingOptions({ temperature: 0 }).greedy, true);
  assert.equal(validateSamplingOptions({ topK: 1 }).greedy, true);
  assert.ok(Number.isInteger(validateSamplingOptions().seed));
  // Boundary values that are allowed.
  for (
    const o of [{ topP: 1 }, { topP: 1e-9 }, { minP: 0 }, { minP: 1 }, { topK: 0 }, {
      repetitionPenalty: 1e-3,
    }]
  ) {
    validateSamplingOptions(o);
  }
});

Deno.test("validateSamplingOptions: bad values throw a MambaError naming the option", () => {
  const bad: [SamplingOptions, string][] = [
    [{ temperature: -0.1 }, "temperature"],
    [{ temperature: NaN }, "temperature"],
    [{ temperature: Infinity }, "temperature"],
    [{ topK: -1 }, "topK"],
    [{ topK: 2.5 }, "topK"],
    [{ topK: NaN }, "topK"],
    [{ topP: 0 }, "topP"],
    [{ topP: 1.01 }, "topP"],
    [{ topP: -0.5 }, "topP"],
    [{ topP: NaN }, "topP"],
    [{ minP: -0.01 }, "minP"],
    [{ minP: 1.5 }, "minP"],
    [{ minP: NaN }, "minP"],
    [{ repetitionPenalty: 0 }, "repetitionPenalty"],
    [{ repetitionPenalty: -1 }, "repetitionPenalty"],
    [{ repetitionPenalty: NaN }, "repetitionPenalty"],
    [{ seed: 0.5 }, "seed"],
    [{ vocabSize: 0 }, "vocabSize"],
    [{ vocabSize: 3.5 }, "vocabSize"],
  ];
  for (const [opts, name] of bad) {
    for (const f of [() => validateSamplingOptions(opts), () => new Sampler(opts)]) {
      assert.throws(f, (e: unknown) => {
        assert.ok(e instanceof SamplingOptionsError, `${JSON.stringify(opts)}`);
        assert.ok(e instanceof MambaError);
        assert.equal(e.option, name);
        assert.match(e.message, new RegExp(`^${name} must`));
        return true;
      });
    }
  }
});

// ---- greedy, argmax, vocab restriction ----

Deno.test("greedy (topK 1 or temperature 0) is the argmax, first on ties", () => {
  const rng = new Xoshiro128(1);
  for (let trial = 0; trial < 200; trial++) {
    const logits = Float32Array.from({ length: 50 }, () => rng.nextFloat() * 20 - 10);
    const want = argmax(logits);
    assert.equal(logits.indexOf(Math.max(...logits)), want);
    assert.equal(new Sampler({ topK: 1, seed: trial }).sample(logits), want);
    assert.equal(new Sampler({ temperature: 0, topP: 0.5, seed: trial }).sample(logits), want);
  }
  assert.equal(new Sampler({ topK: 1 }).sample(new Float32Array([1, 7, 3, 7])), 1);
  assert.equal(argmax(new Float32Array([NaN, 2, NaN])), 1);
  assert.equal(argmax(new Float32Array([-Infinity, -Infinity])), 0);
});

Deno.test("vocabSize: padded ids are never produced, greedy or sampled", () => {
  const logits = new Float32Array([0, 1, 2, 3, 100, 100, 100, 100]); // 4 real + 4 padding
  assert.equal(new Sampler({ topK: 1, vocabSize: 4 }).sample(logits), 3);
  assert.equal(new Sampler({ topK: 1 }).sample(logits), 4);
  const s = new Sampler({ vocabSize: 4, temperature: 5, seed: 2 });
  for (let i = 0; i < 2000; i++) assert.ok(s.sample(logits) < 4);
  assert.throws(() => new Sampler({ vocabSize: 9 }).sample(logits), InputError);
});

Deno.test("sample: never modifies the logits; all -inf/NaN throws", () => {
  const logits = new Float32Array([0.5, -1, 2, 0]);
  const copy = logits.slice();
  const s = new Sampler({
    temperature: 0.7,
    topK: 3,
    topP: 0.9,
    minP: 0.05,
    repetitionPenalty: 1.3,
  });
  for (let i = 0; i < 100; i++) s.sample(logits, [0, 1, 2]);
  assert.deepEqual(logits, copy);
  assert.throws(() => new Sampler({ seed: 1 }).sample(new Float32Array([-Infinity, NaN])), Error);
  // NaN entries are never sampled.
  const withNaN = new Float32Array([NaN, 0, NaN, 0]);
  const s2 = new Sampler({ seed: 4 });
  for (let i = 0; i < 500; i++) assert.ok([1, 3].includes(s2.sample(withNaN)));
});

// ---- seeded reproducibility ----

Deno.test("a fixed seed gives the identical sequence; another seed does not", () => {
  const rng = new Xoshiro128(77);
  const rows = Array.from(
    { length: 300 },
    () => Float32Array.from({ length: 64 }, () => rng.nextFloat() * 6),
  );
  const run = (seed: number) => {
    const s = new Sampler({ seed, temperature: 1.2, topP: 0.95, topK: 40, minP: 0.01 });
    return rows.map((r, i) => s.sample(r, [i % 64]));
  };
  assert.deepEqual(run(1234), run(1234));
  assert.notDeepEqual(run(1234), run(1235));
  assert.equal(new Sampler({ seed: 9 }).options.seed, 9);
});

// ---- repetition penalty ----

Deno.test("repetition penalty: CTRL formula once per distinct id, float32 like the reference", () => {
  const logits = new Float32Array([2.5, -1.25, 0, 3.3, -0.7, 10]);
  const history = [0, 1, 1, 1, 2, 4, 4, 99, -1, 5];
  const penalty = 1.3;
  const out = applyRepetitionPenalty(logits, history, penalty, undefined, 5);
  const p = Math.fround(penalty);
  const want = new Float32Array([
    2.5 / p,
    -1.25 * p,
    0 / p,
    3.3, // not in history
    -0.7 * p,
  ]);
  want[3] = logits[3];
  assert.deepEqual(out, want);
  assert.equal(out.length, 5); // id 5 and 99 are beyond vocabSize 5
  assert.equal(logits[0], 2.5, "input untouched");
  // penalty 1 is the identity
  assert.deepEqual(applyRepetitionPenalty(logits, history, 1), logits);
  // penalty < 1 encourages repetition
  const enc = applyRepetitionPenalty(new Float32Array([2, -2]), [0, 1], 0.5);
  assert.deepEqual(Array.from(enc), [4, -1]);
});

Deno.test("repetition penalty changes the greedy choice exactly as the formula says", () => {
  const logits = new Float32Array([3, 2, -1, 1.9]);
  assert.equal(new Sampler({ topK: 1, repetitionPenalty: 1.4 }).sample(logits, []), 0);
  // 3/1.4 = 2.14 > 2 → still 0
  assert.equal(new Sampler({ topK: 1, repetitionPenalty: 1.4 }).sample(logits, [0]), 0);
  // 3/1.6 = 1.875 < 2 → 1
  assert.equal(new Sampler({ topK: 1, repetitionPenalty: 1.6 }).sample(logits, [0]), 1);
  // 3/2 = 1.5, 2/2 = 1 → 3 (1.9) wins
  assert.equal(new Sampler({ topK: 1, repetitionPenalty: 2 }).sample(logits, [0, 1, 1]), 3);
  // negative logits get more negative: -1 * 2 = -2, still the last choice
  const neg = new Float32Array([-1, -1.5]);
  assert.equal(new Sampler({ topK: 1, repetitionPenalty: 2 }).sample(neg, [0]), 1);
});

// ---- statistical checks against the renormalised distributions ----

/** Chi-square critical values at p = 0.001 for df = 1..12. */
const CHI2_999 = [
  NaN,
  10.83,
  13.82,
  16.27,
  18.47,
  20.52,
  22.46,
  24.32,
  26.12,
  27.88,
  29.59,
  31.26,
  32.91,
];

function chiSquare(counts: number[], probs: number[], n: number): number {
  let x = 0;
  for (let i = 0; i < counts.length; i++) {
    if (probs[i] === 0) continue;
    const e = probs[i] * n;
    x += (counts[i] - e) ** 2 / e;
  }
  return x;
}

function softmax(logits: number[], T: number): number[] {
  const m = Math.max(...logits);
  const e = logits.map((l) => Math.exp((l - m) / T));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function renorm(p: number[], keep: boolean[]): number[] {
  const s = p.reduce((a, v, i) => a + (keep[i] ? v : 0), 0);
  return p.map((v, i) => (keep[i] ? v / s : 0));
}

/**
 * The expected distribution, written independently of the implementation: temperature,
 * then top-k, then top-p exactly as mamba_ssm's `modify_logits_for_top_p_filtering` (sort
 * ascending, cumulative softmax, drop where cumsum <= 1 - top_p), then min-p relative to
 * the top probability.
 */
function expected(logits: number[], o: SamplingOptions): number[] {
  const T = o.temperature ?? 1;
  let p = softmax(logits, T);
  const V = logits.length;
  if (o.topK && o.topK < V) {
    const kth = [...logits].sort((a, b) => b - a)[o.topK - 1];
    p = renorm(p, logits.map((l) => l >= kth));
  }
  if (o.topP !== undefined && o.topP < 1) {
    const order = [...Array(V).keys()].sort((a, b) => p[a] - p[b]); // ascending
    let cum = 0;
    const keep = new Array(V).fill(true);
    for (const i of order) {
      cum += p[i];
      if (cum <= 1 - o.topP) keep[i] = false;
    }
    p = renorm(p, keep);
  }
  if (o.minP) {
    const pmax = Math.max(...p);
    p = renorm(p, p.map((v) => v >= o.minP! * pmax));
  }
  return p;
}

const TOY = [1.0, 2.2, -0.5, 0.3, 3.1, 1.7, -2.0, 0.9, 2.6, 0.0];

Deno.test("sampling frequencies match the renormalised distribution; filtered ids never appear", () => {
  const configs: SamplingOptions[] = [
    {},
    { temperature: 0.6 },
    { temperature: 1.7 },
    { topK: 3 },
    { topK: 5, temperature: 0.8 },
    { topP: 0.7 },
    { topP: 0.9, temperature: 1.3 },
    { minP: 0.2 },
    { minP: 0.05, temperature: 2 },
    { topK: 6, topP: 0.8 },
    { topK: 7, topP: 0.95, minP: 0.1, temperature: 0.9 },
  ];
  const N = 40_000;
  const logits = Float32Array.from(TOY);
  for (const [ci, cfg] of configs.entries()) {
    const want = expected(TOY, cfg);
    const kept = want.filter((v) => v > 0).length;
    assert.ok(kept >= 2, "each config leaves a real choice");
    const s = new Sampler({ ...cfg, seed: 1000 + ci });
    const counts = new Array(TOY.length).fill(0);
    for (let i = 0; i < N; i++) counts[s.sample(logits)]++;
    for (let i = 0; i < TOY.length; i++) {
      if (want[i] === 0) assert.equal(counts[i], 0, `${JSON.stringify(cfg)}: id ${i} is filtered`);
    }
    const x2 = chiSquare(counts, want, N);
    assert.ok(
      x2 < CHI2_999[kept - 1],
      `${JSON.stringify(cfg)}: chi² ${x2.toFixed(2)} (df ${kept - 1}), counts ${counts}`,
    );
    // The check has power: the same counts are far from the unfiltered softmax.
    if (kept < TOY.length || cfg.temperature !== undefined) {
      const plain = softmax(TOY, 1);
      const wrong = chiSquare(counts, plain, N);
      assert.ok(wrong > 10 * CHI2_999[9], `${JSON.stringify(cfg)}: vs plain softmax ${wrong}`);
    }
  }
});

Deno.test("top-p keeps the boundary token; minP 1 keeps only the maximum", () => {
  // p ≈ [0.5, 0.3, 0.2]: topP 0.5 keeps just id 0 (mass above id 1 is already 0.5),
  // topP 0.51 keeps ids 0 and 1.
  const logits = Float32Array.from([Math.log(0.5), Math.log(0.3), Math.log(0.2)]);
  const seen = (o: SamplingOptions) => {
    const s = new Sampler({ ...o, seed: 3 });
    const set = new Set<number>();
    for (let i = 0; i < 3000; i++) set.add(s.sample(logits));
    return [...set].sort();
  };
  assert.deepEqual(seen({ topP: 0.49 }), [0]);
  assert.deepEqual(seen({ topP: 0.51 }), [0, 1]);
  assert.deepEqual(seen({ topP: 0.81 }), [0, 1, 2]);
  assert.deepEqual(seen({ minP: 1 }), [0]);
  assert.deepEqual(seen({ minP: 0.5 }), [0, 1]);
  assert.deepEqual(seen({ topK: 2 }), [0, 1]);
  // top-p is computed after top-k: within ids {0, 1}, p = [0.625, 0.375].
  assert.deepEqual(seen({ topK: 2, topP: 0.6 }), [0]);
  assert.deepEqual(seen({ topK: 2, topP: 0.63 }), [0, 1]);
});

Deno.test("sampling a 50k vocabulary with every filter stays fast", () => {
  const rng = new Xoshiro128(8);
  const V = 50280;
  const logits = Float32Array.from({ length: V }, () => rng.nextFloat() * 12 - 6);
  const s = new Sampler({
    temperature: 0.9,
    topK: 50,
    topP: 0.95,
    minP: 0.02,
    seed: 1,
    vocabSize: 50277,
  });
  const s2 = new Sampler({ topP: 0.9, seed: 1, vocabSize: 50277, repetitionPenalty: 1.2 });
  const history = Array.from({ length: 500 }, (_, i) => i * 7);
  const t0 = performance.now();
  for (let i = 0; i < 50; i++) {
    assert.ok(s.sample(logits, history) < 50277);
    assert.ok(s2.sample(logits, history) < 50277);
  }
  const ms = (performance.now() - t0) / 100;
  assert.ok(ms < 50, `${ms.toFixed(2)} ms per sample`);
});

Deno.test("top-p by selection picks exactly what the sorted definition picks (ties, -inf, topK)", () => {
  // The definition, spelled out with a sort: walk the distinct values from the top; a value
  // (with its ties) is kept while the mass of strictly greater ones is below topP · total.
  const reference = (logits: Float32Array, o: SamplingOptions, rng: Xoshiro128): number => {
    const T = o.temperature ?? 1;
    const lmax = Math.max(...logits);
    const weight = (v: number) => (v === lmax ? 1 : Math.exp((v - lmax) / T));
    const floor = o.topK ? [...logits].sort((a, b) => b - a)[o.topK - 1] : -Infinity;
    const cand = [...logits].filter((v) => v >= floor).sort((a, b) => b - a);
    const target = (o.topP ?? 1) * cand.reduce((s, v) => s + weight(v), 0);
    let thr = lmax;
    let above = 0;
    for (let i = 0; i < cand.length && above < target;) {
      thr = cand[i];
      while (i < cand.length && cand[i] === thr) above += weight(cand[i++]);
    }
    let total = 0;
    for (const v of logits) if (v >= thr) total += weight(v);
    const u = rng.nextFloat() * total;
    let acc = 0;
    let last = -1;
    for (let i = 0; i < logits.length; i++) {
      if (logits[i] < thr) continue;
      acc += weight(logits[i]);
      last = i;
      if (u < acc) return i;
    }
    return last;
  };
  const gen = new Xoshiro128(11);
  for (let c = 0; c < 400; c++) {
    const V = 1 + Math.floor(gen.nextFloat() * 300);
    const levels = 2 + Math.floor(gen.nextFloat() * 40); // few levels: many ties
    const logits = Float32Array.from({ length: V }, () => {
      const r = gen.nextFloat();
      return r < 0.05 ? -Infinity : Math.floor(r * levels) / 4;
    });
    logits[Math.floor(gen.nextFloat() * V)] = 3; // at least one finite value
    const o: SamplingOptions = {
      temperature: 0.3 + gen.nextFloat() * 1.5,
      topP: 0.01 + gen.nextFloat() * 0.98,
      topK: gen.nextFloat() < 0.3 ? 1 + Math.floor(gen.nextFloat() * V) : 0,
      seed: c,
    };
    if (o.topK === 1) o.topK = 2; // topK 1 is greedy: another path
    const s = new Sampler(o);
    const rng = new Xoshiro128(s.options.seed);
    for (let k = 0; k < 5; k++) {
      assert.equal(s.sample(logits), reference(logits, o, rng), `case ${c} draw ${k}`);
    }
  }
});
