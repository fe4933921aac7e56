// Hostile and careless input (issue #11): sizes are checked before memory is taken, and every
// error the public API throws on bad input is a MambaError subclass naming the field or option.
import assert from "node:assert/strict";
import {
  complete,
  InferenceState,
  InputError,
  MambaError,
  MambaLM,
  Sampler,
  SamplingOptionsError,
  Tokenizer,
  validateSamplingOptions,
} from "../mod.ts";
import { REPO_ROOT } from "./text_util.ts";

const DEMO = `${REPO_ROOT}models/demo`;

/** A state file: magic, header length, the given header text, padding, `dataBytes` of data. */
function stateBytes(header: string, dataBytes = 0): Uint8Array {
  const h = new TextEncoder().encode(header);
  const dataStart = (12 + h.length + 3) & ~3;
  const out = new Uint8Array(dataStart + dataBytes);
  out.set(new TextEncoder().encode("MAMBAST1"), 0);
  new DataView(out.buffer).setUint32(8, h.length, true);
  out.set(h, 12);
  return out;
}

function throwsInput(f: () => unknown, pattern: RegExp) {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof InputError, `expected InputError, got ${e}`);
    assert.match((e as Error).message, pattern);
    return true;
  });
}

Deno.test("state bytes: a 120-byte file claiming 1e9 layers fails before allocating", () => {
  const header = JSON.stringify({
    arch: "mamba2",
    nLayer: 1e9,
    batch: 1,
    convShape: [1, 384, 4],
    ssmShape: [1, 8, 48, 32],
  });
  const bytes = stateBytes(header, 120 - ((12 + header.length + 3) & ~3));
  assert.ok(bytes.length <= 200);
  const before = Deno.memoryUsage().rss;
  throwsInput(() => InferenceState.fromBytes(bytes), /nLayer|bytes/);
  // Nothing near the claimed 1e9 layers was touched.
  assert.ok(Deno.memoryUsage().rss - before < 64 * 1024 * 1024);
});

Deno.test("state bytes: null / non-object headers and huge shapes are InputErrors naming the field", () => {
  throwsInput(() => InferenceState.fromBytes(stateBytes("null")), /header/);
  throwsInput(() => InferenceState.fromBytes(stateBytes("[1,2]")), /header/);
  throwsInput(() => InferenceState.fromBytes(stateBytes('"x"')), /header/);
  const base = { arch: "mamba1", nLayer: 1, batch: 1, convShape: [1, 4, 4], ssmShape: [1, 4, 2] };
  const huge = { ...base, ssmShape: [1, 2 ** 20, 2 ** 20] }; // 2^40 floats
  throwsInput(() => InferenceState.fromBytes(stateBytes(JSON.stringify(huge))), /ssmShape/);
  const overflow = { ...base, ssmShape: [1, 2 ** 40, 2 ** 40] }; // beyond 2^53
  throwsInput(() => InferenceState.fromBytes(stateBytes(JSON.stringify(overflow))), /ssmShape/);
  throwsInput(
    () => InferenceState.fromBytes(stateBytes(JSON.stringify({ ...base, arch: "rnn" }))),
    /arch/,
  );
  throwsInput(
    () => InferenceState.fromBytes(stateBytes(JSON.stringify({ ...base, batch: 2 }))),
    /batch/,
  );
  throwsInput(
    () => InferenceState.fromBytes(stateBytes(JSON.stringify({ ...base, nLayer: -1 }))),
    /nLayer/,
  );
  throwsInput(
    () => InferenceState.fromBytes(stateBytes(JSON.stringify({ ...base, convShape: [1, 4] }))),
    /convShape/,
  );
  // A header length beyond the file.
  const b = stateBytes(JSON.stringify(base), 4 * (16 + 8));
  new DataView(b.buffer).setUint32(8, 0xffffffff, true);
  throwsInput(() => InferenceState.fromBytes(b), /header/);
});

