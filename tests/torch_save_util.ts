/**
 * A test-only `torch.save` writer (the library only reads these files): the pickle of a state
 * dict as torch writes it (protocol 2), the zip container (stored or deflated entries, ZIP64
 * records on demand, streamed to any sink so an 11 GB file never sits in memory), and the legacy
 * pre-1.6 stream. Python's `zipfile` and `pickletools` read what it writes.
 */

/** Storage classes by safetensors dtype. */
export const STORAGE_CLASS: Record<string, string> = {
  F32: "FloatStorage",
  F16: "HalfStorage",
  BF16: "BFloat16Storage",
};
const ELEMENT_SIZE: Record<string, number> = {
  FloatStorage: 4,
  HalfStorage: 2,
  BFloat16Storage: 2,
  LongStorage: 8,
};

/** One tensor of the pickled dict: a view of a storage. */
export interface PickledTensor {
  name: string;
  /** Storage key (the zip entry `data/<key>`). */
  key: string;
  /** `FloatStorage`, `HalfStorage`, … */
  storageClass: string;
  /** Elements in the storage. */
  storageNumel: number;
  /** Elements before the view's first. */
  offset: number;
  shape: number[];
  stride: number[];
}

/** Options of {@link pickleStateDict}. */
export interface PickleOptions {
  /** Persistent ids with the legacy format's sixth field (None). */
  legacy?: boolean;
  /** An OrderedDict with `_metadata` set by BUILD, as `model.state_dict()` is. */
  ordered?: boolean;
  /** Tensors wrapped in `torch._utils._rebuild_parameter`. */
  parameter?: boolean;
  /** LONG_BINPUT / LONG_BINGET for the memo instead of the one-byte forms. */
  longMemo?: boolean;
}

/** Row-major strides of a shape. */
export function contiguousStrides(shape: number[]): number[] {
  const s = new Array(shape.length).fill(1);
  for (let i = shape.length - 2; i >= 0; i--) s[i] = s[i + 1] * shape[i + 1];
  return s;
}

