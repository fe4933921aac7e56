/**
 * An OpenAI-compatible completions server over one {@link MambaLM}: the routes, request checks,
 * server-sent events and sessions. Decoding is shared by all requests through the
 * {@link Scheduler} (continuous batching).
 *
 * Routes: `POST /v1/completions`, `GET /v1/models`, `GET /health`, `GET /metrics`,
 * `POST /v1/sessions/{id}/fork`, `DELETE /v1/sessions/{id}`.
 *
 * Sessions: `"session": true` starts one (the response's `session` field names it),
 * `"session": "<id>"` continues one. A session's state holds the token ids of all its prompts
 * and completions: the new prompt's text is tokenized on its own (without the tokenizer's
 * special tokens, which only a fresh state gets) and fed after them. A final end-of-text token
 * is not fed; on a stop string, the tokens up to the one that completed it are (the state
 * holds the stop string, the text returned does not). An aborted request leaves its session as
 * it was. The repetition penalty looks at the request's own prompt and completion only.
 *
 * @module
 */

import type { MambaLM } from "../model.ts";
import { Sampler } from "../sampling.ts";
import { stateLayout } from "../state.ts";
import { HttpError } from "./errors.ts";
import { Metrics } from "./metrics.ts";
import { parseCompletionRequest, parseJsonObject, readBody } from "./request.ts";
import { type JobResult, QueueFullError, Scheduler } from "./scheduler.ts";
import { SESSION_ID, Sessions, type SessionStore } from "./sessions.ts";

/** Options of {@link createServer}. */
export interface ServerOptions {
  /** The model id clients give and `/v1/models` lists. */
  modelName: string;
  /** Most sequences decoded together. Default 16. */
  maxBatch?: number;
  /** Most requests waiting for a batch slot; more get 429. Default 4 × maxBatch. */
  maxQueue?: number;
  /** Largest `max_tokens`. Default 4096. */
  maxTokensCap?: number;
  /** Tokens per fused decode block (new requests join between blocks). Default 16. */
  blockSize?: number;
  /** Most prompt tokens prefilled between two decode blocks while others decode. Default 512. */
  prefillChunk?: number;
  /** Where sessions persist. */
  sessionStore: SessionStore;
  /** Bytes of session state kept in memory. Default 256 MiB. */
  sessionBytes?: number;
  /** Largest request body. Default 1 MiB. */
  maxBodyBytes?: number;
}

/** A running server's request handler (for `Deno.serve` or `deno serve`). */
export interface CompletionServer {
  /** Answers one HTTP request. */
  fetch(req: Request): Promise<Response>;
  /** The counters behind `/metrics`. */
  readonly metrics: Metrics;
  /** The batching scheduler. */
  readonly scheduler: Scheduler;
  /** Stops taking requests. */
  close(): void;
}

const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  "connection": "keep-alive",
};