Deno.test("state: constructing a layout too big to allocate is an InputError with the bytes", () => {
  throwsInput(
    () =>
      new InferenceState({
        arch: "mamba1",
        nLayer: 4,
        batch: 1,
        convShape: [1, 4, 4],
        ssmShape: [1, 2 ** 20, 2 ** 20],
      }),
    /bytes/,
  );
});

Deno.test("createState: a batch whose state would not fit is an InputError naming the bytes", async () => {
  const lm = await MambaLM.load(DEMO, { backend: "ref" });
  const one = lm.createState(1).byteLength;
  throwsInput(() => lm.createState(1e6), /bytes/);
  throwsInput(() => lm.createState(100_000), new RegExp(`${one * 100_000}`));
  // The cap is an option: a small cap refuses a batch a big one allows.
  throwsInput(() => lm.createState(4, { maxBytes: one * 3 }), /maxBytes/);
  assert.equal(lm.createState(3, { maxBytes: one * 3 }).batch, 3);
  throwsInput(() => lm.createState(1, { maxBytes: -1 }), /maxBytes/);
  throwsInput(() => lm.createState(0), /batch/);
  lm.dispose();
});

Deno.test("generation options: bad values are MambaErrors naming the option", async () => {
  const lm = await MambaLM.load(DEMO, { backend: "ref" });
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ maxNewTokens: -1 }, /maxNewTokens/],
    [{ maxNewTokens: 1.5 }, /maxNewTokens/],
    [{ temperature: NaN }, /temperature/],
    [{ topP: 2 }, /topP/],
    [{ topK: -3 }, /topK/],
    [{ minP: 7 }, /minP/],
    [{ repetitionPenalty: 0 }, /repetitionPenalty/],
    [{ seed: 0.5 }, /seed/],
    [{ eosTokenId: -2 }, /eosTokenId/],
    [{ stop: [""] }, /stop/],
    [{ stop: "x" }, /stop/],
  ];
  for (const [opts, pattern] of cases) {
    await assert.rejects(() => lm.complete("x", opts), (e: unknown) => {
      assert.ok(e instanceof MambaError, `${JSON.stringify(opts)}: got ${e}`);
      assert.match((e as Error).message, pattern);
      return true;
    });
  }
  // A prompt outside the vocabulary, an empty continuation prompt, a state of the wrong batch.
  for (
    const f of [
      () => lm.complete([1e9]),
      () => lm.complete("", { state: lm.createState(1) }),
      () => lm.complete("x", { state: lm.createState(2) }),
      () => lm.generateBatch(["a"], { state: lm.createState(2) }),
    ]
  ) {
    await assert.rejects(f, MambaError);
  }
  const bare = await MambaLM.load(DEMO, { backend: "ref", tokenizer: false });
  await assert.rejects(() => complete(bare, "text prompt"), /tokenizer/);
  await assert.rejects(() => complete(bare, "text prompt"), MambaError);
  assert.throws(() => bare.textStream(), MambaError);
  bare.dispose();
  lm.dispose();
});

Deno.test("sampling options: SamplingOptionsError is a MambaError with the option", () => {
  assert.throws(() => validateSamplingOptions({ temperature: NaN }), (e: unknown) => {
    assert.ok(e instanceof SamplingOptionsError);
    assert.ok(e instanceof MambaError);
    assert.equal(e.option, "temperature");
    return true;
  });
  assert.throws(() => new Sampler({ vocabSize: 9 }).sample(new Float32Array(4)), MambaError);
  assert.throws(
    () => new Sampler({ topK: 1 }).sample(new Float32Array([NaN, NaN])),
    MambaError,
  );
});

