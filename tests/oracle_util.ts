/**
 * Access to the reference vectors in `../shared/fixtures/oracle/` (see its README) and the
 * oracle suite every backend must pass.
 */

import assert from "node:assert/strict";
import {
  type BackendChoice,
  InferenceState,
  type LoadOptions,
  MambaLM,
  parseSafetensors,
  tensorToF32,
} from "../mod.ts";
import { type TensorSpec, writeSafetensors } from "./safetensors_util.ts";

/** The shared folder: `$MAMBA_SHARED`, or `../shared` beside the repo root. */
export function sharedDir(): string {
  const env = Deno.env.get("MAMBA_SHARED");
  if (env) return env;
  return new URL("../../shared", import.meta.url).pathname;
}

/** Folder of the oracle vectors. */
export function oracleDir(): string {
  return `${sharedDir()}/fixtures/oracle`;
}

/** One case of index.json. */
export interface OracleCase {
  case: string;
  kind: "model" | "selective_scan" | "ssd_minimal";
  description: string;
}

/** The cases listed in index.json. */
export function oracleCases(): OracleCase[] {
  return JSON.parse(Deno.readTextFileSync(`${oracleDir()}/index.json`)).cases;
}

/** A run of a model case. */
export interface OracleRun {
  name: string;
  batch: number;
  prompt_len: number;
  input_ids: number[][];
  generated: number[][];
  generated_real_vocab?: number[][];
}

/** expected.json + expected.safetensors of a case. */
export interface OracleExpected {
  json: {
    runs: OracleRun[];
    vocab_size: number;
    padded_vocab_size: number;
    n_layer: number;
    weights_dtype: string;
    [k: string]: unknown;
  };
  arrays: Map<string, { shape: readonly number[]; data: Float32Array }>;
}

/** Loads a case's expected values. */
export function loadExpected(name: string): OracleExpected {
  const dir = `${oracleDir()}/${name}`;
  const json = JSON.parse(Deno.readTextFileSync(`${dir}/expected.json`));
  const st = parseSafetensors(Deno.readFileSync(`${dir}/expected.safetensors`));
  const arrays = new Map<string, { shape: readonly number[]; data: Float32Array }>();
  for (const [k, t] of st.tensors) arrays.set(k, { shape: t.shape, data: tensorToF32(t) });
  return { json, arrays };
}

/** Tolerances of the oracle README. */
export const TOL = {
  logits: { atol: 1e-4, rtol: 1e-4 },
  conv: { atol: 1e-5, rtol: 1e-5 },
  ssm: { atol: 1e-6, rtol: 1e-4 },
  kernel: { atol: 1e-5, rtol: 1e-4 },
};

/** Asserts `|got − want| ≤ atol + rtol·|want|` element-wise, naming the worst element. */
export function assertClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  tol: { atol: number; rtol: number },
  what: string,
): void {
  assert.equal(got.length, want.length, `${what}: length ${got.length} != ${want.length}`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    const excess = err - (tol.atol + tol.rtol * Math.abs(want[i]));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = excess;
      if (Number.isNaN(excess)) break;
    }
  }
  if (worst >= 0) {
    assert.fail(
      `${what}: element ${worst}: got ${got[worst]}, want ${
        want[worst]
      } (tolerance atol ${tol.atol} rtol ${tol.rtol})`,
    );
  }
}

/** Index of the largest of the first `n` values (first on ties, as torch.argmax). */
export function argmax(x: Float32Array, offset: number, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (x[offset + i] > x[offset + best]) best = i;
  return best;
}

/** Options of {@link oracleModelSuite}. */
export interface SuiteOptions {
  /** Multiplies every tolerance (for f16 compute, say). Default 1. */
  tolScale?: number;
  /** Extra load options. */
  weightsDtype?: "f32" | "f16" | "as-stored";
  /** Skip the exact greedy comparison (for low-precision runs). */
  skipGreedy?: boolean;
  /** Per-array tolerances replacing the (scaled) oracle ones (for quantized weights, say). */
  tol?: Partial<Record<"logits" | "conv" | "ssm", { atol: number; rtol: number }>>;
  /** Options of the `wasm` backend (threads, weight storage). */
  wasm?: LoadOptions["wasm"];
  /** Appended to the test names, to tell several suites of one backend apart. */
  label?: string;
  /** Only the model cases this accepts (default all). */
  cases?: (name: string) => boolean;
}

