/**
 * The oracle suite on the `wasm` backend:
 *
 * - f32 weights at the oracle's tolerances, with 1 thread (rank 0 alone, no workers) and with 2
 *   threads (rank 0 + one worker: every reduction crosses the shared buffer);
 * - f16 weights (every tensor rounded to f16 at load, math in f32) at 300× the oracle's
 *   tolerances (logits within 3e-2, the README's expectation for f16; measured worst: logits
 *   10×, conv state 133×, SSM state 23× the oracle tolerances), without the exact greedy match;
 * - q8 weights (`in_proj`, `out_proj` and the embedding / LM head as int8 with one scale per 32
 *   weights; measured worst over the cases: logits 1.1e-2, conv state 2.3e-2·(1 + |x|), SSM
 *   state 4e-4 + 4e-2·|x|) at logits 3e-2 + 3e-2·|x|, conv 6e-2 + 6e-2·|x|, SSM
 *   2e-3 + 6e-2·|x|, without the exact greedy match.
 *
 * - the Mamba-2 cases at 3, 5, 7 threads and the most each allows (64 asked): the ranks split
 *   `d_inner` in units of 4 channels where a head is not a whole number of q8 blocks, so these
 *   splits cut the cases' 16-channel heads (tests/wasm_backend_test.ts checks which): a rank
 *   scans part of a head, and a head's dt row is computed by every rank touching it.
 *   The f16 and q8 suites run them again at 5 threads (q8: a rank's columns of `out_proj` are
 *   then no whole number of blocks).
 *
 * All on the kernel build the loader picks (relaxed SIMD where the engine has it); `deno task
 * test` runs the file again with `MAMBA_WASM_SIMD=plain`.
 */

import { oracleCheckpointSuite, oracleModelSuite } from "./oracle_util.ts";

/** q8 weights: per-block rounding of every weight (the f32 suites' tolerances do not hold). */
const Q8_TOL = {
  logits: { atol: 3e-2, rtol: 3e-2 },
  conv: { atol: 6e-2, rtol: 6e-2 },
  ssm: { atol: 2e-3, rtol: 6e-2 },
};

oracleModelSuite("wasm", { wasm: { threads: 1 }, label: "1 thread" });
oracleModelSuite("wasm", { wasm: { threads: 2 }, label: "2 threads" });
oracleModelSuite("wasm", {
  weightsDtype: "f16",
  wasm: { threads: 2 },
  tolScale: 300,
  skipGreedy: true,
  label: "f16, 2 threads",
});
oracleModelSuite("wasm", {
  wasm: { threads: 2, weights: "q8" },
  tol: Q8_TOL,
  skipGreedy: true,
  label: "q8, 2 threads",
});
for (const threads of [3, 5, 7, 64]) {
  oracleModelSuite("wasm", {
    wasm: { threads },
    cases: (c) => c.startsWith("m2_"),
    label: `${threads} threads`,
  });
}
// f16 and q8 where the split cuts heads (q8: a rank's columns of out_proj are no whole blocks).
oracleModelSuite("wasm", {
  weightsDtype: "f16",
  wasm: { threads: 5 },
  cases: (c) => c.startsWith("m2_"),
  tolScale: 300,
  skipGreedy: true,
  label: "f16, 5 threads",
});
oracleModelSuite("wasm", {
  wasm: { threads: 5, weights: "q8" },
  cases: (c) => c.startsWith("m2_"),
  tol: Q8_TOL,
  skipGreedy: true,
  label: "q8, 5 threads",
});
oracleCheckpointSuite("wasm", { wasm: { threads: 2 }, label: "2 threads" });
