/**
 * `deno task bench --compare`: Mamba against a Transformer (GPT-NeoX, the Pythia architecture)
 * of the same size, in this one engine, as the context grows — the comparison of the Mamba papers
 * (mamba_ssm's `benchmarks/benchmark_generation_mamba_simple.py`, run once per model). Both models
 * run on the same backend with the same prompt, sampling and seed.
 *
 * ```sh
 * deno task bench --compare                               # 130m pair, best backend here
 * deno task bench --compare --pair 1.4b --backend webgpu --contexts 1024,4096,16384,65536
 * deno task bench --compare --mamba path/to/mamba-130m --transformer path/to/pythia-160m
 * ```
 *
 * For each context it reports, per model: the time to prefill a prompt of that length and to
 * the first token, the decode rate at that context (tokens/s over `--decode` tokens, fused on
 * the device where the backend can), and the memory per sequence (the recurrent state against
 * the KV cache, plus the process's RSS), at batch 1 and at the largest batch whose KV caches fit
 * `--memory`. Prompts longer than `--max-prefill`, and the large batch, start decoding from a
 * cache of the right length holding zeros (decode cost does not depend on the values), so
 * their prefill is not reported. Writes `<out>.json` and `<out>.svg` (decode tok/s and memory
 * against the context, one line per model and batch).
 *
 * Options:
 *   --pair 130m|1.4b|2.8b|tiny  random weights in the shapes mamba-130m ↔ pythia-160m,
 *                               mamba-1.4b ↔ pythia-1.4b, mamba-2.8b ↔ pythia-2.8b (default 130m)
 *   --mamba DIR, --transformer DIR   real checkpoints instead (both needed)
 *   --backend NAME        auto (default), webgpu, wasm or ref
 *   --threads N           wasm threads of both models (default: all cores)
 *   --weights f32|f16     weights of the random models (default f16 on webgpu, else f32)
 *   --contexts A,B,…      contexts in tokens (default webgpu 1024 … 65536 doubling; else
 *                         256,512,1024)
 *   --max-prefill N       longest prompt actually prefilled (default webgpu 8192; else 1024)
 *   --decode N            tokens decoded at each context (default webgpu 128; else 16)
 *   --max-batch N         largest batch tried (default webgpu 64; else 8)
 *   --memory BYTES        budget for the KV caches of one batch (default webgpu 32e9; else 1e9)
 *   --temperature, --top-p, --repetition-penalty, --seed   sampling (default 0.7, 0.9, 1.2, 0)
 *   --out PREFIX          output files (default compare-<backend>-<pair>)
 *   --json                print the JSON on stdout instead of the table
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type BackendChoice,
  GptNeoXLM,
  type InferenceState,
  type InferenceStateLike,
  KvCacheState,
  type LanguageModel,
  loadModel,
  MambaLM,
  parseConfig,
  parseNeoxConfig,
  type SamplingOptions,
} from "../mod.ts";
import {
  PUBLIC_CONFIGS,
  PUBLIC_NEOX_CONFIGS,
  randomNeoxWeights,
  randomWeights,
} from "../testing.ts";
import { advanceKv, bindKv } from "../src/kv_state.ts";

/** One measurement: a model at a batch and context. */
export interface CompareRow {
  /** Model name. */
  model: string;
  /** `"mamba1"`, `"mamba2"` or `"gpt_neox"`. */
  arch: string;
  /** Sequences. */
  batch: number;
  /** Tokens held when decoding starts. */
  context: number;
  /** Seconds to prefill the prompt (batch 1, up to `--max-prefill`). */
  prefillS?: number;
  /** Seconds to the first token (prefill + the first pick). */
  ttftS?: number;
  /** Decoded tokens per second, all sequences together. */
  decodeTokPerS?: number;
  /** Bytes of recurrent state or KV cache per sequence at this context. */
  stateBytesPerSeq: number;
  /** Resident set size of the process after the measurement. */
  rssBytes: number;
  /** Why the measurement is missing (out of memory, say). */
  error?: string;
}

/** The whole comparison, as written to JSON. */
export interface CompareReport {
  /** When, where and how. */
  date: string;
  backend: string;
  pair: string;
  weights: string;
  sampling: SamplingOptions;
  decodeTokens: number;
  maxPrefill: number;
  memoryBudget: number;
  rows: CompareRow[];
}

const PAIRS: Record<string, [string, string]> = {
  "130m": ["mamba-130m", "pythia-160m"],
  "1.4b": ["mamba-1.4b", "pythia-1.4b"],
  "2.8b": ["mamba-2.8b", "pythia-2.8b"],
  tiny: ["tiny-mamba", "tiny-pythia"],
};

