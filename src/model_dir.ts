/**
 * Where a model's files are: a directory path or URL, or a Hugging Face Hub id resolved to a
 * snapshot of the local cache (downloaded first when missing). The one step `loadModel` and each
 * model class's `load` share before they read `config.json`.
 *
 * @module
 */

import { ConfigError, MambaError } from "./errors.ts";
import { type HubOptions, hubSnapshot, isHubModel } from "./hub.ts";
import { dirUrl } from "./model.ts";
import { exists, readBytes } from "./weights.ts";

/** A resolved model directory. */
export interface ModelDir {
  /** The directory, as a URL ending in `/`. */
  readonly dir: URL;
  /** For a Hub model: a directory holding the tokenizer.json to use, when one could be had. */
  readonly tokenizerDir?: string;
}

/**
 * Resolves a directory path or URL, or an `org/name` Hub id that is not a local path (see
 * {@link HubOptions} for the cache and the download).
 *
 * @throws {HubError} when a Hub id's files cannot be had.
 */
export async function resolveModelDir(
  dirOrHubId: string | URL,
  options: HubOptions = {},
): Promise<ModelDir> {
  if (typeof dirOrHubId === "string" && await isHubModel(dirOrHubId)) {
    const snap = await hubSnapshot(dirOrHubId, options);
    return { dir: dirUrl(snap.dir), tokenizerDir: snap.tokenizerDir };
  }
  return { dir: dirUrl(dirOrHubId) };
}

/**
 * Reads and parses `config.json` of a model directory (a URL ending in `/`).
 *
 * @throws {MambaError} when there is none, {@link ConfigError} when it is not JSON.
 */
export async function readConfigJson(base: URL): Promise<unknown> {
  const configUrl = new URL("config.json", base);
  if (!(await exists(configUrl))) throw new MambaError(`no config.json in ${base.href}`);
  try {
    return JSON.parse(new TextDecoder().decode(await readBytes(configUrl)));
  } catch (e) {
    throw new ConfigError("(root)", `cannot parse ${configUrl.href}: ${(e as Error).message}`);
  }
}
