/**
 * The completions server (src/server/) over the bundled demo model, on 127.0.0.1: the `openai`
 * client streams and non-streams; greedy completions equal `lm.complete` with `topK: 1` alone
 * and with 8 at once; seeded sampling does not depend on what else runs; sessions continue
 * exactly like the concatenated text, fork, survive a restart and are deleted; bad input and
 * overload get OpenAI-style 4xx and the server keeps serving; a client that leaves frees its
 * row.
 */
import assert from "node:assert/strict";
import OpenAI from "openai";
import {
  MambaLM,
  parseConfig,
  Sampler,
  type SamplingOptions,
  validateSamplingOptions,
} from "../mod.ts";
import { randomWeights } from "../testing.ts";
import { bindState, type InferenceState, markComputed } from "../src/state.ts";
import { type CompletionServer, createServer } from "../src/server/server.ts";
import { DirectorySessionStore } from "../src/server/sessions.ts";
import { gatherRows } from "../src/server/rows.ts";
import { Scheduler } from "../src/server/scheduler.ts";
import { configFromArgs, startServer } from "../src/server/config.ts";
import { ConfigError } from "../src/errors.ts";
import { sharedDir } from "./oracle_util.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const DEMO = new URL("../models/demo/", import.meta.url).pathname;
type Name = "wasm" | "ref" | "webgpu";
const adapter = await webgpuTestAdapter("server_test (webgpu cases)");
/** Whether a test on `backend` cannot run here (no WebGPU adapter). */
const skip = (backend: Name) => backend === "webgpu" && !adapter;
const NAME = "demo";

interface Running {
  lm: MambaLM;
  server: CompletionServer;
  url: string;
  dir: string;
  close(): Promise<void>;
}

async function start(
  backend: Name,
  opts: {
    maxBatch?: number;
    maxQueue?: number;
    maxTokensCap?: number;
    dir?: string;
    lm?: MambaLM;
  } = {},
): Promise<Running> {
  const lm = opts.lm ?? await MambaLM.load(DEMO, { backend, wasm: { threads: 2 } });
  const dir = opts.dir ?? await Deno.makeTempDir({ prefix: "mamba_sessions_" });
  const server = createServer(lm, {
    modelName: NAME,
    maxBatch: opts.maxBatch ?? 16,
    maxQueue: opts.maxQueue,
    maxTokensCap: opts.maxTokensCap ?? 256,
    blockSize: 8,
    prefillChunk: 16, // longer prompts are prefilled in pieces while others decode
    sessionStore: new DirectorySessionStore(dir),
    maxBodyBytes: 4096,
  });
  const http = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, server.fetch);
  const url = `http://127.0.0.1:${http.addr.port}`;
  return {
    lm,
    server,
    url,
    dir,
    async close() {
      server.close();
      await http.shutdown();
      if (!opts.lm) lm.dispose();
    },
  };
}

// Response bodies are checked field by field below: typing each shape would only restate them.
// deno-lint-ignore no-explicit-any
type Json = any;

async function post(url: string, body: unknown): Promise<{ status: number; json: Json }> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

async function complete(url: string, body: Record<string, unknown>) {
  const r = await post(`${url}/v1/completions`, { model: NAME, ...body });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json;
}