/** Makes the handler of a completions server over `lm` (which needs a tokenizer). */
export function createServer(lm: MambaLM, options: ServerOptions): CompletionServer {
  const tokenizer = lm.tokenizer;
  if (!tokenizer) throw new Error("the server needs a model with a tokenizer.json");
  const maxBatch = options.maxBatch ?? 16;
  const metrics = new Metrics();
  const scheduler = new Scheduler(lm, {
    maxBatch,
    maxQueue: options.maxQueue ?? 4 * maxBatch,
    blockSize: options.blockSize ?? 16,
    prefillChunk: options.prefillChunk,
    metrics,
  });
  const sessions = new Sessions(options.sessionStore, options.sessionBytes ?? 256 * 2 ** 20);
  const limits = { maxTokensCap: options.maxTokensCap ?? 4096, defaultMaxTokens: 16 };
  const maxBody = options.maxBodyBytes ?? 2 ** 20;
  const created = Math.floor(Date.now() / 1000);
  const name = options.modelName;

  async function completions(req: Request): Promise<Response> {
    const r = parseCompletionRequest(parseJsonObject(await readBody(req, maxBody)), limits);
    if (r.model !== undefined && r.model !== name) {
      throw new HttpError(404, "model_not_found", `model ${r.model} is not served here: ${name}`);
    }
    let sessionId: string | undefined;
    if (r.session === true) sessionId = sessions.newId();
    else if (r.session !== undefined) {
      if (!SESSION_ID.test(r.session)) {
        throw new HttpError(400, "invalid_value", "session ids are 1-128 of A-Z a-z 0-9 _ . -");
      }
      sessionId = r.session;
    }
    if (sessionId !== undefined && !sessions.acquire(sessionId)) {
      throw new HttpError(409, "session_busy", `session ${sessionId} is running another request`);
    }
    let handedOver = false;
    try {
      const start = r.session === true || sessionId === undefined
        ? undefined
        : await sessions.get(sessionId);
      if (sessionId !== undefined && r.session !== true && !start) {
        throw new HttpError(404, "session_not_found", `no session ${sessionId}`, "session");
      }
      if (start && JSON.stringify(start.layout) !== JSON.stringify(stateLayout(lm.config, 1))) {
        throw new HttpError(
          409,
          "session_incompatible",
          `session ${sessionId} holds the state of another model`,
          "session",
        );
      }
      const ids = tokenizer!.encode(r.prompt, { addSpecialTokens: start === undefined });
      if (ids.length === 0) {
        if (start) throw new HttpError(400, "invalid_value", "prompt is empty", "prompt");
        if (tokenizer!.eosTokenId === undefined) {
          throw new HttpError(400, "invalid_value", "prompt is empty", "prompt");
        }
        ids.push(tokenizer!.eosTokenId);
      }
      const V = lm.config.paddedVocabSize;
      if (ids.some((id) => id >= V)) {
        throw new HttpError(400, "invalid_value", "the prompt has ids outside the model", "prompt");
      }
      const sampler = new Sampler({
        temperature: r.temperature,
        topK: r.topK,
        topP: r.topP,
        minP: r.minP,
        repetitionPenalty: r.repetitionPenalty,
        seed: r.seed,
        vocabSize: lm.config.vocabSize,
      });
      const id = `cmpl-${crypto.randomUUID()}`;
      const base = { id, object: "text_completion", created: Math.floor(Date.now() / 1000) };
      const run = (signal: AbortSignal, onText?: (t: string) => void) =>
        scheduler.submit({
          ids,
          state: start,
          sampler,
          maxTokens: r.maxTokens,
          eos: tokenizer!.eosTokenId,
          stop: r.stop,
          keepState: sessionId !== undefined,
          signal,
          onText,
        });
      const finish = async (res: JobResult) => {
        if (sessionId !== undefined && res.state) await sessions.put(sessionId, res.state);
      };
      const usage = (res: JobResult) => ({
        prompt_tokens: ids.length,
        completion_tokens: res.completionTokens,
        total_tokens: ids.length + res.completionTokens,
      });
      const extra = sessionId !== undefined ? { session: sessionId } : {};
      if (!r.stream) {
        let res: JobResult;
        try {
          res = await run(req.signal);
        } catch (e) {
          if (e instanceof QueueFullError) throw new HttpError(429, "queue_full", e.message);
          throw e;
        }
        await finish(res);
        return Response.json({
          ...base,
          model: name,
          choices: [{ text: res.text, index: 0, logprobs: null, finish_reason: res.finishReason }],
          usage: usage(res),
          ...extra,
        });
      }
      // Streaming: chunks as text arrives; a client that goes away aborts the request.
      const abort = new AbortController();
      const onAbort = () => abort.abort();
      req.signal.addEventListener("abort", onAbort, { once: true });
      const enc = new TextEncoder();
      let ctl!: ReadableStreamDefaultController<Uint8Array>;
      let open = true;
      const send = (obj: unknown) => {
        if (open) ctl.enqueue(enc.encode(`data: ${JSON.stringify(obj)}\n\n`));
      };
      const chunk = (text: string, finishReason: string | null) => ({
        ...base,
        model: name,
        choices: [{ text, index: 0, logprobs: null, finish_reason: finishReason }],
        ...extra,
      });
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          ctl = c;
        },
        cancel() {
          open = false;
          abort.abort();
        },
      });
      let job: Promise<JobResult>;
      try {
        job = run(abort.signal, (t) => send(chunk(t, null)));
      } catch (e) {
        if (e instanceof QueueFullError) throw new HttpError(429, "queue_full", e.message);
        throw e;
      }
      handedOver = true;
      job.then(async (res) => {
        if (res.finishReason === "abort") return;
        await finish(res);
        send({ ...chunk("", res.finishReason), usage: usage(res) });
        if (r.includeUsage) {
          send({ ...base, model: name, choices: [], usage: usage(res), ...extra });
        }
        if (open) ctl.enqueue(enc.encode("data: [DONE]\n\n"));
      }).catch((e) => {
        send({ error: { message: String((e as Error)?.message ?? e), type: "server_error" } });
        metrics.request(500);
      }).finally(() => {
        req.signal.removeEventListener("abort", onAbort);
        if (sessionId !== undefined) sessions.release(sessionId);
        if (open) ctl.close();
        open = false;
      });
      return new Response(body, { headers: SSE_HEADERS });
    } finally {
      if (!handedOver && sessionId !== undefined) sessions.release(sessionId);
    }
  }

  async function session(req: Request, id: string, action: string | undefined) {
    if (!SESSION_ID.test(id)) throw new HttpError(404, "session_not_found", `no session ${id}`);
    if (req.method === "DELETE" && action === undefined) {
      if (!sessions.acquire(id)) {
        throw new HttpError(409, "session_busy", `session ${id} is running a request`);
      }
      try {
        if (!(await sessions.delete(id))) {
          throw new HttpError(404, "session_not_found", `no session ${id}`);
        }
      } finally {
        sessions.release(id);
      }
      return Response.json({ id, object: "session", deleted: true });
    }
    if (req.method === "POST" && action === "fork") {
      const bytes = await readBody(req, maxBody);
      let to = sessions.newId();
      if (bytes.length) {
        const body = parseJsonObject(bytes);
        if (body.id !== undefined) {
          if (typeof body.id !== "string" || !SESSION_ID.test(body.id)) {
            throw new HttpError(400, "invalid_value", "id must be a session id", "id");
          }
          if (await sessions.has(body.id)) {
            throw new HttpError(409, "session_exists", `session ${body.id} exists`, "id");
          }
          to = body.id;
        }
      }
      if (!(await sessions.fork(id, to))) {
        throw new HttpError(404, "session_not_found", `no session ${id}`);
      }
      return Response.json({ id: to, object: "session", forked_from: id });
    }
    throw new HttpError(405, "method_not_allowed", `${req.method} is not allowed here`);
  }

  async function route(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname.replace(/\/+$/, "") || "/";
    const only = (method: string) => {
      if (req.method !== method) {
        throw new HttpError(405, "method_not_allowed", `${path} takes ${method}`);
      }
    };
    if (path === "/v1/completions") {
      only("POST");
      return await completions(req);
    }
    if (path === "/v1/models") {
      only("GET");
      return Response.json({
        object: "list",
        data: [{ id: name, object: "model", created, owned_by: "mamba" }],
      });
    }
    if (path === "/health") {
      only("GET");
      return Response.json({
        status: "ok",
        model: name,
        backend: lm.backendName,
        active: scheduler.active,
        queued: scheduler.queued,
      });
    }
    if (path === "/metrics") {
      only("GET");
      const text = metrics.render({
        active: scheduler.active,
        queued: scheduler.queued,
        maxBatch,
        sessionsInMemory: sessions.inMemory,
        sessionBytes: sessions.bytes,
      });
      return new Response(text, { headers: { "content-type": "text/plain; version=0.0.4" } });
    }
    const m = path.match(/^\/v1\/sessions\/([^/]+)(?:\/([^/]+))?$/);
    if (m) return await session(req, decodeURIComponent(m[1]), m[2]);
    throw new HttpError(404, "not_found", `no route ${req.method} ${path}`);
  }

  return {
    metrics,
    scheduler,
    close: () => scheduler.close(),
    async fetch(req: Request): Promise<Response> {
      let res: Response;
      try {
        res = await route(req);
      } catch (e) {
        if (e instanceof HttpError) res = e.response();
        else {
          console.error("mamba serve:", e);
          res = new HttpError(500, "internal_error", String((e as Error)?.message ?? e))
            .response();
        }
      }
      metrics.request(res.status);
      return res;
    },
  };
}
