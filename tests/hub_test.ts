/**
 * Hub ids against a fake Hub on 127.0.0.1 (tests/fake_hub.ts), which answers as the real one:
 * `resolve` URLs, etags, `x-repo-commit`, LFS files redirected to a CDN with `x-linked-etag`,
 * `Range`. Covered: the cache layout huggingface_hub uses (and reads), revisions, resuming a
 * dropped download, a 404, a corrupt download, offline mode, a cache a Python tool filled (read
 * offline and with the Hub down), the tokenizer fallback, a model with no tokenizer at all, and
 * the CLI offline. The models are small: oracle fixtures and the bundled demo model.
 */

import assert from "node:assert/strict";
import { HubError, MambaLM, NoTokenizerError } from "../mod.ts";
import type { DownloadProgress } from "../mod.ts";
import { Sha256 } from "../src/sha256.ts";
import { isHubId, isHubModel } from "../src/hub.ts";
import { hubCacheDir } from "../src/hf_cache.ts";
import { normalizeEtag } from "../src/download.ts";
import { downloadReporter, formatBytes } from "../src/progress_bar.ts";
import { etagOf, FakeHub, gitSha1, type HubFile, sha256Hex, writePythonCache } from "./fake_hub.ts";
import { oracleDir } from "./oracle_util.ts";
import { neoxTokenizerPath, REPO_ROOT } from "./text_util.ts";

const NEOX = "EleutherAI/gpt-neox-20b";

async function read(path: string, name = path.slice(path.lastIndexOf("/") + 1)): Promise<HubFile> {
  return { name, bytes: await Deno.readFile(path) };
}

/** config.json + model.safetensors of an oracle case (no tokenizer: as state-spaces repos). */
async function oracleFiles(name: string): Promise<HubFile[]> {
  const dir = `${oracleDir()}/${name}`;
  return [await read(`${dir}/config.json`), await read(`${dir}/model.safetensors`)];
}

/** The demo model as the Hub would hold it: config, two shards + index, tokenizer. */
async function demoFiles(): Promise<HubFile[]> {
  const dir = `${REPO_ROOT}models/demo`;
  const names = [
    "config.json",
    "model.safetensors.index.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "tokenizer.json",
  ];
  return await Promise.all(names.map((n) => read(`${dir}/${n}`)));
}

async function neoxFiles(): Promise<HubFile[]> {
  return [await read(neoxTokenizerPath(), "tokenizer.json")];
}

/** A fake Hub, a fresh cache directory, and cleanup. */
async function withHub(
  fn: (hub: FakeHub, cacheDir: string) => Promise<void>,
): Promise<void> {
  const hub = new FakeHub();
  const cacheDir = await Deno.makeTempDir({ prefix: "mamba_hf_cache_" });
  try {
    await fn(hub, cacheDir);
  } finally {
    await hub.close();
    await Deno.remove(cacheDir, { recursive: true });
  }
}

/** Logits of ids on the ref backend: the same numbers whatever directory the files came from. */
async function logits(lm: MambaLM, ids = [1, 2, 3, 4, 5]): Promise<Float32Array> {
  const { data } = await lm.forward([ids]);
  lm.dispose();
  return data;
}

const opts = (hub: FakeHub, cacheDir: string) => ({
  backend: "ref" as const,
  endpoint: hub.endpoint,
  cacheDir,
  token: false as const,
});

Deno.test("hub: incremental SHA-256 equals crypto.subtle.digest for every length and split", async () => {
  let seed = 7;
  const rand = () => (seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32;
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 1000, 65_537, 1_000_003]) {
    const data = new Uint8Array(n).map(() => rand() * 256);
    const want = await sha256Hex(data);
    const h = new Sha256();
    for (let o = 0; o < n;) {
      const step = 1 + Math.floor(rand() * 300);
      h.update(data.subarray(o, o + step));
      o += step;
    }
    assert.equal(h.hex(), want, `length ${n}`);
  }
});

