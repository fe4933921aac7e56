import assert from "node:assert/strict";
import { MemorySource } from "../src/byte_source.ts";
import { parseConfig } from "../src/config.ts";
import { WeightsError } from "../src/errors.ts";
import { PickleError } from "../src/pickle.ts";
import type { TensorEntry } from "../src/tensor_entry.ts";
import { openTorchCheckpoint } from "../src/torch_checkpoint.ts";
import { buildWeights, loadWeights, openCheckpoint } from "../src/weights.ts";
import { BIN_FIXTURES, oracleDir } from "./oracle_util.ts";
import { collect, torchSave, writeZip } from "./torch_save_util.ts";

const fileUrl = (p: string) => new URL(`file://${p}`);

async function readAll(entry: TensorEntry): Promise<Uint8Array> {
  const b = new Uint8Array(entry.byteLength);
  await entry.readInto(b);
  return b;
}

for (const [c, f] of BIN_FIXTURES) {
  Deno.test(`torch checkpoint: ${c}/${f} holds the weights of its model.safetensors`, async () => {
    const cfg = parseConfig(JSON.parse(await Deno.readTextFile(`${oracleDir()}/${c}/config.json`)));
    const st = await openCheckpoint(fileUrl(`${oracleDir()}/${c}/model.safetensors`));
    const bin = await openCheckpoint(fileUrl(`${oracleDir()}/${c}/${f}`));
    try {
      assert.deepEqual([...bin.tensors.keys()].sort(), [...st.tensors.keys()].sort());
      const a = await buildWeights(cfg, [st.tensors], "f32");
      const b = await buildWeights(cfg, [bin.tensors], "f32");
      assert.deepEqual(b, a);
      // lm_head.weight views the embedding's storage, and is read once.
      assert.equal(
        bin.tensors.get("lm_head.weight")!.key,
        bin.tensors.get("backbone.embedding.weight")!.key,
      );
      assert.equal(b.lmHead, b.embedding);
      if (f === "pytorch_model.mixed.bin") {
        assert.equal(bin.tensors.get("backbone.layers.0.mixer.A_log")!.dtype, "F32");
        assert.equal(bin.tensors.get("backbone.layers.0.mixer.in_proj.weight")!.dtype, "F16");
      }
    } finally {
      st.close();
      bin.close();
    }
  });
}

/** A zip holding `pickle` as data.pkl, as if torch.save had written it. */
function zipWithPickle(pickle: Uint8Array): Promise<Uint8Array> {
  return collect((sink) => writeZip(sink, [{ name: "archive/data.pkl", data: pickle }]));
}

/** A pickle: PROTO 2, GLOBAL module.name, one string argument, REDUCE, STOP. */
function callPickle(module: string, name: string, arg: string): Uint8Array {
  const enc = new TextEncoder();
  const a = enc.encode(arg);
  return new Uint8Array([
    0x80,
    2,
    0x63,
    ...enc.encode(`${module}\n${name}\n`),
    0x58,
    a.length,
    0,
    0,
    0,
    ...a,
    0x85,
    0x52,
    0x2e,
  ]);
}

