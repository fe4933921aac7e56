/**
 * The GPT-NeoX oracle suite on the `wasm` backend (f32 math; once more with the weights kept as
 * stored, so the f16 case runs the f16 kernels), and the long-context comparison with `ref`.
 */

import { neoxLongContextSuite } from "./neox_backends_util.ts";
import { neoxSuite } from "./neox_util.ts";

neoxSuite("wasm");
neoxSuite("wasm", { weightsDtype: "as-stored", label: "weights as stored" });
neoxLongContextSuite("wasm");
