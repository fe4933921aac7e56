/**
 * The oracle suite on the `webgpu` backend: f32 weights at the oracle's tolerances, and f16
 * weights (every matrix rounded to f16, compute in f32) at 300× looser ones (logits within
 * 3e-2, the README's expectation for f16), without the exact greedy comparison.
 */

import { oracleCheckpointSuite, oracleModelSuite } from "./oracle_util.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
if (adapter) {
  oracleModelSuite("webgpu");
  oracleModelSuite("webgpu", { weightsDtype: "f16", tolScale: 300, skipGreedy: true });
  oracleCheckpointSuite("webgpu");
} else {
  Deno.test({
    name: "oracle webgpu: skipped (no WebGPU adapter in this runtime)",
    ignore: true,
    fn() {},
  });
  console.error("oracle webgpu: no WebGPU adapter, the suite is skipped");
}
