/**
 * How many tokens a backend gets through in about {@link SLICE_MS} ms, so that long work can be
 * cut into slices between which an `AbortSignal` is honoured: prompts are prefilled in chunks of
 * {@link prefillChunkTokens}, and fused decoding reads back blocks of at most
 * {@link decodeBlockTokens}.
 *
 * The figures are estimates from the model's shape (multiply-adds per token) and a throughput
 * per backend measured on a small CPU (2 cores): an abort is honoured within a slice, so what
 * matters is the order of magnitude. They depend only on the config and the backend, never on a
 * clock, so a prompt is cut the same way on every run and the results are reproducible.
 *
 * @module
 */

import type { Backend, BackendName } from "./backend.ts";
import type { MambaConfig } from "./config.ts";

/** Target duration of one slice of work, in milliseconds (an abort waits at most about this). */
export const SLICE_MS = 50;

/**
 * Multiply-adds per second, per backend: `ref` measured 0.56 G (demo model prefill, 2-core VM),
 * `wasm` 23 G prefill and 4 G decode (one thread); `webgpu` is a guess for a real GPU.
 */
const PREFILL_MACS_PER_S: Record<BackendName, number> = { ref: 0.5e9, wasm: 20e9, webgpu: 5e12 };
const DECODE_MACS_PER_S: Record<BackendName, number> = { ref: 0.5e9, wasm: 4e9, webgpu: 1e12 };

/**
 * Fewest tokens per prefill call: below this the batched kernels of `wasm` (matrix products
 * instead of matrix-vector ones) and `webgpu` (one read-back, polled every 10 ms by Deno, per
 * call) lose more throughput than a prompt abort gains. On big models an abort may then wait a
 * few of these tokens' time.
 */
const MIN_PREFILL_CHUNK: Record<BackendName, number> = { ref: 1, wasm: 32, webgpu: 256 };

/**
 * WebGPU backends running on a software adapter (`isFallbackAdapter`: Mesa's lavapipe, say),
 * which compute slower than the CPU backends: their slices are sized like `ref`'s. Filled in by
 * the backend registry when it builds a `webgpu` backend.
 */
export const softwareBackends: WeakSet<Backend> = new WeakSet();

/** The budget key of `backend`: its name, or `"ref"` for WebGPU on a software adapter. */
function kind(backend: Backend | BackendName): BackendName {
  if (typeof backend === "string") return backend;
  return softwareBackends.has(backend) ? "ref" : backend.name;
}

/**
 * Multiply-adds of one token through all blocks (projections, convolution and scan; the LM
 * head runs once per slice and is left out).
 */
export function macsPerToken(c: MambaConfig): number {
  const xProj = c.arch === "mamba1"
    ? c.dInner * (c.dtRank + 2 * c.dState) + c.dtRank * c.dInner
    : 0;
  const inProj = c.dModel *
    (2 * c.dInner + (c.arch === "mamba2" ? 2 * c.ngroups * c.dState + c.nheads : 0));
  const perLayer = inProj + xProj + c.dInner * c.dModel + c.convDim * c.dConv +
    4 * c.dInner * c.dState;
  return c.nLayer * perLayer;
}

/**
 * Most tokens per prefill call so that one call takes about {@link SLICE_MS} ms on `backend`:
 * at least 1; above `config.chunkSize` a multiple of it, so the chunked scans cut the sequence
 * where they would anyway.
 */
export function prefillChunkTokens(config: MambaConfig, on: Backend | BackendName): number {
  const backend = kind(on);
  const estimate = (PREFILL_MACS_PER_S[backend] * SLICE_MS) / 1000 / macsPerToken(config);
  const n = Math.max(MIN_PREFILL_CHUNK[backend], Math.floor(estimate));
  const chunk = config.chunkSize > 0 ? config.chunkSize : 64;
  if (n < chunk) return n;
  return Math.min(64 * chunk, n - (n % chunk));
}

/**
 * Fewest tokens per fused decoding block: `webgpu` keeps its 64, since each block costs a
 * read-back that Deno polls every 10 ms; an abort there waits for the block in flight.
 */
const MIN_DECODE_BLOCK: Record<BackendName, number> = { ref: 1, wasm: 1, webgpu: 64 };

/**
 * Most tokens per fused decoding block so that one block takes about {@link SLICE_MS} ms
 * (between the floor above and 64, the backends' own default).
 */
export function decodeBlockTokens(config: MambaConfig, on: Backend | BackendName): number {
  const backend = kind(on);
  const n = Math.floor((DECODE_MACS_PER_S[backend] * SLICE_MS) / 1000 / macsPerToken(config));
  return Math.max(MIN_DECODE_BLOCK[backend], Math.min(64, n));
}
