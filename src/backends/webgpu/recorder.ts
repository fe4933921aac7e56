/**
 * Command recording for the `webgpu` backend: buffers with ids, uniform parameter blocks and bind
 * groups cached by content (so a shape seen before costs no allocation), dispatches recorded into
 * one open compute pass, and submission only when a result is read (or a write must be ordered).
 *
 * @module
 */

import { BackendError, DeviceLostError } from "../../errors.ts";
import type { GpuContext } from "./device.ts";
import { type ReadSlot, readSlot } from "./readback.ts";
import { checkCompiled, type Kernel } from "./shaders.ts";

/** A GPU buffer with a small integer id (for cache keys). */
export interface Buf {
  /** The buffer. */
  readonly buffer: GPUBuffer;
  /** Unique per buffer. */
  readonly id: number;
  /** Size in bytes. */
  readonly size: number;
}

/** A buffer range bound to a shader binding. */
export interface Range {
  /** The buffer. */
  readonly buf: Buf;
  /** Byte offset (a multiple of the storage offset alignment). */
  readonly offset: number;
  /** Byte size. */
  readonly size: number;
}

/** What a binding slot takes: a whole buffer or a range of one. */
export type Bindable = Buf | Range;

/** A recorded dispatch, ready to replay (see {@link Recorder.capture}). */
export interface Command {
  /** Pipeline. */
  readonly pipeline: GPUComputePipeline;
  /** Its bind group. */
  readonly group: GPUBindGroup;
  /** Workgroups. */
  readonly x: number;
  /** Workgroups. */
  readonly y: number;
  /** Workgroups. */
  readonly z: number;
  /** The kernel's label (for profiles). */
  readonly label: string;
}

/** Field types of a uniform parameter block: `u` u32, `i` i32, `f` f32. */
export type ParamSig = string;

const STORAGE = 0x80 | 0x4 | 0x8; // STORAGE | COPY_SRC | COPY_DST
let nextBufId = 1;

const errors = new WeakMap<GPUDevice, string[]>();

/** Records and submits GPU work for one backend. */
export class Recorder {
  /** The device context. */
  readonly ctx: GpuContext;
  /** The device. */
  readonly device: GPUDevice;
  #enc: GPUCommandEncoder | null = null;
  #pass: GPUComputePassEncoder | null = null;
  #uniforms = new Map<string, Buf>();
  #groups = new Map<string, GPUBindGroup>();
  #owned = new Set<Buf>();
  /** Idle read-back slots by capacity (a power of two), for {@link read}. */
  #slots = new Map<number, ReadSlot[]>();
  /** Dispatches recorded since creation (for profiling). */
  dispatches = 0;
  #timing: { set: GPUQuerySet; max: number; used: number; missed: number; resolve: Buf } | null =
    null;
  #captured: Command[] | null = null;
  #profile: { set: GPUQuerySet; max: number; labels: string[]; resolve: Buf } | null = null;
  /** Why the device was lost, once it was (then nothing recorded here runs any more). */
  lostReason: string | undefined;

  /** Wraps a device context. */
  constructor(ctx: GpuContext) {
    this.ctx = ctx;
    this.device = ctx.device;
    this.device.lost.then((info) => {
      this.lostReason = `WebGPU device lost (${info.reason}${
        info.message ? `: ${info.message}` : ""
      }); the weights and states held on it are gone`;
    });
    if (!errors.has(this.device)) {
      const list: string[] = [];
      errors.set(this.device, list);
      (this.device as unknown as EventTarget).addEventListener("uncapturederror", (ev) => {
        const msg = (ev as GPUUncapturedErrorEvent).error.message;
        if (list.length < 16) list.push(msg);
        console.error(`mamba webgpu: ${msg}`);
      });
    }
  }

  /** A new storage buffer (zeroed), owned by this recorder. */
  buffer(size: number, label?: string, usage = STORAGE): Buf {
    const bytes = Math.max(16, Math.ceil(size / 16) * 16);
    if (bytes > this.ctx.maxBuffer) {
      throw new BackendError(
        `buffer of ${bytes} bytes exceeds the device's maxBufferSize ${this.ctx.maxBuffer}`,
      );
    }
    const b: Buf = {
      buffer: this.device.createBuffer({ size: bytes, usage, label }),
      id: nextBufId++,
      size: bytes,
    };
    this.#owned.add(b);
    return b;
  }

