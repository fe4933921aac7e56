/**
 * What the WebGPU benchmarks share: a backend over random weights in a public model's shapes.
 *
 * @module
 */

import { type MambaConfig, parseConfig } from "../src/config.ts";
import { WebGpuBackend, type WebGpuOptions } from "../src/backends/webgpu/backend.ts";
import { PUBLIC_CONFIGS, randomWeights } from "../testing.ts";

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
