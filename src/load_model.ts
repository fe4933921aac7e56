/**
 * `loadModel`: one entry point for every architecture the library runs. It reads `config.json`
 * and hands the directory to the class of that architecture.
 *
 * @module
 */

import { MambaLM } from "./model.ts";
import { readConfigJson, resolveModelDir } from "./model_dir.ts";
import { isGptNeoXConfigJson } from "./neox_config.ts";
import { GptNeoXLM, type TransformerLoadOptions } from "./neox_model.ts";

/**
 * Any language model {@link loadModel} returns; `config.arch` tells them apart, and
 * `lm instanceof GptNeoXLM` narrows the type.
 */
export type LanguageModel = MambaLM | GptNeoXLM;

/**
 * Loads the model in a directory (local path or URL) or named by a Hugging Face Hub id
 * (`org/name`, through the local cache, downloaded when missing; see `HubOptions`), whatever
 * its architecture: a Mamba-1 /
 * Mamba-2 model (mamba_ssm or transformers `config.json`) as a `MambaLM`, a GPT-NeoX (Pythia)
 * model (`model_type: "gpt_neox"`) as a `GptNeoXLM`. Both have the same API (`forward`,
 * `createState`, `prefill`, `step`, `generate`, `complete`, `generateBatch`, `textStream`,
 * `dispose`); `config.arch` says which one came back (`instanceof` narrows the type).
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
  const { dir, tokenizerDir } = await resolveModelDir(dirOrHubId, options);
  const raw = await readConfigJson(dir);
  // The class loads from the resolved directory (no second Hub lookup), with the Hub's tokenizer.
  const opts = options.tokenizer === undefined && tokenizerDir !== undefined
    ? { ...options, tokenizer: tokenizerDir }
    : options;
  if (isGptNeoXConfigJson(raw)) return await GptNeoXLM.load(dir, opts);
  return await MambaLM.load(dir, opts);
}
