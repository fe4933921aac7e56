import assert from "node:assert/strict";
import {
  canvasReadbackWorks,
  pixelsOfBmp,
  type ReadbackMode,
  readSlot,
} from "../src/backends/webgpu/readback.ts";
import { gpuContext } from "../src/backends/webgpu/device.ts";
import { Xoshiro128 } from "../src/rng.ts";
import { webgpuTestAdapter } from "./webgpu_util.ts";

const ignore = !(await webgpuTestAdapter("webgpu read-back tests"));

/** A 32-bit BMP of `pixels` (RGBA bytes, rows of `width`), written the ways encoders do. */
function bmpOf(
  rgba: Uint8Array,
  width: number,
  opts: { topDown?: boolean; bitfields?: boolean; v4?: boolean },
): Uint8Array {
  const height = rgba.length / 4 / width;
  const info = opts.v4 ? 108 : 40;
  const masks = opts.bitfields && !opts.v4 ? 12 : 0;
  const dataAt = 14 + info + masks;
  const out = new Uint8Array(dataAt + rgba.length);
  const v = new DataView(out.buffer);
  out.set([0x42, 0x4d]);
  v.setUint32(2, out.length, true);
  v.setUint32(10, dataAt, true);
  v.setUint32(14, info, true);
  v.setInt32(18, width, true);
  v.setInt32(22, opts.topDown ? -height : height, true);
  v.setUint16(26, 1, true);
  v.setUint16(28, 32, true);
  v.setUint32(30, opts.bitfields ? 3 : 0, true);
  // Bitfields: pixels stored as A, B, G, R from the high byte down (R in the low byte),
  // unlike BI_RGB's B, G, R, A in memory.
  if (opts.bitfields) {
    [0x000000ff, 0x0000ff00, 0x00ff0000, 0xff000000].forEach((m, i) => {
      if (i < 3 || opts.v4) v.setUint32(54 + 4 * i, m, true);
    });
  }
  for (let r = 0; r < height; r++) {
    const row = opts.topDown ? r : height - 1 - r;
    for (let x = 0; x < width; x++) {
      const s = (r * width + x) * 4;
      const d = dataAt + (row * width + x) * 4;
      const [R, G, B, A] = rgba.subarray(s, s + 4);
      out.set(opts.bitfields ? [R, G, B, A] : [B, G, R, A], d);
    }
  }
  return out;
}

Deno.test("pixelsOfBmp: every layout encoders write gives back the texture's bytes", () => {
  const rng = new Xoshiro128(4);
  const rgba = Uint8Array.from({ length: 4 * 5 * 3 }, () => Math.floor(rng.nextFloat() * 256));
  for (const opts of [{}, { topDown: true }, { bitfields: true }, { bitfields: true, v4: true }]) {
    const bmp = bmpOf(rgba, 5, opts);
    assert.deepEqual(pixelsOfBmp(bmp, rgba.length), rgba, JSON.stringify(opts));
    // A read shorter than the image, not a multiple of 4.
    assert.deepEqual(pixelsOfBmp(bmp, 22), rgba.subarray(0, 22), JSON.stringify(opts));
  }
  const bad = bmpOf(rgba, 5, {});
  new DataView(bad.buffer).setUint16(28, 24, true);
  assert.throws(() => pixelsOfBmp(bad, 8), /24 bits per pixel/);
  assert.throws(() => pixelsOfBmp(new Uint8Array(10), 8), /no BM header/);
  assert.throws(() => pixelsOfBmp(bmpOf(rgba, 5, {}).subarray(0, 80), 8), /truncated/);
});

Deno.test({
  name: "webgpu read-back: canvas and mapped slots read the same bytes at any size and offset",
  ignore,
  fn: async () => {
    const { device, readback } = await gpuContext();
    assert.equal(readback, await canvasReadbackWorks(device) ? "canvas" : "map");
    const rng = new Xoshiro128(9);
    // Under a row, a row, rows plus a short one, the widest rows, past the canvas limit.
    for (const bytes of [4, 12, 256, 260, 4096 * 4 + 12, 50280 * 4, (2 << 20) + 64]) {
      const offset = 16 * Math.floor(rng.nextFloat() * 4);
      const data = Uint8Array.from({ length: bytes }, () => Math.floor(rng.nextFloat() * 256));
      const src = device.createBuffer({
        size: offset + bytes,
        usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      });
      device.queue.writeBuffer(src, offset, data);
      for (const mode of ["canvas", "map"] as ReadbackMode[]) {
        const slot = readSlot(device, bytes, mode);
        for (let round = 0; round < 2; round++) {
          const enc = device.createCommandEncoder();
          slot.record(enc, src, offset, bytes);
          device.queue.submit([enc.finish()]);
          slot.submitted();
          const got = await slot.read();
          assert.equal(got.length, bytes);
          assert.ok(got.every((b, i) => b === data[i]), `${mode} ${bytes} bytes round ${round}`);
        }
        await assert.rejects(() => slot.read(), /nothing was/);
        await slot.settle();
        slot.destroy();
      }
      src.destroy();
    }
  },
});