  /** Destroys a buffer made by {@link buffer}. */
  destroy(b: Buf): void {
    this.flush();
    if (this.#owned.delete(b)) b.buffer.destroy();
  }

  /** Writes host data into a buffer, after everything recorded so far. */
  write(b: Buf, offset: number, data: ArrayBufferView): void {
    this.flush();
    let bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.byteLength % 4) {
      const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
      padded.set(bytes);
      bytes = padded;
    }
    // Large writes in slices, so the staging copy stays small.
    const step = 64 << 20;
    for (let o = 0; o < bytes.byteLength; o += step) {
      const part = bytes.subarray(o, Math.min(bytes.byteLength, o + step));
      this.device.queue.writeBuffer(b.buffer, offset + o, part as Uint8Array<ArrayBuffer>);
    }
  }

  /** A cached uniform block holding `values` typed by `sig`. */
  uniform(sig: ParamSig, values: readonly number[]): Buf {
    const key = sig + values.join(",");
    let u = this.#uniforms.get(key);
    if (!u) {
      const n = Math.max(4, Math.ceil(values.length / 4) * 4);
      const ab = new ArrayBuffer(n * 4);
      const dv = new DataView(ab);
      values.forEach((v, i) => {
        const t = sig[i];
        if (t === "f") dv.setFloat32(i * 4, v, true);
        else if (t === "i") dv.setInt32(i * 4, v, true);
        else if (t === "u") dv.setUint32(i * 4, v >>> 0, true);
        else throw new BackendError(`bad parameter signature ${sig}`);
      });
      const buffer = this.device.createBuffer({
        size: ab.byteLength,
        usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
        mappedAtCreation: true,
      });
      new Uint8Array(buffer.getMappedRange()).set(new Uint8Array(ab));
      buffer.unmap();
      u = { buffer, id: nextBufId++, size: ab.byteLength };
      if (this.#uniforms.size > 8192) this.#dropUniforms();
      this.#uniforms.set(key, u);
    }
    return u;
  }

  #dropUniforms(): void {
    // Not destroyed: captured commands may still use them (garbage collection frees them).
    this.#uniforms.clear();
    this.#groups.clear();
  }

