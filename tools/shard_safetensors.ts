/**
 * Splits a `model.safetensors` into shards of at most `--max-bytes` each, with the
 * `model.safetensors.index.json` that transformers (and this library) read:
 * `model-00001-of-0000N.safetensors`, … in the same directory. Tensor bytes are copied unchanged,
 * in the file's order; the original file is left in place (delete it yourself).
 *
 * JSR refuses files over 4 MB, so the demo model ships as shards:
 *
 * ```sh
 * deno run -A tools/shard_safetensors.ts models/demo/model.safetensors --max-bytes 4000000
 * ```
 */

import { parseArgs } from "node:util";

interface Entry {
  name: string;
  dtype: string;
  shape: number[];
  begin: number;
  end: number;
}

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { "max-bytes": { type: "string", default: "4000000" } },
});
if (positionals.length !== 1) {
  console.error("usage: shard_safetensors.ts FILE.safetensors [--max-bytes N]");
  Deno.exit(2);
}
const file = positionals[0];
const maxBytes = Number(values["max-bytes"]);
const dir = file.includes("/") ? file.slice(0, file.lastIndexOf("/") + 1) : "";
const bytes = await Deno.readFile(file);
const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
const dataStart = 8 + headerLen;
const metadata = header.__metadata__ ?? { format: "pt" };
const entries: Entry[] = Object.entries(header)
  .filter(([name]) => name !== "__metadata__")
  .map(([name, v]) => {
    const t = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    return {
      name,
      dtype: t.dtype,
      shape: t.shape,
      begin: t.data_offsets[0],
      end: t.data_offsets[1],
    };
  })
  .sort((a, b) => a.begin - b.begin);

/** The header of a file holding `tensors` in this order, and the size of its data. */
function headerOf(tensors: Entry[]): [Uint8Array, number] {
  const h: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    h[t.name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + t.end - t.begin],
    };
    offset += t.end - t.begin;
  }
  let json = JSON.stringify(h);
  while ((8 + json.length) % 8) json += " "; // the data starts 8-aligned
  return [new TextEncoder().encode(json), offset];
}

/** The size of the file holding `tensors`. */
function sizeOf(tensors: Entry[]): number {
  const [hb, data] = headerOf(tensors);
  return 8 + hb.length + data;
}

/** The file holding `tensors` in this order, as safetensors writers lay it out. */
function serialise(tensors: Entry[]): Uint8Array {
  const [hb, offset] = headerOf(tensors);
  const out = new Uint8Array(8 + hb.length + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  let o = 8 + hb.length;
  for (const t of tensors) {
    out.set(bytes.subarray(dataStart + t.begin, dataStart + t.end), o);
    o += t.end - t.begin;
  }
  return out;
}

// Greedy: tensors in file order, a new shard when the next one would not fit.
const shards: Entry[][] = [[]];
for (const t of entries) {
  const cur = shards[shards.length - 1];
  if (cur.length > 0 && sizeOf([...cur, t]) > maxBytes) shards.push([t]);
  else cur.push(t);
}
const n = shards.length;
const name = (i: number) =>
  `model-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`;
const weightMap: Record<string, string> = {};
let totalSize = 0;
for (let i = 0; i < n; i++) {
  const out = serialise(shards[i]);
  if (out.length > maxBytes) {
    throw new Error(`tensor ${shards[i][0].name} alone is ${out.length} bytes > ${maxBytes}`);
  }
  await Deno.writeFile(dir + name(i), out);
  for (const t of shards[i]) {
    weightMap[t.name] = name(i);
    totalSize += t.end - t.begin;
  }
  console.log(`${dir}${name(i)}: ${shards[i].length} tensors, ${out.length} bytes`);
}
const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
await Deno.writeTextFile(
  dir + "model.safetensors.index.json",
  JSON.stringify(index, null, 2) + "\n",
);
console.log(`${dir}model.safetensors.index.json: ${entries.length} tensors, ${totalSize} bytes`);