Deno.test("hub: Hub ids and etags", () => {
  for (const id of ["state-spaces/mamba-130m", "EleutherAI/gpt-neox-20b", "a/b.c_d"]) {
    assert.ok(isHubId(id), id);
  }
  for (const id of ["mamba-130m", "a/b/c", "/a/b", "./a", "a/../b", "a--b/c", "a/b-", "a/ b", ""]) {
    assert.ok(!isHubId(id), id);
  }
  assert.equal(normalizeEtag('"abc"'), "abc");
  assert.equal(normalizeEtag('W/"abc"'), "abc");
  assert.equal(normalizeEtag("abc"), "abc");
});

Deno.test("hub: the cache directory as huggingface_hub finds it", () => {
  const names = ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "HOME"];
  const saved = names.map((n) => Deno.env.get(n));
  const set = (vars: Record<string, string>) => {
    for (const n of names) Deno.env.delete(n);
    for (const [k, v] of Object.entries(vars)) Deno.env.set(k, v);
  };
  try {
    set({ HOME: "/home/u" });
    assert.equal(hubCacheDir(), "/home/u/.cache/huggingface/hub");
    set({ HOME: "/home/u", XDG_CACHE_HOME: "/xdg" });
    assert.equal(hubCacheDir(), "/xdg/huggingface/hub");
    set({ HOME: "/home/u", XDG_CACHE_HOME: "/xdg", HF_HOME: "~/hf" });
    assert.equal(hubCacheDir(), "/home/u/hf/hub");
    set({ HOME: "/home/u", HF_HOME: "/hf", HUGGINGFACE_HUB_CACHE: "/old" });
    assert.equal(hubCacheDir(), "/old");
    set({ HOME: "/home/u", HF_HOME: "/hf", HUGGINGFACE_HUB_CACHE: "/old", HF_HUB_CACHE: "/c" });
    assert.equal(hubCacheDir(), "/c");
  } finally {
    names.forEach((n, i) =>
      saved[i] === undefined ? Deno.env.delete(n) : Deno.env.set(n, saved[i]!)
    );
  }
});

