// Writes models/demo/tokenizer.json: the byte-level tokenizer of the bundled demo model.
//   deno run -A tools/write_demo_tokenizer.ts
import { byteLevelTokenizerJSON } from "../mod.ts";

const out = new URL("../models/demo/tokenizer.json", import.meta.url);
await Deno.writeTextFile(out, JSON.stringify(byteLevelTokenizerJSON(), null, 2) + "\n");
console.log(`wrote ${out.pathname}`);