/** Emits pickle opcodes. */
export class PickleWriter {
  #out: number[] = [];
  #memo = new Map<string, number>();
  #next = 0;
  constructor(readonly longMemo = false) {}
  op(...b: number[]): this {
    this.#out.push(...b);
    return this;
  }
  u32(n: number): this {
    return this.op(n & 255, (n >>> 8) & 255, (n >>> 16) & 255, (n >>> 24) & 255);
  }
  str(s: string): this {
    const b = new TextEncoder().encode(s);
    this.op(0x58).u32(b.length);
    for (const x of b) this.#out.push(x);
    return this;
  }
  int(n: number): this {
    if (n >= 0 && n < 256) return this.op(0x4b, n);
    if (n >= 0 && n < 65536) return this.op(0x4d, n & 255, n >>> 8);
    if (n >= -(2 ** 31) && n < 2 ** 31) return this.op(0x4a).u32(n >>> 0);
    // LONG1, 8 bytes little-endian two's complement
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigInt64(0, BigInt(n), true);
    return this.op(0x8a, 8, ...b);
  }
  put(): number {
    const i = this.#next++;
    if (this.longMemo) this.op(0x72).u32(i);
    else this.op(0x71, i);
    return i;
  }
  get(i: number): this {
    return this.longMemo ? this.op(0x6a).u32(i) : this.op(0x68, i);
  }
  /** GLOBAL, memoised as torch does. */
  global(module: string, name: string): this {
    const k = `${module}\n${name}`;
    const known = this.#memo.get(k);
    if (known !== undefined) return this.get(known);
    this.op(0x63, ...new TextEncoder().encode(`${module}\n${name}\n`));
    this.#memo.set(k, this.put());
    return this;
  }
  tuple(items: number[]): this {
    if (items.length === 0) return this.op(0x29);
    if (items.length <= 3) {
      for (const v of items) this.int(v);
      return this.op(0x84 + items.length);
    }
    this.op(0x28);
    for (const v of items) this.int(v);
    return this.op(0x74);
  }
  bytes(): Uint8Array {
    return new Uint8Array(this.#out);
  }
}

/** The pickle of a state dict, as torch.save writes it. */
export function pickleStateDict(tensors: PickledTensor[], opts: PickleOptions = {}): Uint8Array {
  const w = new PickleWriter(opts.longMemo);
  w.op(0x80, 2);
  if (opts.ordered) w.global("collections", "OrderedDict").op(0x29, 0x52);
  else w.op(0x7d);
  w.put();
  w.op(0x28); // MARK for SETITEMS
  for (const t of tensors) {
    w.str(t.name);
    if (opts.parameter) w.global("torch._utils", "_rebuild_parameter").op(0x28);
    w.global("torch._utils", "_rebuild_tensor_v2");
    w.op(0x28); // args
    w.op(0x28).str("storage").global("torch", t.storageClass).str(t.key).str("cpu").int(
      t.storageNumel,
    );
    if (opts.legacy) w.op(0x4e);
    w.op(0x74, 0x51); // TUPLE, BINPERSID
    w.int(t.offset).tuple(t.shape).tuple(t.stride).op(0x89);
    w.global("collections", "OrderedDict").op(0x29, 0x52);
    w.op(0x74, 0x52); // TUPLE, REDUCE
    if (opts.parameter) w.op(0x89).op(0x29).op(0x74, 0x52); // (tensor, False, ()) REDUCE
  }
  w.op(0x75); // SETITEMS
  if (opts.ordered) {
    // BUILD with {"_metadata": OrderedDict()} — what state_dict()'s attribute pickles to.
    w.op(0x7d).str("_metadata").global("collections", "OrderedDict").op(0x29, 0x52, 0x73);
    w.op(0x62);
  }
  w.op(0x2e);
  return w.bytes();
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 of zip, continued from `crc`. */
export function crc32(bytes: Uint8Array, crc = 0): number {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
  return ~c >>> 0;
}

/** An entry to write: its bytes, or its size and a generator of its chunks. */
export interface ZipInput {
  name: string;
  data?: Uint8Array;
  size?: number;
  chunks?: () => Iterable<Uint8Array>;
  deflate?: boolean;
}

/** Options of {@link writeZip}. */
export interface ZipOptions {
  /** ZIP64 records on every entry (always used where sizes need them). */
  zip64?: boolean;
  /** Compute CRC-32s (default true; a long file may skip them — the library does not read them). */
  crc?: boolean;
}

async function deflateRaw(data: Uint8Array): Promise<Uint8Array> {
  const cs = new CompressionStream("deflate-raw");
  const out = new Response(new Blob([data as Uint8Array<ArrayBuffer>]).stream().pipeThrough(cs));
  return new Uint8Array(await out.arrayBuffer());
}

/** Writes a zip archive to `sink`, entry by entry; data aligned to 64 bytes as torch does. */
export async function writeZip(
  sink: (b: Uint8Array) => Promise<void> | void,
  entries: ZipInput[],
  opts: ZipOptions = {},
): Promise<void> {
  let pos = 0;
  const put = async (b: Uint8Array) => {
    await sink(b);
    pos += b.length;
  };
  const central: Uint8Array[] = [];
  const enc = new TextEncoder();
  for (const e of entries) {
    const name = enc.encode(e.name);
    let data = e.data;
    let method = 0;
    let crc = 0;
    const size = data ? data.length : e.size!;
    if (data && opts.crc !== false) crc = crc32(data);
    if (e.deflate && data) {
      data = await deflateRaw(data);
      method = 8;
    }
    const csize = data ? data.length : size;
    const z64 = opts.zip64 || size >= 0xffffffff || pos >= 0xffffffff;
    const offset = pos;
    // Local header, ZIP64 extra (sizes), padding extra so the data starts at a multiple of 64.
    const localExtra64 = z64 ? 20 : 0;
    const base = 30 + name.length + localExtra64;
    const pad = (64 - ((pos + base + 4) % 64)) % 64;
    const lh = new Uint8Array(base + 4 + pad);
    const lv = new DataView(lh.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint16(4, z64 ? 45 : 20, true);
    lv.setUint16(8, method, true);
    lv.setUint32(14, crc, true);
    lv.setUint32(18, z64 ? 0xffffffff : csize, true);
    lv.setUint32(22, z64 ? 0xffffffff : size, true);
    lv.setUint16(26, name.length, true);
    lv.setUint16(28, localExtra64 + 4 + pad, true);
    lh.set(name, 30);
    let x = 30 + name.length;
    if (z64) {
      lv.setUint16(x, 1, true);
      lv.setUint16(x + 2, 16, true);
      lv.setBigUint64(x + 4, BigInt(size), true);
      lv.setBigUint64(x + 12, BigInt(csize), true);
      x += 20;
    }
    lv.setUint16(x, 0xcafe, true); // padding field, as torch's writer names it
    lv.setUint16(x + 2, pad, true);
    await put(lh);
    if (data) await put(data);
    else {
      let c = 0;
      for (const chunk of e.chunks!()) {
        if (opts.crc !== false) crc = crc32(chunk, crc);
        await put(chunk);
        c += chunk.length;
      }
      if (c !== size) throw new Error(`entry ${e.name}: wrote ${c} bytes, not ${size}`);
    }
    const ch = new Uint8Array(46 + name.length + (z64 ? 28 : 0));
    const cv = new DataView(ch.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint16(4, z64 ? 45 : 20, true);
    cv.setUint16(6, z64 ? 45 : 20, true);
    cv.setUint16(10, method, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, z64 ? 0xffffffff : csize, true);
    cv.setUint32(24, z64 ? 0xffffffff : size, true);
    cv.setUint16(28, name.length, true);
    cv.setUint16(30, z64 ? 28 : 0, true);
    cv.setUint32(42, z64 ? 0xffffffff : offset, true);
    ch.set(name, 46);
    if (z64) {
      const y = 46 + name.length;
      cv.setUint16(y, 1, true);
      cv.setUint16(y + 2, 24, true);
      cv.setBigUint64(y + 4, BigInt(size), true);
      cv.setBigUint64(y + 12, BigInt(csize), true);
      cv.setBigUint64(y + 20, BigInt(offset), true);
    }
    central.push(ch);
  }
  const cdOffset = pos;
  for (const c of central) await put(c);
  const cdSize = pos - cdOffset;
  const z64 = opts.zip64 || cdOffset >= 0xffffffff || entries.length >= 0xffff;
  if (z64) {
    const eocd64At = pos;
    const r = new Uint8Array(56 + 20);
    const rv = new DataView(r.buffer);
    rv.setUint32(0, 0x06064b50, true);
    rv.setBigUint64(4, 44n, true);
    rv.setUint16(12, 45, true);
    rv.setUint16(14, 45, true);
    rv.setBigUint64(24, BigInt(entries.length), true);
    rv.setBigUint64(32, BigInt(entries.length), true);
    rv.setBigUint64(40, BigInt(cdSize), true);
    rv.setBigUint64(48, BigInt(cdOffset), true);
    rv.setUint32(56, 0x07064b50, true);
    rv.setBigUint64(64, BigInt(eocd64At), true);
    rv.setUint32(72, 1, true);
    await put(r);
  }
  const e = new Uint8Array(22);
  const ev = new DataView(e.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, z64 ? 0xffff : entries.length, true);
  ev.setUint16(10, z64 ? 0xffff : entries.length, true);
  ev.setUint32(12, z64 ? 0xffffffff : cdSize, true);
  ev.setUint32(16, z64 ? 0xffffffff : cdOffset, true);
  await put(e);
}

/** Collects what a writer writes. */
export async function collect(
  write: (sink: (b: Uint8Array) => void) => Promise<void>,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  await write((b) => {
    parts.push(b.slice());
  });
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** A tensor to save: its bytes, or a view of another tensor's storage. */
export interface SaveTensor {
  dtype: "F32" | "F16" | "BF16" | string;
  shape: number[];
  /** The storage's bytes (its own storage); or leave out and give `viewOf`. */
  bytes?: Uint8Array;
  /** Name of the tensor whose storage this one views (a tied weight). */
  viewOf?: string;
  /** Elements before the view's first (default 0). */
  offset?: number;
  /** Strides (default row-major). */
  stride?: number[];
}

/** Options of {@link torchSave}. */
export interface SaveOptions extends PickleOptions, ZipOptions {
  /** The legacy (pre-1.6) stream instead of the zip archive. */
  format?: "zip" | "legacy";
  /** Deflate the zip entries. */
  deflate?: boolean;
  /** The archive's folder name (default "archive"). */
  archive?: string;
  /** Changes the pickle before it is written. */
  tweakPickle?: (pkl: Uint8Array) => Uint8Array;
}

/** `torch.save(state_dict)` of `tensors`, in memory. */
export async function torchSave(
  tensors: Record<string, SaveTensor>,
  opts: SaveOptions = {},
): Promise<Uint8Array> {
  const keys = new Map<string, string>();
  const storages: { key: string; cls: string; bytes: Uint8Array }[] = [];
  const pickled: PickledTensor[] = [];
  for (const [name, t] of Object.entries(tensors)) {
    const owner = t.viewOf ?? name;
    const ot = tensors[owner];
    const cls = STORAGE_CLASS[ot.dtype] ?? ot.dtype;
    let key = keys.get(owner);
    if (key === undefined) {
      key = opts.format === "legacy"
        ? String(94000000 + 16 * storages.length)
        : String(storages.length);
      keys.set(owner, key);
      storages.push({ key, cls, bytes: ot.bytes! });
    }
    pickled.push({
      name,
      key,
      storageClass: cls,
      storageNumel: ot.bytes!.length / (ELEMENT_SIZE[cls] ?? 1),
      offset: t.offset ?? 0,
      shape: t.shape,
      stride: t.stride ?? contiguousStrides(t.shape),
    });
  }
  let pkl = pickleStateDict(pickled, { ...opts, legacy: opts.format === "legacy" });
  if (opts.tweakPickle) pkl = opts.tweakPickle(pkl);
  if (opts.format === "legacy") {
    const w = new PickleWriter();
    const parts: Uint8Array[] = [];
    // magic number, protocol version, sys_info
    parts.push(
      new Uint8Array([
        0x80,
        2,
        0x8a,
        10,
        0x6c,
        0xfc,
        0x9c,
        0x46,
        0xf9,
        0x20,
        0x6a,
        0xa8,
        0x50,
        0x19,
        0x2e,
      ]),
    );
    parts.push(new Uint8Array([0x80, 2, 0x4d, 0xe9, 0x03, 0x2e]));
    w.op(0x80, 2, 0x7d, 0x28).str("protocol_version").int(1001).str("little_endian").op(0x88);
    parts.push(w.op(0x75, 0x2e).bytes());
    parts.push(pkl);
    const k = new PickleWriter();
    k.op(0x80, 2, 0x5d, 0x28);
    for (const s of storages) k.str(s.key);
    parts.push(k.op(0x65, 0x2e).bytes());
    for (const s of storages) {
      const n = new Uint8Array(8);
      new DataView(n.buffer).setBigInt64(
        0,
        BigInt(s.bytes.length / (ELEMENT_SIZE[s.cls] ?? 1)),
        true,
      );
      parts.push(n, s.bytes);
    }
    return await collect((sink) => {
      for (const p of parts) sink(p);
      return Promise.resolve();
    });
  }
  const a = opts.archive ?? "archive";
  const entries: ZipInput[] = [
    { name: `${a}/data.pkl`, data: pkl, deflate: opts.deflate },
    { name: `${a}/byteorder`, data: new TextEncoder().encode("little") },
    ...storages.map((s) => ({ name: `${a}/data/${s.key}`, data: s.bytes, deflate: opts.deflate })),
    { name: `${a}/version`, data: new TextEncoder().encode("3\n") },
  ];
  return await collect((sink) => writeZip(sink, entries, opts));
}