/**
 * Registers one Deno.test per oracle model case for `backend`: full logits, step logits, final
 * states, greedy continuations, and prefill + step ≡ forward.
 */
export function oracleModelSuite(backend: BackendChoice, options: SuiteOptions = {}): void {
  const s = options.tolScale ?? 1;
  const scale = (k: "logits" | "conv" | "ssm") =>
    options.tol?.[k] ?? { atol: TOL[k].atol * s, rtol: TOL[k].rtol * s };
  const name = options.label ? `${backend} (${options.label})` : backend;
  const wanted = options.cases ?? (() => true);
  for (const c of oracleCases().filter((c) => c.kind === "model" && wanted(c.case))) {
    Deno.test(`oracle ${name}: ${c.case}`, async (t) => {
      const exp = loadExpected(c.case);
      const lm = await MambaLM.load(`${oracleDir()}/${c.case}`, {
        backend,
        weightsDtype: options.weightsDtype,
        wasm: options.wasm,
      });
      try {
        const V = lm.config.paddedVocabSize;
        assert.equal(V, exp.json.padded_vocab_size);
        for (const run of exp.json.runs) {
          const arr = (k: string) => {
            const a = exp.arrays.get(`${run.name}.${k}`);
            assert.ok(a, `missing ${run.name}.${k}`);
            return a.data;
          };
          /** The final conv and SSM states of every layer against the oracle's. */
          const assertStates = (state: InferenceState) => {
            for (let l = 0; l < lm.config.nLayer; l++) {
              const conv = arr(`layers.${l}.conv_state`);
              assertClose(state.conv[l], conv, scale("conv"), `conv_state ${l}`);
              const ssm = arr(`layers.${l}.ssm_state`);
              assertClose(state.ssm[l], ssm, scale("ssm"), `ssm_state ${l}`);
            }
          };
          await t.step(`${run.name}: forward logits`, async () => {
            const full = await lm.forward(run.input_ids);
            assert.deepEqual(full.shape, [run.batch, run.prompt_len, V]);
            assertClose(full.data, arr("logits"), scale("logits"), "logits");
          });
          await t.step(`${run.name}: step logits and final states`, async () => {
            const state = lm.createState(run.batch);
            const want = arr("step_logits");
            const got = new Float32Array(want.length);
            for (let i = 0; i < run.prompt_len; i++) {
              const logits = await lm.step(state, run.input_ids.map((row) => row[i]));
              for (let b = 0; b < run.batch; b++) {
                got.set(logits.subarray(b * V, (b + 1) * V), (b * run.prompt_len + i) * V);
              }
            }
            assertClose(got, want, scale("logits"), "step_logits");
            await state.sync();
            assertStates(state);
          });
          await t.step(`${run.name}: prefill states equal step states`, async () => {
            const state = lm.createState(run.batch);
            await lm.prefill(state, run.input_ids);
            await state.sync();
            assertStates(state);
          });
          if (!options.skipGreedy) {
            await t.step(`${run.name}: greedy continuation`, async () => {
              for (
                const [key, n] of [["generated", V], [
                  "generated_real_vocab",
                  exp.json.vocab_size,
                ]] as const
              ) {
                const want = run[key];
                if (!want) continue;
                const state = lm.createState(run.batch);
                let logits = await lm.prefill(state, run.input_ids);
                const got: number[][] = run.input_ids.map(() => []);
                for (let i = 0; i < want[0].length; i++) {
                  const next = got.map((g, b) => {
                    const id = argmax(logits, b * V, n);
                    g.push(id);
                    return id;
                  });
                  if (i + 1 < want[0].length) logits = await lm.step(state, next);
                }
                assert.deepEqual(got, want, key);
              }
            });
          }
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
                  scale("logits"),
                  `position ${pos} row ${b}`,
                );
              }
              if (i < cont[0].length) logits = await lm.step(state, cont.map((c) => c[i]));
            }
            // A state saved and restored mid-stream continues identically.
            const again = InferenceState.fromBytes(await state.toBytes());
            const a = await lm.step(state, run.input_ids.map((r) => r[0]));
            const b = await lm.step(again, run.input_ids.map((r) => r[0]));
            assert.deepEqual(b, a);
          });
        }
      } finally {
        lm.dispose();
      }
    });
  }
}

