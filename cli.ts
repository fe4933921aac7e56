/**
 * Command-line text generation with a Mamba model, or a GPT-NeoX (Pythia) one: `loadModel`
 * picks the class from `config.json`.
 *
 * ```sh
 * deno task generate --model models/demo --prompt "Once upon a time" --temperature 0.8
 * tail -f app.log | deno run -A cli.ts --model DIR --follow --stop $'\n' --top-k 1
 * ```
 *
 * Run with `--help` for every option. Exit codes: 0 success, 1 runtime error, 2 usage
 * error (bad flag, missing model directory, unwritable output path), 130 interrupted (Ctrl-C).
 *
 * @example
 * ```ts ignore
 * import { main } from "@mamba/mamba/cli";
 * const code = await main(["--model", "models/demo", "--prompt", "Hello", "--top-k", "1"]);
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { BackendChoice } from "./mod.ts";
import type { GenerateOptions, InferenceStateLike, StepModel } from "./src/generate.ts";
import { generate } from "./src/generate.ts";
import { SamplingOptionsError, validateSamplingOptions } from "./src/sampling.ts";
import { type TextTokenizer, Tokenizer } from "./src/tokenizer.ts";
import { isHubModel } from "./src/hub.ts";
import { downloadReporter } from "./src/progress_bar.ts";

const HELP = `Generate text with a Mamba model (or a GPT-NeoX / Pythia one, for comparison).

Usage:
  deno task generate --model DIR --prompt "TEXT" [options]
  deno run -A cli.ts --model DIR (--prompt TEXT | --prompt-ids IDS | --stdin | --follow) [options]

Input (exactly one):
  --prompt TEXT            continue TEXT; the output streams to stdout
  --prompt-ids IDS         continue these comma-separated token ids (no tokenizer needed)
  --stdin                  read prompts from stdin, one per line; one completion per line
                           (an empty line gives an empty completion)
  --follow                 treat stdin as one endless text: feed every line into one state
                           and print a predicted continuation after each line; the state
                           holds only the input (see --feed-generated)

Model:
  --model DIR|ORG/NAME     model directory (config.json, model.safetensors[, tokenizer.json]),
                           or a Hugging Face Hub id such as state-spaces/mamba-130m or
                           EleutherAI/pythia-160m (a GPT-NeoX model: its state is a KV cache
                           that grows with the text, up to max_position_embeddings): files come
                           from the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
                           ~/.cache/huggingface/hub), downloaded first when missing ($HF_ENDPOINT,
                           $HF_TOKEN); a progress bar on stderr when it is a terminal
  --revision REV           Hub id: branch, tag or commit (default main)
  --offline                Hub id: use the cache only, never the network (or HF_HUB_OFFLINE=1)
  --tokenizer PATH         tokenizer.json or its directory (default: the model's)
  --backend NAME           ref | wasm | webgpu | auto (default auto)

State:
  --load-state FILE        start from a state saved with --save-state
  --save-state FILE        save the state at the end (with --prompt, --prompt-ids, --follow)
  --feed-generated         --follow: feed the continuations into the state too (chat-like)

Sampling (mamba_ssm semantics):
  --max-new-tokens N       tokens to generate per prompt/line (default 128)
  --temperature T          softmax temperature, 0 = greedy (default 1)
  --top-k K                keep the K most likely tokens, 0 = off, 1 = greedy (default 0)
  --top-p P                nucleus sampling, in (0, 1], 1 = off (default 1)
  --min-p P                keep tokens with p >= P * p_max, in [0, 1], 0 = off (default 0)
  --repetition-penalty R   CTRL penalty over prompt + output, > 0, 1 = off (default 1)
  --seed N                 PRNG seed (default: random; printed with --verbose)
  --greedy                 same as --top-k 1
  --stop STR               stop when the output contains STR (repeatable; not printed)
  --no-eos                 do not stop at the end-of-text token

Output:
  --json                   one JSON object per token: {"id":..,"text":..}; with --stdin and
                           --follow also "seq": the input line's index (from 0), and after
                           each input line (an empty one too) {"seq":..,"done":true,"tokens":N}
  --quiet                  no statistics on stderr
  --verbose                also print the model, backend and seed on stderr
  -h, --help               this help

Numbers may be negative as separate words (--seed -5). Statistics (prompt and generation
speed in tokens/s) go to stderr. Ctrl-C stops the generation (the state is still saved) and
exits with 130; a second Ctrl-C exits at once. Output paths are checked before any work.
Exit codes: 0 ok, 1 runtime error, 2 usage error, 130 interrupted.
`;

/** A usage error: message printed with a hint, exit code 2. */
class UsageError extends Error {}

