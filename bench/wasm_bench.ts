/**
 * Benchmark of the `wasm` backend on random weights in the mamba-130m and mamba2-130m shapes,
 * batch 1, greedy: decode tok/s and prefill-512 tok/s with 1 and 2 threads for f32, f16 and q8
 * weights, and, in the same run, the machine's read bandwidth as seen from wasm (a GEMV over
 * 512 MiB of f32 weights with the same threads), so that each decode figure is also stated as a
 * fraction of the bandwidth limit: bytes of weights read per token × tok/s ÷ bandwidth.
 *
 * ```sh
 * deno run -A bench/wasm_bench.ts                      # everything (a few minutes)
 * deno run -A bench/wasm_bench.ts --model mamba-130m --weights f32 --threads 2 --profile
 * ```
 *
 * Options: `--model` (repeatable; default both), `--weights f32,f16,q8`, `--threads 1,2`,
 * `--decode N` (tokens per timed round; 3 rounds of bandwidth, fused decode and step decode,
 * the best of each kept; default 64), `--busy-ok` (do not wait for the other processes of a
 * shared machine to go quiet before each timed round), `--prefill N` (default
 * 512; 0 skips), `--profile` (per-rank breakdown of a decode step), `--json`.
 *
 * @module
 */

import { printUsage } from "./usage.ts";
import { parseArgs } from "node:util";
import { MambaLM, parseConfig } from "../mod.ts";
import { PUBLIC_CONFIGS, randomWeights } from "../testing.ts";
import { WasmBackend } from "../src/backends/wasm/backend.ts";
import type { WasmWeights } from "../src/backends/wasm/options.ts";
import { WasmKernels } from "../src/backends/wasm/kernels.ts";

// ---------------------------------------------------------------------------------------------
// Read bandwidth: T workers (of this same file) each stream their share
// of a 512 MiB f32 matrix through the GEMV kernel, started together.

const BW_MIB = 512;
const BW_REPS = 6;

interface BwMsg {
  module: WebAssembly.Module;
  sab: SharedArrayBuffer;
  rank: number;
  threads: number;
  k: number;
}

/** One thread's share: set up, wait for the start, stream, report its time. */
function bwRank(m: BwMsg): void {
  const ctl = new Int32Array(m.sab, 0, 4);
  const times = new Float64Array(m.sab, 64, 64);
  const kern = WasmKernels.fromModule(m.module);
  const n = Math.floor((BW_MIB * 2 ** 20) / m.threads / 4 / m.k);
  const w = kern.allocF32(n * m.k);
  const x = kern.allocF32(m.k);
  const y = kern.allocF32(n);
  w.view.fill(0.5);
  x.view.fill(1);
  kern.matvecF32(w.ptr, x.ptr, y.ptr, n, m.k);
  Atomics.add(ctl, 0, 1);
  Atomics.notify(ctl, 0);
  while (Atomics.load(ctl, 1) === 0) Atomics.wait(ctl, 1, 0, 100);
  const t0 = performance.now();
  for (let r = 0; r < BW_REPS; r++) kern.matvecF32(w.ptr, x.ptr, y.ptr, n, m.k);
  times[m.rank] = performance.now() - t0;
  Atomics.add(ctl, 2, 1);
  Atomics.notify(ctl, 2);
}

const inWorker = typeof (globalThis as Record<string, unknown>).WorkerGlobalScope !== "undefined";
if (inWorker) {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<BwMsg>) => void) | null;
    close(): void;
  };
  scope.onmessage = (e) => {
    bwRank(e.data);
    scope.close();
  };
}

/** GB/s read by `threads` workers streaming rows of `k` f32 weights (512 MiB in all). */
async function bandwidthAt(threads: number, k: number): Promise<number> {
  const module = await WasmKernels.compile();
  const sab = new SharedArrayBuffer(64 + 64 * 8);
  const ctl = new Int32Array(sab, 0, 4);
  const workers = Array.from(
    { length: threads },
    () => new Worker(import.meta.url, { type: "module" }),
  );
  workers.forEach((w, rank) => w.postMessage({ module, sab, rank, threads, k }));
  // Start everyone together once all are set up.
  while (Atomics.load(ctl, 0) < threads) await new Promise((r) => setTimeout(r, 5));
  Atomics.store(ctl, 1, 1);
  Atomics.notify(ctl, 1);
  while (Atomics.load(ctl, 2) < threads) await new Promise((r) => setTimeout(r, 5));
  const times = new Float64Array(sab, 64, threads);
  workers.forEach((w) => w.terminate());
  const n = Math.floor((BW_MIB * 2 ** 20) / threads / 4 / k);
  return (threads * n * k * 4 * BW_REPS) / (Math.max(...times) / 1000) / 1e9;
}

/**
 * The read bandwidth limit of `threads` threads: the best of GEMVs with rows of 768 and 1536
 * f32 (the model's row lengths; much longer rows stream slower through this kernel).
 */
