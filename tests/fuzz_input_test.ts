// Seeded mutation fuzzing of saved states and tokenizer files (see fuzz_input_util.ts): a
// bounded count runs here; every outcome is a correct load or a typed MambaError.
import assert from "node:assert/strict";
import { Xoshiro128 } from "../src/rng.ts";
import { fuzzState, fuzzTokenizer, mutate, stateSeeds } from "./fuzz_input_util.ts";
import { REPO_ROOT } from "./text_util.ts";

const RUNS = Number(Deno.env.get("MAMBA_FUZZ_RUNS") ?? 400);

Deno.test(`fuzz: ${RUNS} mutations of saved state bytes: a load or a typed error`, async () => {
  const seeds = await stateSeeds();
  const rng = new Xoshiro128(11);
  const rss0 = Deno.memoryUsage().rss;
  const counts: Record<string, number> = {};
  const findings: string[] = [];
  for (let i = 0; i < RUNS; i++) {
    const input = mutate(seeds[i % seeds.length], rng, true);
    const r = fuzzState(input);
    counts[r.outcome] = (counts[r.outcome] ?? 0) + 1;
    if (r.finding) findings.push(`run ${i}: ${r.finding}`);
  }
  assert.deepEqual(findings, []);
  // Mutations must reach both sides: some still load, most are refused as InputErrors.
  assert.ok((counts.ok ?? 0) > 0 && (counts.InputError ?? 0) > 0, JSON.stringify(counts));
  // Nothing was allocated beyond the inputs: no run took memory by a header's word.
  assert.ok(Deno.memoryUsage().rss - rss0 < 128 * 1024 * 1024);
});

Deno.test(`fuzz: ${Math.ceil(RUNS / 4)} mutations of a tokenizer.json: a load or a typed error`, async () => {
  const seed = await Deno.readFile(`${REPO_ROOT}models/demo/tokenizer.json`);
  const dir = await Deno.makeTempDir({ prefix: "mamba-fuzz-tok-" });
  try {
    const rng = new Xoshiro128(12);
    const counts: Record<string, number> = {};
    const findings: string[] = [];
    for (let i = 0; i < Math.ceil(RUNS / 4); i++) {
      const r = await fuzzTokenizer(`${dir}/tokenizer.json`, mutate(seed, rng, true));
      counts[r.outcome] = (counts[r.outcome] ?? 0) + 1;
      if (r.finding) findings.push(`run ${i}: ${r.finding}`);
    }
    assert.deepEqual(findings, []);
    assert.ok((counts.ok ?? 0) > 0 && (counts.TokenizerError ?? 0) > 0, JSON.stringify(counts));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
