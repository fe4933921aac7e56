/**
 * Load test of the completions server: N concurrent streaming clients for T seconds, each
 * sending one request after another, against a server on 127.0.0.1 (only). Reports throughput,
 * time to first token (p50/p99), inter-token latency (p50/p99) and errors.
 *
 *   deno run -A bench/serve_load.ts --model models/demo --backend wasm   # starts its own server
 *   deno run -A bench/serve_load.ts --url http://127.0.0.1:8000          # or uses a running one
 *
 * Options:
 *   --clients N        concurrent streaming clients (default 64)
 *   --seconds T        how long clients start new requests (default 60); requests still running
 *                      then get --grace more seconds (default 30) before they are aborted
 *   --max-requests N   stop starting requests after N in all (default 100000)
 *   --max-tokens N     max_tokens of each request (default 64)
 *   --temperature X    (default 0.8; 0 = greedy), with top_p 0.95 and a seed per request
 *   --model DIR        start `src/server/main.ts` on a free port with this model, and stop it after
 *   --random SHAPE     instead of --model: a random model in a published shape (e.g. mamba-130m;
 *                      `MambaLM.fromConfig`, saved as f16) with the GPT-NeoX tokenizer from
 *                      ../shared/data (or $MAMBA_SHARED/data), written to a temporary directory
 *   --backend B        its backend (default wasm); --max-batch N its batch (default 16);
 *                      --block N its decode block (default 16); --threads N its wasm threads
 *   --url URL          use a running server instead (must be http://127.0.0.1 or localhost)
 *   --json             also print the figures as one JSON line
 *
 * Inter-token latency is measured two ways: the gap between consecutive streamed chunks as the
 * client sees them (tokens decoded in one block arrive together, so this one is bursty), and per
 * request the mean time per token after the first ((last − first) / (tokens − 1)).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { MambaLM } from "../mod.ts";
import { PUBLIC_CONFIGS } from "../src/random_weights.ts";
import { printUsage } from "./usage.ts";

const PROMPTS = [
  "Call me Ishmael.",
  "It was the best of times, it was the worst of times,",
  "The whale",
  "Once upon a time there was a",
  "In the beginning",
  "She looked out over the sea and said",
  "Of all the ships that sailed from Nantucket,",
  "The captain",
];

function quantile(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

interface Tally {
  requests: number;
  completed: number;
  tokens: number;
  errors: Map<string, number>;
  ttft: number[];
  gaps: number[];
  perToken: number[];
}

function error(t: Tally, what: string): void {
  t.errors.set(what, (t.errors.get(what) ?? 0) + 1);
}

/** One streaming request; records into `t`. */
async function one(
  url: string,
  body: Record<string, unknown>,
  t: Tally,
  signal: AbortSignal,
): Promise<void> {
  const t0 = performance.now();
  let res: Response;
  try {
    res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal,
    });
  } catch (e) {
    error(t, signal.aborted ? "aborted at the deadline" : `fetch: ${(e as Error).message}`);
    return;
  }
  if (res.status !== 200) {
    await res.body?.cancel();
    error(t, `HTTP ${res.status}`);
    return;
  }
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  let first = -1;
  let last = -1;
  let done = false;
  let tokens = 0;
  try {
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      buf += value;
      let i: number;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") {
          done = true;
          break;
        }
        const obj = JSON.parse(data);
        if (obj.error) throw new Error(obj.error.message);
        const now = performance.now();
        if (obj.choices?.[0]?.text) {
          if (first < 0) {
            first = now;
            t.ttft.push(now - t0);
          } else t.gaps.push(now - last);
          last = now;
        }
        if (obj.usage) tokens = obj.usage.completion_tokens;
      }
    }
  } catch (e) {
    error(t, signal.aborted ? "aborted at the deadline" : `stream: ${(e as Error).message}`);
    return;
  }
  if (!done) {
    error(t, "stream ended without [DONE]");
    return;
  }
  t.completed++;
  t.tokens += tokens;
  if (tokens > 1 && first >= 0) t.perToken.push((last - first) / (tokens - 1));
}