async function bandwidth(threads: number): Promise<number> {
  return Math.max(await bandwidthAt(threads, 768), await bandwidthAt(threads, 1536));
}

// ---------------------------------------------------------------------------------------------
// Model figures

/** One row of the result table. */
export interface WasmBenchRow {
  model: string;
  weights: WasmWeights;
  threads: number;
  /** Bytes of weights read per decoded token (all ranks). */
  bytesPerToken: number;
  decodeTokPerS?: number;
  /** Decode with `lm.step` and a host argmax per token. */
  stepTokPerS?: number;
  /** Read bandwidth of as many threads, GB/s (best of the measurements between rounds). */
  bandwidthGBs?: number;
  /** Decode bytes/token × tok/s ÷ that bandwidth. */
  decodeBwFraction?: number;
  prefillLen?: number;
  prefillTokPerS?: number;
  /** Per rank, ms per decoded token by kind of work (with `--profile`). */
  profile?: Record<string, number>[];
  /** Per rank, ms per prefilled token by kind of work (with `--profile`). */
  prefillProfile?: Record<string, number>[];
}

function argmax(logits: Float32Array, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (logits[i] > logits[best]) best = i;
  return best;
}

/** One greedy decoding session: `fused(n)` and `step(n)` each time `n` tokens, return tok/s. */
async function decoder(lm: MambaLM) {
  const state = lm.createState(1);
  const V = lm.config.vocabSize;
  let last = argmax(await lm.prefill(state, [[1, 2, 3, 4, 5, 6, 7, 8]]), V);
  /** With `lm.generateTokens` (fused on the ranks). */
  const fused = async (n: number) => {
    const t0 = performance.now();
    for await (const block of lm.generateTokens(state, [last], n, { topK: 1 })) {
      last = block[0][block[0].length - 1];
    }
    return n / ((performance.now() - t0) / 1000);
  };
  /** With `lm.step` and an argmax on the host per token. */
  const step = async (n: number) => {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) last = argmax(await lm.step(state, [last]), V);
    return n / ((performance.now() - t0) / 1000);
  };
  await fused(4);
  await step(4);
  return { fused, step };
}

/** Prefill of `len` tokens into a fresh state: best of `rounds`, tok/s. */
async function prefillRate(
  lm: MambaLM,
  len: number,
  rounds: number,
  quiet: boolean,
): Promise<number> {
  const ids = Array.from({ length: len }, (_, i) => (i * 7919 + 13) % lm.config.vocabSize);
  await lm.prefill(lm.createState(1), [ids.slice(0, 16)]);
  let best = 0;
  for (let r = 0; r < rounds; r++) {
    await waitIdle(quiet);
    const t0 = performance.now();
    await lm.prefill(lm.createState(1), [ids]);
    best = Math.max(best, len / ((performance.now() - t0) / 1000));
  }
  return best;
}

/** Milliseconds per prefilled token by kind of work, per rank. */
async function prefillProfile(lm: MambaLM, be: WasmBackend, len: number) {
  const ids = Array.from({ length: len }, (_, i) => (i * 7919 + 13) % lm.config.vocabSize);
  be.readProfile();
  be.profiling = true;
  await lm.prefill(lm.createState(1), [ids]);
  be.profiling = false;
  return be.readProfile().map((r) => {
    const o: Record<string, number> = {};
    for (const [k, v] of Object.entries(r)) if (k !== "programs" && v > 0) o[k] = v / len;
    return o;
  });
}

/** Milliseconds per decoded token by kind of work, per rank. */
async function decodeProfile(lm: MambaLM, be: WasmBackend, n: number) {
  const state = lm.createState(1);
  let logits = await lm.prefill(state, [[1, 2, 3]]);
  be.readProfile();
  be.profiling = true;
  for (let i = 0; i < n; i++) logits = await lm.step(state, [argmax(logits, lm.config.vocabSize)]);
  be.profiling = false;
  return be.readProfile().map((r) => {
    const o: Record<string, number> = {};
    for (const [k, v] of Object.entries(r)) if (k !== "programs" && v > 0) o[k] = v / n;
    return o;
  });
}

/** Jiffies of all CPUs: [busy, total], from /proc/stat (null where unavailable). */
function cpuJiffies(): [number, number] | null {
  try {
    const f = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1)
      .map(Number);
    const idle = f[3] + (f[4] ?? 0);
    const total = f.reduce((a, b) => a + b, 0);
    return [total - idle, total];
  } catch {
    return null;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let idleWaits = 0;

/**
 * On a shared machine, waits (up to 60 s) until the CPUs have been almost idle for 300 ms, so a
 * timed round does not compete with other processes. Our own threads are asleep meanwhile.
 */
async function waitIdle(enabled: boolean): Promise<void> {
  if (!enabled) return;
  const t0 = Date.now();
  await sleep(20);
  let waited = false;
  while (Date.now() - t0 < 60000) {
    const a = cpuJiffies();
    await sleep(300);
    const b = cpuJiffies();
    if (!a || !b || b[1] === a[1] || (b[0] - a[0]) / (b[1] - a[1]) < 0.06) break;
    waited = true;
  }
  if (waited) idleWaits++;
}

function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).join(" ");
  } catch {
    return "?";
  }
}

