/**
 * mamba — Mamba-1 and Mamba-2 selective-state-space language models for Deno, with WebGPU and
 * SIMD WebAssembly backends and a plain-TypeScript reference.
 *
 * @example
 * ```ts
 * import { MambaLM } from "@mamba/mamba";
 * const lm = await MambaLM.load("./models/demo");
 * const state = lm.createState(1);
 * const logits = await lm.prefill(state, [[72, 105]]);
 * ```
 *
 * @module
 */

export { MambaLM } from "./src/model.ts";
export type {
  CreateStateOptions,
  GenerateTokensOptions,
  LoadOptions,
  Logits,
} from "./src/model.ts";
export { InferenceState } from "./src/state.ts";
export type { StateLayout } from "./src/state.ts";
export { parseConfig } from "./src/config.ts";
export type { MambaArch, MambaConfig } from "./src/config.ts";
export { parseSafetensors, tensorToF32 } from "./src/safetensors.ts";
export type { DType, SafetensorsFile, SafetensorsTensor } from "./src/safetensors.ts";
export {
  BackendError,
  ConfigError,
  DeviceLostError,
  InputError,
  MambaError,
  OptionError,
  TokenizerError,
  WeightsError,
} from "./src/errors.ts";
export type { Backend, BackendName, DecodeOptions, StateTensors } from "./src/backend.ts";
export type { BackendChoice, BackendPreference } from "./src/backends/registry.ts";
export type { WeightsDtype } from "./src/weights.ts";
export type { HostTensor, LayerWeights, ModelWeights, NormWeights } from "./src/weights.ts";
export { Tokenizer } from "./src/tokenizer.ts";
export { byteLevelTokenizerJSON } from "./src/tokenizer.ts";
export type {
  EncodeOptions,
  StreamDecoder,
  TextTokenizer,
  TokenizerLoadOptions,
} from "./src/tokenizer.ts";
export {
  applyRepetitionPenalty,
  argmax,
  Sampler,
  SamplingOptionsError,
  TokenHistory,
  validateSamplingOptions,
} from "./src/sampling.ts";
export type { ResolvedSamplingOptions, SamplingOptions } from "./src/sampling.ts";
export { randomSeed, Xoshiro128 } from "./src/rng.ts";
export { complete, generate, generateBatch, textStream } from "./src/generate.ts";
export type {
  GeneratedToken,
  GenerateOptions,
  InferenceStateLike,
  StepModel,
} from "./src/generate.ts";
