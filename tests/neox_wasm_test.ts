/**
 * The GPT-NeoX oracle suite on the `wasm` backend: with 1 thread (rank 0 alone) and 2 threads
 * (heads, MLP columns and vocabulary split between rank 0 and a worker: every layer's partial
 * sums cross the shared buffer); once more with the weights kept as stored (the f16 case runs
 * the f16 kernels); and the long-context comparison with `ref`.
 */

import { gqaSuite, neoxLongContextSuite } from "./neox_backends_util.ts";
import { neoxSuite } from "./neox_util.ts";

neoxSuite("wasm", { wasm: { threads: 1 }, label: "1 thread" });
neoxSuite("wasm", { wasm: { threads: 2 }, label: "2 threads" });
neoxSuite("wasm", {
  wasm: { threads: 2 },
  weightsDtype: "as-stored",
  label: "as stored, 2 threads",
});
neoxLongContextSuite("wasm", { threads: 1 });
neoxLongContextSuite("wasm", { threads: 2 });
gqaSuite("wasm", { threads: 1 });
gqaSuite("wasm", { threads: 2 });
