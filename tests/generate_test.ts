import assert from "node:assert/strict";
import {
  complete,
  generate,
  generateBatch,
  type GeneratedToken,
  type InferenceStateLike,
  type StepModel,
  textStream,
} from "../src/generate.ts";
import { byteLevelTokenizerJSON, type TextTokenizer, Tokenizer } from "../src/tokenizer.ts";
import { InputError } from "../src/errors.ts";

// A deterministic byte-level "bigram" model: the next-token logits depend only on the last
// token fed. Greedy decoding walks CYCLE forever ("…\n" → "X…"). The state records every
// token fed into each row, so the tests can check exactly what the model saw.

const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
const EOS = 256;
const V = 257;
const PADDED = 264;
const CYCLE = "Xyz😀 qé\n"; // all bytes distinct
const CYCLE_BYTES = Array.from(new TextEncoder().encode(CYCLE));
const NEXT = new Map<number, number>();
assert.equal(CYCLE_BYTES.length, new Set(CYCLE_BYTES).size);
for (let i = 0; i < CYCLE_BYTES.length; i++) {
  NEXT.set(CYCLE_BYTES[i], CYCLE_BYTES[(i + 1) % CYCLE_BYTES.length]);
}

class FakeState implements InferenceStateLike {
  constructor(readonly batch: number, readonly fed: number[][] = []) {
    if (fed.length === 0) { for (let b = 0; b < batch; b++) fed.push([]); }
  }
  clone(): FakeState {
    return new FakeState(this.batch, this.fed.map((r) => r.slice()));
  }
}

interface FakeOptions {
  /** Emit EOS after this byte instead of continuing the cycle. */
  eosAfter?: number;
  /** Soft logits (for sampling tests) instead of a sharp peak. */
  soft?: boolean;
  tokenizer?: TextTokenizer | null;
}

class FakeModel implements StepModel<FakeState> {
  readonly config = { vocabSize: V, paddedVocabSize: PADDED };
  readonly tokenizer: TextTokenizer | undefined;
  prefills: number[][][] = [];
  steps = 0;
  #o: FakeOptions;

  constructor(o: FakeOptions = {}) {
    this.#o = o;
    this.tokenizer = o.tokenizer === null ? undefined : o.tokenizer ?? tok;
  }

  createState(batch = 1): FakeState {
    return new FakeState(batch);
  }