Deno.test("hub: an existing local directory of the form org/name stays local", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "mamba_local_" });
  const cwd = Deno.cwd();
  try {
    await Deno.mkdir(`${tmp}/org/name`, { recursive: true });
    Deno.chdir(tmp);
    assert.equal(await isHubModel("org/name"), false);
    assert.equal(await isHubModel("org/other"), true);
    assert.equal(await isHubModel("./org/name"), false);
  } finally {
    Deno.chdir(cwd);
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("hub: a Hub id downloads into huggingface_hub's cache layout and loads", async () => {
  await withHub(async (hub, cacheDir) => {
    const files = await oracleFiles("m1_d64_l7");
    const commit = await hub.addCommit("org/mamba-tiny", files);
    const neoxCommit = await hub.addCommit(NEOX, await neoxFiles());
    const events: DownloadProgress[] = [];
    const lm = await MambaLM.load("org/mamba-tiny", {
      ...opts(hub, cacheDir),
      token: "secret-token",
      onDownload: (p) => events.push(p),
    });
    // The tokenizer fell back to GPT-NeoX's (the repository has none).
    assert.ok(lm.tokenizer, "GPT-NeoX tokenizer");
    assert.equal(lm.tokenizer.encode("Hello world").length, 2);
    const got = await logits(lm);
    const want = await logits(
      await MambaLM.load(`${oracleDir()}/m1_d64_l7`, { backend: "ref", tokenizer: false }),
    );
    assert.deepEqual(got, want);

    // The layout, file by file, as huggingface_hub writes it.
    const root = `${cacheDir}/models--org--mamba-tiny`;
    assert.equal(await Deno.readTextFile(`${root}/refs/main`), commit);
    for (const f of files) {
      const etag = await etagOf(f.name, f.bytes);
      const link = `${root}/snapshots/${commit}/${f.name}`;
      assert.ok((await Deno.lstat(link)).isSymlink, `${f.name} is a symlink`);
      assert.equal(await Deno.readLink(link), `../../blobs/${etag}`);
      assert.deepEqual(await Deno.readFile(`${root}/blobs/${etag}`), f.bytes);
    }
    // Small files are named by their git blob sha1, LFS files by their sha256.
    assert.equal(await etagOf("config.json", files[0].bytes), await gitSha1(files[0].bytes));
    // What the repository does not have is remembered as huggingface_hub does.
    await Deno.stat(`${root}/.no_exist/${commit}/tokenizer.json`);
    const neoxRoot = `${cacheDir}/models--EleutherAI--gpt-neox-20b`;
    assert.equal(await Deno.readTextFile(`${neoxRoot}/refs/main`), neoxCommit);
    assert.ok((await Deno.lstat(`${neoxRoot}/snapshots/${neoxCommit}/tokenizer.json`)).isSymlink);

    // The token goes to the Hub, never to the CDN.
    const hubAuth = hub.requests("/resolve/").map((s) => s.authorization);
    assert.ok(hubAuth.length > 0 && hubAuth.every((a) => a === "Bearer secret-token"));
    const cdn = hub.requests("/blobs/");
    assert.equal(cdn.length, 1, "one CDN download: model.safetensors");
    assert.equal(cdn[0].authorization, null);

    // Progress: per file, non-decreasing, ending at the size.
    const st = events.filter((e) => e.file === "model.safetensors");
    assert.ok(st.length >= 2);
    assert.equal(st.at(-1)!.loaded, files[1].bytes.length);
    assert.equal(st.at(-1)!.total, files[1].bytes.length);
    assert.ok(st.every((e, i) => i === 0 || e.loaded >= st[i - 1].loaded));
    assert.ok(st.every((e) => e.repo === "org/mamba-tiny"));

    // Loading again downloads nothing: one HEAD per repository to see where main points.
    hub.seen.length = 0;
    await logits(await MambaLM.load("org/mamba-tiny", opts(hub, cacheDir)));
    assert.deepEqual(hub.seen.map((s) => s.method), ["HEAD", "HEAD"]);
  });
});

Deno.test("hub: revisions: a tag and a commit hash; a cached commit needs no network", async () => {
  await withHub(async (hub, cacheDir) => {
    const old = await hub.addCommit("org/m", await oracleFiles("m1_d32_l1_dtrank8"), ["v1"]);
    const cur = await hub.addCommit("org/m", await oracleFiles("m1_d64_l7"), ["main"]);
    await hub.addCommit(NEOX, await neoxFiles());
    const main = await MambaLM.load("org/m", opts(hub, cacheDir));
    assert.equal(main.config.dModel, 64);
    main.dispose();
    const v1 = await MambaLM.load("org/m", { ...opts(hub, cacheDir), revision: "v1" });
    assert.equal(v1.config.dModel, 32);
    v1.dispose();
    const root = `${cacheDir}/models--org--m`;
    assert.equal(await Deno.readTextFile(`${root}/refs/main`), cur);
    assert.equal(await Deno.readTextFile(`${root}/refs/v1`), old);
    // Every file came from the commit the revision resolved to.
    const paths = hub.requests("/org/m/resolve/").map((s) => s.path);
    assert.ok(paths.some((p) => p.includes(`/resolve/${old}/model.safetensors`)));

    // By commit hash, with the Hub down: the cached snapshot, no request for its files.
    hub.down = true;
    hub.seen.length = 0;
    const byHash = await MambaLM.load("org/m", { ...opts(hub, cacheDir), revision: old });
    assert.equal(byHash.config.dModel, 32);
    byHash.dispose();
    assert.equal(hub.requests("/org/m/").length, 0);

    await assert.rejects(
      () => MambaLM.load("org/m", { ...opts(hub, cacheDir), revision: "../../etc" }),
      (e) => e instanceof HubError && /revision/.test(e.message),
    );
    hub.down = false;
    await assert.rejects(
      () => MambaLM.load("org/m", { ...opts(hub, cacheDir), revision: "v9" }),
      (e) => e instanceof HubError && /org\/m/.test(e.message) && /"v9"/.test(e.message),
    );
  });
});

Deno.test("hub: a dropped connection mid-file resumes with Range", async () => {
  await withHub(async (hub, cacheDir) => {
    const files = await oracleFiles("m1_d64_l7");
    await hub.addCommit("org/m", files);
    await hub.addCommit(NEOX, await neoxFiles());
    const size = files[1].bytes.length;
    hub.drops.set("model.safetensors", { times: 2, after: 10_000 });
    const lm = await MambaLM.load("org/m", opts(hub, cacheDir));
    const got = hub.requests("/blobs/");
    assert.equal(got.length, 3, "two dropped attempts, then the rest");
    assert.equal(got[0].range, null);
    assert.equal(got[1].range, "bytes=10000-");
    assert.equal(got[2].range, "bytes=10000-");
    const want = await logits(
      await MambaLM.load(`${oracleDir()}/m1_d64_l7`, { backend: "ref", tokenizer: false }),
    );
    assert.deepEqual(await logits(lm), want);
    const blob = `${cacheDir}/models--org--m/blobs/${await sha256Hex(files[1].bytes)}`;
    assert.equal((await Deno.stat(blob)).size, size);
  });
});

Deno.test("hub: a download that keeps failing leaves its part, and the next load resumes it", async () => {
  await withHub(async (hub, cacheDir) => {
    const files = await oracleFiles("m1_d64_l7");
    await hub.addCommit("org/m", files);
    await hub.addCommit(NEOX, await neoxFiles());
    hub.drops.set("model.safetensors", { times: 6, after: 20_000 });
    await assert.rejects(
      () => MambaLM.load("org/m", opts(hub, cacheDir)),
      (e) =>
        e instanceof HubError && e.repo === "org/m" && e.file === "model.safetensors" &&
        /failed after 6 attempts/.test(e.message) && /resumes/.test(e.message),
    );
    const sha = await sha256Hex(files[1].bytes);
    const part = `${cacheDir}/models--org--m/blobs/${sha}.incomplete`;
    assert.equal((await Deno.stat(part)).size, 20_000);
    hub.seen.length = 0;
    const lm = await MambaLM.load("org/m", opts(hub, cacheDir));
    assert.deepEqual(hub.requests("/blobs/").map((s) => s.range), ["bytes=20000-"]);
    lm.dispose();
    await assert.rejects(() => Deno.stat(part), Deno.errors.NotFound);
  });
});

Deno.test("hub: a corrupt download is a checksum error naming the file, and is removed", async () => {
  await withHub(async (hub, cacheDir) => {
    const files = await oracleFiles("m1_d64_l7");
    await hub.addCommit("org/m", files);
    await hub.addCommit(NEOX, await neoxFiles());
    hub.corrupt.add("model.safetensors");
    await assert.rejects(
      () => MambaLM.load("org/m", opts(hub, cacheDir)),
      (e) =>
        e instanceof HubError && e.repo === "org/m" && e.file === "model.safetensors" &&
        /checksum mismatch/.test(e.message) && e.message.includes(`org/m/model.safetensors`),
    );
    const sha = await sha256Hex(files[1].bytes);
    const blobs = [...Deno.readDirSync(`${cacheDir}/models--org--m/blobs`)].map((e) => e.name);
    assert.ok(blobs.every((n) => !n.startsWith(sha)), `no blob, no part: ${blobs}`);
    hub.corrupt.clear();
    (await MambaLM.load("org/m", opts(hub, cacheDir))).dispose();
  });
});

Deno.test("hub: 404s: no repository, no config, no weights; a network failure", async () => {
  await withHub(async (hub, cacheDir) => {
    await assert.rejects(
      () => MambaLM.load("org/nothing", opts(hub, cacheDir)),
      (e) => e instanceof HubError && /org\/nothing: repository not found/.test(e.message),
    );
    await hub.addCommit("org/readme-only", [{ name: "README.md", bytes: new Uint8Array(4) }]);
    await assert.rejects(
      () => MambaLM.load("org/readme-only", opts(hub, cacheDir)),
      (e) =>
        e instanceof HubError && e.file === "config.json" &&
        /org\/readme-only has no config.json at revision "main"/.test(e.message),
    );
    const cfg = (await oracleFiles("m1_d64_l7"))[0];
    await hub.addCommit("org/no-weights", [cfg]);
    await assert.rejects(
      () => MambaLM.load("org/no-weights", opts(hub, cacheDir)),
      (e) =>
        e instanceof HubError && /org\/no-weights .* has no weights/.test(e.message) &&
        /model\.safetensors, model\.safetensors\.index\.json, pytorch_model\.bin, pytorch_model\.bin\.index\.json/
          .test(e.message),
    );
    // The Hub unreachable, nothing cached: says so, names the repository and file.
    const closed = { ...opts(hub, cacheDir), endpoint: "http://127.0.0.1:9" };
    await assert.rejects(
      () => MambaLM.load("org/elsewhere", closed),
      (e) =>
        e instanceof HubError && /cannot reach http:\/\/127\.0\.0\.1:9/.test(e.message) &&
        e.message.includes("org/elsewhere/config.json") && !/offline: true/.test(e.message),
    );
  });
});

Deno.test("hub: sharded weights (index + shards) and the repository's own tokenizer", async () => {
  await withHub(async (hub, cacheDir) => {
    const commit = await hub.addCommit("org/demo", await demoFiles());
    // The token from HF_TOKEN this time.
    Deno.env.set("HF_TOKEN", "env-token");
    let lm: MambaLM;
    try {
      lm = await MambaLM.load("org/demo", { ...opts(hub, cacheDir), token: undefined });
    } finally {
      Deno.env.delete("HF_TOKEN");
    }
    const auth = hub.requests("/resolve/").map((s) => s.authorization);
    assert.ok(auth.length > 0 && auth.every((a) => a === "Bearer env-token"), `${auth}`);
    assert.ok(hub.requests("/blobs/").every((s) => s.authorization === null));
    assert.equal(lm.tokenizer?.vocabSize, 257, "the demo's own byte-level tokenizer");
    const text = await lm.complete("The whale", { maxNewTokens: 8, topK: 1 });
    lm.dispose();
    const local = await MambaLM.load(`${REPO_ROOT}models/demo`, { backend: "ref" });
    assert.equal(text, await local.complete("The whale", { maxNewTokens: 8, topK: 1 }));
    local.dispose();
    assert.equal(hub.requests(NEOX).length, 0, "no fallback tokenizer needed");
    const snap = `${cacheDir}/models--org--demo/snapshots/${commit}`;
    for (const f of ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]) {
      assert.ok((await Deno.lstat(`${snap}/${f}`)).isSymlink, f);
    }
    await Deno.stat(`${cacheDir}/models--org--demo/.no_exist/${commit}/model.safetensors`);
  });
});