const enc = new TextEncoder();

async function writeAll(w: { write(p: Uint8Array): Promise<number> }, s: string): Promise<void> {
  if (s.length === 0) return;
  const bytes = enc.encode(s);
  let o = 0;
  while (o < bytes.length) o += await w.write(bytes.subarray(o));
}

const out = (s: string) => writeAll(Deno.stdout, s);
const err = (s: string) => writeAll(Deno.stderr, s);

/** Lines of a byte stream as they arrive (without the line break; a final unterminated line too). */
async function* readLines(
  stream: ReadableStream<Uint8Array>,
): AsyncGenerator<{ line: string; newline: boolean }> {
  let buf = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let i: number;
    while ((i = buf.indexOf("\n")) >= 0) {
      yield { line: buf.slice(0, i), newline: true };
      buf = buf.slice(i + 1);
    }
  }
  if (buf.length > 0) yield { line: buf, newline: false };
}

/**
 * The items of `it` until `signal` aborts: a Ctrl-C while the CLI waits for the next input line
 * ends the loop at once (the read left pending is dropped when the process exits).
 */
async function* untilAborted<T>(it: AsyncGenerator<T>, signal: AbortSignal): AsyncGenerator<T> {
  const aborted = new Promise<IteratorResult<T>>((resolve) => {
    if (signal.aborted) resolve({ done: true, value: undefined });
    signal.addEventListener("abort", () => resolve({ done: true, value: undefined }), {
      once: true,
    });
  });
  for (;;) {
    const r = await Promise.race([it.next(), aborted]);
    if (r.done) return;
    yield r.value;
  }
}

function parseNumber(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (v.trim() === "" || Number.isNaN(n)) {
    throw new UsageError(`--${name} needs a number, got "${v}"`);
  }
  return n;
}