  #logits(state: FakeState): Float32Array {
    const out = new Float32Array(state.batch * PADDED);
    for (let b = 0; b < state.batch; b++) {
      const row = out.subarray(b * PADDED, (b + 1) * PADDED);
      const last = state.fed[b][state.fed[b].length - 1];
      if (this.#o.soft) {
        for (let i = 0; i < V; i++) row[i] = ((last * 31 + i * 17) % 97) / 20;
      } else {
        const next = last === this.#o.eosAfter ? EOS : NEXT.get(last) ?? CYCLE_BYTES[0];
        row[next] = 10;
      }
      row.fill(1000, V); // padding ids must never be chosen
    }
    return out;
  }

  prefill(state: FakeState, ids: number[][]): Promise<Float32Array> {
    assert.equal(ids.length, state.batch, "prefill: one row per sequence");
    assert.ok(ids.every((r) => r.length === ids[0].length && r.length > 0), "equal lengths");
    for (const r of ids) for (const id of r) assert.ok(id >= 0 && id < PADDED);
    this.prefills.push(ids.map((r) => r.slice()));
    ids.forEach((r, b) => state.fed[b].push(...r));
    return Promise.resolve(this.#logits(state));
  }

  step(state: FakeState, tokens: number[]): Promise<Float32Array> {
    assert.equal(tokens.length, state.batch);
    this.steps++;
    tokens.forEach((t, b) => state.fed[b].push(t));
    return Promise.resolve(this.#logits(state));
  }
}

/** Greedy continuation of `start` along the cycle, as bytes. */
function cycleFrom(startByte: number, n: number): number[] {
  const out: number[] = [];
  let b = startByte;
  for (let i = 0; i < n; i++) {
    b = NEXT.get(b)!;
    out.push(b);
  }
  return out;
}

async function collect(it: AsyncIterable<GeneratedToken>): Promise<GeneratedToken[]> {
  const out: GeneratedToken[] = [];
  for await (const t of it) out.push(t);
  return out;
}

const greedy = { topK: 1 } as const;

Deno.test("generate: greedy tokens, UTF-8-safe increments, concatenation = decode(ids)", async () => {
  const m = new FakeModel();
  const toks = await collect(generate(m, "X", { ...greedy, maxNewTokens: 20 }));
  const ids = toks.map((t) => t.id);
  assert.deepEqual(ids, cycleFrom(0x58, 20));
  const text = toks.map((t) => t.text).join("");
  assert.equal(text, tok.decode(ids));
  assert.equal(text, (CYCLE + CYCLE + CYCLE).slice(1, 1 + text.length));
  // The emoji's 4 bytes: the first three tokens carry "", the last carries the character.
  const i = ids.indexOf(0xf0);
  assert.deepEqual(toks.slice(i, i + 4).map((t) => t.text), ["", "", "", "😀"]);
  for (const t of toks) assert.ok(t.text.isWellFormed() && !t.text.includes("\uFFFD"));
  assert.equal(await complete(m, "X", { ...greedy, maxNewTokens: 20 }), text);
  // prefill once, then one step per token except the last
  const m2 = new FakeModel();
  await complete(m2, "Xy", { ...greedy, maxNewTokens: 5 });
  assert.deepEqual(m2.prefills, [[[0x58, 0x79]]]);
  assert.equal(m2.steps, 4);
});

Deno.test("generate: a character cut by maxNewTokens is flushed as U+FFFD like decode", async () => {
  const m = new FakeModel();
  const toks = await collect(generate(m, "z", { ...greedy, maxNewTokens: 2 })); // F0 9F
  assert.deepEqual(toks.map((t) => t.id), [0xf0, 0x9f]);
  assert.equal(toks.map((t) => t.text).join(""), tok.decode([0xf0, 0x9f]));
});

Deno.test("generate: stops at eos (not yielded), eosTokenId null disables it", async () => {
  const m = new FakeModel({ eosAfter: 0x0a }); // "\n" → EOS
  const toks = await collect(generate(m, "q", { ...greedy, maxNewTokens: 50 }));
  assert.deepEqual(toks.map((t) => t.id), Array.from(new TextEncoder().encode("é\n")));
  assert.equal(toks.map((t) => t.text).join(""), "é\n");
  // With eos disabled the model's EOS id is just a token (its text is "<|endoftext|>").
  const noEos = await complete(m, "q", { ...greedy, maxNewTokens: 4, eosTokenId: null });
  assert.equal(noEos, "é\n<|endoftext|>");
  // A custom eos id: stop when 0xa9 (second byte of é) comes; the held 0xc3 flushes as U+FFFD.
  const custom = await complete(m, "q", { ...greedy, maxNewTokens: 50, eosTokenId: 0xa9 });
  assert.equal(custom, "\uFFFD");
});

Deno.test("generate: stop strings truncate the text and end generation", async () => {
  const m = new FakeModel();
  const run = async (stop: string[], n = 40) => {
    const toks = await collect(generate(m, "X", { ...greedy, maxNewTokens: n, stop }));
    return { text: toks.map((t) => t.text).join(""), ids: toks.map((t) => t.id) };
  };
  // Stop string spanning several tokens, including the emoji's bytes.
  let r = await run(["😀 q"]);
  assert.equal(r.text, "yz");
  assert.deepEqual(r.ids, cycleFrom(0x58, 8)); // generation ended on the token completing it
  // The earliest of several stop strings wins.
  r = await run(["\n", "é"]);
  assert.equal(r.text, "yz😀 q");
  // A prefix that never completes is held back, then released.
  r = await run(["zq"], 12);
  assert.equal(r.text, "yz😀 qé\nX");
  // It never shows up early: a stop string starting in the prompt's continuation only.
  r = await run(["XY"], 18);
  assert.equal(r.text, "yz😀 qé\nXyz😀");
  // Stop string at the very start of the output.
  assert.equal((await run(["y"])).text, "");
  await assert.rejects(() => complete(m, "X", { stop: [""] }), InputError);
});

Deno.test("generate: stop-string hold-back never leaks into increments", async () => {
  const m = new FakeModel();
  const toks = await collect(generate(m, "X", { ...greedy, maxNewTokens: 30, stop: ["qé\nXyz!"] }));
  // "qé\nXyz" is a prefix that completes only partially each cycle: it is held, then released.
  const texts = toks.map((t) => t.text);
  const full = texts.join("");
  assert.equal(full, tok.decode(toks.map((t) => t.id)));
  let shown = "";
  for (const t of texts) {
    shown += t;
    assert.ok(!shown.endsWith("qé\nXyz") || shown === full, "held text is not shown early");
  }
});

Deno.test("generate: abort ends generation, text so far kept; pre-aborted does nothing", async () => {
  const m = new FakeModel();
  const ac = new AbortController();
  const toks: GeneratedToken[] = [];
  for await (const t of generate(m, "X", { ...greedy, maxNewTokens: 100, signal: ac.signal })) {
    toks.push(t);
    if (toks.length === 3) ac.abort();
  }
  assert.ok(toks.length >= 3 && toks.length <= 5, `got ${toks.length} tokens`);
  assert.deepEqual(toks.map((t) => t.id), cycleFrom(0x58, toks.length));
  const m2 = new FakeModel();
  const pre = new AbortController();
  pre.abort();
  assert.equal(await complete(m2, "X", { signal: pre.signal }), "");
  assert.equal(m2.prefills.length, 0);
});

Deno.test("generate: maxNewTokens 0 only prefills; vocab padding never sampled", async () => {
  const m = new FakeModel();
  assert.deepEqual(await collect(generate(m, "X", { maxNewTokens: 0 })), []);
  assert.equal(m.prefills.length, 1);
  const soft = new FakeModel({ soft: true });
  const toks = await collect(generate(soft, "X", { maxNewTokens: 300, seed: 1, eosTokenId: null }));
  assert.equal(toks.length, 300);
  assert.ok(toks.every((t) => t.id < V));
  await assert.rejects(() => complete(m, "X", { maxNewTokens: -1 }), InputError);
  await assert.rejects(() => complete(m, "X", { topP: 2 }), InputError);
});

Deno.test("generate: same seed ⇒ same output; different seed ⇒ different", async () => {
  const run = (seed: number) =>
    collect(
      generate(new FakeModel({ soft: true }), "ab", { seed, maxNewTokens: 64, temperature: 1.5 }),
    );
  const a = await run(11);
  const b = await run(11);
  const c = await run(12);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a.map((t) => t.id), c.map((t) => t.id));
});

