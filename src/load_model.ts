/**
 * `loadModel`: one entry point for every architecture the library runs. It reads `config.json`
 * and hands the directory to the class of that architecture.
 *
 * @module
 */

import { dirUrl, MambaLM } from "./model.ts";
import { isGptNeoXConfigJson } from "./neox_config.ts";
import { GptNeoXLM, readConfigJson, type TransformerLoadOptions } from "./neox_model.ts";

/** Any language model {@link loadModel} returns; `config.arch` tells them apart. */
export type LanguageModel = MambaLM | GptNeoXLM;

/**
 * Where a model lives: a directory path or URL, as a URL ending in `/`. This is the one step
 * that resolves names, so that Hub ids can be resolved here (to a local cache) later.
 */
export function resolveModelDir(dirOrHubId: string | URL): Promise<URL> {
  return Promise.resolve(dirUrl(dirOrHubId));
}

/**
 * Loads the model in a directory (local path or URL), whatever its architecture: a Mamba-1 /
 * Mamba-2 model (mamba_ssm or transformers `config.json`) as a `MambaLM`, a GPT-NeoX (Pythia)
 * model (`model_type: "gpt_neox"`) as a `GptNeoXLM`. Both have the same API (`forward`,
 * `createState`, `prefill`, `step`, `generate`, `complete`, `generateBatch`, `textStream`,
 * `dispose`); `config.arch` says which one came back.
 *
 * @throws {ConfigError} for a bad or unsupported config, {@link WeightsError} for bad weights.
 * @example
 * ```ts
 * import { loadModel } from "@mamba/mamba";
 * const lm = await loadModel("./models/demo", { backend: "auto" });
 * console.log(lm.config.arch, await lm.complete("The whale", { maxNewTokens: 16 }));
 * lm.dispose();
 * ```
 */
export async function loadModel(
  dirOrHubId: string | URL,
  options: TransformerLoadOptions = {},
): Promise<LanguageModel> {
  const base = await resolveModelDir(dirOrHubId);
  const raw = await readConfigJson(base);
  if (isGptNeoXConfigJson(raw)) return await GptNeoXLM.load(base, options);
  return await MambaLM.load(base, options);
}
