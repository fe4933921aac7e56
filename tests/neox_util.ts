/**
 * The GPT-NeoX oracle suite (`../shared/fixtures/gpt_neox/`, see its README): vectors computed
 * by transformers' `GPTNeoXForCausalLM`, which every backend must reproduce.
 */

import assert from "node:assert/strict";
import { type BackendChoice, GptNeoXLM, KvCacheState, loadModel } from "../mod.ts";
import { argmax, assertClose, sharedDir } from "./oracle_util.ts";
import type { OracleRun } from "./oracle_util.ts";
import { parseSafetensors, tensorToF32 } from "../mod.ts";

/** Folder of the GPT-NeoX vectors. */
export function neoxDir(): string {
  return `${sharedDir()}/fixtures/gpt_neox`;
}

/** The cases listed in index.json. */
export function neoxCases(): { case: string; description: string }[] {
  return JSON.parse(Deno.readTextFileSync(`${neoxDir()}/index.json`)).cases;
}

/** expected.json runs and expected.safetensors arrays of a case. */
export function loadNeoxExpected(name: string): {
  runs: OracleRun[];
  arrays: Map<string, Float32Array>;
} {
  const dir = `${neoxDir()}/${name}`;
  const json = JSON.parse(Deno.readTextFileSync(`${dir}/expected.json`));
  const st = parseSafetensors(Deno.readFileSync(`${dir}/expected.safetensors`));
  const arrays = new Map<string, Float32Array>();
  for (const [k, t] of st.tensors) arrays.set(k, tensorToF32(t));
  return { runs: json.runs, arrays };
}

/** The README's tolerance for logits and step logits. */
export const NEOX_TOL = { atol: 1e-4, rtol: 1e-4 };

/** Options of {@link neoxSuite}. */
export interface NeoxSuiteOptions {
  /** Options of the `wasm` backend. */
  wasm?: { threads?: number };
  /** How to keep the weights (`"as-stored"` keeps the f16 case's weights f16 on the backend). */
  weightsDtype?: "f32" | "f16" | "as-stored";
  /** Appended to the test names. */
  label?: string;
}

/**
 * Registers one Deno.test per GPT-NeoX case for `backend`: full logits, step logits through the
 * KV cache, 32 greedy tokens, prefill + step ≡ forward on the concatenation, and a cache cloned
 * and saved mid-stream continuing identically.
 */
export function neoxSuite(backend: BackendChoice, options: NeoxSuiteOptions = {}): void {
  const name = options.label ? `${backend} (${options.label})` : backend;
  for (const c of neoxCases()) {
    Deno.test(`gpt_neox ${name}: ${c.case}`, async (t) => {
      const exp = loadNeoxExpected(c.case);
      const lm = await loadModel(`${neoxDir()}/${c.case}`, {
        backend,
        wasm: options.wasm,
        weightsDtype: options.weightsDtype,
      });
      assert.ok(lm instanceof GptNeoXLM, "loadModel picks GptNeoXLM for model_type gpt_neox");
      try {
        const V = lm.config.paddedVocabSize;
        for (const run of exp.runs) {
          const arr = (k: string) => {
            const a = exp.arrays.get(`${run.name}.${k}`);
            assert.ok(a, `missing ${run.name}.${k}`);
            return a;
          };
          await t.step(`${run.name}: forward logits`, async () => {
            const full = await lm.forward(run.input_ids);
            assert.deepEqual(full.shape, [run.batch, run.prompt_len, V]);
            assertClose(full.data, arr("logits"), NEOX_TOL, "logits");
          });
          await t.step(`${run.name}: step logits through the KV cache`, async () => {
            const state = lm.createState(run.batch);
            const want = arr("step_logits");
            const got = new Float32Array(want.length);
            for (let i = 0; i < run.prompt_len; i++) {
              const logits = await lm.step(state, run.input_ids.map((row) => row[i]));
              for (let b = 0; b < run.batch; b++) {
                got.set(logits.subarray(b * V, (b + 1) * V), (b * run.prompt_len + i) * V);
              }
            }
            assert.equal(state.length, run.prompt_len);
            assertClose(got, want, NEOX_TOL, "step_logits");
            state.free();
          });
          await t.step(`${run.name}: greedy continuation`, async () => {
            const want = run.generated;
            const state = lm.createState(run.batch);
            let logits = await lm.prefill(state, run.input_ids);
            const got: number[][] = run.input_ids.map(() => []);
            for (let i = 0; i < want[0].length; i++) {
              const next = got.map((g, b) => {
                const id = argmax(logits, b * V, V);
                g.push(id);
                return id;
              });
              if (i + 1 < want[0].length) logits = await lm.step(state, next);
            }
            assert.deepEqual(got, want);
            state.free();
          });
          await t.step(`${run.name}: generateTokens (fused where the backend can)`, async () => {
            const want = run.generated;
            const state = lm.createState(run.batch);
            const logits = await lm.prefill(state, run.input_ids);
            const first = run.input_ids.map((_, b) => argmax(logits, b * V, V));
            const got = first.map((id) => [id]);
            const blocks = lm.generateTokens(state, first, want[0].length - 1, {
              topK: 1,
              vocabSize: V,
              blockSize: 8,
            });
            for await (const block of blocks) block.forEach((row, b) => got[b].push(...row));
            assert.deepEqual(got, want);
            assert.equal(state.length, run.prompt_len + want[0].length - 1);
            // The cache it left continues like a forward pass over everything.
            const all = run.input_ids.map((p, b) => [...p, ...want[b]]);
            const full = await lm.forward(all);
            const L = all[0].length;
            const next = await lm.step(state, want.map((g) => g[g.length - 1]));
            for (let b = 0; b < run.batch; b++) {
              assertClose(
                next.subarray(b * V, (b + 1) * V),
                full.data.subarray((b * L + L - 1) * V, (b * L + L) * V),
                NEOX_TOL,
                `after generateTokens, row ${b}`,
              );
            }
            state.free();
          });
          await t.step(`${run.name}: prefill + step ≡ forward on the concatenation`, async () => {
            const cont = run.generated.map((g) => g.slice(0, 3));
            const all = run.input_ids.map((p, b) => [...p, ...cont[b]]);
            const full = await lm.forward(all);
            const L = all[0].length;
            const state = lm.createState(run.batch);
            let logits = await lm.prefill(state, run.input_ids);
            for (let i = 0; i <= cont[0].length; i++) {
              const pos = run.prompt_len - 1 + i;
              for (let b = 0; b < run.batch; b++) {
                assertClose(
                  logits.subarray(b * V, (b + 1) * V),
                  full.data.subarray((b * L + pos) * V, (b * L + pos + 1) * V),
                  NEOX_TOL,
                  `position ${pos} row ${b}`,
                );
              }
              if (i < cont[0].length) logits = await lm.step(state, cont.map((c) => c[i]));
            }
            // A clone and a saved-and-restored cache continue exactly like the original.
            const branch = state.clone();
            const again = KvCacheState.fromBytes(await state.toBytes());
            assert.equal(again.length, state.length);
            const next = run.input_ids.map((r) => r[0]);
            const a = await lm.step(state, next);
            const b = await lm.step(branch, next);
            const c = await lm.step(again, next);
            assert.deepEqual(b, a);
            assertClose(c, a, { atol: 0, rtol: 0 }, "restored cache");
            // The clone is independent: stepping the original again does not change it.
            await lm.step(state, next);
            assert.equal(branch.length, state.length - 1);
            for (const s of [state, branch, again]) s.free();
          });
        }
      } finally {
        lm.dispose();
      }
    });
  }
}
