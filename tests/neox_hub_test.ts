/**
 * `loadModel` and `GptNeoXLM.load` with Hub ids, against the fake Hub on 127.0.0.1
 * (tests/fake_hub.ts): a GPT-NeoX repository loads as a `GptNeoXLM` with its own tokenizer and
 * the same logits as from its directory, a Mamba repository as a `MambaLM`; the files land in the
 * cache once, and an offline load reads them from there.
 */

import assert from "node:assert/strict";
import { GptNeoXLM, loadModel, MambaLM } from "../mod.ts";
import { FakeHub, type HubFile } from "./fake_hub.ts";
import { neoxDir } from "./neox_util.ts";
import { oracleCases, oracleDir } from "./oracle_util.ts";
import { neoxTokenizerPath } from "./text_util.ts";

async function read(path: string, name = path.slice(path.lastIndexOf("/") + 1)): Promise<HubFile> {
  return { name, bytes: await Deno.readFile(path) };
}

Deno.test("loadModel with Hub ids: GPT-NeoX and Mamba repositories, then offline", async () => {
  const hub = new FakeHub();
  const cacheDir = await Deno.makeTempDir({ prefix: "mamba_hf_cache_" });
  const opts = { backend: "ref" as const, endpoint: hub.endpoint, cacheDir, token: false as const };
  try {
    const neox = `${neoxDir()}/neox_d64_h4_l2_rot25`;
    await hub.addCommit("EleutherAI/pythia-test", [
      await read(`${neox}/config.json`),
      await read(`${neox}/model.safetensors`),
      await read(neoxTokenizerPath(), "tokenizer.json"),
    ]);
    const mambaCase = oracleCases().find((c) => c.kind === "model")!.case;
    await hub.addCommit("state-spaces/mamba-test", [
      await read(`${oracleDir()}/${mambaCase}/config.json`),
      await read(`${oracleDir()}/${mambaCase}/model.safetensors`),
    ]);
    await hub.addCommit("EleutherAI/gpt-neox-20b", [
      await read(neoxTokenizerPath(), "tokenizer.json"),
    ]);
    const ids = [[3, 1, 4, 1, 5]];
    const fromHub = await loadModel("EleutherAI/pythia-test", opts);
    assert.ok(fromHub instanceof GptNeoXLM);
    assert.ok(fromHub.tokenizer, "the repository's tokenizer came along");
    const local = await loadModel(neox, { backend: "ref" });
    assert.deepEqual((await fromHub.forward(ids)).data, (await local.forward(ids)).data);
    fromHub.dispose();
    local.dispose();
    const direct = await GptNeoXLM.load("EleutherAI/pythia-test", opts);
    assert.ok(direct.tokenizer);
    direct.dispose();
    const mamba = await loadModel("state-spaces/mamba-test", opts);
    assert.ok(mamba instanceof MambaLM);
    mamba.dispose();
    // Everything is cached now: offline loads work with the Hub gone.
    hub.down = true;
    const offline = await loadModel("EleutherAI/pythia-test", { ...opts, offline: true });
    assert.ok(offline instanceof GptNeoXLM);
    offline.dispose();
  } finally {
    await hub.close();
    await Deno.remove(cacheDir, { recursive: true });
  }
});
