/**
 * What the WebGPU benchmarks share: a backend over random weights in a public model's shapes.
 *
 * @module
 */

import { type MambaConfig, parseConfig } from "../src/config.ts";
import { WebGpuBackend, type WebGpuOptions } from "../src/backends/webgpu/backend.ts";
import { PUBLIC_CONFIGS, randomWeights } from "../testing.ts";
import type { Command } from "../src/backends/webgpu/recorder.ts";

/**
 * A `webgpu` backend over random weights in the shapes of public model `name`. Large models get
 * the fast fill (a random block tiled over each matrix): the kernels' speed does not depend on
 * the values, and filling gigabytes with fresh random numbers takes minutes.
 */
export async function randomGpuBackend(
  name: string,
  dtype: "f32" | "f16",
  options: WebGpuOptions = {},
): Promise<{ config: MambaConfig; be: WebGpuBackend }> {
  const raw = PUBLIC_CONFIGS[name];
  if (!raw) throw new Error(`unknown model ${name} (one of ${Object.keys(PUBLIC_CONFIGS)})`);
  const config = parseConfig(raw);
  const small = config.dModel * config.dModel * config.nLayer < 1e8;
  const weights = randomWeights(config, { dtype, fast: !small });
  return { config, be: await WebGpuBackend.create({ config, weights }, options) };
}

/**
 * GPU µs per replay of `cmds`, `reps` times in one compute pass (or a pass every `passEvery`
 * dispatches), timed by the timestamps around them: best of 3 after a warm-up round.
 */
export async function timeReplay(
  dev: GPUDevice,
  cmds: readonly Command[],
  reps: number,
  passEvery = 0,
): Promise<number> {
  const query = dev.createQuerySet({ type: "timestamp", count: 2 });
  const resolve = dev.createBuffer({ size: 16, usage: 0x200 | 0x4 });
  const staging = dev.createBuffer({ size: 16, usage: 0x1 | 0x8 });
  let best = Infinity;
  for (let round = 0; round < 4; round++) {
    const enc = dev.createCommandEncoder();
    const total = cmds.length * reps;
    let pass: GPUComputePassEncoder | null = null;
    let i = 0;
    for (let r = 0; r < reps; r++) {
      for (const c of cmds) {
        if (!pass) {
          const tw: GPUComputePassTimestampWrites = {
            querySet: query,
            ...(i === 0 ? { beginningOfPassWriteIndex: 0 } : {}),
          };
          pass = enc.beginComputePass(i === 0 ? { timestampWrites: tw } : {});
        }
        pass.setPipeline(c.pipeline);
        pass.setBindGroup(0, c.group);
        pass.dispatchWorkgroups(c.x, c.y, c.z);
        i++;
        if ((passEvery && i % passEvery === 0) || i === total) {
          pass.end();
          pass = null;
        }
      }
    }
    // A last empty pass carries the end timestamp.
    enc.beginComputePass({ timestampWrites: { querySet: query, endOfPassWriteIndex: 1 } }).end();
    enc.resolveQuerySet(query, 0, 2, resolve, 0);
    enc.copyBufferToBuffer(resolve, 0, staging, 0, 16);
    dev.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(staging.getMappedRange().slice(0));
    staging.unmap();
    if (round > 0) best = Math.min(best, Number(t[1] - t[0]) / 1e3 / reps);
  }
  query.destroy();
  resolve.destroy();
  staging.destroy();
  return best;
}

/** The fields of a skinny tile (`WebGpuOptions.skinnyShape`) a bench flag may set. */
export const SKINNY_FIELDS = ["tn", "tm", "nt", "mt", "ks", "bk", "pf"] as const;

/** The fields of a register tile (`WebGpuOptions.regsShape`) a bench flag may set. */
export const REGS_FIELDS = ["tn", "nc", "kl", "mb", "kp"] as const;

/**
 * Parses `a=1,b=2` into an object of the `fields` given (integers ≥ 0), for the bench flag
 * `flag` that overrides a kernel's tile.
 *
 * ```ts
 * parseFields("tn=4,kl=32", REGS_FIELDS, "--regs-tile"); // { tn: 4, kl: 32 }
 * ```
 */
export function parseFields(
  text: string,
  fields: readonly string[],
  flag: string,
): Record<string, number> {
  const t: Record<string, number> = {};
  for (const kv of text.split(",")) {
    const [k, val] = kv.split("=");
    if (!fields.includes(k) || !(Number(val) >= 0)) {
      throw new Error(`${flag}: bad field "${kv}" (${fields.join(", ")} = integers)`);
    }
    t[k] = Number(val);
  }
  return t;
}