async function rejectsPickle(bytes: Uint8Array, pattern: RegExp) {
  await assert.rejects(openTorchCheckpoint(new MemorySource(bytes, "evil.bin")), (e: unknown) => {
    assert.ok(e instanceof PickleError, `expected PickleError, got ${e}`);
    assert.match(e.message, /^evil\.bin/);
    assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("torch checkpoint: a pickle asking for os.system, eval or any other global is refused and nothing runs", async () => {
  const marker = await Deno.makeTempFile();
  await Deno.remove(marker);
  const attacks: [string, string][] = [
    ["os", "system"],
    ["posix", "system"],
    ["nt", "system"],
    ["builtins", "eval"],
    ["builtins", "exec"],
    ["__builtin__", "eval"],
    ["subprocess", "Popen"],
    ["torch", "load"],
    ["torch._utils", "_rebuild_device_tensor_from_numpy"],
    ["collections", "defaultdict"],
  ];
  for (const [module, name] of attacks) {
    const pkl = callPickle(module, name, `touch ${marker}`);
    await rejectsPickle(
      await zipWithPickle(pkl),
      new RegExp(`GLOBAL at byte 2: global ${module}\\.${name} is not allowed`),
    );
  }
  // The legacy stream is refused the same way, in its object pickle.
  const legacy = await torchSave({ a: { dtype: "F32", shape: [1], bytes: new Uint8Array(4) } }, {
    format: "legacy",
    tweakPickle: () => callPickle("os", "system", `touch ${marker}`),
  });
  await rejectsPickle(legacy, /global os\.system is not allowed/);
  // Opcodes torch.save does not write are refused by name, whatever they would do.
  await rejectsPickle(
    await zipWithPickle(
      new Uint8Array([
        0x80,
        2,
        0x8c,
        2,
        0x6f,
        0x73,
        0x8c,
        6,
        ...new TextEncoder().encode("system"),
        0x93,
        0x2e,
      ]),
    ),
    /STACK_GLOBAL at byte 14: opcode is not allowed/,
  );
  await rejectsPickle(
    await zipWithPickle(
      new Uint8Array([0x80, 2, 0x28, 0x69, ...new TextEncoder().encode("os\nsystem\n"), 0x2e]),
    ),
    /INST at byte 3/,
  );
  await rejectsPickle(
    await zipWithPickle(new Uint8Array([0x80, 2, 0xff, 0x2e])),
    /0xff at byte 2: unknown opcode/,
  );
  // An allowed global that is not a function cannot be called either.
  await rejectsPickle(
    await zipWithPickle(callPickle("torch", "FloatStorage", "x")),
    /torch\.FloatStorage cannot be called/,
  );
  let ran = true;
  try {
    await Deno.stat(marker);
  } catch {
    ran = false;
  }
  assert.equal(ran, false, "a refused pickle ran a command");
});

const f32 = (...v: number[]) => new Uint8Array(new Float32Array(v).buffer);
const bits16 = (...v: number[]) => new Uint8Array(new Uint16Array(v).buffer);

async function tensorsOf(bytes: Uint8Array): Promise<Map<string, TensorEntry>> {
  return await openTorchCheckpoint(new MemorySource(bytes, "t.bin"));
}

Deno.test("torch checkpoint: storage offsets, strided views, shared storages, mixed dtypes, every container variant", async () => {
  const storage = f32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11);
  const tensors = {
    base: { dtype: "F32", shape: [3, 4], bytes: storage },
    // the same view of base's storage: a tied weight
    tied: { dtype: "F32", shape: [3, 4], viewOf: "base" },
    // rows 1..2 of a storage: a storage offset
    rows: { dtype: "F32", shape: [2, 4], bytes: storage, offset: 4 },
    // a storage seen transposed: strides (1, 4)
    t: { dtype: "F32", shape: [4, 3], bytes: storage, stride: [1, 4] },
    // every other element from the second: [1, 3]
    step: { dtype: "F32", shape: [2], bytes: storage, offset: 1, stride: [2] },
    half: { dtype: "F16", shape: [2], bytes: bits16(0x3c00, 0xc000) },
    bf: { dtype: "BF16", shape: [1, 1], bytes: bits16(0x3fc0) },
    empty: { dtype: "F32", shape: [0, 4], bytes: new Uint8Array(0) },
  };
  const variants = {
    "zip": {},
    "zip64": { zip64: true },
    "deflated": { deflate: true },
    "ordered dict with _metadata, parameters, long memo": {
      ordered: true,
      parameter: true,
      longMemo: true,
    },
    "legacy": { format: "legacy" as const },
  };
  for (const [label, opts] of Object.entries(variants)) {
    const m = await tensorsOf(await torchSave(tensors, opts));
    const read = async (n: string) => await readAll(m.get(n)!);
    assert.deepEqual(await read("base"), storage, label);
    assert.deepEqual(await read("tied"), storage, label);
    assert.equal(m.get("tied")!.key, m.get("base")!.key, "a tied view is read once");
    assert.deepEqual(await read("rows"), storage.slice(16), label);
    assert.deepEqual(await read("t"), f32(0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11), label);
    assert.deepEqual(await read("step"), f32(1, 3), label);
    assert.deepEqual(await read("half"), bits16(0x3c00, 0xc000), label);
    assert.equal(m.get("half")!.dtype, "F16");
    assert.equal(m.get("bf")!.dtype, "BF16");
    assert.deepEqual(m.get("bf")!.shape, [1, 1]);
    assert.deepEqual(await read("bf"), bits16(0x3fc0), label);
    assert.equal(m.get("empty")!.byteLength, 0);
    assert.equal(
      m.get("rows")!.key === m.get("base")!.key,
      false,
      "different views, different keys",
    );
  }
});

/** `bytes` with the first occurrence of `from` replaced by `to` (same length). */
function replaceBytes(bytes: Uint8Array, from: number[], to: number[]): Uint8Array {
  const out = bytes.slice();
  for (let i = 0; i + from.length <= out.length; i++) {
    if (from.every((b, k) => out[i + k] === b)) {
      out.set(to, i);
      return out;
    }
  }
  throw new Error("pattern not found");
}

async function rejectsWeights(bytes: Uint8Array, pattern: RegExp) {
  await assert.rejects(openTorchCheckpoint(new MemorySource(bytes, "t.bin")), (e: unknown) => {
    assert.ok(e instanceof WeightsError, `expected WeightsError, got ${e}`);
    assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("torch checkpoint: broken files give WeightsErrors that say what is wrong", async () => {
  const one = { a: { dtype: "F32", shape: [2], bytes: f32(1, 2) } };
  await rejectsWeights(
    await torchSave({ a: { dtype: "F32", shape: [2], bytes: f32(1) } }),
    /tensor "a": shape \[2\], stride \[1\] at offset 0 reach beyond its storage of 1 elements/,
  );
  await rejectsWeights(
    await torchSave({ a: { dtype: "LongStorage", shape: [1], bytes: new Uint8Array(8) } }),
    /tensor "a": storage type torch\.LongStorage is not supported/,
  );
  // Distinct views of one storage that overlap: a small file could make loading allocate many
  // times its size, so they are refused.
  await rejectsWeights(
    await torchSave({
      a: { dtype: "F32", shape: [2], bytes: f32(1, 2) },
      b: { dtype: "F32", shape: [1], viewOf: "a", offset: 1 },
    }),
    /tensor "b": the views of storage 0 add up to 12 bytes, more than its 8 \(overlapping views/,
  );
  const good = await torchSave(one);
  await rejectsWeights(good.subarray(0, good.length - 30), /zip|end-of-central-directory/);
  await rejectsWeights(new Uint8Array(100), /not a torch\.save file/);
  // byteorder "big"
  const big = await collect((sink) =>
    writeZip(sink, [
      { name: "archive/data.pkl", data: new Uint8Array([0x80, 2, 0x7d, 0x2e]) },
      { name: "archive/byteorder", data: new TextEncoder().encode("big") },
    ])
  );
  await rejectsWeights(big, /byteorder is "big"/);
  // a root that is not a dict, a value that is not a tensor
  await rejectsWeights(
    await zipWithPickle(new Uint8Array([0x80, 2, 0x5d, 0x2e])),
    /not a dict of tensors/,
  );
  await rejectsWeights(
    await zipWithPickle(
      new Uint8Array([0x80, 2, 0x7d, 0x58, 1, 0, 0, 0, 0x61, 0x4b, 1, 0x73, 0x2e]),
    ),
    /"a" is not a tensor/,
  );
  // a storage without its entry
  const noData = await torchSave(one, {
    // the storage key "0" becomes "9"
    tweakPickle: (p) => replaceBytes(p, [0x58, 1, 0, 0, 0, 0x30], [0x58, 1, 0, 0, 0, 0x39]),
  });
  await rejectsWeights(noData, /storage 9: no entry archive\/data\/9/);
  // a legacy file cut inside its storages
  const legacy = await torchSave(one, { format: "legacy" });
  await rejectsWeights(legacy.subarray(0, legacy.length - 1), /runs past the end of the file/);
});

Deno.test("loadWeights: pytorch_model.bin and its sharded index load like model.safetensors", async () => {
  const c = "m1_d64_l7";
  const cfg = parseConfig(JSON.parse(await Deno.readTextFile(`${oracleDir()}/${c}/config.json`)));
  const want = await loadWeights(cfg, fileUrl(`${oracleDir()}/${c}/`), "f16");
  const dir = await Deno.makeTempDir();
  try {
    await Deno.copyFile(`${oracleDir()}/${c}/pytorch_model.bin`, `${dir}/pytorch_model.bin`);
    assert.deepEqual(await loadWeights(cfg, fileUrl(`${dir}/`), "f16"), want);
    // Two shards written by the test writer, listed in pytorch_model.bin.index.json.
    await Deno.remove(`${dir}/pytorch_model.bin`);
    const st = await openCheckpoint(fileUrl(`${oracleDir()}/${c}/model.safetensors`));
    const names = [...st.tensors.keys()].filter((n) => n !== "lm_head.weight");
    const weightMap: Record<string, string> = {};
    for (const [i, part] of [names.slice(0, 20), names.slice(20)].entries()) {
      const tensors: Record<string, { dtype: string; shape: number[]; bytes: Uint8Array }> = {};
      for (const n of part) {
        const t = st.tensors.get(n)!;
        tensors[n] = { dtype: t.dtype, shape: [...t.shape], bytes: await readAll(t) };
        weightMap[n] = `pytorch_model-0000${i + 1}-of-00002.bin`;
      }
      await Deno.writeFile(
        `${dir}/pytorch_model-0000${i + 1}-of-00002.bin`,
        await torchSave(tensors, { deflate: i === 1 }),
      );
    }
    st.close();
    await Deno.writeTextFile(
      `${dir}/pytorch_model.bin.index.json`,
      JSON.stringify({ weight_map: weightMap }),
    );
    const progress: number[] = [];
    assert.deepEqual(
      await loadWeights(cfg, fileUrl(`${dir}/`), "f16", (n) => progress.push(n)),
      want,
    );
    assert.deepEqual(progress, [1, 2]);
    // A shard name that leaves the directory is refused.
    await Deno.writeTextFile(
      `${dir}/pytorch_model.bin.index.json`,
      JSON.stringify({ weight_map: { a: "../x.bin" } }),
    );
    await assert.rejects(
      loadWeights(cfg, fileUrl(`${dir}/`)),
      /shard "\.\.\/x\.bin" is not a file name/,
    );
    await Deno.remove(`${dir}/pytorch_model.bin.index.json`);
    await assert.rejects(loadWeights(cfg, fileUrl(`${dir}/`)), (e: unknown) => {
      assert.ok(e instanceof WeightsError);
      assert.match(
        e.message,
        /no weights in .*model\.safetensors, model\.safetensors\.index\.json, pytorch_model\.bin/,
      );
      return true;
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadWeights over http: Range requests per tensor; a server without Range is read whole", async () => {
  const c = "m1_d64_l7";
  const cfg = parseConfig(JSON.parse(await Deno.readTextFile(`${oracleDir()}/${c}/config.json`)));
  const want = await loadWeights(cfg, fileUrl(`${oracleDir()}/${c}/`), "f32");
  let ranged = 0;
  let honourRange = true;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path !== "/m/pytorch_model.bin" && path !== "/m/config.json") {
      return new Response("not found", { status: 404 });
    }
    const bytes = await Deno.readFile(`${oracleDir()}/${c}/${path.slice(3)}`);
    const range = /^bytes=(\d+)-(\d+)$/.exec(req.headers.get("range") ?? "");
    if (req.method === "HEAD") return new Response(null, { status: 200 });
    if (!range || !honourRange) return new Response(bytes);
    ranged++;
    const [a, b] = [Number(range[1]), Number(range[2])];
    return new Response(bytes.slice(a, b + 1), {
      status: 206,
      headers: { "content-range": `bytes ${a}-${b}/${bytes.length}` },
    });
  });
  try {
    const url = new URL(`http://127.0.0.1:${server.addr.port}/m/`);
    assert.deepEqual(await loadWeights(cfg, url, "f32"), want);
    // the size probe, the zip directory, data.pkl, byteorder and each storage
    assert.ok(ranged > 20, `only ${ranged} range requests`);
    honourRange = false;
    assert.deepEqual(await loadWeights(cfg, url, "f32"), want);
  } finally {
    await server.shutdown();
  }
});
