/**
 * A seeded mutation fuzzer for the loaders: it takes a valid tiny checkpoint in each format
 * (safetensors; torch.save zip, stored, deflated and ZIP64; the pickle inside it; the legacy
 * stream; config.json), mutates it (bit flips, byte sets, truncation, insertion, duplicated
 * ranges, integer fields set to boundary values) and loads the result from memory. Every outcome
 * must be a load with the config's shapes, or a typed {@link MambaError}: anything else — another
 * exception, a run over 5 s, loaded weights larger than twice the file — is a finding.
 *
 * Used by tests/fuzz_loaders_test.ts (a few hundred per format) and bench/fuzz_loaders.ts (the
 * long run).
 */

import { MemorySource } from "../src/byte_source.ts";
import { type MambaConfig, parseConfig } from "../src/config.ts";
import { ConfigError, MambaError } from "../src/errors.ts";
import { mulberry32, randomWeights } from "../src/random_weights.ts";
import { openSafetensors } from "../src/safetensors.ts";
import type { TensorEntry } from "../src/tensor_entry.ts";
import { openTorchCheckpoint } from "../src/torch_checkpoint.ts";
import {
  buildWeights,
  expectedTensors,
  type HostTensor,
  type ModelWeights,
} from "../src/weights.ts";
import { writeSafetensors } from "./safetensors_util.ts";
import { collect, torchSave, writeZip } from "./torch_save_util.ts";

/** The formats fuzzed. */
export const FUZZ_FORMATS = ["safetensors", "zip", "pickle", "legacy", "config"] as const;
/** One of {@link FUZZ_FORMATS}. */
export type FuzzFormat = typeof FUZZ_FORMATS[number];

/** A tiny Mamba-1 config (tensors of a few hundred bytes), tied embeddings, an LM head in the file. */
export const FUZZ_CONFIG = {
  d_model: 8,
  n_layer: 2,
  vocab_size: 16,
  ssm_cfg: { d_state: 4, d_conv: 2, expand: 2 },
  pad_vocab_size_multiple: 8,
};

/** The seeds: valid inputs of each format (several variants for the torch zip). */
export interface FuzzSeeds {
  config: MambaConfig;
  safetensors: Uint8Array;
  zip: Uint8Array[];
  /** The data.pkl of a zip; mutated, then zipped again. */
  pickle: Uint8Array;
  legacy: Uint8Array;
  configJson: Uint8Array;
}

/** Builds the seeds (deterministic). */
export async function fuzzSeeds(): Promise<FuzzSeeds> {
  const config = parseConfig(FUZZ_CONFIG);
  const w = randomWeights(config, { seed: 7 });
  const host = new Map<string, HostTensor>();
  host.set("backbone.embedding.weight", w.embedding);
  host.set("backbone.norm_f.weight", w.normF.weight);
  w.layers.forEach((l, i) => {
    const p = `backbone.layers.${i}`;
    host.set(`${p}.norm.weight`, l.norm.weight);
    host.set(`${p}.mixer.in_proj.weight`, l.inProj);
    host.set(`${p}.mixer.conv1d.weight`, l.convWeight);
    if (l.convBias) host.set(`${p}.mixer.conv1d.bias`, l.convBias);
    host.set(`${p}.mixer.x_proj.weight`, l.xProj!);
    host.set(`${p}.mixer.dt_proj.weight`, l.dtProjWeight!);
    host.set(`${p}.mixer.dt_proj.bias`, l.dtBias);
    host.set(`${p}.mixer.A_log`, l.aLog);
    host.set(`${p}.mixer.D`, l.d);
    host.set(`${p}.mixer.out_proj.weight`, l.outProj);
  });
  const shapes = expectedTensors(config);
  const tensors: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }> = {};
  for (const [name, t] of host) {
    const data = t.data as Float32Array;
    tensors[name] = {
      dtype: "F32",
      shape: shapes.get(name)!,
      bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    };
  }
  // Half the matrices as F16 / BF16, to fuzz the conversions too.
  const half = (name: string, dtype: string) => {
    const f = new Float32Array(tensors[name].bytes.slice().buffer);
    const bits = new Uint16Array(f.length);
    for (let i = 0; i < f.length; i++) bits[i] = new Uint32Array(f.buffer)[i] >>> 16;
    tensors[name] = { ...tensors[name], dtype, bytes: new Uint8Array(bits.buffer) };
  };
  half("backbone.layers.0.mixer.in_proj.weight", "BF16");
  half("backbone.layers.1.mixer.x_proj.weight", "F16");
  const withHead = { ...tensors, "lm_head.weight": tensors["backbone.embedding.weight"] };
  const tied = {
    ...tensors,
    "lm_head.weight": {
      dtype: "F32",
      shape: shapes.get("backbone.embedding.weight")!,
      viewOf: "backbone.embedding.weight",
    },
  };
  const zip = await torchSave(tied);
  let pickle: Uint8Array = new Uint8Array(0);
  await torchSave(tied, { tweakPickle: (p) => (pickle = p) });
  return {
    config,
    safetensors: writeSafetensors(withHead),
    zip: [
      zip,
      await torchSave(tied, { deflate: true }),
      await torchSave(tied, { zip64: true, ordered: true, parameter: true, longMemo: true }),
    ],
    pickle,
    legacy: await torchSave(tied, { format: "legacy" }),
    configJson: new TextEncoder().encode(JSON.stringify({ ...FUZZ_CONFIG, tie_embeddings: true })),
  };
}

