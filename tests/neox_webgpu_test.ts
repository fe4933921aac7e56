/**
 * The GPT-NeoX oracle suite on the `webgpu` backend (f32 math; once more with the weights kept
 * as stored, so the f16 case runs the f16 kernels), and the long-context comparison with `ref`.
 */

import { neoxLongContextSuite } from "./neox_backends_util.ts";
import { neoxSuite } from "./neox_util.ts";

const adapter = await navigator.gpu?.requestAdapter().catch(() => null);
if (adapter) {
  neoxSuite("webgpu");
  neoxSuite("webgpu", { weightsDtype: "as-stored", label: "weights as stored" });
  neoxLongContextSuite("webgpu");
} else {
  Deno.test({ name: "gpt_neox webgpu: skipped (no WebGPU adapter)", ignore: true, fn() {} });
  console.error("gpt_neox webgpu: no WebGPU adapter, the suite is skipped");
}
