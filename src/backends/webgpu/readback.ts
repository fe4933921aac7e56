/**
 * Reading GPU buffers back to the host, without Deno's 10 ms wait.
 *
 * Deno's `GPUBuffer.mapAsync` (and `GPUQueue.onSubmittedWorkDone`) polls the device until it is
 * idle and then sleeps 10 ms on a timer before it resolves (`ext/webgpu/buffer.rs`), so every
 * read-back through a mapped buffer costs at least 10 ms after the GPU is done. That is most of a
 * short prompt's time to first token.
 *
 * `OffscreenCanvas.convertToBlob` on a canvas with a `"webgpu"` context has no such timer: it
 * copies the canvas's texture to a buffer, waits for that submission and encodes the pixels. So a
 * {@link ReadSlot} copies the bytes to read into the texture of a small canvas (one RGBA8 pixel
 * per 4 bytes, 64+ pixels a row so that rows stay 256-byte aligned), asks for a BMP (raw pixels
 * behind a header) and takes the bytes back out of the pixels: 0.3 ms for a small read on
 * lavapipe, against 11 ms for `mapAsync`.
 *
 * The canvas path is used only when a self-test at device creation reads back every byte value
 * exactly ({@link canvasReadbackWorks}); otherwise, or with `MAMBA_WEBGPU_READBACK=map`, slots use
 * mapped staging buffers.
 *
 * @module
 */

/** Bytes per RGBA8 pixel. */
const PIXEL = 4;
/** Pixels per texture row: a multiple of 64, so that a row is a multiple of 256 bytes. */
const ROW_ALIGN = 64;
/** Widest texture row used (pixels). */
const MAX_WIDTH = 4096;
/**
 * Largest read that goes through a canvas: encoding and copying the BMP costs the host ~1 ms a
 * MB (lavapipe: 3 ms for 0.2 MB against 13 ms mapped; 240 ms for 12.9 MB against 155 ms), so
 * beyond this the mapped buffer's fixed 10 ms is the smaller cost.
 */
const MAX_CANVAS_BYTES = 2 << 20;

/** Which read-back mechanism a device uses. */
export type ReadbackMode = "canvas" | "map";

/** A place to copy `bytes` bytes to, and read them back from after the copy was submitted. */
export interface ReadSlot {
  /** Capacity in bytes (a multiple of 4). */
  readonly bytes: number;
  /** Records a copy of `size` bytes (≤ {@link bytes}, a multiple of 4) of `src` at `offset`. */
  record(encoder: GPUCommandEncoder, src: GPUBuffer, offset: number, size: number): void;
  /** Call once the encoder holding the copy was submitted (starts a map where one is used). */
  submitted(): void;
  /** The copied bytes, as many as recorded (waits for the GPU). Each copy is read at most once. */
  read(): Promise<Uint8Array<ArrayBuffer>>;
  /** Waits for an unread copy, if any, and drops its result (before reusing or freeing). */
  settle(): Promise<void>;
  /** Frees the slot. */
  destroy(): void;
}

/** A slot of `bytes` bytes on `device`, by the given mechanism. */
export function readSlot(device: GPUDevice, bytes: number, mode: ReadbackMode): ReadSlot {
  const size = Math.max(PIXEL, Math.ceil(bytes / PIXEL) * PIXEL);
  const pixels = size / PIXEL;
  const maxDim = device.limits.maxTextureDimension2D;
  const width = Math.min(MAX_WIDTH, Math.ceil(pixels / ROW_ALIGN) * ROW_ALIGN);
  if (
    mode === "canvas" && size <= MAX_CANVAS_BYTES && width <= maxDim &&
    Math.ceil(pixels / width) <= maxDim
  ) {
    return new CanvasSlot(device, size, width);
  }
  return new MapSlot(device, size);
}

/** Reads through a mapped staging buffer (`mapAsync`: at least 10 ms each in Deno). */
class MapSlot implements ReadSlot {
  readonly bytes: number;
  readonly #staging: GPUBuffer;
  #size = 0;
  #done: Promise<void> | null = null;