Deno.test("hub: offline mode and a cache filled by a Python tool", async () => {
  await withHub(async (hub, cacheDir) => {
    // Laid out by hand exactly as huggingface_hub would, then read with the Hub down.
    const files = await oracleFiles("m1_d64_l7");
    const commit = "0123456789abcdef0123456789abcdef01234567";
    const root = await writePythonCache(cacheDir, "state-spaces/mamba-tiny", commit, files);
    const neoxCommit = "fedcba9876543210fedcba9876543210fedcba98";
    await writePythonCache(cacheDir, NEOX, neoxCommit, await neoxFiles());
    const want = await logits(
      await MambaLM.load(`${oracleDir()}/m1_d64_l7`, { backend: "ref", tokenizer: false }),
    );
    hub.down = true;
    const offline = { ...opts(hub, cacheDir), offline: true };
    const lm = await MambaLM.load("state-spaces/mamba-tiny", offline);
    assert.ok(lm.tokenizer, "GPT-NeoX tokenizer from the cache");
    assert.deepEqual(await logits(lm), want);
    assert.equal(hub.seen.length, 0, "offline: not one request");

    // HF_HUB_OFFLINE=1 does the same; so does a commit hash with the Hub down.
    Deno.env.set("HF_HUB_OFFLINE", "1");
    try {
      assert.deepEqual(
        await logits(await MambaLM.load("state-spaces/mamba-tiny", opts(hub, cacheDir))),
        want,
      );
    } finally {
      Deno.env.delete("HF_HUB_OFFLINE");
    }
    assert.equal(hub.seen.length, 0);
    const byHash = await MambaLM.load("state-spaces/mamba-tiny", {
      ...opts(hub, cacheDir),
      revision: commit,
    });
    assert.deepEqual(await logits(byHash), want);

    // Online with the Hub down: the error names the file and says how to use the cache.
    await assert.rejects(
      () =>
        MambaLM.load("state-spaces/mamba-tiny", {
          ...opts(hub, cacheDir),
          endpoint: "http://127.0.0.1:9",
        }),
      (e) =>
        e instanceof HubError && e.message.includes("state-spaces/mamba-tiny/config.json") &&
        /offline: true/.test(e.message) && /HF_HUB_OFFLINE=1/.test(e.message),
    );
    // The Hub answering 503: the same advice (hub.down is still set).
    await assert.rejects(
      () => MambaLM.load("state-spaces/mamba-tiny", opts(hub, cacheDir)),
      (e) =>
        e instanceof HubError && /unavailable \(HTTP 503\)/.test(e.message) &&
        /HF_HUB_OFFLINE=1/.test(e.message),
    );
    // The repository gone from the Hub (or the token no longer valid): the same advice.
    hub.down = false;
    await assert.rejects(
      () => MambaLM.load("state-spaces/mamba-tiny", opts(hub, cacheDir)),
      (e) =>
        e instanceof HubError && /repository not found/.test(e.message) &&
        /offline: true/.test(e.message),
    );
    // Offline and not cached: says what is missing.
    await assert.rejects(
      () => MambaLM.load("state-spaces/other", offline),
      (e) => e instanceof HubError && /state-spaces\/other: offline/.test(e.message),
    );
    await assert.rejects(
      () => MambaLM.load("state-spaces/mamba-tiny", { ...offline, revision: "v2" }),
      (e) => e instanceof HubError && /revision "v2"/.test(e.message),
    );
    // Our downloads are what huggingface_hub expects: online, the same cache gains nothing new.
    assert.ok((await Deno.lstat(`${root}/snapshots/${commit}/model.safetensors`)).isSymlink);
  });
});

