/**
 * Helpers for the wasm kernel tests: locating the shared fixtures, a tiny F32 safetensors
 * reader, and a seeded random generator.
 *
 * @module
 */

/** The shared folder (`$MAMBA_SHARED`, else `../shared` beside the repo root), if it exists. */
export function sharedDir(): string | undefined {
  const env = Deno.env.get("MAMBA_SHARED");
  const candidates = env ? [env] : [];
  candidates.push(new URL("../../shared", import.meta.url).pathname);
  for (const c of candidates) {
    try {
      if (Deno.statSync(c).isDirectory) return c;
    } catch {
      // not there
    }
  }
  return undefined;
}

/** One F32 tensor of a safetensors file. */
export interface F32Tensor {
  /** Shape, outermost axis first. */
  shape: number[];
  /** Row-major data. */
  data: Float32Array;
}

/** Reads every tensor of a safetensors file whose tensors are all F32. */
export function readSafetensorsF32(path: string): Map<string, F32Tensor> {
  const bytes = Deno.readFileSync(path);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(dv.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n))) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const out = new Map<string, F32Tensor>();
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    if (t.dtype !== "F32") throw new Error(`${path}: ${name} is ${t.dtype}, expected F32`);
    const [b, e] = t.data_offsets;
    const raw = bytes.slice(8 + n + b, 8 + n + e); // copy: aligned for Float32Array
    out.set(name, { shape: t.shape, data: new Float32Array(raw.buffer, 0, (e - b) / 4) });
  }
  return out;
}

/** A seeded uniform generator in [0, 1) (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A Float32Array of `n` uniform values in [lo, hi). */
export function uniform(r: () => number, n: number, lo = -1, hi = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = lo + (hi - lo) * r();
  return a;
}
