/**
 * The server's settings, from command-line flags (`deno task serve`) or environment variables
 * (`deno serve serve.ts`), and starting a server from them.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { BackendName } from "../backend.ts";
import type { BackendPreference } from "../backends/registry.ts";
import { ConfigError } from "../errors.ts";
import { MambaLM } from "../model.ts";
import { type CompletionServer, createServer } from "./server.ts";
import { DirectorySessionStore } from "./sessions.ts";

/** Everything a server is started with. */
export interface ServeConfig {
  /** Model directory (or URL). */
  model: string;
  /** Name clients use; default the directory's base name. */
  modelName?: string;
  /** Port (`deno task serve` only). */
  port: number;
  /** Interface (`deno task serve` only). */
  hostname: string;
  /** Backend preference. */
  backend: BackendPreference;
  /** Threads of the `wasm` backend (default: every core). */
  threads?: number;
  /** Most sequences decoded together. */
  maxBatch: number;
  /** Most waiting requests. */
  maxQueue?: number;
  /** Largest `max_tokens`. */
  maxTokensCap: number;
  /** Tokens per decode block. */
  blockSize: number;
  /** Prompt tokens prefilled between decode blocks. */
  prefillChunk: number;
  /** Session directory. */
  sessionDir: string;
  /** Bytes of session state kept in memory. */
  sessionBytes: number;
}

/** Usage text of `deno task serve`. */
export const USAGE = `Usage: deno task serve --model DIR [options]

An OpenAI-compatible completions server (POST /v1/completions, GET /v1/models, /health,
/metrics; sessions: POST /v1/sessions/{id}/fork, DELETE /v1/sessions/{id}).

  --model DIR            model directory (config.json, weights, tokenizer.json)   [MAMBA_MODEL]
  --model-name NAME      model id for clients (default: the directory's name)     [MAMBA_MODEL_NAME]
  --port N               default 8000                                             [PORT]
  --hostname H           default 127.0.0.1                                        [MAMBA_HOSTNAME]
  --backend B            auto | webgpu | wasm | ref, or a list a,b (default auto) [MAMBA_BACKEND]
  --threads N            threads of the wasm backend (default: every core)        [MAMBA_THREADS]
  --max-batch N          sequences decoded together (default 16)                  [MAMBA_MAX_BATCH]
  --max-queue N          requests waiting beyond those, then 429 (default 4×batch) [MAMBA_MAX_QUEUE]
  --max-tokens-cap N     largest max_tokens (default 4096)                        [MAMBA_MAX_TOKENS_CAP]
  --block N              tokens per decode block; new requests join between (16)  [MAMBA_BLOCK]
  --prefill-chunk N      prompt tokens prefilled between decode blocks (512)      [MAMBA_PREFILL_CHUNK]
  --session-dir DIR      where sessions persist (default ~/.cache/mamba/sessions) [MAMBA_SESSION_DIR]
  --session-bytes N      session state kept in memory (default 268435456)         [MAMBA_SESSION_BYTES]
  --help
`;

/** A bad flag or variable. */
export class ServeUsageError extends Error {}

function int(name: string, v: string | undefined, dflt: number, min = 1): number {
  if (v === undefined || v === "") return dflt;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) {
    throw new ServeUsageError(`${name} must be an integer ≥ ${min}, got "${v}"`);
  }
  return n;
}

function backend(v: string | undefined): BackendPreference {
  const names = ["ref", "wasm", "webgpu"];
  const s = v ?? "auto";
  if (s === "auto") return "auto";
  const list = s.split(",").map((x) => x.trim());
  for (const x of list) {
    if (!names.includes(x)) {
      throw new ServeUsageError(`backend must be auto, webgpu, wasm, ref or a list, got "${s}"`);
    }
  }
  return list.length === 1 ? list[0] as BackendName : list as BackendName[];
}

function defaultSessionDir(): string {
  const cache = Deno.env.get("XDG_CACHE_HOME") ?? `${Deno.env.get("HOME") ?? "."}/.cache`;
  return `${cache}/mamba/sessions`;
}

