/**
 * Typed errors thrown by the library. Every error a user can cause by passing a bad file, a bad
 * configuration or bad input is one of these, with a message that names the culprit.
 *
 * @module
 */

/**
 * Base class of every error the library throws on purpose.
 *
 * @example
 * ```ts
 * import { MambaError, MambaLM } from "@mamba/mamba";
 * try {
 *   await MambaLM.load("./no-such-model");
 * } catch (e) {
 *   if (e instanceof MambaError) console.error(e.message);
 * }
 * ```
 */
export class MambaError extends Error {
  /** Creates the error; `name` is set to the concrete class name. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * A `config.json` that is malformed, contradicts itself, or asks for something not supported.
 * `field` names the offending key.
 *
 * @example
 * ```ts
 * import { ConfigError, parseConfig } from "@mamba/mamba";
 * try {
 *   parseConfig({ d_model: 64, n_layer: 2, vocab_size: 100, attn_layer_idx: [1] });
 * } catch (e) {
 *   if (e instanceof ConfigError) console.log(e.field); // "attn_layer_idx"
 * }
 * ```
 */
export class ConfigError extends MambaError {
  /** The config key at fault. */
  readonly field: string;
  /** Creates the error for `field`. */
  constructor(field: string, message: string) {
    super(`config.json: ${field}: ${message}`);
    this.field = field;
  }
}

/**
 * A weights file (safetensors) that is truncated, malformed, or holds missing, extra or
 * misshaped tensors.
 *
 * @example
 * ```ts
 * import { parseSafetensors, WeightsError } from "@mamba/mamba";
 * try {
 *   parseSafetensors(new Uint8Array(4));
 * } catch (e) {
 *   if (e instanceof WeightsError) console.log(e.message);
 * }
 * ```
 */
export class WeightsError extends MambaError {}

/**
 * A model that cannot be had from the Hugging Face Hub or its cache: a repository, revision or
 * file the Hub does not have, a network failure, a download whose checksum does not match, or
 * (offline) files that are not in the cache. `repo` and `file` name what was asked for; when a
 * cached copy exists the message says how to use it (`offline: true`, `HF_HUB_OFFLINE=1`).
 *
 * @example
 * ```ts
 * import { HubError } from "@mamba/mamba";
 * const e = new HubError("state-spaces/mamba-130m: not found", "state-spaces/mamba-130m");
 * console.log(e.name, e.repo); // "HubError" "state-spaces/mamba-130m"
 * ```
 */
export class HubError extends MambaError {
  /** The repository, `org/name`. */
  readonly repo: string | undefined;
  /** The file of the repository, when one is at fault. */
  readonly file: string | undefined;
  /** Creates the error for `repo` (and `file`). */
  constructor(message: string, repo?: string, file?: string, options?: ErrorOptions) {
    super(message, options);
    this.repo = repo;
    this.file = file;
  }
}

/**
 * A text prompt or stop strings given to a model that has no tokenizer. The message says why
 * it has none (no `tokenizer.json` in the model, none could be downloaded, …); token ids still
 * work.
 *
 * @example
 * ```ts
 * import { NoTokenizerError } from "@mamba/mamba";
 * const e = new NoTokenizerError("offline, and no tokenizer.json is cached");
 * console.log(e instanceof Error, e.name); // true "NoTokenizerError"
 * ```
 */
export class NoTokenizerError extends MambaError {}

/**
 * Bad input at run time: a token id that is not an integer or is out of the vocabulary, a
 * batch of the wrong size, a state from another model.
 *
 * @example
 * ```ts
 * import { InputError } from "@mamba/mamba";
 * const e = new InputError("token id 70000 is out of the vocabulary (50280)");
 * console.log(e.name); // "InputError"
 * ```
 */
export class InputError extends MambaError {}

/**
 * An option with a bad value (`maxNewTokens: -1`, `temperature: NaN`, …). `option` names it.
 *
 * @example
 * ```ts
 * import { MambaLM, OptionError } from "@mamba/mamba";
 * const lm = await MambaLM.load("./models/demo", { backend: "ref" });
 * try {
 *   await lm.complete("x", { maxNewTokens: -1 });
 * } catch (e) {
 *   if (e instanceof OptionError) console.log(e.option); // "maxNewTokens"
 * }
 * ```
 */
export class OptionError extends InputError {
  /** Name of the option at fault, e.g. `"maxNewTokens"`. */
  readonly option: string;
  /** Creates the error for `option`; the message should name it. */
  constructor(option: string, message: string) {
    super(message);
    this.option = option;
  }
}

/**
 * A tokenizer file (`tokenizer.json`, `tokenizer_config.json`) that is empty, too large, not
 * JSON, or not a tokenizer. `file` names it.
 *
 * @example
 * ```ts
 * import { TokenizerError } from "@mamba/mamba";
 * const e = new TokenizerError("models/x/tokenizer.json", "the file is empty");
 * console.log(e.file, e instanceof Error); // "models/x/tokenizer.json" true
 * ```
 */
export class TokenizerError extends MambaError {
  /** The file (path or URL) at fault. */
  readonly file: string;
  /** Creates the error for `file`; the message is prefixed with it. */
  constructor(file: string, message: string, options?: ErrorOptions) {
    super(`${file}: ${message}`, options);
    this.file = file;
  }
}

/**
 * A backend that cannot run here (no WebGPU adapter, a limit too small, a lost device).
 *
 * @example
 * ```ts
 * import { BackendError } from "@mamba/mamba";
 * console.log(new BackendError("no WebGPU adapter").name); // "BackendError"
 * ```
 */
export class BackendError extends MambaError {}

/**
 * The GPU device went away while a model was using it (driver reset, GPU removed or hung, the
 * device destroyed): the weights and every state held on it are gone. A model loaded with
 * `backend: "auto"` (or a list of backends) moves to the next backend by itself; states whose
 * host copy was up to date move with it, the others cannot be recovered.
 *
 * @example
 * ```ts
 * import { DeviceLostError } from "@mamba/mamba";
 * const e = new DeviceLostError("WebGPU device lost (unknown): GPU hung");
 * console.log(e instanceof Error, e.name); // true "DeviceLostError"
 * ```
 */
export class DeviceLostError extends BackendError {}
