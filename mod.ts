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
export type { FromConfigOptions } from "./src/model.ts";
export { Mamba, Mamba2, MixerBlock } from "./src/blocks.ts";
export type {
  BlockCreateOptions,
  BlockWeightsSource,
  FloatTensor,
  Mamba2Options,
  MambaOptions,
  StateDictTensor,
} from "./src/blocks.ts";
export type { MixerInit, ModelInit } from "./src/init.ts";
export type { SaveDtype, SaveOptions } from "./src/save.ts";
export { InferenceState } from "./src/state.ts";
export type { StateLayout } from "./src/state.ts";
export { parseConfig } from "./src/config.ts";
export { GptNeoXLM } from "./src/neox_model.ts";
export type { ContextLimits, TransformerLoadOptions } from "./src/neox_model.ts";
export { loadModel } from "./src/load_model.ts";
export type { LanguageModel } from "./src/load_model.ts";
export { KvCacheState } from "./src/kv_state.ts";
export type { KvLayout } from "./src/kv_state.ts";
export { parseNeoxConfig } from "./src/neox_config.ts";
export type { AttentionSpec, GptNeoXConfig } from "./src/neox_config.ts";
export type { TransformerLayerWeights, TransformerWeights } from "./src/neox_weights.ts";
export type { MambaArch, MambaConfig } from "./src/config.ts";
export { parseSafetensors, tensorToF32 } from "./src/safetensors.ts";
export type { DType, SafetensorsFile, SafetensorsTensor } from "./src/safetensors.ts";
export {
  BackendError,
  ConfigError,
  DeviceLostError,
  HubError,
  InputError,
  MambaError,
  NoTokenizerError,
  OptionError,
  TokenizerError,
  WeightsError,
} from "./src/errors.ts";
export type { DownloadProgress, HubOptions } from "./src/hub.ts";
export type { Backend, BackendName, DecodeOptions, StateTensors } from "./src/backend.ts";
export type {
  BlockNorm,
  KvTensors,
  SharedBackendOps,
  TransformerBackend,
  TransformerOps,
} from "./src/backend.ts";
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