const TINY_MAMBA = { d_model: 64, n_layer: 2, vocab_size: 512, ssm_cfg: {} };
const TINY_NEOX = {
  model_type: "gpt_neox",
  hidden_size: 64,
  num_attention_heads: 4,
  num_hidden_layers: 2,
  intermediate_size: 256,
  vocab_size: 512,
};

/** What the sweep needs of a model, whatever its state. */
interface BenchModel<S extends InferenceStateLike> {
  readonly config: { readonly vocabSize: number; readonly paddedVocabSize: number };
  createState(batch?: number): S;
  prefill(state: S, ids: readonly (readonly number[])[]): Promise<Float32Array>;
  generateTokens(
    state: S,
    tokens: readonly number[],
    n: number,
    options?: SamplingOptions,
  ): AsyncGenerator<number[][]>;
}

/** Options of {@link runCompare}. */
export interface CompareOptions {
  backend: BackendChoice;
  pair: string;
  mambaDir?: string;
  transformerDir?: string;
  weights: "f32" | "f16";
  contexts: number[];
  maxPrefill: number;
  decode: number;
  maxBatch: number;
  memory: number;
  sampling: SamplingOptions;
  /** Threads of the `wasm` backend, for both models (default: all cores). */
  threads?: number;
  /** Called as work completes: steps done, steps in all, what is running. */
  onProgress?: (done: number, total: number, what: string) => void;
}

/** A prompt of `n` ids below `vocab`, the same for both models. */
function prompt(n: number, vocab: number, seed: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729 + 17) % vocab);
}

/** The largest power of two ≤ `n` (0 for n < 1). */
function pow2Floor(n: number): number {
  return n < 1 ? 0 : 2 ** Math.floor(Math.log2(n));
}

async function loadPair(
  o: CompareOptions,
): Promise<[string, LanguageModel, string, LanguageModel]> {
  const maxContext = Math.max(...o.contexts) + o.decode + 8;
  const wasm = { threads: o.threads };
  if (o.mambaDir || o.transformerDir) {
    if (!o.mambaDir || !o.transformerDir) {
      throw new Error("--mamba and --transformer go together");
    }
    const common = { backend: o.backend, tokenizer: false as const, wasm };
    const m = await loadModel(o.mambaDir, common);
    const t = await loadModel(o.transformerDir, { ...common, maxContext });
    return [o.mambaDir, m, o.transformerDir, t];
  }
  const [mName, tName] = PAIRS[o.pair] ?? [];
  if (!mName) throw new Error(`unknown --pair ${o.pair} (${Object.keys(PAIRS).join(", ")})`);
  const mc = parseConfig(o.pair === "tiny" ? TINY_MAMBA : PUBLIC_CONFIGS[mName]);
  const m = await MambaLM.fromWeights(
    mc,
    randomWeights(mc, { dtype: o.weights, fast: true }),
    { backend: o.backend, wasm },
  );
  const tc = parseNeoxConfig(o.pair === "tiny" ? TINY_NEOX : PUBLIC_NEOX_CONFIGS[tName]);
  const t = await GptNeoXLM.fromWeights(
    tc,
    randomNeoxWeights(tc, { dtype: o.weights, fast: true }),
    { backend: o.backend, maxContext, wasm },
  );
  return [mName, m, tName, t];
}

function stateBytes(lm: LanguageModel, context: number): number {
  if (lm instanceof GptNeoXLM) return KvCacheState.bytesFor(lm.kvLayout(1), context);
  return lm.createState(1).byteLength;
}

/** Decodes `n` tokens from `state`; returns tokens per second over all sequences. */
async function decodeRate<S extends InferenceStateLike>(
  lm: BenchModel<S>,
  state: S,
  n: number,
  sampling: SamplingOptions,
): Promise<number> {
  const start = Array.from({ length: state.batch }, (_, b) => 1 + b);
  // A short warm-up (pipelines, JIT) that is not timed.
  for await (const _ of lm.generateTokens(state, start, 2, sampling)) { /* warm-up */ }
  const t0 = performance.now();
  let got = 0;
  for await (const block of lm.generateTokens(state, start, n, sampling)) got += block[0].length;
  return (got * state.batch) / ((performance.now() - t0) / 1000);
}