Deno.test("hub: without any tokenizer the model loads; token ids work, text says why not", async () => {
  await withHub(async (hub, cacheDir) => {
    const files = await oracleFiles("m1_d64_l7");
    await hub.addCommit("org/m", files); // and no GPT-NeoX repository on this Hub
    const lm = await MambaLM.load("org/m", opts(hub, cacheDir));
    try {
      assert.equal(lm.tokenizer, undefined);
      const ids = await lm.complete([1, 2, 3], { maxNewTokens: 4, topK: 1 });
      assert.equal(typeof ids, "string"); // no tokenizer: the text of ids is empty
      const tokens: number[] = [];
      for await (const t of lm.generate([1, 2, 3], { maxNewTokens: 4, topK: 1 })) tokens.push(t.id);
      assert.equal(tokens.length, 4);
      const why = (e: unknown) =>
        e instanceof NoTokenizerError && /org\/m has no tokenizer\.json/.test(e.message) &&
        e.message.includes(NEOX) && /token ids/.test(e.message);
      await assert.rejects(() => lm.complete("Hello"), why);
      await assert.rejects(() => lm.generateBatch(["a", [1]]), why);
      await assert.rejects(() => lm.complete([1], { stop: ["x"] }), why);
      await assert.rejects(async () => {
        for await (const _ of lm.generate("Hello")) break;
      }, why);
      assert.throws(() => lm.textStream(), why);
      assert.ok(why(lm.tokenizerError));
    } finally {
      lm.dispose();
    }
  });
});