Deno.test("tokenizer files: empty, garbage, wrong shape and oversized files are typed errors naming the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mamba-tok-" });
  const file = `${dir}/tokenizer.json`;
  try {
    const bigId = '{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1e9}, "merges": []}}';
    const badAdded = '{"added_tokens": [{"id": -1, "content": "x"}], "model": {"vocab": {}}}';
    for (
      const text of [
        "",
        "{not json",
        "null",
        "[]",
        '{"model": 3}',
        '{"model": {}}',
        bigId,
        badAdded,
      ]
    ) {
      await Deno.writeTextFile(file, text);
      await assert.rejects(() => Tokenizer.load(dir), (e: unknown) => {
        assert.ok(e instanceof MambaError, `${JSON.stringify(text)}: got ${e}`);
        assert.ok((e as Error).message.includes(file), (e as Error).message);
        return true;
      });
    }
    // A bad tokenizer_config.json is named too.
    await Deno.copyFile(`${DEMO}/tokenizer.json`, file);
    await Deno.writeTextFile(`${dir}/tokenizer_config.json`, "{");
    await assert.rejects(() => Tokenizer.load(dir), /tokenizer_config\.json/);
    await Deno.remove(`${dir}/tokenizer_config.json`);
    // The size is checked before reading: a cap below the file's size refuses it.
    await assert.rejects(() => Tokenizer.load(dir, { maxBytes: 100 }), (e: unknown) => {
      assert.ok(e instanceof MambaError);
      assert.match((e as Error).message, /bytes/);
      return true;
    });
    assert.ok((await Tokenizer.load(dir)).vocabSize > 0);
    // Through MambaLM.load as well.
    for await (const e of Deno.readDir(DEMO)) {
      if (/^(config|model.*)\.(json|safetensors)$/.test(e.name)) {
        await Deno.copyFile(`${DEMO}/${e.name}`, `${dir}/${e.name}`);
      }
    }
    await Deno.writeTextFile(file, "");
    await assert.rejects(() => MambaLM.load(dir, { backend: "ref" }), (e: unknown) => {
      assert.ok(e instanceof MambaError, `got ${e}`);
      assert.ok((e as Error).message.includes("tokenizer.json"));
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("prefill: an allocation failure in the backend is an InputError saying how many bytes", async () => {
  const lm = await MambaLM.load(DEMO, { backend: "ref" });
  // A backend that runs out of memory for its activations, as a huge prompt would.
  const starved = Object.create(lm.backend, {
    embed: {
      value: () => {
        throw new RangeError("Array buffer allocation failed");
      },
    },
  });
  const m = new MambaLM(lm.config, starved);
  await assert.rejects(() => m.prefill(m.createState(1), [[1, 2, 3]]), (e: unknown) => {
    assert.ok(e instanceof InputError, `got ${e}`);
    assert.match((e as Error).message, /1 × 3 tokens \(about \d+ bytes/);
    return true;
  });
  lm.dispose();
});

Deno.test("tokenizer over http: the size is checked from Content-Length, then while reading", async () => {
  const body = await Deno.readFile(`${DEMO}/tokenizer.json`);
  const ac = new AbortController();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: ac.signal, onListen() {} },
    (req) => {
      const path = new URL(req.url).pathname;
      if (path === "/sized/tokenizer.json") return new Response(body);
      if (path === "/streamed/tokenizer.json") {
        // No Content-Length: the limit must hold while the body arrives.
        return new Response(ReadableStream.from([body.subarray(0, 2000), body.subarray(2000)]));
      }
      if (path === "/empty/tokenizer.json") return new Response("");
      return new Response("not found", { status: 404 });
    },
  );
  const base = `http://127.0.0.1:${server.addr.port}`;
  try {
    for (const dir of ["sized", "streamed"]) {
      await assert.rejects(
        () => Tokenizer.load(`${base}/${dir}/`, { maxBytes: 1000 }),
        (e: unknown) => {
          assert.ok(e instanceof MambaError, `${dir}: got ${e}`);
          assert.match(
            (e as Error).message,
            /tokenizer\.json: the file has \d+ bytes, more than maxBytes 1000/,
          );
          return true;
        },
      );
      assert.ok((await Tokenizer.load(`${base}/${dir}/`)).vocabSize > 0);
    }
    await assert.rejects(
      () => Tokenizer.load(`${base}/empty/`),
      /tokenizer\.json: the file is empty/,
    );
  } finally {
    ac.abort();
    await server.finished;
  }
});
