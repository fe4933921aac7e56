/**
 * Streamed loading, measured: writes a random mamba-2.8b-shaped `pytorch_model.bin` (d_model
 * 2560, 64 layers, vocab 50280 padded to 50288, f32, ~11 GB, ZIP64, the LM head tied to the
 * embedding's storage) with the test writer, then loads it in a fresh process with
 * `weightsDtype: "f16"` (weights only, no backend) and reports the load time, GB/s and the
 * process's peak resident memory (VmHWM) against the bound: the loaded weights + the largest
 * tensor as read + the process's size before loading.
 *
 * Usage:
 *   deno run -A bench/load_memory_bench.ts [--dir /tmp/mamba_2.8b_bin] [--keep] [--reuse]
 *
 *   --dir DIR   where to write config.json and pytorch_model.bin (default /tmp/mamba_2.8b_bin)
 *   --keep      leave the files there afterwards (default: deleted)
 *   --reuse     load files a previous --keep run left, without writing them again
 *
 * @module
 */

import { parseArgs } from "node:util";
import { parseConfig } from "../src/config.ts";
import { expectedTensors, loadWeights } from "../src/weights.ts";
import {
  contiguousStrides,
  type PickledTensor,
  pickleStateDict,
  writeZip,
} from "../tests/torch_save_util.ts";
import { printUsage } from "./usage.ts";

const CONFIG = {
  d_model: 2560,
  n_layer: 64,
  vocab_size: 50280,
  pad_vocab_size_multiple: 16,
  ssm_cfg: {},
  rms_norm: true,
  residual_in_fp32: true,
  fused_add_norm: true,
  tie_embeddings: true,
};

/** Peak and current resident set of this process, in bytes. */
function memory(): { hwm: number; rss: number } {
  const status = Deno.readTextFileSync("/proc/self/status");
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(status)![1]) * 1024;
  return { hwm: kb("VmHWM"), rss: kb("VmRSS") };
}

const GB = 1e9;

async function write(dir: string): Promise<void> {
  const cfg = parseConfig(CONFIG);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(CONFIG));
  const shapes = expectedTensors(cfg);
  const names = [...shapes.keys()];
  const pickled: PickledTensor[] = names.map((name, i) => {
    const shape = shapes.get(name)!;
    const n = shape.reduce((a, b) => a * b, 1);
    return {
      name,
      key: String(i),
      storageClass: "FloatStorage",
      storageNumel: n,
      offset: 0,
      shape,
      stride: contiguousStrides(shape),
    };
  });
  const emb = pickled[0];
  pickled.push({ ...emb, name: "lm_head.weight" }); // tied: the same storage
  // Random values, one block of 16 Mi floats, tiled (the loader does not care what they are).
  const block = new Float32Array(1 << 24);
  for (let i = 0; i < block.length; i++) block[i] = (Math.random() * 2 - 1) * 0.05;
  const blockBytes = new Uint8Array(block.buffer);
  const file = await Deno.open(`${dir}/pytorch_model.bin`, {
    write: true,
    create: true,
    truncate: true,
  });
  const t0 = performance.now();
  let written = 0;
  await writeZip(
    async (b) => {
      for (let o = 0; o < b.length;) o += await file.write(b.subarray(o));
      written += b.length;
    },
    [
      { name: "archive/data.pkl", data: pickleStateDict(pickled) },
      { name: "archive/byteorder", data: new TextEncoder().encode("little") },
      ...pickled.slice(0, -1).map((t) => ({
        name: `archive/data/${t.key}`,
        size: t.storageNumel * 4,
        chunks: function* () {
          let left = t.storageNumel * 4;
          let at = (Number(t.key) * 4096) % blockBytes.length;
          while (left > 0) {
            const n = Math.min(left, blockBytes.length - at);
            yield blockBytes.subarray(at, at + n);
            left -= n;
            at = 0;
          }
        },
      })),
    ],
    { zip64: true, crc: false },
  );
  file.close();
  console.log(
    `wrote ${dir}/pytorch_model.bin: ${(written / GB).toFixed(2)} GB in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s`,
  );
}

/** The measured part, run in its own process so that writing the file does not count. */
async function load(dir: string): Promise<void> {
  const cfg = parseConfig(CONFIG);
  const before = memory();
  const size = (await Deno.stat(`${dir}/pytorch_model.bin`)).size;
  const t0 = performance.now();
  const w = await loadWeights(cfg, new URL(`file://${dir}/`), "f16");
  const seconds = (performance.now() - t0) / 1000;
  const after = memory();
  let loaded = 0;
  let largest = 0;
  const seen = new Set<unknown>();
  const count = (t: { data: { byteLength: number } }) => {
    if (seen.has(t)) return;
    seen.add(t);
    loaded += t.data.byteLength;
    largest = Math.max(largest, t.data.byteLength * 2); // as read: f32
  };
  count(w.embedding);
  count(w.lmHead);
  count(w.normF.weight);
  for (const l of w.layers) {
    for (const v of Object.values(l)) if (v && "data" in v) count(v);
    count(l.norm.weight);
  }
  const bound = before.rss + loaded + largest;
  console.log(JSON.stringify({
    fileGB: +(size / GB).toFixed(3),
    loadSeconds: +seconds.toFixed(2),
    GBps: +(size / GB / seconds).toFixed(3),
    rssBeforeMB: Math.round(before.rss / 1e6),
    peakRssMB: Math.round(after.hwm / 1e6),
    loadedWeightsMB: Math.round(loaded / 1e6),
    largestTensorAsReadMB: Math.round(largest / 1e6),
    boundMB: Math.round(bound / 1e6),
    withinBound: after.hwm <= bound,
  }));
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      dir: { type: "string", default: "/tmp/mamba_2.8b_bin" },
      keep: { type: "boolean", default: false },
      reuse: { type: "boolean", default: false },
      "load-only": { type: "boolean", default: false },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    await printUsage(import.meta.url);
  } else if (values["load-only"]) {
    await load(values.dir);
  } else {
    if (!values.reuse) await write(values.dir);
    try {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", import.meta.filename!, "--load-only", "--dir", values.dir],
        stdout: "inherit",
        stderr: "inherit",
      });
      const { code } = await child.output();
      if (code !== 0) throw new Error(`the load process exited with ${code}`);
    } finally {
      if (!values.keep) await Deno.remove(values.dir, { recursive: true });
    }
  }
}