/** A fresh state of `batch` sequences with room for `length` tokens (no regrowth while timed). */
function roomyState(lm: LanguageModel, batch: number, length: number): InferenceStateLike {
  if (!(lm instanceof GptNeoXLM)) return lm.createState(batch);
  const s = lm.createState(batch);
  lm.backend.reserveKv(bindKv(s, lm.backend), length);
  return s;
}

/** Runs the comparison. */
export async function runCompare(o: CompareOptions): Promise<CompareReport> {
  const [mName, mamba, tName, neox] = await loadPair(o);
  const backend = mamba.backendName;
  const rows: CompareRow[] = [];
  const models: [string, LanguageModel][] = [[mName, mamba], [tName, neox]];
  // Room for the decoded tokens and the warm-up after the context.
  const extra = o.decode + 8;
  // Per context, the largest batch whose KV caches fit the budget (batch 1 is always tried).
  const bigBatch = (c: number) =>
    Math.min(o.maxBatch, pow2Floor(o.memory / stateBytes(neox, c + extra)));
  const plan = o.contexts.flatMap((c) => {
    const big = bigBatch(c);
    return (big > 1 ? [1, big] : [1]).flatMap((batch) =>
      models.map(([name, lm]) => ({ c, batch, name, lm }))
    );
  });
  try {
    for (let i = 0; i < plan.length; i++) {
      const { c: context, batch, name, lm } = plan[i];
      o.onProgress?.(i, plan.length, `${name}, batch ${batch}, context ${context}`);
      const row: CompareRow = {
        model: name,
        arch: lm.config.arch,
        batch,
        context,
        stateBytesPerSeq: stateBytes(lm, context),
        rssBytes: 0,
      };
      let state: InferenceStateLike | undefined;
      try {
        state = roomyState(lm, batch, context + extra);
        const dec = <S extends InferenceStateLike>(m: BenchModel<S>, s: S) =>
          decodeRate(m, s, o.decode, o.sampling);
        if (batch === 1 && context <= o.maxPrefill) {
          const ids = [prompt(context, lm.config.vocabSize, o.sampling.seed ?? 0)];
          const t0 = performance.now();
          const logits = lm instanceof GptNeoXLM
            ? await lm.prefill(state as KvCacheState, ids)
            : await lm.prefill(state as InferenceState, ids);
          const t1 = performance.now();
          // The first pick (greedy: the host's cost of one pick over the vocabulary).
          let best = 0;
          for (let v = 1; v < lm.config.vocabSize; v++) if (logits[v] > logits[best]) best = v;
          row.prefillS = (t1 - t0) / 1000;
          row.ttftS = (performance.now() - t0) / 1000;
        } else if (state instanceof KvCacheState) {
          // A cache of the right length holding zeros: decode cost does not depend on values.
          advanceKv(state, context);
        }
        row.decodeTokPerS = lm instanceof GptNeoXLM
          ? await dec(lm, state as KvCacheState)
          : await dec(lm, state as InferenceState);
      } catch (e) {
        row.error = (e as Error).message;
      } finally {
        if (state instanceof KvCacheState) state.free();
      }
      row.rssBytes = Deno.memoryUsage().rss;
      rows.push(row);
    }
  } finally {
    mamba.dispose();
    neox.dispose();
  }
  o.onProgress?.(plan.length, plan.length, "done");
  return {
    date: new Date().toISOString(),
    backend,
    pair: o.mambaDir ? `${mName} vs ${tName}` : o.pair,
    weights: o.weights,
    sampling: o.sampling,
    decodeTokens: o.decode,
    maxPrefill: o.maxPrefill,
    memoryBudget: o.memory,
    rows,
  };
}