Deno.test("hub: the CLI generates offline from a cache filled by a Python tool", async () => {
  const cacheDir = await Deno.makeTempDir({ prefix: "mamba_hf_cache_" });
  try {
    await writePythonCache(cacheDir, "org/demo", "a".repeat(40), await demoFiles());
    const run = async (model: string, env: Record<string, string>, more: string[] = []) => {
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          `${REPO_ROOT}cli.ts`,
          "--model",
          model,
          "--prompt",
          "The whale",
          "--max-new-tokens",
          "12",
          "--top-k",
          "1",
          "--backend",
          "ref",
          "--quiet",
          ...more,
        ],
        cwd: REPO_ROOT,
        env,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const d = new TextDecoder();
      return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
    };
    const env = { HF_HUB_CACHE: cacheDir, HF_HUB_OFFLINE: "1", HF_ENDPOINT: "http://127.0.0.1:9" };
    const hubRun = await run("org/demo", env);
    assert.equal(hubRun.code, 0, hubRun.stderr);
    const localRun = await run(`${REPO_ROOT}models/demo`, {});
    assert.equal(localRun.code, 0, localRun.stderr);
    assert.ok(hubRun.stdout.length > 1);
    assert.equal(hubRun.stdout, localRun.stdout);
    const missing = await run("org/absent", env);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /org\/absent: offline/);
    // --offline and --revision say the same without the environment variable.
    const flags = { HF_HUB_CACHE: cacheDir, HF_ENDPOINT: "http://127.0.0.1:9" };
    const flagRun = await run("org/demo", flags, ["--offline", "--revision", "a".repeat(40)]);
    assert.equal(flagRun.code, 0, flagRun.stderr);
    assert.equal(flagRun.stdout, localRun.stdout);
    const local = await run(`${REPO_ROOT}models/demo`, {}, ["--revision", "main"]);
    assert.equal(local.code, 2);
    assert.match(local.stderr, /--revision and --offline go with a Hub id/);
  } finally {
    await Deno.remove(cacheDir, { recursive: true });
  }
});