function build(get: (flag: string, env: string) => string | undefined): ServeConfig {
  const model = get("model", "MAMBA_MODEL");
  if (!model) throw new ServeUsageError("a model is required (--model DIR or MAMBA_MODEL)");
  return {
    model,
    modelName: get("model-name", "MAMBA_MODEL_NAME"),
    port: int("port", get("port", "PORT"), 8000, 0),
    hostname: get("hostname", "MAMBA_HOSTNAME") ?? "127.0.0.1",
    backend: backend(get("backend", "MAMBA_BACKEND")),
    threads: get("threads", "MAMBA_THREADS") === undefined
      ? undefined
      : int("threads", get("threads", "MAMBA_THREADS"), 1),
    maxBatch: int("max-batch", get("max-batch", "MAMBA_MAX_BATCH"), 16),
    maxQueue: get("max-queue", "MAMBA_MAX_QUEUE") === undefined
      ? undefined
      : int("max-queue", get("max-queue", "MAMBA_MAX_QUEUE"), 0, 0),
    maxTokensCap: int("max-tokens-cap", get("max-tokens-cap", "MAMBA_MAX_TOKENS_CAP"), 4096),
    blockSize: int("block", get("block", "MAMBA_BLOCK"), 16),
    prefillChunk: int("prefill-chunk", get("prefill-chunk", "MAMBA_PREFILL_CHUNK"), 512),
    sessionDir: get("session-dir", "MAMBA_SESSION_DIR") ?? defaultSessionDir(),
    sessionBytes: int("session-bytes", get("session-bytes", "MAMBA_SESSION_BYTES"), 2 ** 28, 0),
  };
}

/** Settings from flags (falling back to the environment), or `"help"`. */
export function configFromArgs(args: string[]): ServeConfig | "help" {
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args,
      strict: true,
      options: {
        model: { type: "string" },
        "model-name": { type: "string" },
        port: { type: "string" },
        hostname: { type: "string" },
        backend: { type: "string" },
        threads: { type: "string" },
        "max-batch": { type: "string" },
        "max-queue": { type: "string" },
        "max-tokens-cap": { type: "string" },
        block: { type: "string" },
        "prefill-chunk": { type: "string" },
        "session-dir": { type: "string" },
        "session-bytes": { type: "string" },
        help: { type: "boolean" },
      },
    }).values;
  } catch (e) {
    throw new ServeUsageError((e as Error).message);
  }
  if (values.help) return "help";
  return build((flag, env) => (values[flag] as string | undefined) ?? Deno.env.get(env));
}

/** Settings from the environment only. */
export function configFromEnv(): ServeConfig {
  return build((_flag, env) => Deno.env.get(env));
}

/**
 * Loads the model and makes the handler.
 *
 * @throws {ConfigError} for a model that is not a Mamba model: the scheduler drives a
 *   {@link MambaLM} (batch rows of a fixed-size state), not a `GptNeoXLM` and its KV cache.
 */
export async function startServer(
  cfg: ServeConfig,
): Promise<{ lm: MambaLM; server: CompletionServer }> {
  let lm: MambaLM;
  try {
    lm = await MambaLM.load(cfg.model, {
      backend: cfg.backend,
      wasm: cfg.threads ? { threads: cfg.threads } : undefined,
    });
  } catch (e) {
    if (!(e instanceof ConfigError) || e.field !== "model_type") throw e;
    throw new ConfigError(
      "model_type",
      `the server runs Mamba models only (model_type mamba, mamba2 or mamba_ssm; GPT-NeoX ` +
        `models load as a GptNeoXLM, which it does not serve): ${cfg.model}: ` +
        e.message.replace(/^config\.json: model_type: /, ""),
    );
  }
  const modelName = cfg.modelName ??
    (cfg.model.replace(/\/+$/, "").split("/").pop() || "mamba");
  const server = createServer(lm, {
    modelName,
    maxBatch: cfg.maxBatch,
    maxQueue: cfg.maxQueue,
    maxTokensCap: cfg.maxTokensCap,
    blockSize: cfg.blockSize,
    prefillChunk: cfg.prefillChunk,
    sessionStore: new DirectorySessionStore(cfg.sessionDir),
    sessionBytes: cfg.sessionBytes,
  });
  return { lm, server };
}
