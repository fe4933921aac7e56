/**
 * `mod.ts` imported by another project: a script in a temporary directory outside the repository,
 * run without any deno.json (`--no-config`), imports mod.ts by file URL, loads the demo model and
 * generates. Every import of the library must resolve on its own (full `npm:` specifiers, no bare
 * names that only this repository's deno.json maps).
 */

import assert from "node:assert/strict";

const MOD = new URL("../mod.ts", import.meta.url);
const DEMO = new URL("../models/demo/", import.meta.url);

Deno.test("mod.ts imports from a script outside the repository, without its deno.json", async () => {
  const dir = await Deno.makeTempDir({ prefix: "mamba_import_" });
  try {
    const script = `${dir}/use_mamba.ts`;
    await Deno.writeTextFile(
      script,
      `import { MambaLM } from ${JSON.stringify(MOD.href)};\n` +
        `const lm = await MambaLM.load(new URL(${
          JSON.stringify(DEMO.href)
        }), { backend: "ref" });\n` +
        `const ids = lm.tokenizer!.encode("Hi");\n` +
        `const text = await lm.complete("Hi", { maxNewTokens: 4, topK: 1 });\n` +
        `console.log(JSON.stringify({ arch: lm.config.arch, ids, text }));\n` +
        `lm.dispose();\n`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-config", "--allow-read", script],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    const got = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.equal(got.arch, "mamba2");
    assert.deepEqual(got.ids, [72, 105]); // the demo tokenizer is byte level
    assert.equal(typeof got.text, "string");
    assert.ok(got.text.length > 0, "a greedy continuation of 4 tokens");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deno publish --dry-run passes, and every file it would publish is under JSR's 4 MB", async () => {
  const root = new URL("..", import.meta.url);
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["publish", "--dry-run", "--allow-dirty"],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, text);
  const files = [...text.matchAll(/(file:\/\/\S+)/g)].map((m) => new URL(m[1]));
  assert.ok(files.some((f) => f.pathname.endsWith("/mod.ts")), text);
  assert.ok(files.some((f) => f.pathname.endsWith("/models/demo/model.safetensors.index.json")));
  for (const f of files) {
    const { size } = await Deno.stat(f);
    assert.ok(size < 4_000_000, `${f.pathname} is ${size} bytes`);
  }
});
