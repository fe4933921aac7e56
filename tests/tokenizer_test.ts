import assert from "node:assert/strict";
import { byteLevelTokenizerJSON, Tokenizer } from "../src/tokenizer.ts";
import { TokenizerError } from "../src/errors.ts";
import { Xoshiro128 } from "../src/rng.ts";
import { byteTokenizerDir, neoxTokenizerPath } from "./text_util.ts";

const NEOX_PATH = neoxTokenizerPath();
const neoxJson = JSON.parse(await Deno.readTextFile(NEOX_PATH));
const neoxVocab: Record<string, number> = neoxJson.model.vocab;
const neox = await Tokenizer.load(NEOX_PATH.replace(/\/tokenizer\.json$/, ""));

const SAMPLES = [
  "Hello world",
  "Hello, world! How's it going?  Fine.\n",
  "日本語のテキストと中文文本，还有한국어 텍스트。",
  "Mixed: English, Ελληνικά, Русский, العربية, עברית, हिन्दी, ไทย.",
  "Emoji: 😀 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ 🦀🐍",
  "whitespace:  two   three    four\t\ttabs\t \n\n\nthree newlines\r\nCRLF    ",
  "                                trailing and leading runs                                ",
  "\uFEFFstarts with a BOM",
  "code:\n\tfor (let i = 0; i < n; i++) {\n\t\tx += i;\n\t}\n",
  "math ∑ᵢ xᵢ² ≤ ∞, ℝ³, ½ and café naïve résumé",
  "<|endoftext|>after a special token<|padding|>",
  "\n",
  " ",
  "a",
];

/** Concatenated increments of the streaming decoder, checking each one is well-formed. */
function streamDecode(tok: Tokenizer, ids: number[]): string {
  const dec = tok.createDecoder();
  let out = "";
  for (const id of ids) {
    const piece = dec.push(id);
    assert.ok(piece.isWellFormed(), `increment ${JSON.stringify(piece)} has a lone surrogate`);
    out += piece;
  }
  return out + dec.flush();
}

Deno.test("gpt-neox: loads with the eos token and vocabulary size", () => {
  assert.equal(neox.byteLevel, true);
  assert.equal(neox.eosTokenId, 0);
  assert.equal(neox.tokenToId("<|endoftext|>"), 0);
  // 50,254 BPE entries + added tokens up to id 50280 in this tokenizer.json.
  const maxAdded = Math.max(...neoxJson.added_tokens.map((t: { id: number }) => t.id));
  assert.equal(neox.vocabSize, maxAdded + 1);
});

Deno.test("gpt-neox: known ids agree with the vocabulary in tokenizer.json", () => {
  const cases: [string, string[], number[]][] = [
    ["Hello world", ["Hello", "Ġworld"], [12092, 1533]],
    [" Hello", ["ĠHello"], [24387]],
    ["\n\n", ["ĊĊ"], [535]],
  ];
  for (const [text, pieces, ids] of cases) {
    assert.deepEqual(pieces.map((p) => neoxVocab[p]), ids, `vocab ids of ${pieces}`);
    assert.deepEqual(neox.encode(text), ids, `encode(${JSON.stringify(text)})`);
    assert.equal(neox.decode(ids), text);
  }
  assert.deepEqual(neox.encode("<|endoftext|>"), [0]);
  // Runs of spaces use the added whitespace tokens ("  " is id 50276).
  const two = neoxJson.added_tokens.find((t: { content: string }) => t.content === "  ");
  assert.equal(two.id, 50276);
  assert.ok(neox.encode("a  \tb").includes(50276));
});

Deno.test("gpt-neox: encode → decode round-trips mixed scripts, emoji, CJK, whitespace", () => {
  for (const s of SAMPLES) {
    assert.equal(s, s.normalize("NFC"), "samples are NFC (the tokenizer normalises to NFC)");
    const ids = neox.encode(s);
    assert.ok(ids.length > 0);
    assert.ok(ids.every((id) => Number.isInteger(id) && id >= 0 && id < neox.vocabSize));
    assert.equal(neox.decode(ids), s, JSON.stringify(s));
  }
  assert.deepEqual(neox.encode(""), []);
  assert.equal(neox.decode([]), "");
});

Deno.test("gpt-neox: streaming decode concatenates to exactly decode(ids)", () => {
  for (const s of SAMPLES) {
    const ids = neox.encode(s);
    assert.equal(streamDecode(neox, ids), neox.decode(ids), JSON.stringify(s));
  }
  // Random id sequences, including ones that are not valid UTF-8 at all.
  const rng = new Xoshiro128(5);
  for (let trial = 0; trial < 200; trial++) {
    const n = 1 + (rng.nextUint32() % 40);
    const ids = Array.from({ length: n }, () => rng.nextUint32() % 50277);
    assert.equal(streamDecode(neox, ids), neox.decode(ids), `ids ${ids}`);
  }
});

Deno.test("gpt-neox: the decoder holds back a character split over tokens", () => {
  const ids = neox.encode("😀");
  assert.ok(ids.length > 1, "the emoji takes several byte tokens");
  const dec = neox.createDecoder();
  const pieces = ids.map((id) => dec.push(id));
  assert.deepEqual(pieces.slice(0, -1), new Array(ids.length - 1).fill(""));
  assert.equal(pieces[ids.length - 1], "😀");
  assert.equal(dec.flush(), "");
  // Alone, a partial token decodes to U+FFFD, and so does an unfinished stream at flush.
  assert.equal(neox.decode([ids[0]]), "\uFFFD");
  const d2 = neox.createDecoder();
  assert.equal(d2.push(ids[0]), "");
  assert.equal(d2.flush(), "\uFFFD");
  // The decoder is reusable after flush.
  assert.equal(d2.push(neox.encode("ok")[0]), "ok");
});

