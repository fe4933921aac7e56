/** Helpers shared by the tokenizer, generation and CLI tests. */

import { byteLevelTokenizerJSON } from "../src/tokenizer.ts";

/** The shared folder: `$MAMBA_SHARED`, or `../shared` beside the repo root. */
export function sharedDir(): string {
  const env = Deno.env.get("MAMBA_SHARED");
  if (env) return env;
  return new URL("../../shared", import.meta.url).pathname;
}

/** Path of the GPT-NeoX-20B `tokenizer.json` in the shared folder. */
export function neoxTokenizerPath(): string {
  return `${sharedDir()}/data/gpt-neox-20b/tokenizer.json`;
}

/** Root of the repository. */
export const REPO_ROOT: string = new URL("..", import.meta.url).pathname;

/** Writes the byte-level tokenizer into a new temporary directory and returns its path. */
export async function byteTokenizerDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "mamba-bytetok-" });
  await Deno.writeTextFile(`${dir}/tokenizer.json`, JSON.stringify(byteLevelTokenizerJSON()));
  return dir;
}

/** Whether `path` exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
