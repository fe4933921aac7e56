import assert from "node:assert/strict";
import { parseSafetensors, tensorToF32, WeightsError } from "../mod.ts";
import { f16ToF32, f32ArrayToF16, f32ToF16 } from "../src/half.ts";
import { f32Tensor, writeSafetensors } from "./safetensors_util.ts";
import { FileSource, MemorySource } from "../src/byte_source.ts";
import { parseConfig } from "../src/config.ts";
import { openSafetensors } from "../src/safetensors.ts";
import { buildWeights } from "../src/weights.ts";
import { oracleDir } from "./oracle_util.ts";

const good = () =>
  writeSafetensors({
    a: f32Tensor([2, 3], [1, 2, 3, 4, 5, 6]),
    b: {
      dtype: "F16",
      shape: [2],
      bytes: new Uint8Array(new Uint16Array([0x3c00, 0xc000]).buffer),
    },
    c: { dtype: "BF16", shape: [1], bytes: new Uint8Array(new Uint16Array([0x3fc0]).buffer) },
  });

Deno.test("safetensors: reads F32, F16 and BF16 tensors", () => {
  const st = parseSafetensors(good());
  assert.deepEqual([...st.tensors.keys()], ["a", "b", "c"]);
  assert.deepEqual(st.metadata, { format: "pt" });
  assert.deepEqual([...tensorToF32(st.tensors.get("a")!)], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual(st.tensors.get("a")!.shape, [2, 3]);
  assert.deepEqual([...tensorToF32(st.tensors.get("b")!)], [1, -2]);
  assert.deepEqual([...tensorToF32(st.tensors.get("c")!)], [1.5]);
});

function throwsWeights(bytes: Uint8Array, pattern: RegExp) {
  assert.throws(() => parseSafetensors(bytes, "t.safetensors"), (e: unknown) => {
    assert.ok(e instanceof WeightsError, `expected WeightsError, got ${e}`);
    assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("safetensors: truncated file", () => {
  throwsWeights(new Uint8Array(5), /truncated/);
  const bytes = good();
  throwsWeights(bytes.subarray(0, bytes.length - 3), /beyond the data|truncated/);
});

Deno.test("safetensors: header length beyond the file", () => {
  const bytes = good();
  new DataView(bytes.buffer).setBigUint64(0, BigInt(bytes.length), true);
  throwsWeights(bytes, /header length .* beyond the end/);
  new DataView(bytes.buffer).setBigUint64(0, 2n ** 63n, true);
  throwsWeights(bytes, /header length .* beyond the end/);
});

Deno.test("safetensors: header that is not JSON", () => {
  const bytes = good();
  bytes[8] = 0x7b + 1;
  throwsWeights(bytes, /not valid UTF-8 JSON/);
});

Deno.test("safetensors: overlapping data_offsets", () => {
  const bytes = writeSafetensors(
    { a: f32Tensor([2], [1, 2]), b: f32Tensor([2], [3, 4]) },
    (h) => {
      (h.b as { data_offsets: number[] }).data_offsets = [4, 12];
    },
  );
  throwsWeights(bytes, /overlapping/);
});

Deno.test("safetensors: out-of-range and malformed data_offsets", () => {
  throwsWeights(
    writeSafetensors({ a: f32Tensor([2], [1, 2]) }, (h) => {
      (h.a as { data_offsets: number[] }).data_offsets = [0, 800];
    }),
    /go beyond the data/,
  );
  throwsWeights(
    writeSafetensors({ a: f32Tensor([2], [1, 2]) }, (h) => {
      (h.a as { data_offsets: number[] }).data_offsets = [8, 0];
    }),
    /bad data_offsets/,
  );
  throwsWeights(
    writeSafetensors({ a: f32Tensor([2], [1, 2]) }, (h) => {
      (h.a as { data_offsets: number[] }).data_offsets = [-8, 0];
    }),
    /bad data_offsets/,
  );
});

Deno.test("safetensors: unknown dtype", () => {
  throwsWeights(
    writeSafetensors({ a: { dtype: "I64", shape: [1], bytes: new Uint8Array(8) } }),
    /unsupported dtype "I64"/,
  );
});

Deno.test("safetensors: shape that does not match the byte range", () => {
  throwsWeights(
    writeSafetensors({ a: f32Tensor([2], [1, 2]) }, (h) => {
      (h.a as { shape: number[] }).shape = [3];
    }),
    /shape \[3\] of F32 needs 12 bytes but data_offsets span 8/,
  );
  throwsWeights(
    writeSafetensors({ a: f32Tensor([2], [1, 2]) }, (h) => {
      (h.a as { shape: unknown }).shape = [2.5];
    }),
    /bad shape/,
  );
});

Deno.test("half: f16 encode/decode round-trips every finite pattern", () => {
  for (let h = 0; h < 65536; h++) {
    const v = f16ToF32(h);
    if (Number.isNaN(v)) continue;
    assert.equal(f32ToF16(v), h, `pattern ${h.toString(16)}`);
  }
  assert.equal(f32ToF16(65520), 0x7c00); // rounds to +inf
  assert.equal(f32ToF16(1 + 2 ** -11), 0x3c00); // ties to even
  assert.equal(f32ToF16(2 ** -25), 0); // below half the smallest subnormal
});

/** Both readers (whole file in memory, and streamed from a source) must refuse `bytes`. */
async function throwsBoth(bytes: Uint8Array, pattern: RegExp) {
  throwsWeights(bytes, pattern);
  await assert.rejects(openSafetensors(new MemorySource(bytes, "t.safetensors")), (e: unknown) => {
    assert.ok(e instanceof WeightsError, `expected WeightsError, got ${e}`);
    assert.match(e.message, /^t\.safetensors: /);
    assert.match(e.message, pattern);
    return true;
  });
}

Deno.test("safetensors: a header length one byte short leaves a byte no tensor covers", async () => {
  const bytes = good();
  const dv = new DataView(bytes.buffer);
  dv.setBigUint64(0, dv.getBigUint64(0, true) - 1n, true);
  await throwsBoth(bytes, /1 byte after the last tensor \("c"\) belong to no tensor/);
});

Deno.test("safetensors: junk appended after the data", async () => {
  const bytes = good();
  const junk = new Uint8Array(bytes.length + 1000);
  junk.set(bytes);
  await throwsBoth(junk, /1000 bytes after the last tensor \("c"\) belong to no tensor/);
});

Deno.test("safetensors: a gap between tensors", async () => {
  await throwsBoth(
    writeSafetensors({ a: f32Tensor([2], [1, 2]), b: f32Tensor([1], [3]) }, (h) => {
      (h.a as { shape: number[] }).shape = [1];
      (h.a as { data_offsets: number[] }).data_offsets = [0, 4];
    }),
    /tensor "b": bytes \[4, 8\) of the data before it belong to no tensor/,
  );
});

Deno.test("safetensors: the same tensor name twice in the header", async () => {
  const bytes = writeSafetensors({ a: f32Tensor([1], [1]), b: f32Tensor([1], [2]) });
  // Rename "b" to "a" in place: JSON.parse would keep the last silently.
  const text = new TextDecoder().decode(bytes);
  const at = text.indexOf('"b":');
  bytes[at + 1] = "a".charCodeAt(0);
  await throwsBoth(bytes, /tensor "a" appears twice in the header/);
});

Deno.test("safetensors: offsets not aligned to the element size", async () => {
  await throwsBoth(
    writeSafetensors({
      a: { dtype: "F16", shape: [1], bytes: new Uint8Array(2) },
      b: f32Tensor([1], [1]),
    }),
    /tensor "b": data_offsets begin 2 is not a multiple of the F32 size \(4 bytes\)/,
  );
});

Deno.test("safetensors: a streamed read gives the same tensors as the in-memory parse", async () => {
  const bytes = good();
  const entries = await openSafetensors(new MemorySource(bytes, "t.safetensors"));
  const st = parseSafetensors(bytes);
  assert.deepEqual([...entries.keys()], [...st.tensors.keys()]);
  for (const [k, e] of entries) {
    const b = new Uint8Array(e.byteLength);
    await e.readInto(b);
    assert.deepEqual(b, st.tensors.get(k)!.bytes);
    assert.deepEqual(e.shape, st.tensors.get(k)!.shape);
  }
});

Deno.test("load: config n_layer 1e9 beside 2-layer weights fails at once, naming n_layer", async () => {
  const dir = `${oracleDir()}/m1_d64_l7`;
  const raw = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  const src = await FileSource.open(`${dir}/model.safetensors`);
  try {
    const tensors = await openSafetensors(src);
    assert.equal(raw.n_layer, 2);
    for (const n of [1e9, 1e6, 3, 1]) {
      const cfg = parseConfig({ ...raw, n_layer: n });
      // buildWeights checks the layer count before it sizes anything by n_layer (no map of
      // 1e9 layers' tensor names is built, so this returns in microseconds).
      await assert.rejects(buildWeights(cfg, [tensors]), (e: unknown) => {
        assert.ok(e instanceof WeightsError, `expected WeightsError, got ${e}`);
        assert.match(e.message, new RegExp(`n_layer ${n}, but the weights hold 2 layers`));
        return true;
      });
    }
  } finally {
    src.close();
  }
});

Deno.test("half: f32ArrayToF16's fast path gives the bits of f32ToF16 (ties, carries, subnormals, inf, NaN)", () => {
  // Float32 patterns over every exponent and sign, with low bits that make ties and carries.
  const bits = new Uint32Array(1 << 16);
  const values = new Float32Array(bits.buffer);
  for (let start = 0; start < 2 ** 24; start += 7 * bits.length) {
    for (const low of [0x00, 0x01, 0x80, 0xff]) {
      for (let i = 0; i < bits.length; i++) bits[i] = (((start + 7 * i) << 8) | low) >>> 0;
      const fast = f32ArrayToF16(values);
      for (let i = 0; i < bits.length; i++) {
        if (fast[i] !== f32ToF16(values[i])) {
          assert.fail(`0x${bits[i].toString(16)}: ${fast[i]} != ${f32ToF16(values[i])}`);
        }
      }
    }
  }
});