/** An SVG of decode tok/s and memory per sequence against the context, one line per series. */
export function compareSvg(report: CompareReport): string {
  const W = 960, H = 400, pad = { l: 70, r: 20, t: 40, b: 50 };
  const pw = (W - 3 * pad.r - 2 * pad.l) / 2;
  const ph = H - pad.t - pad.b;
  const ok = report.rows.filter((r) => !r.error);
  const contexts = [...new Set(report.rows.map((r) => r.context))].sort((a, b) => a - b);
  const series = [...new Set(ok.map((r) => `${r.model}|${r.batch === 1 ? 1 : "max"}`))];
  const colors = ["#1f77b4", "#ff7f0e"];
  const modelsSeen = [...new Set(report.rows.map((r) => r.model))];
  const lx = (c: number, x0: number) => {
    const [a, b] = [Math.log2(contexts[0]), Math.log2(contexts[contexts.length - 1])];
    return x0 + (b > a ? (Math.log2(c) - a) / (b - a) : 0.5) * pw;
  };
  const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14">${
      esc(`${report.pair} on ${report.backend} (${report.weights}), ${report.date.slice(0, 10)}`)
    }</text>`,
  ];
  const panel = (
    x0: number,
    title: string,
    value: (r: CompareRow) => number | undefined,
    log: boolean,
  ) => {
    const vals = ok.map(value).filter((v): v is number => v !== undefined && v > 0);
    if (!vals.length) return;
    let lo = log ? Math.min(...vals) : 0;
    let hi = Math.max(...vals);
    if (log) [lo, hi] = [lo / 1.2, hi * 1.2];
    else hi *= 1.1;
    const ly = (v: number) =>
      pad.t + ph - (log ? Math.log(v / lo) / Math.log(hi / lo) : v / hi) * ph;
    out.push(
      `<rect x="${x0}" y="${pad.t}" width="${pw}" height="${ph}" fill="none" stroke="#888"/>`,
      `<text x="${x0 + pw / 2}" y="${pad.t - 6}" text-anchor="middle">${esc(title)}</text>`,
      `<text x="${x0 + pw / 2}" y="${H - 12}" text-anchor="middle">context (tokens)</text>`,
    );
    for (const c of contexts) {
      out.push(
        `<text x="${lx(c, x0)}" y="${pad.t + ph + 16}" text-anchor="middle">${
          c >= 1024 ? `${c / 1024}k` : c
        }</text>`,
      );
    }
    for (let i = 0; i <= 4; i++) {
      const v = log ? lo * (hi / lo) ** (i / 4) : (hi * i) / 4;
      const label = v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toPrecision(2);
      out.push(`<text x="${x0 - 6}" y="${ly(v) + 4}" text-anchor="end">${label}</text>`);
    }
    for (const key of series) {
      const [model, b] = key.split("|");
      const pts = ok.filter((r) => r.model === model && String(r.batch === 1 ? 1 : "max") === b)
        .filter((r) => value(r) !== undefined && value(r)! > 0)
        .sort((a, c) => a.context - c.context)
        .map((r) => `${lx(r.context, x0).toFixed(1)},${ly(value(r)!).toFixed(1)}`);
      if (!pts.length) continue;
      const color = colors[modelsSeen.indexOf(model) % colors.length];
      const dash = b === "1" ? "" : ` stroke-dasharray="6 4"`;
      out.push(
        `<polyline points="${
          pts.join(" ")
        }" fill="none" stroke="${color}" stroke-width="2"${dash}/>`,
      );
    }
  };
  panel(pad.l, "decode tok/s (all sequences)", (r) => r.decodeTokPerS, true);
  panel(
    2 * pad.l + pw + pad.r,
    "state / KV cache MiB per sequence",
    (r) => r.stateBytesPerSeq / 2 ** 20,
    true,
  );
  series.forEach((key, i) => {
    const [model, b] = key.split("|");
    const color = colors[modelsSeen.indexOf(model) % colors.length];
    const y = pad.t + 14 + 16 * i;
    const dash = b === "1" ? "" : ` stroke-dasharray="6 4"`;
    out.push(
      `<line x1="${pad.l + 8}" y1="${y}" x2="${
        pad.l + 38
      }" y2="${y}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${pad.l + 44}" y="${y + 4}">${
        esc(`${model}, batch ${b === "1" ? "1" : "largest"}`)
      }</text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n");
}

/** The text table of a report. */
export function compareTable(report: CompareReport): string {
  const f = (v: number | undefined, d = 1) => (v === undefined ? "-" : v.toFixed(d));
  const lines = [
    `${report.pair} on ${report.backend} (${report.weights} weights), decode ${report.decodeTokens} tokens`,
    "model            batch  context  prefill s  TTFT s  decode tok/s  state MiB/seq  RSS MiB",
  ];
  for (const r of report.rows) {
    lines.push(
      [
        r.model.padEnd(16),
        String(r.batch).padStart(5),
        String(r.context).padStart(8),
        f(r.prefillS, 3).padStart(10),
        f(r.ttftS, 3).padStart(7),
        (r.error ? `(${r.error})` : f(r.decodeTokPerS)).padStart(13),
        f(r.stateBytesPerSeq / 2 ** 20, 2).padStart(14),
        f(r.rssBytes / 2 ** 20, 0).padStart(8),
      ].join(" "),
    );
  }
  // Mamba / Transformer decode ratio at each context and batch.
  const byKey = new Map<string, CompareRow[]>();
  for (const r of report.rows) {
    const k = `${r.batch === 1 ? 1 : "max"}|${r.context}`;
    byKey.set(k, [...(byKey.get(k) ?? []), r]);
  }
  lines.push("", "decode ratio Mamba / Transformer:");
  for (const [k, rs] of byKey) {
    const m = rs.find((r) => r.arch !== "gpt_neox")?.decodeTokPerS;
    const t = rs.find((r) => r.arch === "gpt_neox")?.decodeTokPerS;
    const [b, c] = k.split("|");
    if (m && t) {
      lines.push(`  batch ${b === "1" ? 1 : "largest"}, context ${c}: ${(m / t).toFixed(2)}×`);
    }
  }
  return lines.join("\n");
}

/** A progress bar on stderr. */
function progressBar(done: number, total: number, what: string): void {
  const w = 30;
  const n = total ? Math.round((done / total) * w) : w;
  const line = `[${"#".repeat(n)}${".".repeat(w - n)}] ${done}/${total} ${what}`;
  Deno.stderr.writeSync(new TextEncoder().encode(`\r${line.padEnd(90).slice(0, 90)}`));
  if (done >= total) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
}

/** The command line of `deno task bench --compare`. */
export async function compareMain(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    options: {
      compare: { type: "boolean" },
      help: { type: "boolean", short: "h" },
      pair: { type: "string", default: "130m" },
      mamba: { type: "string" },
      transformer: { type: "string" },
      backend: { type: "string", default: "auto" },
      threads: { type: "string" },
      weights: { type: "string" },
      contexts: { type: "string" },
      "max-prefill": { type: "string" },
      decode: { type: "string" },
      "max-batch": { type: "string" },
      memory: { type: "string" },
      temperature: { type: "string", default: "0.7" },
      "top-p": { type: "string", default: "0.9" },
      "repetition-penalty": { type: "string", default: "1.2" },
      seed: { type: "string", default: "0" },
      out: { type: "string" },
      json: { type: "boolean" },
    },
  });
  if (v.help) {
    const { printUsage } = await import("./usage.ts");
    await printUsage(import.meta.url);
    return;
  }
  // The defaults depend on where it runs: a GPU takes long contexts, the CPU short ones.
  const probe = await MambaLM.fromWeights(
    parseConfig(TINY_MAMBA),
    randomWeights(parseConfig(TINY_MAMBA)),
    { backend: v.backend as BackendChoice },
  );
  const gpu = probe.backendName === "webgpu";
  probe.dispose();
  const num = (s: string | undefined, def: number, name: string) => {
    const x = s === undefined ? def : Number(s);
    if (!Number.isFinite(x) || x <= 0) throw new Error(`--${name} must be a positive number`);
    return x;
  };
  const contexts = v.contexts
    ? v.contexts.split(",").map((s) => num(s, 0, "contexts"))
    : gpu
    ? [1024, 2048, 4096, 8192, 16384, 32768, 65536]
    : [256, 512, 1024];
  const o: CompareOptions = {
    backend: v.backend as BackendChoice,
    pair: v.pair!,
    mambaDir: v.mamba,
    transformerDir: v.transformer,
    weights: (v.weights ?? (gpu ? "f16" : "f32")) as "f32" | "f16",
    contexts: contexts.sort((a, b) => a - b),
    maxPrefill: num(v["max-prefill"], gpu ? 8192 : 1024, "max-prefill"),
    decode: num(v.decode, gpu ? 128 : 16, "decode"),
    maxBatch: num(v["max-batch"], gpu ? 64 : 8, "max-batch"),
    memory: num(v.memory, gpu ? 32e9 : 1e9, "memory"),
    sampling: {
      temperature: Number(v.temperature),
      topP: Number(v["top-p"]),
      repetitionPenalty: Number(v["repetition-penalty"]),
      seed: Number(v.seed),
    },
    threads: v.threads === undefined ? undefined : num(v.threads, 1, "threads"),
    onProgress: progressBar,
  };
  const report = await runCompare(o);
  const out = v.out ?? `compare-${report.backend}-${o.mambaDir ? "checkpoints" : o.pair}`;
  await Deno.writeTextFile(`${out}.json`, JSON.stringify(report, null, 2) + "\n");
  await Deno.writeTextFile(`${out}.svg`, compareSvg(report) + "\n");
  if (v.json) console.log(JSON.stringify(report, null, 2));
  else console.log(compareTable(report) + `\n\nwrote ${out}.json and ${out}.svg`);
}

if (import.meta.main) await compareMain(Deno.args);