async function startServer(args: {
  model: string;
  backend: string;
  maxBatch: string;
  block: string;
  threads?: string;
  clients: number;
}): Promise<{ url: string; stop: () => Promise<void> }> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  const dir = await Deno.makeTempDir({ prefix: "serve_load_sessions_" });
  const main = new URL("../src/server/main.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-no-legacy-abort",
      main,
      "--model",
      args.model,
      "--backend",
      args.backend,
      "--port",
      String(port),
      "--max-batch",
      args.maxBatch,
      "--max-queue",
      String(Math.max(4 * args.clients, 64)),
      "--block",
      args.block,
      ...(args.threads ? ["--threads", args.threads] : []),
      "--max-tokens-cap",
      "4096",
      "--session-dir",
      dir,
    ],
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  const url = `http://127.0.0.1:${port}`;
  const until = performance.now() + 120_000;
  for (;;) {
    try {
      const r = await fetch(`${url}/health`);
      await r.body?.cancel();
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (performance.now() > until) {
      child.kill();
      throw new Error("the server did not start within 120 s");
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return {
    url,
    async stop() {
      child.kill("SIGTERM");
      await child.status;
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** A random model of a published shape, saved as f16 with the GPT-NeoX tokenizer. */
async function randomModelDir(shape: string): Promise<string> {
  const config = PUBLIC_CONFIGS[shape];
  if (!config) {
    throw new Error(`--random: unknown shape ${shape} (${Object.keys(PUBLIC_CONFIGS).join(", ")})`);
  }
  const shared = Deno.env.get("MAMBA_SHARED") ??
    new URL("../../shared", import.meta.url).pathname;
  const dir = await Deno.makeTempDir({ prefix: `mamba-${shape}-` });
  const lm = await MambaLM.fromConfig(config, { seed: 0, backend: "ref", weightsDtype: "f16" });
  await lm.save(dir, { dtype: "f16" });
  await Deno.copyFile(`${shared}/data/gpt-neox-20b/tokenizer.json`, `${dir}/tokenizer.json`);
  return dir;
}

async function main(): Promise<void> {
  const { values: v } = parseArgs({
    args: Deno.args,
    options: {
      clients: { type: "string", default: "64" },
      seconds: { type: "string", default: "60" },
      grace: { type: "string", default: "30" },
      "max-requests": { type: "string", default: "100000" },
      "max-tokens": { type: "string", default: "64" },
      temperature: { type: "string", default: "0.8" },
      model: { type: "string" },
      random: { type: "string" },
      backend: { type: "string", default: "wasm" },
      "max-batch": { type: "string", default: "16" },
      block: { type: "string", default: "16" },
      threads: { type: "string" },
      url: { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (v.help) return await printUsage(import.meta.url);
  const clients = Number(v.clients);
  const seconds = Number(v.seconds);
  const grace = Number(v.grace);
  const maxRequests = Number(v["max-requests"]);
  const maxTokens = Number(v["max-tokens"]);
  const temperature = Number(v.temperature);
  for (const [k, x] of Object.entries({ clients, seconds, grace, maxRequests, maxTokens })) {
    if (!(x > 0) || !Number.isFinite(x)) throw new Error(`--${k} must be a positive number`);
  }
  if (!v.url && !v.model && !v.random) {
    throw new Error("give --model DIR or --random SHAPE (start a server) or --url URL");
  }
  let made: string | null = null;
  if (v.random && !v.url) v.model = made = await randomModelDir(v.random);
  let server: { url: string; stop: () => Promise<void> } | null = null;
  let url: string;
  if (v.url) {
    const u = new URL(v.url);
    if (u.protocol !== "http:" || !["127.0.0.1", "localhost"].includes(u.hostname)) {
      throw new Error("--url must be http://127.0.0.1:PORT or http://localhost:PORT");
    }
    url = u.origin;
  } else {
    server = await startServer({
      model: v.model!,
      backend: v.backend!,
      maxBatch: v["max-batch"]!,
      block: v.block!,
      threads: v.threads,
      clients,
    });
    url = server.url;
  }
  try {
    const t: Tally = {
      requests: 0,
      completed: 0,
      tokens: 0,
      errors: new Map(),
      ttft: [],
      gaps: [],
      perToken: [],
    };
    const abort = new AbortController();
    const start = performance.now();
    const deadline = start + seconds * 1000;
    const hardStop = setTimeout(() => abort.abort(), (seconds + grace) * 1000);
    let seed = 1;
    const client = async (c: number) => {
      while (performance.now() < deadline && t.requests < maxRequests && !abort.signal.aborted) {
        t.requests++;
        await one(
          url,
          {
            prompt: PROMPTS[(c + t.requests) % PROMPTS.length],
            max_tokens: maxTokens,
            temperature,
            top_p: temperature > 0 ? 0.95 : 1,
            seed: seed++,
            stream: true,
          },
          t,
          abort.signal,
        );
      }
    };
    await Promise.all(Array.from({ length: clients }, (_, c) => client(c)));
    clearTimeout(hardStop);
    const elapsed = (performance.now() - start) / 1000;
    const metrics = await (await fetch(`${url}/metrics`)).text();
    const occupancy = Number(metrics.match(/^mamba_batch_occupancy (\S+)/m)?.[1] ?? NaN);
    const f = (x: number) => x.toFixed(1);
    const errors = [...t.errors].map(([k, n]) => `${k}: ${n}`).join(", ") || "none";
    console.log(
      `serve_load: ${clients} streaming clients for ${seconds} s (max_tokens ${maxTokens}, ` +
        `temperature ${temperature}) against ${v.url ?? `${v.model} on ${v.backend}`}\n` +
        `  requests ${t.requests}, completed ${t.completed}, elapsed ${elapsed.toFixed(1)} s\n` +
        `  throughput ${f(t.tokens / elapsed)} tok/s, ${
          (t.completed / elapsed).toFixed(2)
        } req/s\n` +
        `  TTFT p50 ${f(quantile(t.ttft, 0.5))} ms, p99 ${f(quantile(t.ttft, 0.99))} ms\n` +
        `  inter-token (chunk gaps) p50 ${f(quantile(t.gaps, 0.5))} ms, p99 ${
          f(quantile(t.gaps, 0.99))
        } ms\n` +
        `  inter-token (per-request mean) p50 ${f(quantile(t.perToken, 0.5))} ms, p99 ${
          f(quantile(t.perToken, 0.99))
        } ms\n` +
        `  server batch occupancy ${occupancy.toFixed(2)}\n` +
        `  errors: ${errors}`,
    );
    if (v.json) {
      console.log(JSON.stringify({
        clients,
        seconds,
        maxTokens,
        temperature,
        requests: t.requests,
        completed: t.completed,
        elapsed,
        tokensPerSecond: t.tokens / elapsed,
        ttftMs: { p50: quantile(t.ttft, 0.5), p99: quantile(t.ttft, 0.99) },
        gapMs: { p50: quantile(t.gaps, 0.5), p99: quantile(t.gaps, 0.99) },
        perTokenMs: { p50: quantile(t.perToken, 0.5), p99: quantile(t.perToken, 0.99) },
        occupancy,
        errors: Object.fromEntries(t.errors),
      }));
    }
  } finally {
    await server?.stop();
    if (made) await Deno.remove(made, { recursive: true });
  }
}

if (import.meta.main) await main();
