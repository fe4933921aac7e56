/**
 * Options of the `wasm` backend.
 *
 * @module
 */

/** How the `wasm` backend stores the large matrices in wasm memory. */
export type WasmWeights = "f32" | "f16" | "q8";

/** Options of the `wasm` backend (`WasmBackend.create`, `LoadOptions.wasm`). */
export interface WasmOptions {
  /**
   * Number of threads: the calling thread computes as rank 0 and `threads − 1` Web Workers as the
   * other ranks. Default `navigator.hardwareConcurrency`; 1 runs without workers. Capped at the
   * number of channel slices the model has: `d_inner / 32` (Mamba-1 where 32 divides `d_inner`,
   * Mamba-2 where it divides `headdim`: mamba2-130m, 48), else `d_inner / 4` or `d_inner`.
   */
  threads?: number;
  /**
   * How the matrices are stored: `"f32"`, `"f16"` (widened to f32 in registers), or `"q8"` (int8
   * with one f32 scale per 32 weights along K, quantized at load: `in_proj`, `out_proj` and the
   * embedding / LM head; `x_proj` and `dt_proj` keep their loaded type). Default: as loaded.
   */
  weights?: WasmWeights;
  /**
   * Tokens of each sequence run through all layers at a time in a long prefill or forward (the
   * activations held in memory scale with it). Default 256.
   */
  chunkTokens?: number;
  /**
   * Which build of the kernels: `"relaxed"` (relaxed SIMD: fused multiply-add in the linear
   * layers), `"plain"` (SIMD128 only), or `"auto"` (default: the environment variable
   * `MAMBA_WASM_SIMD` where env access is granted, else relaxed where the engine supports it).
   */
  simd?: "auto" | "relaxed" | "plain";
}
