// `deno task demo` end to end: a spawned process streams readable English from the bundled model.
import assert from "node:assert/strict";

const root = new URL("..", import.meta.url).pathname;

async function runDemo(args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "demo.ts", ...args],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** Word-level checks that random bytes or a broken model would fail. */
function assertEnglishLike(text: string) {
  const words = text.split(/\s+/).filter((w) => w.length > 0);
  assert.ok(words.length >= 30, `too few words: ${JSON.stringify(text)}`);
  const clean = words.map((w) => w.replace(/^[("'“]+|[)"'”.,;:!?]+$/g, ""));
  const alphabetic = clean.filter((w) => /^[A-Za-z][a-z]*(['’-][a-z]+)?$/.test(w)).length;
  assert.ok(alphabetic / words.length > 0.8, `not word-like: ${JSON.stringify(text)}`);
  const common = new Set(["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as"]);
  const hits = clean.filter((w) => common.has(w.toLowerCase())).length;
  assert.ok(hits / words.length > 0.1, `too few function words: ${JSON.stringify(text)}`);
  assert.match(text, /[.,;]/, "no punctuation");
}

Deno.test("demo: streams English-like text with tokens/s and the backend on stderr", async () => {
  const r = await runDemo(["--backend", "ref", "--seed", "1", "--max-new-tokens", "300"]);
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.startsWith("Mr. Speaker, the state of our Union is"), r.stdout);
  assertEnglishLike(r.stdout);
  assert.match(r.stderr, /backend ref/);
  assert.match(r.stderr, /300 tokens in [\d.]+ s, [\d.]+ tok\/s/);
});

Deno.test("demo: same seed, same text; --prompt is continued", async () => {
  const args = ["--backend", "ref", "--seed", "5", "--max-new-tokens", "60", "--prompt", "Call me"];
  const a = await runDemo(args);
  const b = await runDemo(args);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(a.stdout, b.stdout);
  assert.ok(a.stdout.startsWith("Call me"));
  assert.ok(a.stdout.length > "Call me".length + 30);
});

Deno.test("demo: bad flags exit 2 with a message", async () => {
  const r = await runDemo(["--backend", "cuda"]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--backend must be/);
  const t = await runDemo(["--temperature", "hot"]);
  assert.equal(t.code, 2);
  assert.match(t.stderr, /--temperature must be a number/);
});