Deno.test("hub: the CLI downloads a Hub id, one line per file when stderr is not a terminal", async () => {
  await withHub(async (hub, cacheDir) => {
    await hub.addCommit("org/demo", await demoFiles());
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${REPO_ROOT}cli.ts`,
        "--model",
        "org/demo",
        "--prompt",
        "The",
        "--max-new-tokens",
        "4",
        "--backend",
        "ref",
      ],
      cwd: REPO_ROOT,
      env: { HF_HUB_CACHE: cacheDir, HF_ENDPOINT: hub.endpoint },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.match(stderr, /^downloading org\/demo\/model-00001-of-00002\.safetensors \(3\.6 MB\)$/m);
    assert.match(stderr, /^downloading org\/demo\/config\.json \(\d+ B\)$/m);
    assert.ok(!stderr.includes("\r"), "no bar redrawn in place");
  });
});

Deno.test("hub: the progress bar on a terminal", () => {
  assert.equal(formatBytes(999), "999 B");
  assert.equal(formatBytes(517_000_000), "517.0 MB");
  let text = "";
  const sink = (tty: boolean) => ({
    writeSync(p: Uint8Array) {
      text += new TextDecoder().decode(p);
      return p.length;
    },
    isTerminal: () => tty,
  });
  const report = downloadReporter(sink(true));
  report({ repo: "o/n", file: "w.bin", loaded: 0, total: 1000 });
  report({ repo: "o/n", file: "w.bin", loaded: 500, total: 1000 }); // within 100 ms: not drawn
  report({ repo: "o/n", file: "w.bin", loaded: 1000, total: 1000 });
  const lines = text.split("\r\x1b[K").filter((l) => l.length > 0);
  assert.equal(lines.length, 2);
  assert.match(lines[0], /^o\/n\/w\.bin \[-{30}\] 0% 0 B \/ 1\.0 kB /);
  assert.match(lines[1], /^o\/n\/w\.bin \[#{30}\] 100% 1\.0 kB \/ 1\.0 kB .*\n$/);
  text = "";
  const plain = downloadReporter(sink(false));
  plain({ repo: "o/n", file: "w.bin", loaded: 400, total: 1000 });
  plain({ repo: "o/n", file: "w.bin", loaded: 1000, total: 1000 });
  assert.equal(text, "downloading o/n/w.bin (1.0 kB), resuming at 400 B\n");
});

// The state-spaces repositories ship config.json + pytorch_model.bin and no tokenizer. Once the
// loader reads pytorch_model.bin, such a repository must come from the Hub and from a cache that
// Python filled. Until then this test says it is skipped.
const binReadable = await (async () => {
  const dir = await Deno.makeTempDir({ prefix: "mamba_bin_probe_" });
  try {
    await Deno.copyFile(`${oracleDir()}/m1_d64_l7/config.json`, `${dir}/config.json`);
    await Deno.copyFile(`${oracleDir()}/m1_d64_l7/pytorch_model.bin`, `${dir}/pytorch_model.bin`);
    (await MambaLM.load(dir, { backend: "ref", tokenizer: false })).dispose();
    return true;
  } catch {
    console.error(
      "hub: pytorch_model.bin does not load yet: the state-spaces-style test is skipped",
    );
    return false;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
})();

Deno.test({
  name:
    "hub: a state-spaces-style repository (pytorch_model.bin, no tokenizer), online and offline",
  ignore: !binReadable,
  fn: async () => {
    await withHub(async (hub, cacheDir) => {
      const dir = `${oracleDir()}/m1_d64_l7`;
      const files = [await read(`${dir}/config.json`), await read(`${dir}/pytorch_model.bin`)];
      const commit = await hub.addCommit("state-spaces/mamba-tiny", files);
      await hub.addCommit(NEOX, await neoxFiles());
      const want = await logits(await MambaLM.load(dir, { backend: "ref", tokenizer: false }));
      const lm = await MambaLM.load("state-spaces/mamba-tiny", opts(hub, cacheDir));
      assert.ok(lm.tokenizer, "GPT-NeoX's");
      assert.deepEqual(await logits(lm), want);
      const root = `${cacheDir}/models--state-spaces--mamba-tiny`;
      for (const f of ["model.safetensors", "model.safetensors.index.json"]) {
        await Deno.stat(`${root}/.no_exist/${commit}/${f}`);
      }
      // A cache laid out by Python, read by the CLI offline.
      const py = await Deno.makeTempDir({ prefix: "mamba_hf_cache_py_" });
      try {
        await writePythonCache(py, "state-spaces/mamba-tiny", "b".repeat(40), files);
        await writePythonCache(py, NEOX, "c".repeat(40), await neoxFiles());
        const out = await new Deno.Command(Deno.execPath(), {
          args: ["run", "-A", `${REPO_ROOT}cli.ts`, "--model", "state-spaces/mamba-tiny"]
            .concat(["--prompt-ids", "1,2,3", "--json", "--top-k", "1", "--backend", "ref"])
            .concat(["--max-new-tokens", "3", "--quiet"]),
          cwd: REPO_ROOT,
          env: { HF_HUB_CACHE: py, HF_HUB_OFFLINE: "1" },
          stdout: "piped",
          stderr: "piped",
        }).output();
        const stderr = new TextDecoder().decode(out.stderr);
        assert.equal(out.code, 0, stderr);
        const ids = new TextDecoder().decode(out.stdout).trim().split("\n").map((l) =>
          JSON.parse(l).id
        );
        assert.equal(ids.length, 3);
      } finally {
        await Deno.remove(py, { recursive: true });
      }
    });
  },
});
