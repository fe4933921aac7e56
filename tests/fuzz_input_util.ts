/**
 * A seeded mutation fuzzer for the two inputs a user hands the library besides checkpoints:
 * saved states (`InferenceState.fromBytes`) and tokenizer files (`Tokenizer.load`). It mutates a
 * valid input 1–3 times (bit flips, byte sets, truncation, insertion, duplicated ranges, integer
 * fields set to boundary values, numbers in the JSON header replaced by boundary values) and
 * loads the result. Every outcome must be a correct load or a typed `MambaError`: anything else
 * (another exception, a run over 2 s, a state larger than its bytes) is a finding.
 *
 * Used by tests/fuzz_input_test.ts (a bounded count in `deno task test`).
 */

import { InferenceState } from "../src/state.ts";
import { MambaError } from "../src/errors.ts";
import { Xoshiro128 } from "../src/rng.ts";
import { Tokenizer } from "../src/tokenizer.ts";

/** Values that break size fields (little-endian, written 1, 2, 4 or 8 bytes wide). */
const BOUNDARY = [
  0n,
  1n,
  3n,
  4n,
  0x7fn,
  0x80n,
  0xffn,
  0xffffn,
  0x7fffffffn,
  0x80000000n,
  0xffffffffn,
  2n ** 53n,
  2n ** 64n - 1n,
];

/** Numbers (and non-numbers) put where the JSON has a number. */
const JSON_BOUNDARY = [
  "0",
  "-1",
  "1",
  "2",
  "1e9",
  "1e308",
  "1e999",
  "0.5",
  "4294967296",
  "1099511627776",
  "9007199254740993",
  "null",
  "true",
  '"x"',
  "[]",
  "{}",
  "[1e9,1e9,1e9]",
  "-0",
];

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Mutates a copy of `input` 1–3 times; with `json`, half the mutations hit numbers in it. */
export function mutate(input: Uint8Array, rng: Xoshiro128, json: boolean): Uint8Array {
  let b: Uint8Array = input.slice();
  const int = (n: number) => Math.floor(rng.nextFloat() * n);
  const times = 1 + int(3);
  for (let k = 0; k < times; k++) {
    const kind = json && rng.nextFloat() < 0.5 ? 6 : int(6);
    const at = int(b.length + 1);
    if (kind === 0 && b.length) {
      b[int(b.length)] ^= 1 << int(8); // bit flip
    } else if (kind === 1 && b.length) {
      b[int(b.length)] = [0, 0xff, 0x7f, 0x80, int(256)][int(5)]; // byte set
    } else if (kind === 2) {
      b = b.slice(0, int(b.length + 1)); // truncation
    } else if (kind === 3) {
      const ins = new Uint8Array(1 + int(16)).map(() => int(256)); // insertion
      b = concat(b.subarray(0, at), ins, b.subarray(at));
    } else if (kind === 4 && b.length) {
      const s = int(b.length); // a range duplicated
      b = concat(
        b.subarray(0, at),
        b.subarray(s, Math.min(b.length, s + 1 + int(64))),
        b.subarray(at),
      );
    } else if (kind === 5 && b.length >= 8) {
      const width = [1, 2, 4, 8][int(4)]; // an integer field set to a boundary value
      const i = int(b.length - width + 1);
      let v = BOUNDARY[int(BOUNDARY.length)];
      for (let j = 0; j < width; j++) {
        b[i + j] = Number(v & 0xffn);
        v >>= 8n;
      }
    } else if (kind === 6) {
      // A number of the JSON replaced by a boundary value (only where the text is UTF-8 JSON).
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

/** What one run did: "ok" or the MambaError's class; `finding` when a rule was broken. */
export interface FuzzOutcome {
  outcome: string;
  finding?: string;
}

function classify(e: unknown): FuzzOutcome {
  if (e instanceof MambaError) return { outcome: e.name };
  return { outcome: "untyped", finding: `untyped ${e instanceof Error ? e.name : typeof e}: ${e}` };
}

/** Valid saved states: Mamba-1 and Mamba-2 layouts, batch 1 and 2, random contents. */
export async function stateSeeds(): Promise<Uint8Array[]> {
  const rng = new Xoshiro128(5);
  const layouts = [
    { arch: "mamba1", nLayer: 2, batch: 1, convShape: [1, 8, 4], ssmShape: [1, 8, 4] },
    { arch: "mamba2", nLayer: 3, batch: 2, convShape: [2, 12, 4], ssmShape: [2, 2, 4, 4] },
  ] as const;
  const out: Uint8Array[] = [];
  for (const l of layouts) {
    const s = new InferenceState({ ...l, convShape: [...l.convShape], ssmShape: [...l.ssmShape] });
    for (const a of [...s.conv, ...s.ssm]) {
      for (let i = 0; i < a.length; i++) a[i] = rng.nextFloat();
    }
    out.push(await s.toBytes());
  }
  return out;
}

/** Restores mutated state bytes: a state no larger than its bytes, or a MambaError. */
export function fuzzState(bytes: Uint8Array): FuzzOutcome {
  const t0 = performance.now();
  let r: FuzzOutcome;
  try {
    const s = InferenceState.fromBytes(bytes);
    r = { outcome: "ok" };
    if (s.byteLength > bytes.length) {
      r.finding = `a ${s.byteLength}-byte state from ${bytes.length} bytes`;
    } else if (s.conv.length !== s.layout.nLayer || s.ssm.length !== s.layout.nLayer) {
      r.finding = "layer count disagrees with the layout";
    }
  } catch (e) {
    r = classify(e);
  }
  const ms = performance.now() - t0;
  if (ms > 2000 && !r.finding) r.finding = `took ${ms.toFixed(0)} ms`;
  return r;
}

/** Loads mutated tokenizer.json text from `file`: a tokenizer that encodes and decodes, or a MambaError. */
export async function fuzzTokenizer(file: string, bytes: Uint8Array): Promise<FuzzOutcome> {
  await Deno.writeFile(file, bytes);
  const t0 = performance.now();
  let r: FuzzOutcome;
  try {
    const tok = await Tokenizer.load(file);
    r = { outcome: "ok" };
    if (!(Number.isSafeInteger(tok.vocabSize) && tok.vocabSize >= 0)) {
      r.finding = `vocabSize ${tok.vocabSize}`;
    }
    // What generation does with it: encode a prompt, stream the ids back.
    const ids = tok.encode("Hello, wörld 😀<|endoftext|>");
    const dec = tok.createDecoder();
    for (const id of ids) dec.push(id);
    dec.flush();
  } catch (e) {
    r = classify(e);
  }
  const ms = performance.now() - t0;
  if (ms > 2000 && !r.finding) r.finding = `took ${ms.toFixed(0)} ms`;
  return r;
}
