import assert from "node:assert/strict";
import { parseSafetensors, tensorToF32, WeightsError } from "../mod.ts";
import { f16ToF32, f32ToF16 } from "../src/half.ts";
import { f32Tensor, writeSafetensors } from "./safetensors_util.ts";

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
