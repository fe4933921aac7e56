/**
 * The body of `POST /v1/completions`, read and checked: every field of the OpenAI completions
 * API that the server implements, plus `session`, and a clear 4xx for anything else.
 *
 * @module
 */

import { badField, HttpError } from "./errors.ts";

/** A checked completion request. */
export interface CompletionRequest {
  /** The model asked for (checked against the served one by the caller). */
  model: string | undefined;
  /** The prompt text. */
  prompt: string;
  /** Most tokens to generate. */
  maxTokens: number;
  /** Softmax temperature (0 = greedy). */
  temperature: number;
  /** Nucleus sampling. */
  topP: number;
  /** Top-k (0 = off). */
  topK: number;
  /** Min-p (0 = off). */
  minP: number;
  /** CTRL repetition penalty (1 = off). */
  repetitionPenalty: number;
  /** PRNG seed, or a random one. */
  seed: number | undefined;
  /** Stop strings. */
  stop: string[];
  /** Server-sent events. */
  stream: boolean;
  /** Also a last chunk with `usage` (OpenAI's `stream_options.include_usage`). */
  includeUsage: boolean;
  /** Free-form end-user id (logged nowhere; accepted for compatibility). */
  user: string | undefined;
  /** A session to continue (`string`), or `true` to start one. */
  session: string | true | undefined;
}

/** Limits the checks apply. */
export interface RequestLimits {
  /** Largest `max_tokens`. */
  readonly maxTokensCap: number;
  /** Default `max_tokens` (OpenAI's is 16). */
  readonly defaultMaxTokens: number;
}

/** Reads a body of at most `limit` bytes; 413 past it. */
export async function readBody(req: Request, limit: number): Promise<Uint8Array> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  const tooLarge = () =>
    new HttpError(413, "body_too_large", `the request body is over ${limit} bytes`);
  if (declared > limit) throw tooLarge();
  if (!req.body) return new Uint8Array(0);
  const parts: Uint8Array[] = [];
  let n = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    parts.push(value);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Parses JSON into an object; 400 otherwise. */
export function parseJsonObject(bytes: Uint8Array): Record<string, unknown> {
  let body: unknown;
  try {
    body = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw new HttpError(400, "invalid_json", `the body is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw new HttpError(400, "invalid_json", "the body must be a JSON object");
  }
  return body as Record<string, unknown>;
}

const absent = (v: unknown) => v === undefined || v === null;

function num(
  body: Record<string, unknown>,
  key: string,
  dflt: number,
  ok: (v: number) => boolean,
  rule: string,
): number {
  const v = body[key];
  if (absent(v)) return dflt;
  if (typeof v !== "number" || !Number.isFinite(v) || !ok(v)) {
    throw badField(key, `${key} must be ${rule}, got ${JSON.stringify(v)}`);
  }
  return v;
}

/** Checks a completions body. */
export function parseCompletionRequest(
  body: Record<string, unknown>,
  limits: RequestLimits,
): CompletionRequest {
  const model = body.model;
  if (!absent(model) && typeof model !== "string") {
    throw badField("model", "model must be a string");
  }
  const prompt = body.prompt;
  if (typeof prompt !== "string") {
    throw badField(
      "prompt",
      absent(prompt)
        ? "prompt is required"
        : "prompt must be a string (token-id prompts and several prompts per request are not supported)",
    );
  }
  const cap = limits.maxTokensCap;
  const maxTokens = num(
    body,
    "max_tokens",
    Math.min(limits.defaultMaxTokens, cap),
    (v) => Number.isInteger(v) && v >= 1 && v <= cap,
    `an integer in [1, ${cap}]`,
  );
  const temperature = num(body, "temperature", 1, (v) => v >= 0, "a number ≥ 0 (0 = greedy)");
  const topP = num(body, "top_p", 1, (v) => v > 0 && v <= 1, "a number in (0, 1]");
  const topK = num(body, "top_k", 0, (v) => Number.isInteger(v) && v >= 0, "an integer ≥ 0");
  const minP = num(body, "min_p", 0, (v) => v >= 0 && v <= 1, "a number in [0, 1]");
  const repetitionPenalty = num(body, "repetition_penalty", 1, (v) => v > 0, "a number > 0");
  const seedRaw = body.seed;
  let seed: number | undefined;
  if (!absent(seedRaw)) {
    if (typeof seedRaw !== "number" || !Number.isSafeInteger(seedRaw)) {
      throw badField("seed", `seed must be an integer, got ${JSON.stringify(seedRaw)}`);
    }
    seed = seedRaw;
  }
  let stop: string[] = [];
  const s = body.stop;
  if (typeof s === "string") stop = [s];
  else if (Array.isArray(s)) stop = s;
  else if (!absent(s)) throw badField("stop", "stop must be a string or an array of strings");
  if (stop.length > 16 || stop.some((x) => typeof x !== "string" || x.length === 0)) {
    throw badField("stop", "stop must hold at most 16 non-empty strings");
  }
  const stream = body.stream;
  if (!absent(stream) && typeof stream !== "boolean") {
    throw badField("stream", "stream must be a boolean");
  }
  const so = body.stream_options;
  let includeUsage = false;
  if (!absent(so)) {
    if (typeof so !== "object" || Array.isArray(so)) {
      throw badField("stream_options", "stream_options must be an object");
    }
    includeUsage = (so as Record<string, unknown>).include_usage === true;
  }
  const user = body.user;
  if (!absent(user) && typeof user !== "string") throw badField("user", "user must be a string");
  const session = body.session;
  if (!absent(session) && session !== true && typeof session !== "string") {
    throw badField("session", "session must be a session id (a string), or true to start one");
  }
  // Fields of the API that this server does not implement: refuse rather than ignore.
  const unsupported: [string, (v: unknown) => boolean][] = [
    ["n", (v) => v === 1],
    ["best_of", (v) => v === 1],
    ["echo", (v) => v === false],
    ["logprobs", () => false],
    ["suffix", (v) => v === ""],
    ["presence_penalty", (v) => v === 0],
    ["frequency_penalty", (v) => v === 0],
    ["logit_bias", (v) => typeof v === "object" && v !== null && Object.keys(v).length === 0],
  ];
  for (const [key, ok] of unsupported) {
    if (!absent(body[key]) && !ok(body[key])) {
      throw badField(key, `${key} is not supported by this server`);
    }
  }
  return {
    model: model as string | undefined,
    prompt,
    maxTokens,
    temperature,
    topP,
    topK,
    minP,
    repetitionPenalty,
    seed,
    stop,
    stream: stream === true,
    includeUsage,
    user: user as string | undefined,
    session: session as string | true | undefined,
  };
}
