/** The GPT-NeoX oracle suite on the `wasm` backend (f32 math; the f16 case keeps f16 weights). */
import { neoxSuite } from "./neox_util.ts";

neoxSuite("wasm");
import { neoxLongContextSuite } from "./neox_backends_util.ts";

neoxLongContextSuite("wasm");
