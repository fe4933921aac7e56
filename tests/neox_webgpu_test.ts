/**
 * The GPT-NeoX oracle suite on the `webgpu` backend (f32 math; once more with the weights kept
 * as stored, so the f16 case runs the f16 kernels), and the long-context comparison with `ref`.
 */

import { gqaSuite, neoxLongContextSuite } from "./neox_backends_util.ts";
import { neoxSuite } from "./neox_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

if (await webgpuTestAdapter("gpt_neox webgpu")) {
  neoxSuite("webgpu");
  neoxSuite("webgpu", { weightsDtype: "as-stored", label: "weights as stored" });
  neoxLongContextSuite("webgpu");
  gqaSuite("webgpu");
} else {
  Deno.test({
    name: "gpt_neox webgpu: skipped (no hardware WebGPU adapter here; see the line above)",
    ignore: true,
    fn() {},
  });
}