Deno.test("gpt-neox: ids outside the vocabulary decode to nothing", () => {
  assert.equal(neox.decode([12092, 999_999, 1533]), "Hello world");
  assert.equal(streamDecode(neox, [12092, 999_999, 1533]), "Hello world");
});

Deno.test("Tokenizer.load: file path, file URL, tokenizer_config eos_token", async () => {
  const fromFile = await Tokenizer.load(NEOX_PATH);
  assert.deepEqual(fromFile.encode("Hello world"), [12092, 1533]);
  const fromUrl = await Tokenizer.load(new URL(`file://${NEOX_PATH}`));
  assert.deepEqual(fromUrl.encode("Hello world"), [12092, 1533]);

  const dir = await Deno.makeTempDir();
  try {
    await Deno.copyFile(NEOX_PATH, `${dir}/tokenizer.json`);
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      JSON.stringify({ eos_token: { content: "<|padding|>", special: true } }),
    );
    assert.equal((await Tokenizer.load(dir)).eosTokenId, 1);
    assert.equal((await Tokenizer.load(new URL(`file://${dir}/`))).eosTokenId, 1);
    await Deno.writeTextFile(
      `${dir}/tokenizer_config.json`,
      JSON.stringify({ eos_token: "<|im_end|>" }),
    );
    assert.equal((await Tokenizer.load(dir)).eosTokenId, neox.tokenToId("<|im_end|>"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  await assert.rejects(() => Tokenizer.load("/nonexistent-dir"), Deno.errors.NotFound);
  assert.throws(() => Tokenizer.fromJSON({}), TokenizerError);
});

// ---- byte-level tokenizer (the demo model's) ----

Deno.test("byteLevelTokenizerJSON: 256 byte symbols with id = byte, <|endoftext|> = 256", () => {
  const j = byteLevelTokenizerJSON() as {
    added_tokens: { id: number; content: string; special: boolean }[];
    pre_tokenizer: Record<string, unknown>;
    decoder: Record<string, unknown>;
    model: { type: string; vocab: Record<string, number>; merges: unknown[] };
  };
  assert.equal(j.model.type, "BPE");
  assert.deepEqual(j.model.merges, []);
  const entries = Object.entries(j.model.vocab);
  assert.equal(entries.length, 256);
  assert.deepEqual(entries.map(([, id]) => id).sort((a, b) => a - b), [...Array(256).keys()]);
  // GPT-2 bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards.
  assert.equal(j.model.vocab["A"], 65);
  assert.equal(j.model.vocab["Ġ"], 32);
  assert.equal(j.model.vocab["Ċ"], 10);
  assert.equal(j.model.vocab["Ā"], 0);
  assert.equal(j.model.vocab["ÿ"], 255);
  assert.deepEqual(j.added_tokens.map((t) => [t.id, t.content, t.special]), [
    [256, "<|endoftext|>", true],
  ]);
  assert.deepEqual(
    { ...j.pre_tokenizer },
    { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
  );
  assert.equal(j.decoder.type, "ByteLevel");
  // It is plain JSON.
  assert.deepEqual(JSON.parse(JSON.stringify(j)), j);
});

Deno.test("byte-level tokenizer: loads from a directory; ids are the UTF-8 bytes", async () => {
  const dir = await byteTokenizerDir();
  try {
    const tok = await Tokenizer.load(dir);
    assert.equal(tok.eosTokenId, 256);
    assert.equal(tok.vocabSize, 257);
    const utf8 = new TextEncoder();
    for (
      const s of [...SAMPLES.filter((s) => !s.includes("<|")), "\u0000\u0001\u007f", "e\u0301"]
    ) {
      const ids = tok.encode(s);
      assert.deepEqual(ids, Array.from(utf8.encode(s)), JSON.stringify(s));
      assert.equal(tok.decode(ids), s);
      assert.equal(streamDecode(tok, ids), s);
    }
    assert.deepEqual(tok.encode("😀"), [0xf0, 0x9f, 0x98, 0x80]);
    assert.deepEqual(tok.encode("a<|endoftext|>b"), [97, 256, 98]);
    assert.equal(tok.decode([97, 256, 98]), "a<|endoftext|>b");
    // Arbitrary byte strings decode like TextDecoder, streamed or not.
    const rng = new Xoshiro128(9);
    const td = new TextDecoder("utf-8", { ignoreBOM: true });
    for (let trial = 0; trial < 300; trial++) {
      const n = rng.nextUint32() % 24;
      const bytes = Array.from({ length: n }, () => {
        const r = rng.nextUint32();
        return r % 3 === 0 ? 0x80 + (r >>> 8) % 0x80 : (r >>> 8) % 256;
      });
      const want = td.decode(new Uint8Array(bytes));
      assert.equal(tok.decode(bytes), want);
      assert.equal(streamDecode(tok, bytes), want);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("byte-level tokenizer: long text encodes quickly", () => {
  const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
  const text = "The quick brown fox 🦊 jumps over the lazy dog. ".repeat(2000);
  const t0 = performance.now();
  const ids = tok.encode(text);
  const ms = performance.now() - t0;
  assert.equal(ids.length, new TextEncoder().encode(text).length);
  assert.equal(tok.decode(ids), text);
  assert.ok(ms < 5000, `encoding ${ids.length} bytes took ${ms} ms`);
});