const PROMPTS = [
  "Call me Ishmael.",
  "It was the best of times,",
  "The whale",
  "Once upon a time there was",
  "In the beginning",
  "A",
  "She said that the sea",
  "Of all the ships",
];

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test("server: the openai client streams and non-streams completions", opts, async () => {
  const s = await start("wasm");
  try {
    const client = new OpenAI({ baseURL: `${s.url}/v1`, apiKey: "unused", maxRetries: 0 });
    const models = await client.models.list();
    assert.deepEqual(models.data.map((m) => m.id), [NAME]);
    const want = await s.lm.complete(PROMPTS[0], { topK: 1, maxNewTokens: 24 });
    const res = await client.completions.create({
      model: NAME,
      prompt: PROMPTS[0],
      max_tokens: 24,
      temperature: 0,
    });
    assert.equal(res.object, "text_completion");
    assert.equal(res.choices[0].text, want);
    assert.equal(res.choices[0].finish_reason, "length");
    assert.deepEqual(res.usage, {
      prompt_tokens: new TextEncoder().encode(PROMPTS[0]).length,
      completion_tokens: 24,
      total_tokens: new TextEncoder().encode(PROMPTS[0]).length + 24,
    });
    const stream = await client.completions.create({
      model: NAME,
      prompt: PROMPTS[0],
      max_tokens: 24,
      temperature: 0,
      stream: true,
    });
    let text = "";
    let chunks = 0;
    let finish: string | null = null;
    for await (const c of stream) {
      chunks++;
      text += c.choices[0]?.text ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    assert.equal(text, want);
    assert.ok(chunks > 2, `${chunks} chunks`);
    assert.equal(finish, "length");
  } finally {
    await s.close();
  }
});

for (const backend of ["wasm", "ref", "webgpu"] as const) {
  Deno.test(
    `server (${backend}): greedy completions equal lm.complete, alone and 8 at once`,
    { ...opts, ignore: skip(backend) },
    async () => {
      const s = await start(backend, { maxBatch: 8, maxTokensCap: 20_000 });
      try {
        const n = backend === "ref" ? 30 : 40;
        const lens = PROMPTS.map((_, i) => n - 3 * i); // rows leave at different times
        const want: string[] = [];
        for (let i = 0; i < PROMPTS.length; i++) {
          want.push(await s.lm.complete(PROMPTS[i], { topK: 1, maxNewTokens: lens[i] }));
        }
        const alone = await complete(s.url, {
          prompt: PROMPTS[0],
          max_tokens: lens[0],
          temperature: 0,
        });
        assert.equal(alone.choices[0].text, want[0]);
        // 8 at once, the later ones arriving while the first decode (they join between blocks).
        const all = await Promise.all(PROMPTS.map(async (p, i) => {
          await new Promise((r) => setTimeout(r, 5 * i));
          return await complete(s.url, { prompt: p, max_tokens: lens[i], top_k: 1 });
        }));
        assert.deepEqual(all.map((r) => r.choices[0].text), want);
        const metrics = await (await fetch(`${s.url}/metrics`)).text();
        const blocks = Number(metrics.match(/^mamba_decode_blocks_total (\d+)/m)![1]);
        const rowsMean = Number(metrics.match(/^mamba_batch_occupancy ([\d.e-]+)/m)![1]) * 8;
        assert.ok(blocks > 0 && rowsMean > 1, `requests shared blocks: mean ${rowsMean} rows`);
        // A request that arrives after another left takes its slot in place (a long one runs
        // meanwhile, then leaves: its client goes away).
        const ctl = new AbortController();
        const long = fetch(`${s.url}/v1/completions`, {
          method: "POST",
          body: JSON.stringify({ prompt: PROMPTS[0], max_tokens: 20_000, temperature: 0 }),
          signal: ctl.signal,
        }).catch(() => null);
        for (const i of [1, 2, 3]) {
          const got = await complete(s.url, { prompt: PROMPTS[i], max_tokens: 4, temperature: 0 });
          assert.equal(got.choices[0].text, want[i].slice(0, 4));
        }
        ctl.abort();
        await long;
        const after = await (await fetch(`${s.url}/metrics`)).text();
        const inPlace = Number(after.match(/^mamba_batch_joins_in_place_total (\d+)/m)![1]);
        assert.ok(inPlace > 0, "joined in a free slot");
      } finally {
        await s.close();
      }
    },
  );
}

for (const backend of ["wasm", "ref", "webgpu"] as const) {
  Deno.test(
    `server (${backend}): a seeded sampled completion does not depend on what else runs`,
    { ...opts, ignore: skip(backend) },
    async () => {
      const s = await start(backend);
      try {
        const req = { prompt: PROMPTS[1], max_tokens: 30, temperature: 0.9, top_p: 0.95, seed: 7 };
        const alone = (await complete(s.url, req)).choices[0].text;
        const again = await Promise.all([
          complete(s.url, req),
          complete(s.url, { ...req, seed: 8 }),
          complete(s.url, { prompt: PROMPTS[2], max_tokens: 20, temperature: 1.2, seed: 1 }),
          complete(s.url, { prompt: PROMPTS[3], max_tokens: 10, temperature: 0 }),
        ]);
        assert.equal(again[0].choices[0].text, alone);
        assert.notEqual(again[1].choices[0].text, alone);
      } finally {
        await s.close();
      }
    },
  );
}

for (const backend of ["wasm", "ref", "webgpu"] as const) {
  Deno.test(
    `server (${backend}): a session continues exactly like the concatenated text; fork, restart, delete`,
    { ...opts, ignore: skip(backend) },
    async () => {
      const s = await start(backend);
      const first = "Call me Ishmael. Some years ago";
      const second = " and then the whale";
      try {
        const a = await complete(s.url, {
          prompt: first,
          max_tokens: 20,
          temperature: 0,
          session: true,
        });
        const id: string = a.session;
        assert.match(id, /^[0-9a-f-]{36}$/);
        const fork = await post(`${s.url}/v1/sessions/${id}/fork`, { id: "saved-copy" });
        assert.equal(fork.status, 200);
        assert.equal(fork.json.id, "saved-copy");
        const b = await complete(s.url, {
          prompt: second,
          max_tokens: 20,
          temperature: 0,
          session: id,
        });
        assert.equal(b.session, id);
        assert.equal(b.usage.prompt_tokens, new TextEncoder().encode(second).length);
        // The session holds the ids of `first` and its completion; the byte-level tokenizer gives
        // the same ids for the concatenated text, so the comparison is exact.
        const whole = await complete(s.url, {
          prompt: first + a.choices[0].text + second,
          max_tokens: 20,
          temperature: 0,
        });
        assert.equal(b.choices[0].text, whole.choices[0].text);
        // A stop string: the session state holds it, the text does not.
        const c = await complete(s.url, {
          prompt: " so",
          max_tokens: 40,
          temperature: 0,
          session: id,
          stop: [" "],
        });
        assert.equal(c.choices[0].finish_reason, "stop");
        assert.ok(!c.choices[0].text.includes(" "));
        // A new server (same model, same directory) continues the fork like the first did.
        await s.close();
        const s2 = await start(backend, { dir: s.dir });
        try {
          const b2 = await complete(s2.url, {
            prompt: second,
            max_tokens: 20,
            temperature: 0,
            session: "saved-copy",
          });
          assert.equal(b2.choices[0].text, b.choices[0].text);
          const del = await fetch(`${s2.url}/v1/sessions/saved-copy`, { method: "DELETE" });
          assert.equal(del.status, 200);
          assert.deepEqual(await del.json(), {
            id: "saved-copy",
            object: "session",
            deleted: true,
          });
          // A session file of another model's state is refused, not run.
          const cfg = parseConfig({
            d_model: 16,
            n_layer: 1,
            vocab_size: 257,
            ssm_cfg: { layer: "Mamba2", headdim: 8 },
          });
          const other = await MambaLM.fromWeights(cfg, randomWeights(cfg));
          await Deno.writeFile(`${s.dir}/foreign.state`, await other.createState(1).toBytes());
          other.dispose();
          const foreign = await post(`${s2.url}/v1/completions`, {
            prompt: "x",
            session: "foreign",
          });
          assert.equal(foreign.status, 409);
          assert.equal(foreign.json.error.code, "session_incompatible");
          const gone = await post(`${s2.url}/v1/completions`, {
            prompt: "x",
            session: "saved-copy",
          });
          assert.equal(gone.status, 404);
          assert.equal(gone.json.error.code, "session_not_found");
          const metrics = await (await fetch(`${s2.url}/metrics`)).text();
          assert.match(metrics, /^mamba_sessions_in_memory \d+$/m);
        } finally {
          await s2.close();
        }
      } finally {
        await s.close().catch(() => {});
        await Deno.remove(s.dir, { recursive: true });
      }
    },
  );
}

Deno.test(
  "server: bad input gets OpenAI-style 4xx and the server keeps serving",
  opts,
  async () => {
    const s = await start("wasm");
    try {
      const u = `${s.url}/v1/completions`;
      const cases: [string | Record<string, unknown>, number, string][] = [
        ["{not json", 400, "invalid_json"],
        ["[1, 2]", 400, "invalid_json"],
        [{ prompt: 42 }, 400, "invalid_value"],
        [{}, 400, "invalid_value"],
        [{ prompt: "a", max_tokens: 0 }, 400, "invalid_value"],
        [{ prompt: "a", max_tokens: -3 }, 400, "invalid_value"],
        [{ prompt: "a", max_tokens: 257 }, 400, "invalid_value"],
        [{ prompt: "a", max_tokens: 1.5 }, 400, "invalid_value"],
        [{ prompt: "a", temperature: "hot" }, 400, "invalid_value"],
        [{ prompt: "a", top_p: 0 }, 400, "invalid_value"],
        [{ prompt: "a", stop: [1] }, 400, "invalid_value"],
        [{ prompt: "a", stream: "yes" }, 400, "invalid_value"],
        [{ prompt: "a", n: 2 }, 400, "invalid_value"],
        [{ prompt: "a", model: "gpt-4" }, 404, "model_not_found"],
        [{ prompt: "a", session: "no-such-session" }, 404, "session_not_found"],
        [{ prompt: "a", session: "../etc" }, 400, "invalid_value"],
        [{ prompt: "a".repeat(5000) }, 413, "body_too_large"],
      ];
      for (const [body, status, code] of cases) {
        const r = await post(u, body);
        assert.equal(r.status, status, JSON.stringify(body).slice(0, 80));
        assert.equal(r.json.error.code, code, JSON.stringify(body).slice(0, 80));
        assert.equal(typeof r.json.error.message, "string");
        assert.equal(typeof r.json.error.type, "string");
      }
      const missing = await fetch(`${s.url}/v2/nothing`);
      assert.equal(missing.status, 404);
      assert.equal((await missing.json()).error.code, "not_found");
      const wrongMethod = await fetch(u);
      assert.equal(wrongMethod.status, 405);
      await wrongMethod.body?.cancel();
      const fork = await post(`${s.url}/v1/sessions/nope/fork`, {});
      assert.equal(fork.status, 404);
      const ok = await complete(s.url, { prompt: "The", max_tokens: 4, temperature: 0 });
      assert.equal(ok.usage.completion_tokens, 4);
      const health = await (await fetch(`${s.url}/health`)).json();
      assert.equal(health.status, "ok");
    } finally {
      await s.close();
    }
  },
);

Deno.test(
  "server: past the batch and the queue, 429; a client that leaves frees its row",
  opts,
  async () => {
    const s = await start("wasm", { maxBatch: 1, maxQueue: 1, maxTokensCap: 100_000 });
    try {
      const u = `${s.url}/v1/completions`;
      // One streams (and holds the only row), one waits, the third is refused.
      const ctl = new AbortController();
      const streaming = await fetch(u, {
        method: "POST",
        // Long enough to be running still when the others arrive (the demo model never
        // ends "The" greedily).
        body: JSON.stringify({ prompt: "The", max_tokens: 100_000, temperature: 0, stream: true }),
        signal: ctl.signal,
      });
      assert.equal(streaming.status, 200);
      const reader = streaming.body!.getReader();
      const firstChunk = new TextDecoder().decode((await reader.read()).value);
      assert.match(firstChunk, /^data: \{/);
      const waiting = post(u, { prompt: "A", max_tokens: 3, temperature: 0 });
      await new Promise((r) => setTimeout(r, 20));
      const refused = await post(u, { prompt: "B", max_tokens: 3 });
      assert.equal(refused.status, 429);
      assert.equal(refused.json.error.type, "rate_limit_error");
      // The streaming client leaves: its row frees and the waiting request runs.
      ctl.abort();
      await reader.cancel().catch(() => {});
      const w = await waiting;
      assert.equal(w.status, 200);
      assert.equal(w.json.usage.completion_tokens, 3);
      let health = await (await fetch(`${s.url}/health`)).json();
      for (let i = 0; i < 50 && health.active > 0; i++) {
        await new Promise((r) => setTimeout(r, 20));
        health = await (await fetch(`${s.url}/health`)).json();
      }
      assert.equal(health.active, 0);
      assert.equal(health.queued, 0);
      const metrics = await (await fetch(`${s.url}/metrics`)).text();
      assert.match(metrics, /^mamba_requests_total\{code="429"\} 1$/m);
      const generated = Number(metrics.match(/^mamba_generated_tokens_total (\d+)/m)![1]);
      assert.ok(generated < 100_000, `the abandoned stream stopped early (${generated} tokens)`);
      await new Promise((r) => setTimeout(r, 100));
      const later = await (await fetch(`${s.url}/metrics`)).text();
      assert.equal(
        Number(later.match(/^mamba_generated_tokens_total (\d+)/m)![1]),
        generated,
        "nothing decodes once every client has left",
      );
      assert.match(metrics, /^mamba_time_to_first_token_seconds_count [1-9]/m);
    } finally {
      await s.close();
    }
  },
);

for (const backend of ["wasm", "ref", "webgpu"] as const) {
  const name = `gatherRows (${backend}): rows of several states into one batch`;
  Deno.test(name, { ...opts, ignore: skip(backend) }, async () => {
    const lm = await MambaLM.load(DEMO, { backend, wasm: { threads: 2 } });
    try {
      const a = lm.createState(3);
      await lm.prefill(a, [[65, 66], [67, 68], [69, 70]]);
      const b = lm.createState(1);
      await lm.prefill(b, [[71, 72]]);
      const g = await gatherRows(lm, [
        { state: a, row: 2 },
        { state: b, row: 0 },
        { state: a, row: 0 },
        { state: a, row: 1 },
      ]);
      await Promise.all([a.sync(), b.sync(), g.sync()]);
      const rowOf = (t: Float32Array, batch: number, r: number) => {
        const n = t.length / batch;
        return Array.from(t.subarray(r * n, (r + 1) * n));
      };
      const from: [Float32Array[], Float32Array[], number][] = [
        [a.conv as Float32Array[], a.ssm as Float32Array[], 2],
        [b.conv as Float32Array[], b.ssm as Float32Array[], 0],
        [a.conv as Float32Array[], a.ssm as Float32Array[], 0],
        [a.conv as Float32Array[], a.ssm as Float32Array[], 1],
      ];
      for (let l = 0; l < lm.config.nLayer; l++) {
        from.forEach(([conv, ssm, r], i) => {
          const batch = conv === a.conv ? 3 : 1;
          assert.deepEqual(rowOf(g.conv[l], 4, i), rowOf(conv[l], batch, r));
          assert.deepEqual(rowOf(g.ssm[l], 4, i), rowOf(ssm[l], batch, r));
        });
      }
      // And the gathered rows decode like their sources.
      const la = await lm.step(a, [75, 76, 77]);
      const lg = await lm.step(g, [77, 78, 75, 76]);
      const V = lm.config.paddedVocabSize;
      assert.deepEqual(Array.from(lg.subarray(0, V)), Array.from(la.subarray(2 * V, 3 * V)));
      assert.deepEqual(Array.from(lg.subarray(2 * V, 3 * V)), Array.from(la.subarray(0, V)));
    } finally {
      lm.dispose();
    }
  });
}

Deno.test(
  "webgpu: fused decoding with per-row samplers equals host stepping, across calls",
  { ...opts, ignore: skip("webgpu") },
  async () => {
    const gpu = await MambaLM.load(DEMO, { backend: "webgpu" });
    const cpu = await MambaLM.load(DEMO, { backend: "ref" });
    try {
      const rowsOpts: SamplingOptions[] = [
        { temperature: 0.8, topK: 30, topP: 0.9, seed: 7, repetitionPenalty: 1.2 },
        { temperature: 1.1, seed: 3 },
        { topK: 1 },
        { temperature: 0.7, minP: 0.05, seed: 11 },
      ];
      const prompts = ["The whale", "Call me I", "It was it", "She sells"].map((p) => [
        ...new TextEncoder().encode(p),
      ]);
      const V = cpu.config.paddedVocabSize;
      const vocabSize = cpu.config.vocabSize;
      // Host: step every row, each picked by its own sampler.
      const host = async () => {
        const samplers = rowsOpts.map((o) => new Sampler({ ...o, vocabSize }));
        const state = cpu.createState(4);
        const history = prompts.map((p) => p.slice());
        let logits = await cpu.prefill(state, prompts);
        const got: number[][] = [[], [], [], []];
        for (let i = 0; i < 24; i++) {
          const picks = samplers.map((s, b) =>
            s.sample(logits.subarray(b * V, (b + 1) * V), history[b])
          );
          picks.forEach((t, b) => (got[b].push(t), history[b].push(t)));
          logits = await cpu.step(state, picks);
        }
        return got;
      };
      // Device: the first pick on the host, then two fused calls of 12 and 11 tokens.
      const device = async () => {
        const be = gpu.backend;
        assert.ok(be.rowSamplers && be.decodeTokens);
        const samplers = rowsOpts.map((o) => new Sampler({ ...o, vocabSize }));
        const state = gpu.createState(4);
        const history = prompts.map((p) => p.slice());
        const logits = await gpu.prefill(state, prompts);
        const got = samplers.map((s, b) => [
          s.sample(logits.subarray(b * V, (b + 1) * V), history[b]),
        ]);
        const handle = await bindState(state, be);
        for (const n of [12, 11]) {
          const tokens = Int32Array.from(got, (r) => r.at(-1)!);
          const it = be.decodeTokens!(handle, tokens, n, {
            sampling: validateSamplingOptions({ topK: 1, vocabSize }),
            samplers,
            history: got.map((r, b) => [...prompts[b], ...r.slice(0, -1)]),
            blockSize: 8,
          });
          for await (const block of it) block.forEach((r, b) => got[b].push(...r));
        }
        return got;
      };
      assert.deepEqual(await device(), await host());
    } finally {
      gpu.dispose();
      cpu.dispose();
    }
  },
);

for (const backend of ["wasm", "webgpu"] as const) {
  Deno.test(
    `${backend}: a drained decode call ends early and leaves the state ready to go on`,
    { ...opts, ignore: skip(backend) },
    async () => {
      const lm = await MambaLM.load(DEMO, { backend, wasm: { threads: 2 } });
      try {
        const be = lm.backend;
        const prompt = [...new TextEncoder().encode("Call me Ishmael.")];
        const sampling = validateSamplingOptions({ topK: 1, vocabSize: lm.config.vocabSize });
        const run = async (
          state: InferenceState,
          first: number,
          n: number,
          drainAfter?: number,
        ) => {
          const drain = new AbortController();
          const got: number[] = [];
          const handle = await bindState(state, be);
          markComputed(state);
          let blocks = 0;
          const it = be.decodeTokens!(handle, Int32Array.of(first), n, {
            sampling,
            blockSize: 8,
            drain: drain.signal,
          });
          for await (const block of it) {
            got.push(...block[0]);
            if (++blocks === drainAfter) drain.abort();
          }
          return got;
        };
        const start = async () => {
          const state = lm.createState(1);
          await lm.prefill(state, [prompt.slice(0, -1)]);
          return state;
        };
        const whole = await run(await start(), prompt.at(-1)!, 48);
        assert.equal(whole.length, 48);
        const state = await start();
        const part = await run(state, prompt.at(-1)!, 48, 1);
        assert.ok(part.length > 0 && part.length < 48, `${part.length} tokens before the drain`);
        const rest = await run(state, part.at(-1)!, 48 - part.length);
        assert.deepEqual([...part, ...rest], whole);
      } finally {
        lm.dispose();
      }
    },
  );
}

Deno.test("server: a GPT-NeoX model is refused with a ConfigError naming model_type", async () => {
  const dir = `${sharedDir()}/fixtures/gpt_neox/neox_d64_h4_l2_rot25`;
  const cfg = configFromArgs(["--model", dir, "--backend", "ref"]);
  assert.notEqual(cfg, "help");
  if (cfg === "help") return;
  await assert.rejects(startServer(cfg), (e: unknown) => {
    assert.ok(e instanceof ConfigError);
    assert.equal(e.field, "model_type");
    assert.match(e.message, /Mamba models only/);
    assert.match(e.message, /"gpt_neox"/);
    assert.ok(e.message.includes(dir));
    return true;
  });
});

for (const backend of ["wasm", "webgpu"] as const) {
  Deno.test(
    `${backend}: a request that comes while a decode call is being set up drains it before it runs`,
    { ...opts, ignore: skip(backend) },
    async () => {
      const lm = await MambaLM.load(DEMO, { backend, wasm: { threads: 1 } });
      try {
        const sched = new Scheduler(lm, { maxBatch: 4, maxQueue: 4, blockSize: 64 });
        const ids = [...new TextEncoder().encode("Call me Ishmael.")];
        const job = (maxTokens: number, onText: () => void) => ({
          ids,
          sampler: new Sampler({ topK: 1, vocabSize: lm.config.vocabSize }),
          maxTokens,
          eos: undefined,
          stop: [],
          keepState: false,
          onText,
        });
        // B is submitted when A's first token comes: A's prompt has just been prefilled, and the
        // scheduler goes on to set up A's first decode call. B must not wait for that call's
        // first block (8 tokens): A has its first token only when B has its own.
        let aTexts = 0;
        let aTextsAtB = -1;
        let b: Promise<unknown> | undefined;
        const a = sched.submit(job(100, () => {
          aTexts++;
          b ??= sched.submit(job(1, () => {
            if (aTextsAtB < 0) aTextsAtB = aTexts;
          }));
        }));
        const [ra] = await Promise.all([a, a.then(() => b)]);
        assert.equal(ra.completionTokens, 100);
        assert.equal(aTextsAtB, 1, `A had ${aTextsAtB} text pieces when B's first came`);
      } finally {
        lm.dispose();
      }
    },
  );
}
