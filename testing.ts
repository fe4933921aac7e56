/**
 * Helpers for tests and benchmarks: random weights in the shapes of the published checkpoints.
 *
 * @example
 * ```ts
 * import { MambaLM, parseConfig } from "@mamba/mamba";
 * import { PUBLIC_CONFIGS, randomWeights } from "@mamba/mamba/testing";
 * const config = parseConfig(PUBLIC_CONFIGS["mamba-130m"]);
 * const lm = await MambaLM.fromWeights(config, randomWeights(config), { backend: "ref" });
 * ```
 *
 * @module
 */

export { PUBLIC_CONFIGS, randomWeights } from "./src/random_weights.ts";
export { PUBLIC_NEOX_CONFIGS, randomNeoxWeights } from "./src/random_neox_weights.ts";