  /**
   * Records a dispatch of `k` with parameters (`sig`, `values`) at binding 0 (omitted when
   * `sig` is empty) and `bindings` at bindings 1, 2, … (a `null` leaves that binding out).
   */
  dispatch(
    k: Kernel,
    sig: ParamSig,
    values: readonly number[],
    bindings: readonly (Bindable | null)[],
    x: number,
    y = 1,
    z = 1,
  ): void {
    if (x === 0 || y === 0 || z === 0) return;
    const max = this.device.limits.maxComputeWorkgroupsPerDimension;
    if (x > max || y > max || z > max) {
      throw new BackendError(`dispatch ${x}×${y}×${z} of ${k.label} exceeds ${max} per dimension`);
    }
    const u = sig ? this.uniform(sig, values) : null;
    let key = `${k.id}|${u ? u.id : 0}`;
    for (const b of bindings) {
      if (!b) key += "|-";
      else key += "buf" in b ? `|${b.buf.id}@${b.offset}+${b.size}` : `|${b.id}`;
    }
    let group = this.#groups.get(key);
    if (!group) {
      const entries: GPUBindGroupEntry[] = [];
      if (u) entries.push({ binding: 0, resource: { buffer: u.buffer } });
      bindings.forEach((b, i) => {
        if (!b) return;
        entries.push({
          binding: i + 1,
          resource: "buf" in b
            ? { buffer: b.buf.buffer, offset: b.offset, size: b.size }
            : { buffer: b.buffer },
        });
      });
      group = this.device.createBindGroup({
        layout: k.pipeline.getBindGroupLayout(0),
        entries,
        label: k.label,
      });
      if (this.#groups.size > 16384) this.#groups.clear();
      this.#groups.set(key, group);
    }
    const cmd = { pipeline: k.pipeline, group, x, y, z, label: k.label };
    if (this.#captured) {
      this.#captured.push(cmd);
      return;
    }
    if (this.#profile) {
      this.#profiled(cmd);
      return;
    }
    const pass = this.#computePass();
    pass.setPipeline(k.pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    this.dispatches++;
  }

  /** Encodes one dispatch in a pass of its own, timestamped (profiling). */
  #profiled(c: Command): void {
    const p = this.#profile!;
    if (p.labels.length >= p.max) {
      const pass = this.#computePass();
      pass.setPipeline(c.pipeline);
      pass.setBindGroup(0, c.group);
      pass.dispatchWorkgroups(c.x, c.y, c.z);
      return;
    }
    const i = 2 * p.labels.length;
    p.labels.push(c.label);
    const pass = this.encoder().beginComputePass({
      timestampWrites: {
        querySet: p.set,
        beginningOfPassWriteIndex: i,
        endOfPassWriteIndex: i + 1,
      },
    });
    pass.setPipeline(c.pipeline);
    pass.setBindGroup(0, c.group);
    pass.dispatchWorkgroups(c.x, c.y, c.z);
    pass.end();
    this.dispatches++;
  }

  /**
   * Starts profiling (needs `timestamp-query`): each of the next `max` dispatches runs in a
   * timestamped pass of its own. Returns false without timestamps.
   */
  startProfile(max = 2048): boolean {
    if (!this.ctx.timestamps) return false;
    this.flush();
    const set = this.device.createQuerySet({ type: "timestamp", count: 2 * max });
    const resolve = this.buffer(16 * max, "profile", 0x200 | 0x4);
    this.#profile = { set, max, labels: [], resolve };
    return true;
  }

  /** Ends profiling: GPU seconds and dispatch count per kernel label. */
  async stopProfile(): Promise<Map<string, { seconds: number; count: number }>> {
    const p = this.#profile;
    const out = new Map<string, { seconds: number; count: number }>();
    if (!p) return out;
    this.#profile = null;
    if (p.labels.length) {
      this.encoder().resolveQuerySet(p.set, 0, 2 * p.labels.length, p.resolve.buffer, 0);
      const raw = new BigUint64Array(await this.read(p.resolve, 0, 16 * p.labels.length));
      p.labels.forEach((label, i) => {
        const e = out.get(label) ?? { seconds: 0, count: 0 };
        e.seconds += Number(raw[2 * i + 1] - raw[2 * i]) / 1e9;
        e.count++;
        out.set(label, e);
      });
    }
    p.set.destroy();
    this.destroy(p.resolve);
    return out;
  }

  /**
   * Runs `fn`, collecting the dispatches it records instead of encoding them, for
   * {@link replay}: a sequence encoded many times (a decode step) then costs three calls per
   * dispatch and nothing else. Only dispatches may be recorded inside `fn`.
   */
  capture(fn: () => void): Command[] {
    if (this.#captured) throw new BackendError("capture: already capturing");
    this.#captured = [];
    try {
      fn();
      return this.#captured;
    } finally {
      this.#captured = null;
    }
  }

  /** Encodes captured dispatches. */
  replay(cmds: readonly Command[]): void {
    if (this.#captured) {
      this.#captured.push(...cmds);
      return;
    }
    if (this.#profile) {
      for (const c of cmds) this.#profiled(c);
      return;
    }
    const pass = this.#computePass();
    let last: GPUComputePipeline | null = null;
    for (const c of cmds) {
      if (c.pipeline !== last) pass.setPipeline(last = c.pipeline);
      pass.setBindGroup(0, c.group);
      pass.dispatchWorkgroups(c.x, c.y, c.z);
    }
    this.dispatches += cmds.length;
  }

  /** The open command encoder (closing the compute pass), for copies and clears. */
  encoder(): GPUCommandEncoder {
    if (this.#captured) throw new BackendError("capture: only dispatches can be captured");
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    return this.#enc ??= this.device.createCommandEncoder();
  }

  /** Records a buffer-to-buffer copy. */
  copy(src: Buf, srcOffset: number, dst: Buf, dstOffset: number, size: number): void {
    if (size > 0) {
      this.encoder().copyBufferToBuffer(src.buffer, srcOffset, dst.buffer, dstOffset, size);
    }
  }

  /** Records zeroing a range. */
  clear(b: Buf, offset = 0, size = b.size - offset): void {
    if (size > 0) this.encoder().clearBuffer(b.buffer, offset, size);
  }

  /** Opens (or continues) a compute pass; timestamped while {@link startTiming} is active. */
  #computePass(): GPUComputePassEncoder {
    if (!this.#pass) {
      const enc = this.encoder();
      const t = this.#timing;
      if (t && t.used < t.max) {
        const i = 2 * t.used++;
        this.#pass = enc.beginComputePass({
          timestampWrites: {
            querySet: t.set,
            beginningOfPassWriteIndex: i,
            endOfPassWriteIndex: i + 1,
          },
        });
      } else {
        if (t) t.missed++;
        this.#pass = enc.beginComputePass();
      }
    }
    return this.#pass;
  }

  /**
   * Starts timing compute passes on the GPU (needs `timestamp-query`; returns false without
   * it). At most `maxPasses` passes are timed until {@link stopTiming}.
   */
  startTiming(maxPasses = 256): boolean {
    if (!this.ctx.timestamps) return false;
    this.flush();
    const set = this.device.createQuerySet({ type: "timestamp", count: 2 * maxPasses });
    const resolve = this.buffer(16 * maxPasses, "timestamps", 0x200 | 0x4); // QUERY_RESOLVE | COPY_SRC
    this.#timing = { set, max: maxPasses, used: 0, missed: 0, resolve };
    return true;
  }