function parseIds(v: string): number[] {
  const parts = v.split(/[\s,]+/).filter((p) => p.length > 0);
  return parts.map((p) => {
    const n = Number(p);
    if (!Number.isInteger(n) || n < 0) throw new UsageError(`--prompt-ids: bad token id "${p}"`);
    return n;
  });
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** Wraps a model: supplies the tokenizer and times prefill / step calls. */
class Timed<S extends InferenceStateLike> implements StepModel<S> {
  readonly config: { readonly vocabSize: number; readonly paddedVocabSize: number };
  readonly tokenizer: TextTokenizer | undefined;
  prefillTokens = 0;
  prefillMs = 0;
  steps = 0;
  stepMs = 0;
  #inner: StepModel<S>;

  constructor(inner: StepModel<S>, tokenizer: TextTokenizer | undefined) {
    this.#inner = inner;
    this.config = inner.config;
    this.tokenizer = tokenizer;
  }

  createState(batch?: number): S {
    return this.#inner.createState(batch);
  }

  get prefillChunkTokens(): number | undefined {
    return this.#inner.prefillChunkTokens;
  }

  async prefill(state: S, ids: number[][]): Promise<Float32Array> {
    const t0 = performance.now();
    const r = await this.#inner.prefill(state, ids);
    this.prefillMs += performance.now() - t0;
    for (const row of ids) this.prefillTokens += row.length;
    return r;
  }

  async step(state: S, tokens: number[]): Promise<Float32Array> {
    const t0 = performance.now();
    const r = await this.#inner.step(state, tokens);
    this.stepMs += performance.now() - t0;
    this.steps++;
    return r;
  }
}

function rate(n: number, ms: number): string {
  return ms > 0 ? `${(n / (ms / 1000)).toFixed(1)} tok/s` : "- tok/s";
}

/**
 * Runs the CLI with the given arguments and returns the process exit code (0 ok, 1 runtime
 * error, 2 usage error). Output goes to stdout, statistics and errors to stderr.
 *
 * @param args Command-line arguments (without the program name).
 * @returns The exit code.
 *
 * @example
 * ```ts ignore
 * import { main } from "./cli.ts";
 * Deno.exit(await main(["--model", "models/demo", "--prompt", "Hi", "--max-new-tokens", "20"]));
 * ```
 */
export async function main(args: string[]): Promise<number> {
  try {
    return await run(args);
  } catch (e) {
    if (e instanceof UsageError) {
      await err(`error: ${e.message}\n(run with --help for usage)\n`);
      return 2;
    }
    if (e instanceof Deno.errors.BrokenPipe) return 0;
    await err(`error: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}

/** Options that take a value (every other flag is a boolean). */
const VALUE_OPTIONS = new Set([
  "model",
  "revision",
  "tokenizer",
  "backend",
  "prompt",
  "prompt-ids",
  "load-state",
  "save-state",
  "max-new-tokens",
  "temperature",
  "top-k",
  "top-p",
  "min-p",
  "repetition-penalty",
  "seed",
  "stop",
]);

/**
 * `--seed -5` → `--seed=-5`: node's parseArgs refuses a value that starts with "-" as
 * ambiguous, so a negative number given as its own word would never reach the range checks.
 * Only words that read as numbers are joined, so `--prompt --json` stays an error.
 */
function joinNegativeValues(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    const next = args[i + 1];
    if (a === "--") {
      out.push(...args.slice(i)); // the end of the options: left as given
      break;
    }
    const negativeValue = a.startsWith("--") && !a.includes("=") && next !== undefined &&
      VALUE_OPTIONS.has(a.slice(2)) && /^-(\d|\.\d|Infinity$|NaN$)/.test(next);
    if (negativeValue) {
      out.push(`${a}=${next}`);
      i++;
    } else {
      out.push(a);
    }
  }
  return out;
}

/**
 * Fails before any work when `path` cannot be written: its directory must exist and take a new
 * file, and the path itself must not be a directory.
 */
async function checkWritable(flag: string, path: string): Promise<void> {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  if (!(await isDir(dir))) throw new UsageError(`${flag}: directory not found: ${dir}`);
  if (await isDir(path)) throw new UsageError(`${flag}: ${path} is a directory`);
  try {
    const probe = await Deno.makeTempFile({ dir, prefix: ".mamba-write-check-" });
    await Deno.remove(probe);
  } catch (e) {
    throw new UsageError(`${flag}: cannot write in ${dir}: ${(e as Error).message}`);
  }
}

/** The command line, parsed (strict: unknown flags throw). */
function parseCli(args: string[]) {
  return parseArgs({
    args,
    strict: true,
    allowPositionals: false,
    options: {
      model: { type: "string" },
      revision: { type: "string" },
      offline: { type: "boolean" },
      tokenizer: { type: "string" },
      backend: { type: "string" },
      prompt: { type: "string" },
      "prompt-ids": { type: "string" },
      stdin: { type: "boolean" },
      follow: { type: "boolean" },
      "load-state": { type: "string" },
      "save-state": { type: "string" },
      "feed-generated": { type: "boolean" },
      "max-new-tokens": { type: "string" },
      temperature: { type: "string" },
      "top-k": { type: "string" },
      "top-p": { type: "string" },
      "min-p": { type: "string" },
      "repetition-penalty": { type: "string" },
      seed: { type: "string" },
      greedy: { type: "boolean" },
      stop: { type: "string", multiple: true },
      "no-eos": { type: "boolean" },
      json: { type: "boolean" },
      quiet: { type: "boolean" },
      verbose: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
}

/** The parsed flags. */
type ParsedValues = ReturnType<typeof parseCli>["values"];

async function run(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseCli(joinNegativeValues(args));
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e));
  }
  const v = parsed.values;
  if (v.help) {
    await out(HELP);
    return 0;
  }

  // ---- validate everything before loading anything ----
  const modes = [
    v.prompt !== undefined,
    v["prompt-ids"] !== undefined,
    v.stdin === true,
    v.follow === true,
  ].filter(Boolean).length;
  if (modes !== 1) {
    throw new UsageError("give exactly one of --prompt, --prompt-ids, --stdin, --follow");
  }
  if (v.model === undefined) throw new UsageError("--model DIR is required");
  const backend = v.backend ?? "auto";
  if (!["ref", "wasm", "webgpu", "auto"].includes(backend)) {
    throw new UsageError(`--backend must be ref, wasm, webgpu or auto, got "${backend}"`);
  }
  if (v.stdin && v["save-state"] !== undefined) {
    throw new UsageError("--save-state does not go with --stdin (each line starts afresh)");
  }
  if (v["feed-generated"] && !v.follow) throw new UsageError("--feed-generated needs --follow");
  const maxNewTokens = parseNumber("max-new-tokens", v["max-new-tokens"]) ?? 128;
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) {
    throw new UsageError(`--max-new-tokens must be an integer >= 0, got ${maxNewTokens}`);
  }
  const sampling = {
    temperature: parseNumber("temperature", v.temperature),
    topK: v.greedy ? 1 : parseNumber("top-k", v["top-k"]),
    topP: parseNumber("top-p", v["top-p"]),
    minP: parseNumber("min-p", v["min-p"]),
    repetitionPenalty: parseNumber("repetition-penalty", v["repetition-penalty"]),
    seed: parseNumber("seed", v.seed),
  };
  let seed: number;
  try {
    seed = validateSamplingOptions(sampling).seed;
  } catch (e) {
    if (e instanceof SamplingOptionsError) {
      const flag = "--" + e.option.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
      throw new UsageError(`${flag}: ${e.message}`);
    }
    throw e;
  }
  const promptIds = v["prompt-ids"] !== undefined ? parseIds(v["prompt-ids"]) : undefined;
  const hubId = await isHubModel(v.model);
  if (!hubId) {
    if (!(await isDir(v.model))) {
      throw new UsageError(`model directory not found (nor a Hub id org/name): ${v.model}`);
    }
    try {
      await Deno.stat(`${v.model}/config.json`);
    } catch {
      throw new UsageError(`not a model directory (no config.json): ${v.model}`);
    }
  }
  if (!hubId && (v.revision !== undefined || v.offline)) {
    throw new UsageError("--revision and --offline go with a Hub id (--model org/name)");
  }
  if (v["load-state"] !== undefined) {
    try {
      await Deno.stat(v["load-state"]);
    } catch {
      throw new UsageError(`state file not found: ${v["load-state"]}`);
    }
  }
  if (v["save-state"] !== undefined) await checkWritable("--save-state", v["save-state"]);

  // ---- load ----
  const { GptNeoXLM, InferenceState, KvCacheState, loadModel, MambaLM } = await import("./mod.ts");
  let tokenizer: TextTokenizer | undefined;
  if (v.tokenizer !== undefined) {
    tokenizer = await Tokenizer.load(v.tokenizer);
  }
  const t0 = performance.now();
  const lm = await loadModel(v.model, {
    backend: backend as BackendChoice,
    revision: v.revision,
    offline: v.offline || undefined,
    onDownload: v.quiet ? undefined : downloadReporter(),
  });
  tokenizer ??= (lm as { tokenizer?: TextTokenizer }).tokenizer;
  if (tokenizer === undefined && !hubId) {
    try {
      tokenizer = await Tokenizer.load(v.model);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  if (tokenizer === undefined && (promptIds === undefined || v.stop !== undefined || !v.json)) {
    const why = hubId
      ? (lm instanceof MambaLM ? lm.tokenizerError?.message : `${v.model} has no tokenizer.json`)
      : `${v.model} has no tokenizer.json`;
    throw new UsageError(`${why}: pass --tokenizer, or use --prompt-ids with --json`);
  }
  const ctx: Session = { v, tokenizer, t0, seed, sampling, maxNewTokens, promptIds };
  // The rest is the same for every architecture; only the state type differs.
  if (lm instanceof GptNeoXLM) return await session(lm, (b) => KvCacheState.fromBytes(b), ctx);
  return await session(lm, (b) => InferenceState.fromBytes(b), ctx);
}

/** What {@link session} needs from {@link run}. */
interface Session {
  v: ParsedValues;
  tokenizer: TextTokenizer | undefined;
  t0: number;
  seed: number;
  sampling: Parameters<typeof validateSamplingOptions>[0];
  maxNewTokens: number;
  promptIds: number[] | undefined;
}

/** A model the CLI can drive: the generation interface plus a name and a state factory. */
interface CliModel<S extends InferenceStateLike> extends StepModel<S> {
  readonly config: {
    readonly arch: string;
    readonly vocabSize: number;
    readonly paddedVocabSize: number;
  };
  readonly backendName: string;
  createState(batch?: number): S;
}

/** Generation with a loaded model whose states are `S` (saved with `toBytes`). */
async function session<
  S extends { readonly batch: number; clone(): S; toBytes(): Promise<Uint8Array> },
>(
  lm: CliModel<S>,
  fromBytes: (bytes: Uint8Array) => S,
  { v, tokenizer, t0, seed, sampling, maxNewTokens, promptIds }: Session,
): Promise<number> {
  const model = new Timed(lm, tokenizer);
  const loadMs = performance.now() - t0;
  if (v.verbose) {
    await err(
      `model ${v.model} (${lm.config.arch}, vocab ${lm.config.vocabSize}) on ${lm.backendName}, ` +
        `loaded in ${(loadMs / 1000).toFixed(2)} s; seed ${seed}\n`,
    );
  }

  let state: S | undefined;
  if (v["load-state"] !== undefined) {
    state = fromBytes(await Deno.readFile(v["load-state"]));
    if (state.batch !== 1) throw new Error(`the saved state has batch ${state.batch}, need 1`);
  }

  const controller = new AbortController();
  let interrupts = 0;
  const onSigint = () => {
    if (++interrupts > 1) Deno.exit(130);
    controller.abort();
  };
  try {
    Deno.addSignalListener("SIGINT", onSigint);
  } catch {
    // signals unsupported here
  }

  const opts: GenerateOptions<S> = {
    ...sampling,
    seed,
    maxNewTokens,
    stop: v.stop,
    signal: controller.signal,
    ...(v["no-eos"] ? { eosTokenId: null } : {}),
  };
  // Let the SIGINT handler run between lines even when stdin and the backend never wait.
  let lastYield = performance.now();
  const interrupted = async (): Promise<boolean> => {
    if (performance.now() - lastYield > 50) {
      await new Promise((resolve) => setTimeout(resolve, 0));
      lastYield = performance.now();
    }
    return controller.signal.aborted;
  };
  let generated = 0;
  let genMs = 0; // time in generation, without prefill and without waiting for stdin

  /** With --json and line input: the record that closes input line `seq` (one per line). */
  const endOfLine = (seq: number, tokens: number) =>
    out(JSON.stringify({ seq, done: true, tokens }) + "\n");

  /**
   * Streams one generation to stdout; returns the last character printed ("" for none). Only
   * that is kept: an endless stream must not hold its whole text.
   */
  const stream = async (
    prompt: string | number[],
    o: GenerateOptions<S>,
    seq?: number,
  ): Promise<string> => {
    let last = "";
    let tokens = 0;
    const t0 = performance.now();
    const p0 = model.prefillMs;
    for await (const t of generate(model, prompt, o)) {
      generated++;
      tokens++;
      if (t.text.length > 0) last = t.text.slice(-1);
      if (v.json) {
        const rec = seq === undefined
          ? { id: t.id, text: t.text }
          : { id: t.id, text: t.text, seq };
        await out(JSON.stringify(rec) + "\n");
      } else {
        await out(t.text);
      }
    }
    genMs += performance.now() - t0 - (model.prefillMs - p0);
    if (v.json && seq !== undefined) await endOfLine(seq, tokens);
    return last;
  };

  if (v.prompt !== undefined || promptIds !== undefined) {
    let prompt: string | number[] = promptIds ?? v.prompt ?? "";
    if (state === undefined && v["save-state"] !== undefined) {
      // A fresh state that we keep: encode as generate() does for a fresh one.
      state = lm.createState(1);
      if (typeof prompt === "string") prompt = freshPrompt(tokenizer, prompt);
    }
    await stream(prompt, { ...opts, state });
    if (!v.json) await out("\n");
  } else if (v.stdin) {
    let seq = 0;
    for await (const { line } of untilAborted(readLines(Deno.stdin.readable), controller.signal)) {
      if (await interrupted()) break;
      const p = line.endsWith("\r") ? line.slice(0, -1) : line;
      if (p.length === 0) {
        // Empty line: empty completion (still one record, so it can be told from a lost line).
        if (v.json) await endOfLine(seq, 0);
        else await out("\n");
        seq++;
        continue;
      }
      await stream(p, { ...opts, state: state?.clone() }, seq++);
      if (!v.json) await out("\n");
    }
  } else {
    let first = state === undefined;
    state ??= lm.createState(1);
    let seq = 0;
    const lines = untilAborted(readLines(Deno.stdin.readable), controller.signal);
    for await (const { line, newline } of lines) {
      if (await interrupted()) break;
      const chunk = newline ? line + "\n" : line;
      if (chunk.length === 0) continue;
      const prompt = first ? freshPrompt(tokenizer, chunk) : chunk;
      first = false;
      const last = await stream(prompt, {
        ...opts,
        state,
        feedGenerated: v["feed-generated"] === true,
      }, seq++);
      if (!v.json && last !== "" && last !== "\n") await out("\n");
    }
  }

  try {
    Deno.removeSignalListener("SIGINT", onSigint);
  } catch {
    // ignore
  }
  if (v["save-state"] !== undefined && state !== undefined) {
    await Deno.writeFile(v["save-state"], await state.toBytes());
  }
  const interruptedBySignal = controller.signal.aborted;
  if (!v.quiet) {
    await err(
      `[prompt ${model.prefillTokens} tok in ${(model.prefillMs / 1000).toFixed(2)} s, ` +
        `${rate(model.prefillTokens, model.prefillMs)}; generated ${generated} tok in ` +
        `${(genMs / 1000).toFixed(2)} s, ${rate(generated, genMs)}]` +
        (interruptedBySignal ? " (interrupted)" : "") + "\n",
    );
  }
  // 128 + SIGINT, the shell's convention, so scripts can tell a cut-short run from a full one.
  return interruptedBySignal ? 130 : 0;
}

/**
 * Ids of the first text fed into a fresh state that the CLI keeps (generate() cannot tell
 * that a given state is fresh): with the tokenizer's special tokens, and the end-of-text
 * token for an empty prompt.
 */
function freshPrompt(tokenizer: TextTokenizer | undefined, p: string): string | number[] {
  if (tokenizer === undefined) return p;
  const ids = tokenizer.encode(p, { addSpecialTokens: true });
  if (ids.length > 0) return ids;
  if (tokenizer.eosTokenId !== undefined) return [tokenizer.eosTokenId];
  throw new UsageError("empty prompt and the tokenizer has no end-of-text token");
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