  constructor(device: GPUDevice, bytes: number) {
    this.bytes = bytes;
    this.#staging = device.createBuffer({
      size: Math.max(16, bytes),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  record(encoder: GPUCommandEncoder, src: GPUBuffer, offset: number, size: number): void {
    encoder.copyBufferToBuffer(src, offset, this.#staging, 0, size);
    this.#size = size;
  }

  submitted(): void {
    this.#done = this.#staging.mapAsync(GPUMapMode.READ, 0, this.#size);
  }

  async read(): Promise<Uint8Array<ArrayBuffer>> {
    const done = this.#done;
    if (!done) throw new Error("ReadSlot.read: nothing was submitted");
    this.#done = null;
    await done; // a failed map (lost device) has nothing to unmap
    try {
      return new Uint8Array(this.#staging.getMappedRange(0, this.#size).slice(0));
    } finally {
      this.#staging.unmap();
    }
  }

  async settle(): Promise<void> {
    const done = this.#done;
    if (!done) return;
    this.#done = null;
    try {
      await done;
      this.#staging.unmap();
    } catch {
      // A lost device or a destroyed buffer: nothing to unmap.
    }
  }

  destroy(): void {
    this.#staging.destroy();
  }
}

/** Reads through a canvas texture and `convertToBlob` (see the module's notes). */
class CanvasSlot implements ReadSlot {
  readonly bytes: number;
  readonly #width: number;
  readonly #canvas: OffscreenCanvas;
  readonly #ctx: GPUCanvasContext;
  /** Bytes of the recorded copy, while one is pending. */
  #size: number | undefined;

  constructor(device: GPUDevice, bytes: number, width: number) {
    this.bytes = bytes;
    this.#width = width;
    const height = Math.ceil(bytes / PIXEL / width);
    this.#canvas = new OffscreenCanvas(width, height);
    const ctx = this.#canvas.getContext("webgpu") as GPUCanvasContext | null;
    if (!ctx) throw new Error("OffscreenCanvas has no webgpu context");
    ctx.configure({
      device,
      format: "rgba8unorm",
      usage: GPUTextureUsage.COPY_DST,
      alphaMode: "premultiplied",
    });
    this.#ctx = ctx;
  }

  record(encoder: GPUCommandEncoder, src: GPUBuffer, offset: number, size: number): void {
    const texture = this.#ctx.getCurrentTexture();
    const W = this.#width;
    const pixels = Math.ceil(size / PIXEL);
    const rows = Math.floor(pixels / W);
    // Whole rows, then the short last one (a single copy would read past the source's end).
    if (rows > 0) {
      encoder.copyBufferToTexture(
        { buffer: src, offset, bytesPerRow: W * PIXEL },
        { texture },
        [W, rows],
      );
    }
    const rest = pixels - rows * W;
    if (rest > 0) {
      encoder.copyBufferToTexture(
        { buffer: src, offset: offset + rows * W * PIXEL, bytesPerRow: W * PIXEL },
        { texture, origin: [0, rows] },
        [rest, 1],
      );
    }
    this.#size = size;
  }

  submitted(): void {}

  async read(): Promise<Uint8Array<ArrayBuffer>> {
    const size = this.#size;
    if (size === undefined) throw new Error("ReadSlot.read: nothing was recorded");
    this.#size = undefined;
    const blob = await this.#canvas.convertToBlob({ type: "image/bmp" });
    return pixelsOfBmp(new Uint8Array(await blob.arrayBuffer()), size);
  }

  settle(): Promise<void> {
    this.#size = undefined;
    return Promise.resolve();
  }

  destroy(): void {
    this.#ctx.unconfigure();
  }
}

/**
 * The first `bytes` bytes of a 32-bit BMP's pixels, top row first, each pixel's bytes in the
 * order of the texture (R, G, B, A), whatever channel order and row order the file uses.
 */
export function pixelsOfBmp(bmp: Uint8Array, bytes: number): Uint8Array<ArrayBuffer> {
  const v = new DataView(bmp.buffer, bmp.byteOffset, bmp.byteLength);
  const fail = (why: string): never => {
    throw new Error(`unexpected BMP from convertToBlob: ${why}`);
  };
  if (bmp.length < 54 || bmp[0] !== 0x42 || bmp[1] !== 0x4d) fail("no BM header");
  const dataAt = v.getUint32(10, true);
  const headerSize = v.getUint32(14, true);
  const width = v.getInt32(18, true);
  const height = v.getInt32(22, true);
  const bpp = v.getUint16(28, true);
  const compression = v.getUint32(30, true);
  if (bpp !== 32) fail(`${bpp} bits per pixel`);
  const rows = Math.abs(height);
  if (width <= 0 || dataAt + width * rows * PIXEL > bmp.length) fail("truncated pixels");
  // Where each texture byte (R, G, B, A) sits in a little-endian pixel word.
  let shifts = [16, 8, 0, 24]; // BI_RGB: B, G, R, A in memory
  if (compression === 3 || compression === 6) { // BI_BITFIELDS / BI_ALPHABITFIELDS
    // The masks follow the 40-byte info header; an alpha mask only in the larger headers.
    const count = headerSize >= 56 || compression === 6 ? 4 : 3;
    const masks = [0, 1, 2, 3].slice(0, count).map((i) => v.getUint32(54 + 4 * i, true));
    shifts = masks.map((m) => {
      const s = [0, 8, 16, 24].find((b) => m === (0xff << b) >>> 0);
      return s ?? fail(`channel mask 0x${m.toString(16)}`);
    });
    if (count === 3) shifts.push([0, 8, 16, 24].find((b) => !shifts.includes(b))!);
  } else if (compression !== 0) fail(`compression ${compression}`);
  const out = new Uint8Array(Math.ceil(bytes / PIXEL) * PIXEL);
  const out32 = new Uint32Array(out.buffer);
  const [sr, sg, sb, sa] = shifts;
  const need = out32.length;
  for (let r = 0, i = 0; r < rows && i < need; r++) {
    const row = height > 0 ? rows - 1 - r : r;
    // Copy the row so that its pixels can be read as aligned words.
    const at = dataAt + row * width * PIXEL;
    const n = Math.min(width, need - i);
    const words = new Uint32Array(bmp.slice(at, at + n * PIXEL).buffer);
    for (let x = 0; x < n; x++, i++) {
      const p = words[x];
      out32[i] = ((p >>> sr) & 255) | (((p >>> sg) & 255) << 8) | (((p >>> sb) & 255) << 16) |
        (((p >>> sa) & 255) << 24);
    }
  }
  return out.subarray(0, bytes);
}

/**
 * Whether canvas read-back works on `device`: every byte value, over several rows and a short
 * last row, comes back exactly. False where there is no `OffscreenCanvas` (or no `"webgpu"`
 * context for it), or when `MAMBA_WEBGPU_READBACK=map`.
 */
export async function canvasReadbackWorks(device: GPUDevice): Promise<boolean> {
  if (envMode() === "map" || typeof OffscreenCanvas === "undefined") return false;
  let src: GPUBuffer | null = null;
  let slot: ReadSlot | null = null;
  try {
    // 4096 + 300 pixels: a full row of the widest texture and a short one.
    const bytes = (MAX_WIDTH + 300) * PIXEL;
    const data = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i++) data[i] = (i * 167 + (i >> 8)) & 255;
    src = device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    device.queue.writeBuffer(src, 0, data);
    slot = readSlot(device, bytes, "canvas");
    if (!(slot instanceof CanvasSlot)) return false;
    const enc = device.createCommandEncoder();
    slot.record(enc, src, 0, bytes);
    device.queue.submit([enc.finish()]);
    slot.submitted();
    const got = await slot.read();
    return got.length === bytes && got.every((b, i) => b === data[i]);
  } catch {
    return false;
  } finally {
    slot?.destroy();
    src?.destroy();
  }
}

function envMode(): string | undefined {
  try {
    return Deno.env.get("MAMBA_WEBGPU_READBACK");
  } catch {
    return undefined; // no --allow-env: the default
  }
}