  /**
   * Ends timing: the GPU seconds of each timed pass.
   *
   * @throws {BackendError} when more passes ran than {@link startTiming} was given room for (a
   * sum of the timed ones would leave the rest out).
   */
  async stopTiming(): Promise<number[]> {
    return (await this.stopTimingSpans()).map(([begin, end]) => end - begin);
  }

  /**
   * Ends timing: when each timed pass began and ended on the GPU, in seconds from the first
   * one's beginning (the gaps between passes are where the GPU waited for the host).
   *
   * @throws {BackendError} as {@link stopTiming}.
   */
  async stopTimingSpans(): Promise<[number, number][]> {
    const t = this.#timing;
    if (!t) return [];
    this.#timing = null;
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    try {
      if (t.missed) {
        throw new BackendError(
          `stopTiming: ${t.missed} passes past the ${t.max} that startTiming had room for`,
        );
      }
      if (t.used === 0) return [];
      this.encoder().resolveQuerySet(t.set, 0, 2 * t.used, t.resolve.buffer, 0);
      const raw = new BigUint64Array(await this.read(t.resolve, 0, 16 * t.used));
      const out: [number, number][] = [];
      for (let i = 0; i < t.used; i++) {
        out.push([Number(raw[2 * i] - raw[0]) / 1e9, Number(raw[2 * i + 1] - raw[0]) / 1e9]);
      }
      return out;
    } finally {
      t.set.destroy();
      this.destroy(t.resolve);
    }
  }

  /** Submits everything recorded so far. */
  flush(): void {
    if (!this.#enc) return;
    if (this.#pass) {
      this.#pass.end();
      this.#pass = null;
    }
    this.device.queue.submit([this.#enc.finish()]);
    this.#enc = null;
  }

  /** Throws {@link DeviceLostError} once the device is lost. */
  throwIfLost(): void {
    if (this.lostReason) throw new DeviceLostError(this.lostReason);
  }

  /**
   * The error to report for a failed GPU promise (a map, say): {@link DeviceLostError} when the
   * device was lost meanwhile (its `lost` promise may settle just after the failure), else `e`.
   */
  async failure(e: unknown): Promise<unknown> {
    if (!this.lostReason) {
      await Promise.race([this.device.lost, new Promise((r) => setTimeout(r, 50))]);
      await Promise.resolve();
    }
    return this.lostReason ? new DeviceLostError(this.lostReason) : e;
  }

  /** Throws the first GPU validation error seen on the device, if any. */
  checkErrors(): void {
    const list = errors.get(this.device);
    if (list && list.length) {
      const msg = list.splice(0).join("\n");
      throw new BackendError(`WebGPU error: ${msg}`);
    }
  }

  /** Submits, then copies `size` bytes of `src` at `offset` back to the host. */
  async read(src: Buf, offset: number, size: number): Promise<ArrayBuffer> {
    this.throwIfLost();
    const bytes = Math.ceil(size / 4) * 4;
    const cap = Math.max(256, 2 ** Math.ceil(Math.log2(Math.max(1, bytes))));
    const idle = this.#slots.get(cap) ?? [];
    this.#slots.set(cap, idle);
    const slot = idle.pop() ?? readSlot(this.device, cap, this.ctx.readback);
    slot.record(this.encoder(), src.buffer, offset, bytes);
    this.flush();
    slot.submitted();
    let got: Uint8Array<ArrayBuffer>;
    try {
      await checkCompiled(this.device);
      got = await slot.read();
    } catch (e) {
      slot.destroy();
      throw await this.failure(e);
    }
    // Keep a few slots of each size up to 4 MiB for the next reads (larger reads are rare:
    // states, whole-sequence logits; their staging is not worth holding).
    if (idle.length < 2 && cap <= 4 << 20) idle.push(slot);
    else slot.destroy();
    this.checkErrors();
    return got.buffer.slice(got.byteOffset, got.byteOffset + size);
  }

  /** Frees every buffer this recorder made, and its caches. */
  dispose(): void {
    this.flush();
    for (const b of this.#owned) b.buffer.destroy();
    this.#owned.clear();
    for (const u of this.#uniforms.values()) u.buffer.destroy();
    this.#uniforms.clear();
    for (const list of this.#slots.values()) for (const s of list) s.destroy();
    this.#slots.clear();
    this.#groups.clear();
  }
}
