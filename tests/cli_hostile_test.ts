// The CLI under careless and hostile use (issue #11): negative numbers as separate words, Ctrl-C
// (exit 130 after saving the state), output paths checked before the work, one record per input
// line with --stdin --json, and a hostile state file.
import assert from "node:assert/strict";
import { InferenceState } from "../mod.ts";
import { REPO_ROOT } from "./text_util.ts";

const MODEL = ["--model", `${REPO_ROOT}models/demo`, "--backend", "ref"];

async function cli(args: string[], stdin?: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${REPO_ROOT}cli.ts`, ...args],
    cwd: REPO_ROOT,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("cli: negative numbers as separate words parse and reach the range checks", async () => {
  const r = await cli([...MODEL, "--prompt", "x", "--max-new-tokens", "-5"]);
  assert.equal(r.code, 2, r.stderr);
  assert.doesNotMatch(r.stderr, /ambiguous/);
  assert.match(r.stderr, /--max-new-tokens must be an integer >= 0, got -5/);
  const t = await cli([...MODEL, "--prompt", "x", "--temperature", "-0.5"]);
  assert.equal(t.code, 2, t.stderr);
  assert.match(t.stderr, /--temperature: temperature must be/);
  // A valid negative value runs.
  const s = await cli([...MODEL, "--prompt", "x", "--seed", "-5", "--max-new-tokens", "3"]);
  assert.equal(s.code, 0, s.stderr);
  assert.equal(
    s.stdout,
    (await cli([...MODEL, "--prompt", "x", "--seed=-5", "--max-new-tokens", "3"])).stdout,
  );
  // Words that are not numbers still need the = form.
  const p = await cli([...MODEL, "--prompt", "-x"]);
  assert.equal(p.code, 2);
});

Deno.test("cli: an unwritable --save-state path fails before any work", async () => {
  for (const path of ["/nonexistent/dir/s.bin", REPO_ROOT]) {
    const r = await cli([
      ...MODEL,
      "--prompt",
      "x",
      "--max-new-tokens",
      "100000",
      "--save-state",
      path,
    ]);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /--save-state/);
    assert.equal(r.stdout, "", "nothing was generated");
    assert.doesNotMatch(r.stderr, /tok\/s/);
  }
});

Deno.test("cli: a hostile --load-state file is refused at once with a clear error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const header = new TextEncoder().encode(JSON.stringify({
      arch: "mamba2",
      nLayer: 1e9,
      batch: 1,
      convShape: [1, 384, 4],
      ssmShape: [1, 8, 48, 32],
    }));
    const bytes = new Uint8Array(120);
    bytes.set(new TextEncoder().encode("MAMBAST1"));
    new DataView(bytes.buffer).setUint32(8, header.length, true);
    bytes.set(header.subarray(0, 108), 12);
    await Deno.writeFile(`${dir}/s.bin`, bytes);
    const r = await cli([...MODEL, "--prompt", "x", "--load-state", `${dir}/s.bin`]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /^error: not a saved InferenceState/m);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: --stdin --json gives one closing record per input line, empty lines too", async () => {
  const r = await cli(
    [...MODEL, "--stdin", "--json", "--greedy", "--no-eos", "--max-new-tokens", "2"],
    "first\n\nthird\n\n",
  );
  assert.equal(r.code, 0, r.stderr);
  const recs = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
  const done = recs.filter((x) => x.done === true);
  assert.deepEqual(done, [
    { seq: 0, done: true, tokens: 2 },
    { seq: 1, done: true, tokens: 0 },
    { seq: 2, done: true, tokens: 2 },
    { seq: 3, done: true, tokens: 0 },
  ]);
  assert.deepEqual(recs.filter((x) => x.done === undefined).map((x) => x.seq), [0, 0, 2, 2]);
});

Deno.test("cli: Ctrl-C saves the state and exits 130", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const mode of ["prompt", "follow"]) {
      const file = `${dir}/${mode}.bin`;
      const input = mode === "prompt"
        ? ["--prompt", "The", "--max-new-tokens", "1000000", "--no-eos"]
        : ["--follow", "--max-new-tokens", "2"];
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${REPO_ROOT}cli.ts`,
          ...MODEL,
          ...input,
          "--json",
          "--save-state",
          file,
        ],
        cwd: REPO_ROOT,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const writer = child.stdin.getWriter();
      if (mode === "follow") await writer.write(new TextEncoder().encode("hello\n"));
      // Wait for the first record, then interrupt (stdin stays open: --follow is waiting on it).
      const reader = child.stdout.getReader();
      let seen = "";
      while (!seen.includes("\n")) {
        const { value, done } = await reader.read();
        if (done) break;
        seen += new TextDecoder().decode(value);
      }
      child.kill("SIGINT");
      while (!(await reader.read()).done) { /* drain */ }
      const status = await child.status;
      await writer.close().catch(() => {});
      const err = new TextDecoder().decode(
        (await new Response(child.stderr).arrayBuffer()) as ArrayBuffer,
      );
      assert.equal(status.code, 130, `${mode}: ${err}`);
      assert.match(err, /\(interrupted\)/);
      const state = InferenceState.fromBytes(await Deno.readFile(file));
      assert.equal(state.batch, 1);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