/** Values that break size and offset fields. */
const BOUNDARY = [
  0n,
  1n,
  2n,
  7n,
  8n,
  0x7fn,
  0x80n,
  0xffn,
  0x100n,
  0x7fffn,
  0x8000n,
  0xffffn,
  0x10000n,
  0x7fffffffn,
  0x80000000n,
  0xffffffffn,
  0x100000000n,
  2n ** 53n,
  2n ** 63n - 1n,
  2n ** 63n,
  2n ** 64n - 1n,
];
/** Numbers that break config fields. */
const JSON_BOUNDARY = [
  "0",
  "-1",
  "1",
  "2",
  "1e9",
  "1e308",
  "1e999",
  "-1e999",
  "0.5",
  "4294967296",
  "9007199254740993",
  "NaN",
  "null",
  "true",
  '"x"',
  "[]",
  "{}",
  "2147483648",
  "-0",
];

/** Mutates a copy of `input` 1-3 times. */
export function mutate(input: Uint8Array, rand: () => number, json = false): Uint8Array {
  let b: Uint8Array = input.slice();
  const int = (n: number) => Math.floor(rand() * n);
  const times = 1 + int(3);
  for (let k = 0; k < times; k++) {
    // config.json: half the mutations put boundary values in fields, the rest break the bytes.
    const kind = json && rand() < 0.5 ? 6 : int(6);
    const at = int(b.length + 1);
    if (kind === 0 && b.length) { // bit flip
      const i = int(b.length);
      b[i] ^= 1 << int(8);
    } else if (kind === 1 && b.length) { // byte set
      b[int(b.length)] = [0, 0xff, 0x7f, 0x80, int(256)][int(5)];
    } else if (kind === 2) { // truncation
      b = b.slice(0, int(b.length + 1));
    } else if (kind === 3) { // insertion
      const ins = new Uint8Array(1 + int(16)).map(() => int(256));
      b = concat(b.subarray(0, at), ins, b.subarray(at));
    } else if (kind === 4 && b.length) { // duplicate a range
      const s = int(b.length);
      const e = Math.min(b.length, s + 1 + int(64));
      b = concat(b.subarray(0, at), b.subarray(s, e), b.subarray(at));
    } else if (kind === 5 && b.length >= 8) { // integer field → boundary value
      const width = [1, 2, 4, 8][int(4)];
      const i = int(b.length - width + 1);
      let v = BOUNDARY[int(BOUNDARY.length)];
      for (let j = 0; j < width; j++) {
        b[i + j] = Number(v & 0xffn);
        v >>= 8n;
      }
    } else if (kind === 6) { // JSON: a number replaced by a boundary value
      const text = new TextDecoder().decode(b);
      const nums = [...text.matchAll(/-?\d+(\.\d+)?(e\d+)?/g)];
      if (nums.length) {
        const m = nums[int(nums.length)];
        const s = text.slice(0, m.index) + JSON_BOUNDARY[int(JSON_BOUNDARY.length)] +
          text.slice(m.index! + m[0].length);
        b = new TextEncoder().encode(s);
      }
    }
  }
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** What one run did. */
export interface FuzzOutcome {
  /** "ok", or the class of the MambaError thrown. */
  outcome: string;
  /** Set when the run broke a rule: the untyped error, the time, the size. */
  finding?: string;
  ms: number;
}

/** Checks a successful load: every tensor of the config's shape, no more bytes than 2 × the file. */
function checkLoaded(cfg: MambaConfig, w: ModelWeights, fileBytes: number): string | undefined {
  const shapes = expectedTensors(cfg);
  let bytes = 0;
  const seen = new Set<HostTensor>();
  const check = (t: HostTensor | undefined, name: string): string | undefined => {
    if (!t) return `missing ${name}`;
    const n = t.shape.reduce((a, b) => a * b, 1);
    if (t.data.length !== n) return `${name}: ${t.data.length} values for shape [${t.shape}]`;
    if (!seen.has(t)) bytes += t.data.byteLength;
    seen.add(t);
  };
  const errs = [
    check(w.embedding, "embedding"),
    check(w.lmHead, "lm_head"),
    check(w.normF.weight, "norm_f"),
    w.layers.length === cfg.nLayer ? undefined : `${w.layers.length} layers`,
    ...w.layers.flatMap((l, i) => [
      check(l.inProj, `${i}.in_proj`),
      check(l.outProj, `${i}.out_proj`),
      check(l.convWeight, `${i}.conv`),
    ]),
  ].filter(Boolean);
  if (errs.length) return errs.join("; ");
  if (shapes.get("backbone.embedding.weight")![0] !== w.embedding.shape[0]) return "embedding rows";
  if (bytes > 2 * fileBytes + 4096) return `loaded ${bytes} bytes from a ${fileBytes}-byte file`;
}

/** Loads `bytes` as `format` (the pickle zipped first; config.json beside the seed weights). */
export async function fuzzOne(
  format: FuzzFormat,
  bytes: Uint8Array,
  seeds: FuzzSeeds,
): Promise<FuzzOutcome> {
  const t0 = performance.now();
  let outcome = "ok";
  let finding: string | undefined;
  try {
    let cfg = seeds.config;
    let tensors: Map<string, TensorEntry>;
    let fileBytes = bytes.length;
    if (format === "safetensors") {
      tensors = await openSafetensors(new MemorySource(bytes, "fuzz.safetensors"));
    } else if (format === "config") {
      // As MambaLM.load reads config.json: text, JSON (a parse error is a ConfigError), fields.
      let raw: unknown;
      try {
        raw = JSON.parse(new TextDecoder().decode(bytes));
      } catch (e) {
        throw new ConfigError("(root)", `cannot parse fuzz/config.json: ${(e as Error).message}`);
      }
      cfg = parseConfig(raw);
      tensors = await openSafetensors(new MemorySource(seeds.safetensors, "fuzz.safetensors"));
      fileBytes = seeds.safetensors.length;
    } else {
      let file = bytes;
      if (format === "pickle") {
        // The seed zip's storages are needed too: splice the mutated pickle into the seed.
        file = await torchSaveWithPickle(seeds, bytes);
        fileBytes = file.length;
      }
      tensors = await openTorchCheckpoint(new MemorySource(file, "fuzz.bin"));
    }
    const w = await buildWeights(cfg, [tensors], "as-stored");
    finding = checkLoaded(cfg, w, fileBytes);
  } catch (e) {
    if (e instanceof MambaError) outcome = e.constructor.name;
    else {
      outcome = "UNTYPED";
      finding = `${(e as Error)?.name}: ${(e as Error)?.message}`;
    }
  }
  const ms = performance.now() - t0;
  if (ms > 5000) finding = `${finding ?? ""} took ${ms.toFixed(0)} ms`;
  return { outcome, finding, ms };
}

/** The seed zip with its data.pkl replaced. */
let storagesCache: { seed: Uint8Array; tensors: Map<string, Uint8Array> } | undefined;
async function torchSaveWithPickle(seeds: FuzzSeeds, pickle: Uint8Array): Promise<Uint8Array> {
  if (!storagesCache || storagesCache.seed !== seeds.zip[0]) {
    const m = await openTorchCheckpoint(new MemorySource(seeds.zip[0], "seed.bin"));
    const tensors = new Map<string, Uint8Array>();
    let key = 0;
    for (const [name, t] of m) {
      if (name === "lm_head.weight") continue;
      const b = new Uint8Array(t.byteLength);
      await t.readInto(b);
      tensors.set(String(key++), b);
    }
    storagesCache = { seed: seeds.zip[0], tensors };
  }
  return await collect((sink) =>
    writeZip(sink, [
      { name: "archive/data.pkl", data: pickle },
      { name: "archive/byteorder", data: new TextEncoder().encode("little") },
      ...[...storagesCache!.tensors].map(([k, b]) => ({ name: `archive/data/${k}`, data: b })),
    ], { crc: false })
  );
}

/** Totals of a campaign. */
export interface FuzzReport {
  format: FuzzFormat;
  runs: number;
  ms: number;
  maxMs: number;
  outcomes: Record<string, number>;
  findings: { seed: number; outcome: string; finding: string }[];
}

/** Runs `runs` mutations of `format` from `seed`; each input is reproducible from (format, seed + i). */
export async function fuzzCampaign(
  format: FuzzFormat,
  runs: number,
  seed: number,
  seeds: FuzzSeeds,
): Promise<FuzzReport> {
  const report: FuzzReport = { format, runs, ms: 0, maxMs: 0, outcomes: {}, findings: [] };
  const t0 = performance.now();
  for (let i = 0; i < runs; i++) {
    const bytes = fuzzInput(format, seed + i, seeds);
    const r = await fuzzOne(format, bytes, seeds);
    report.outcomes[r.outcome] = (report.outcomes[r.outcome] ?? 0) + 1;
    report.maxMs = Math.max(report.maxMs, r.ms);
    if (r.finding) report.findings.push({ seed: seed + i, outcome: r.outcome, finding: r.finding });
  }
  report.ms = performance.now() - t0;
  return report;
}

/** The mutated input of run `seed` (deterministic). */
export function fuzzInput(format: FuzzFormat, seed: number, seeds: FuzzSeeds): Uint8Array {
  const rand = mulberry32(seed * 2654435761 + FUZZ_FORMATS.indexOf(format));
  const base = format === "safetensors"
    ? seeds.safetensors
    : format === "zip"
    ? seeds.zip[seed % seeds.zip.length]
    : format === "pickle"
    ? seeds.pickle
    : format === "legacy"
    ? seeds.legacy
    : seeds.configJson;
  return mutate(base, rand, format === "config");
}