Deno.test("generate: prompts as ids, no tokenizer, empty prompt starts from eos", async () => {
  const bare = new FakeModel({ tokenizer: null });
  const toks = await collect(generate(bare, [0x58], { ...greedy, maxNewTokens: 3 }));
  assert.deepEqual(toks, cycleFrom(0x58, 3).map((id) => ({ id, text: "" })));
  await assert.rejects(() => complete(bare, "X"), InputError);
  await assert.rejects(() => complete(bare, [0x58], { stop: ["x"] }), InputError);
  await assert.rejects(() => complete(bare, [], {}), InputError); // no eos to start from
  await assert.rejects(() => complete(bare, [PADDED]), InputError);
  const m = new FakeModel();
  await complete(m, "", { ...greedy, maxNewTokens: 1 });
  assert.deepEqual(m.prefills[0], [[EOS]]);
});

Deno.test("generate with state: the state holds prompt + yielded tokens; continues seamlessly", async () => {
  const m = new FakeModel();
  const state = m.createState(1);
  const first = await collect(generate(m, "X", { ...greedy, maxNewTokens: 4, state }));
  const ids1 = first.map((t) => t.id);
  assert.deepEqual(state.fed[0], [0x58, ...ids1]);
  const second = await complete(m, "q", { ...greedy, maxNewTokens: 3, state });
  assert.equal(second, "é\n");
  assert.deepEqual(state.fed[0], [0x58, ...ids1, 0x71, ...tok.encode("é\n")]);
  // Continuing a state needs a non-empty prompt.
  await assert.rejects(() => complete(m, "", { state }), InputError);
  // feedGenerated: false → only the prompt goes into the state.
  const s2 = m.createState(1);
  const out = await complete(m, "X", {
    ...greedy,
    maxNewTokens: 6,
    state: s2,
    feedGenerated: false,
  });
  assert.equal(out, "yz😀");
  assert.deepEqual(s2.fed[0], [0x58]);
  // Early break: the state also holds the one token sampled ahead.
  const s3 = m.createState(1);
  for await (const _ of generate(m, "X", { ...greedy, maxNewTokens: 10, state: s3 })) break;
  assert.deepEqual(s3.fed[0], [0x58, ...cycleFrom(0x58, 2)]);
  await assert.rejects(() => complete(m, "X", { state: m.createState(2) }), InputError);
});

