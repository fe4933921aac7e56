/**
 * The oracle suite on the `webgpu` backend: f32 weights at the oracle's tolerances, and f16
 * weights (every matrix rounded to f16, compute in f32) at 300× looser ones (logits within
 * 3e-2, the README's expectation for f16), without the exact greedy comparison.
 */

import { oracleCheckpointSuite, oracleModelSuite } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

if (await webgpuTestAdapter("oracle webgpu")) {
  oracleModelSuite("webgpu");
  oracleModelSuite("webgpu", { weightsDtype: "f16", tolScale: 300, skipGreedy: true });
  oracleCheckpointSuite("webgpu");
} else {
  Deno.test({
    name: "oracle webgpu: skipped (no hardware WebGPU adapter here; see the line above)",
    ignore: true,
    fn() {},
  });
}