/** The `pytorch_model.bin` twins of the oracle README: (case, file). */
export const BIN_FIXTURES: [string, string][] = [
  ["m1_d64_l7", "pytorch_model.bin"],
  ["m1_d64_l7", "pytorch_model.zip64.bin"],
  ["m1_d64_l7", "pytorch_model.legacy.bin"],
  ["m1_f16_l64", "pytorch_model.bin"],
  ["m1_f16_l64", "pytorch_model.mixed.bin"],
  ["m2_hd32_ds64_l7", "pytorch_model.bin"],
];

/** Cases whose safetensors are also loaded under transformers' names. */
export const HF_NAMED_CASES = ["m1_d64_l7", "m2_hd32_ds64_l7"];

/**
 * A temporary model directory for a case: its config.json and either one of its `.bin` twins as
 * `pytorch_model.bin`, or (`file` = "hf") its model.safetensors rewritten with transformers'
 * names (`backbone.embeddings.weight`, `lm_head.weight` kept).
 */
export async function checkpointDir(c: string, file: string): Promise<string> {
  const src = `${oracleDir()}/${c}`;
  const dir = await Deno.makeTempDir({ prefix: "mamba_ckpt_" });
  await Deno.copyFile(`${src}/config.json`, `${dir}/config.json`);
  if (file !== "hf") {
    await Deno.copyFile(`${src}/${file}`, `${dir}/pytorch_model.bin`);
    return dir;
  }
  const st = parseSafetensors(await Deno.readFile(`${src}/model.safetensors`));
  const renamed: Record<string, TensorSpec> = {};
  for (const [k, t] of st.tensors) {
    const name = k.replace(/^backbone\.embedding\./, "backbone.embeddings.");
    renamed[name] = { dtype: t.dtype, shape: [...t.shape], bytes: t.bytes };
  }
  assert.ok(renamed["lm_head.weight"] && renamed["backbone.embeddings.weight"]);
  await Deno.writeFile(`${dir}/model.safetensors`, writeSafetensors(renamed));
  return dir;
}

/**
 * Registers one Deno.test per checkpoint variant (each `.bin` twin, and the transformers-named
 * safetensors) for `backend`: the model loads from a directory holding only config.json and
 * that file, and its full-sequence logits match the case's oracle for every run.
 */
export function oracleCheckpointSuite(backend: BackendChoice, options: SuiteOptions = {}): void {
  const s = options.tolScale ?? 1;
  const tol = options.tol?.logits ?? { atol: TOL.logits.atol * s, rtol: TOL.logits.rtol * s };
  const name = options.label ? `${backend} (${options.label})` : backend;
  const variants = [...BIN_FIXTURES, ...HF_NAMED_CASES.map((c) => [c, "hf"] as [string, string])];
  for (const [c, file] of variants) {
    const what = file === "hf" ? "model.safetensors with transformers names" : file;
    Deno.test(`oracle ${name} checkpoint: ${c}/${what}`, async () => {
      const exp = loadExpected(c);
      const dir = await checkpointDir(c, file);
      try {
        const lm = await MambaLM.load(dir, {
          backend,
          weightsDtype: options.weightsDtype,
          wasm: options.wasm,
        });
        try {
          for (const run of exp.json.runs) {
            const full = await lm.forward(run.input_ids);
            const want = exp.arrays.get(`${run.name}.logits`);
            assert.ok(want, `missing ${run.name}.logits`);
            assertClose(full.data, want.data, tol, `${run.name} logits`);
          }
        } finally {
          lm.dispose();
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
}
