/**
 * Random weights in the shapes of a config, for benchmarks and tests: the values are drawn like
 * mamba_ssm's initialisation (scaled uniform matrices, dt bias from dt ∈ [1e-3, 1e-1], A from
 * [1, 16]) so activations stay in a realistic range.
 *
 * @module
 */

import type { MambaConfig } from "./config.ts";
import { f32ArrayToF16 } from "./half.ts";
import { assembleWeights, expectedTensors, type HostTensor, type ModelWeights } from "./weights.ts";

/** A small, fast, seeded generator (mulberry32) of uniform numbers in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Random weights for `config`, float32 or float16. With `fast`, every tensor of more than 64k
 * values tiles one random block (of a prime length, so rows differ) scaled to its bound instead of
 * drawing every value: the same distributions, generated in a fraction of the time (what a
 * benchmark of a 2.8b model needs).
 *
 * @example
 * ```ts
 * import { parseConfig } from "@mamba/mamba";
 * import { randomWeights } from "@mamba/mamba/testing";
 * const w = randomWeights(parseConfig({ d_model: 768, n_layer: 24, vocab_size: 50277 }), { dtype: "f16" });
 * ```
 */
export function randomWeights(
  config: MambaConfig,
  options: { dtype?: "f32" | "f16"; seed?: number; fast?: boolean } = {},
): ModelWeights {
  const rand = mulberry32(options.seed ?? 1);
  const dtype = options.dtype ?? "f32";
  const BLOCK = 1_048_573;
  let unit: Float32Array | undefined;
  const blocks = new Map<number, HostTensor["data"]>();
  /** `n` values tiling one random block scaled to `bound`, already in the target dtype. */
  const tiled = (n: number, bound: number): HostTensor["data"] => {
    unit ??= new Float32Array(BLOCK).map(() => 2 * rand() - 1);
    let block = blocks.get(bound);
    if (!block) {
      const f = unit.map((v) => v * bound);
      block = dtype === "f16" ? f32ArrayToF16(f) : f;
      blocks.set(bound, block);
    }
    const out = dtype === "f16" ? new Uint16Array(n) : new Float32Array(n);
    for (let o = 0; o < n; o += BLOCK) {
      const part = block.subarray(0, Math.min(BLOCK, n - o));
      if (out instanceof Uint16Array) out.set(part as Uint16Array, o);
      else out.set(part as Float32Array, o);
    }
    return out;
  };
  const make = (name: string, shape: number[]): HostTensor => {
    const n = shape.reduce((a, b) => a * b, 1);
    const v = new Float32Array(n);
    const s = name.endsWith("conv1d.weight") ? [shape[0], shape[2]] : shape;
    const fanIn = shape.length > 1 ? shape[shape.length - 1] : 1;
    if (name.endsWith("norm.weight") || name.endsWith(".D")) v.fill(1);
    else if (name.endsWith("norm.bias") || name.endsWith("conv1d.bias")) v.fill(0);
    else if (name.endsWith("A_log")) {
      for (let i = 0; i < n; i++) v[i] = Math.log(1 + 15 * rand());
    } else if (name.endsWith("dt_proj.bias") || name.endsWith("dt_bias")) {
      for (let i = 0; i < n; i++) {
        const dt = Math.exp(Math.log(1e-3) + rand() * (Math.log(1e-1) - Math.log(1e-3)));
        v[i] = dt + Math.log(-Math.expm1(-dt)); // inverse softplus
      }
    } else {
      const bound = name.endsWith("embedding.weight") ? 0.02 * Math.sqrt(3) : 1 / Math.sqrt(fanIn);
      if (options.fast && n > 65536) {
        const data = tiled(n, bound);
        return data instanceof Uint16Array
          ? { dtype: "f16", shape: s, data }
          : { dtype: "f32", shape: s, data };
      }
      for (let i = 0; i < n; i++) v[i] = (2 * rand() - 1) * bound;
    }
    return dtype === "f16"
      ? { dtype, shape: s, data: f32ArrayToF16(v) }
      : { dtype, shape: s, data: v };
  };
  const t = new Map<string, HostTensor>();
  for (const [name, shape] of expectedTensors(config)) t.set(name, make(name, shape));
  return assembleWeights(config, (name) => t.get(name));
}

/** The public shapes of the published checkpoints, as mamba_ssm config.json objects. */
export const PUBLIC_CONFIGS: Record<string, Record<string, unknown>> = {
  "mamba-130m": { d_model: 768, n_layer: 24, vocab_size: 50277, ssm_cfg: {} },
  "mamba-370m": { d_model: 1024, n_layer: 48, vocab_size: 50277, ssm_cfg: {} },
  "mamba-790m": { d_model: 1536, n_layer: 48, vocab_size: 50277, ssm_cfg: {} },
  "mamba-1.4b": { d_model: 2048, n_layer: 48, vocab_size: 50277, ssm_cfg: {} },
  "mamba-2.8b": { d_model: 2560, n_layer: 64, vocab_size: 50277, ssm_cfg: {} },
  "mamba2-130m": { d_model: 768, n_layer: 24, vocab_size: 50277, ssm_cfg: { layer: "Mamba2" } },
  "mamba2-370m": { d_model: 1024, n_layer: 48, vocab_size: 50277, ssm_cfg: { layer: "Mamba2" } },
  "mamba2-780m": { d_model: 1536, n_layer: 48, vocab_size: 50277, ssm_cfg: { layer: "Mamba2" } },
  "mamba2-1.3b": { d_model: 2048, n_layer: 48, vocab_size: 50277, ssm_cfg: { layer: "Mamba2" } },
  "mamba2-2.7b": { d_model: 2560, n_layer: 64, vocab_size: 50277, ssm_cfg: { layer: "Mamba2" } },
};