Deno.test("generateBatch: per-row results equal single generation; rows stop on their own", async () => {
  const m = new FakeModel({ eosAfter: 0x0a });
  const prompts = ["X", "qé", "Xyz😀 "];
  const opts = { ...greedy, maxNewTokens: 12 };
  const batch = await generateBatch(m, prompts, opts);
  const single = [];
  for (const p of prompts) single.push(await complete(new FakeModel({ eosAfter: 0x0a }), p, opts));
  assert.deepEqual(batch, single);
  assert.deepEqual(batch, ["yz😀 qé\n", "\n", "qé\n"]);
  // Unequal prompt lengths: the common prefix (1 token) is prefilled at once.
  assert.deepEqual(m.prefills, [[[0x58], [0x71], [0x58]]]);
  // With a stop string per row and maxNewTokens.
  const m2 = new FakeModel();
  const r = await generateBatch(m2, ["X", "y", "é"], { ...greedy, maxNewTokens: 8, stop: ["😀"] });
  assert.deepEqual(r, ["yz", "z", "\nXyz"]);
  assert.deepEqual(await generateBatch(m2, [], opts), []);
});

Deno.test("generateBatch: finished rows keep stepping with eos; state option; seeded", async () => {
  const m = new FakeModel({ eosAfter: 0x0a });
  const state = m.createState(2);
  const out = await generateBatch(m, ["é", "X"], { ...greedy, maxNewTokens: 4, state });
  assert.deepEqual(out, ["\n", "yz\uFFFD"]);
  // Row 0: prompt, "\n", then eos padding while row 1 runs; row 1 gets all its tokens.
  assert.deepEqual(state.fed[0], [0xc3, 0xa9, 0x0a, EOS, EOS]);
  assert.deepEqual(state.fed[1], [0x58, 0x79, 0x7a, 0xf0, 0x9f]);
  const soft = () => new FakeModel({ soft: true });
  const o = { seed: 5, maxNewTokens: 30, eosTokenId: null, temperature: 1.3 };
  assert.deepEqual(
    await generateBatch(soft(), ["a", "b"], o),
    await generateBatch(soft(), ["a", "b"], o),
  );
  await assert.rejects(() => generateBatch(m, ["a"], { state }), InputError);
});

async function roundTrip(ts: TransformStream<string, string>, chunks: string[]): Promise<string[]> {
  const w = ts.writable.getWriter();
  const r = ts.readable.getReader();
  const outs: string[] = [];
  for (const c of chunks) {
    const wrote = w.write(c);
    const { value } = await r.read();
    await wrote;
    outs.push(value!);
  }
  await w.close();
  assert.equal((await r.read()).done, true);
  return outs;
}

Deno.test("textStream: one continuation per chunk, one state carried across chunks", async () => {
  const m = new FakeModel();
  const state = m.createState(1);
  const outs = await roundTrip(textStream(m, { ...greedy, maxNewTokens: 3, state }), [
    "X",
    "qé",
    "",
  ]);
  // An empty chunk continues the text.
  assert.deepEqual(outs, ["yz\uFFFD", "\nXy", "z\uFFFD"]);
  // Every chunk is prefilled once (the previous continuation's last token rides along).
  assert.deepEqual(m.prefills, [[[0x58]], [[0xf0, 0x71, 0xc3, 0xa9]], [[0x79]]]);
  // After close, the state holds every chunk and every generated token, in order.
  const X = 0x58, y = 0x79, z = 0x7a, q = 0x71;
  assert.deepEqual(state.fed[0], [
    ...[X, y, z], // "X", continuation y z (F0 pending)
    ...[0xf0, q, 0xc3, 0xa9, 0x0a, X], // F0 + "qé", continuation \n X (y pending)
    ...[y, z, 0xf0], // y + "", continuation z F0 (9F pending)
    0x9f, // fed when the stream closed
  ]);
});

Deno.test("textStream: feedGenerated false follows the input only (log follower)", async () => {
  const m = new FakeModel();
  const state = m.createState(1);
  const lines = ["X", "yz", "😀 q"];
  const outs = await roundTrip(
    textStream(m, { ...greedy, maxNewTokens: 2, stop: ["\n"], state, feedGenerated: false }),
    lines,
  );
  assert.deepEqual(outs, ["yz", "\uFFFD", "é"]);
  assert.deepEqual(state.fed[0], tok.encode(lines.join("")));
});

Deno.test("textStream: without a state; abort errors later writes", async () => {
  const m = new FakeModel({ soft: true });
  const ac = new AbortController();
  const ts = textStream(m, { maxNewTokens: 4, seed: 3, signal: ac.signal, eosTokenId: null });
  const w = ts.writable.getWriter();
  const r = ts.readable.getReader();
  const wrote = w.write("hello"); // resolves once the continuation is read
  const first = await r.read();
  await wrote;
  assert.equal(typeof first.value, "string");
  ac.abort();
  const next = r.read();
  await assert.rejects(() => w.write("more"));
  await assert.rejects(() => next);
  assert.throws(() => textStream(new FakeModel({ tokenizer: null })), InputError);
});