if (import.meta.main && !inWorker) {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean", short: "h" },
      model: { type: "string", multiple: true },
      weights: { type: "string", default: "f32,f16,q8" },
      threads: { type: "string", default: "1,2" },
      decode: { type: "string", default: "64" },
      prefill: { type: "string", default: "512" },
      profile: { type: "boolean" },
      "busy-ok": { type: "boolean" },
      json: { type: "boolean" },
    },
  });
  if (v.help) {
    await printUsage(import.meta.url);
    Deno.exit(0);
  }
  const models = v.model ?? ["mamba-130m", "mamba2-130m"];
  const dtypes = v.weights!.split(",") as WasmWeights[];
  const threadList = v.threads!.split(",").map(Number);
  const nDecode = Number(v.decode);
  const nPrefill = Number(v.prefill);
  const log = (s: string) => !v.json && console.log(s);
  const quiet = !v["busy-ok"];
  log(`# wasm backend benchmark (${navigator.hardwareConcurrency} cores, load ${loadAverage()})`);
  const rows: WasmBenchRow[] = [];
  log("");
  log(
    "model        weights threads  MB/token  BW GB/s  decode tok/s  % of BW limit  step tok/s" +
      "  prefill tok/s",
  );
  for (const model of models) {
    const config = parseConfig(PUBLIC_CONFIGS[model]);
    const weights = randomWeights(config);
    for (const dtype of dtypes) {
      for (const threads of threadList) {
        const be = await WasmBackend.create({ config, weights }, { threads, weights: dtype });
        const lm = new MambaLM(config, be);
        const row: WasmBenchRow = {
          model,
          weights: dtype,
          threads: be.threads,
          bytesPerToken: be.weightBytesPerToken,
        };
        if (nDecode > 0) {
          // Rounds of (bandwidth, fused, step), best of each: the machine's bandwidth drifts.
          const d = await decoder(lm);
          row.bandwidthGBs = row.decodeTokPerS = row.stepTokPerS = 0;
          for (let r = 0; r < 3; r++) {
            await waitIdle(quiet);
            row.bandwidthGBs = Math.max(row.bandwidthGBs, await bandwidth(be.threads));
            await waitIdle(quiet);
            row.decodeTokPerS = Math.max(row.decodeTokPerS, await d.fused(nDecode));
            await waitIdle(quiet);
            row.stepTokPerS = Math.max(row.stepTokPerS, await d.step(nDecode));
          }
          row.decodeBwFraction = (row.bytesPerToken * row.decodeTokPerS) / (row.bandwidthGBs * 1e9);
        }
        if (nPrefill > 0) {
          row.prefillLen = nPrefill;
          row.prefillTokPerS = await prefillRate(lm, nPrefill, 3, quiet);
        }
        if (v.profile) {
          row.profile = await decodeProfile(lm, be, Math.max(16, nDecode / 2));
          if (nPrefill > 0) row.prefillProfile = await prefillProfile(lm, be, nPrefill);
        }
        lm.dispose();
        rows.push(row);
        log(
          `${model.padEnd(12)} ${dtype.padEnd(7)} ${String(row.threads).padStart(7)} ${
            (row.bytesPerToken / 1e6).toFixed(1).padStart(9)
          } ${(row.bandwidthGBs?.toFixed(1) ?? "-").padStart(8)} ${
            (row.decodeTokPerS?.toFixed(1) ?? "-").padStart(13)
          } ${
            row.decodeBwFraction !== undefined
              ? (100 * row.decodeBwFraction).toFixed(0).padStart(13) + "%"
              : "-".padStart(14)
          } ${(row.stepTokPerS?.toFixed(1) ?? "-").padStart(11)} ${
            (row.prefillTokPerS?.toFixed(1) ?? "-").padStart(14)
          }`,
        );
        for (const [what, prof] of [["decode", row.profile], ["prefill", row.prefillProfile]]) {
          for (const [r, p] of ((prof ?? []) as Record<string, number>[]).entries()) {
            log(
              `    ${what} rank ${r} ms/token: ` +
                Object.entries(p).map(([k, ms]) => `${k} ${ms.toFixed(3)}`).join(", "),
            );
          }
        }
      }
    }
  }
  log(`# load at the end: ${loadAverage()}; waited for other processes ${idleWaits} time(s)`);
  if (v.json) console.log(JSON.stringify(rows, null, 2));
}
