/**
 * Reading `pytorch_model.bin`, the file `torch.save(model.state_dict(), …)` writes, without
 * running any of it. Two layouts exist:
 *
 * - the zip archive of torch ≥ 1.6: `<archive>/data.pkl` (the pickled dict of tensors),
 *   `<archive>/byteorder`, and one entry `<archive>/data/<key>` per storage;
 * - the legacy stream of torch < 1.6: pickles of a magic number, a protocol version and
 *   `sys_info`, then the pickled dict, then the list of storage keys, then each storage's raw
 *   bytes after its 8-byte element count.
 *
 * In both, a tensor is a view of a storage: an offset, a shape and strides (`_rebuild_tensor_v2`),
 * and several tensors may view one storage (a tied `lm_head.weight`). The pickle is read by
 * {@link unpickle} with an allow-list of globals like PyTorch's `weights_only=True`; storages
 * are read one tensor at a time from the {@link ByteSource}.
 *
 * @module
 */

import type { ByteSource } from "./byte_source.ts";
import { WeightsError } from "./errors.ts";
import {
  PickleError,
  PickleGlobal,
  type PickleHooks,
  type PickleTuple,
  unpickle,
} from "./pickle.ts";
import type { DType } from "./safetensors.ts";
import type { TensorEntry } from "./tensor_entry.ts";
import { isZip, ZipArchive } from "./zip.ts";

/** Element types of torch storages, by storage class and by dtype name; `null`: not loadable. */
const STORAGE_CLASSES: Record<string, { dtype: DType | null; size: number }> = {
  FloatStorage: { dtype: "F32", size: 4 },
  HalfStorage: { dtype: "F16", size: 2 },
  BFloat16Storage: { dtype: "BF16", size: 2 },
  DoubleStorage: { dtype: null, size: 8 },
  LongStorage: { dtype: null, size: 8 },
  IntStorage: { dtype: null, size: 4 },
  ShortStorage: { dtype: null, size: 2 },
  CharStorage: { dtype: null, size: 1 },
  ByteStorage: { dtype: null, size: 1 },
  BoolStorage: { dtype: null, size: 1 },
};
const DTYPES: Record<string, { dtype: DType | null; size: number }> = {
  float32: STORAGE_CLASSES.FloatStorage,
  float: STORAGE_CLASSES.FloatStorage,
  float16: STORAGE_CLASSES.HalfStorage,
  half: STORAGE_CLASSES.HalfStorage,
  bfloat16: STORAGE_CLASSES.BFloat16Storage,
  float64: STORAGE_CLASSES.DoubleStorage,
  double: STORAGE_CLASSES.DoubleStorage,
  int64: STORAGE_CLASSES.LongStorage,
  long: STORAGE_CLASSES.LongStorage,
  int32: STORAGE_CLASSES.IntStorage,
  int: STORAGE_CLASSES.IntStorage,
  int16: STORAGE_CLASSES.ShortStorage,
  short: STORAGE_CLASSES.ShortStorage,
  int8: STORAGE_CLASSES.CharStorage,
  uint8: STORAGE_CLASSES.ByteStorage,
  bool: STORAGE_CLASSES.BoolStorage,
};

/** The globals a state dict may name: PyTorch's `weights_only` list, cut to what tensors need. */
function allowGlobal(module: string, name: string): boolean {
  if (module === "collections") return name === "OrderedDict";
  if (module === "torch._utils") {
    return name === "_rebuild_tensor_v2" || name === "_rebuild_parameter";
  }
  if (module === "torch") {
    return Object.hasOwn(STORAGE_CLASSES, name) || Object.hasOwn(DTYPES, name);
  }
  return false;
}

/** A storage as its persistent id describes it. */
class StorageRef {
  constructor(
    readonly key: string,
    readonly dtypeName: string,
    readonly dtype: DType | null,
    readonly elementSize: number,
    readonly numel: number,
  ) {}
}

/** What `_rebuild_tensor_v2` returns: a view of a storage. */
class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: readonly number[],
    readonly stride: readonly number[],
  ) {}
}

/** A non-negative safe integer, or an error naming `what`. */
function count(v: unknown, what: string): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 0) {
    throw new WeightsError(`${what} is ${String(v)}, not a non-negative integer`);
  }
  return v;
}

/** A tuple of non-negative integers. */
function ints(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || !Object.isFrozen(v) || v.length > 64) {
    throw new WeightsError(`${what} is not a tuple of integers`);
  }
  return v.map((x, i) => count(x, `${what}[${i}]`));
}

/** The pickle hooks of a torch state dict; `storages` collects every storage met. */
function torchHooks(storages: Map<string, StorageRef>, legacy: boolean): PickleHooks {
  return {
    allowGlobal,
    call(fn: PickleGlobal, args: PickleTuple): unknown {
      switch (fn.qualified) {
        case "collections.OrderedDict": {
          const m = new Map<unknown, unknown>();
          if (args.length === 0) return m;
          const pairs = args[0];
          if (args.length > 1 || !Array.isArray(pairs)) {
            throw new WeightsError("OrderedDict takes one list of pairs");
          }
          for (const kv of pairs) {
            if (!Array.isArray(kv) || kv.length !== 2) {
              throw new WeightsError("OrderedDict item is not a pair");
            }
            m.set(kv[0], kv[1]);
          }
          return m;
        }
        case "torch._utils._rebuild_tensor_v2": {
          if (args.length < 6 || args.length > 7) {
            throw new WeightsError(`_rebuild_tensor_v2 takes 6 or 7 arguments, not ${args.length}`);
          }
          const [storage, offset, size, stride] = args;
          if (!(storage instanceof StorageRef)) {
            throw new WeightsError("_rebuild_tensor_v2: the first argument is not a storage");
          }
          const shape = ints(size, "_rebuild_tensor_v2 size");
          const strides = ints(stride, "_rebuild_tensor_v2 stride");
          if (strides.length !== shape.length) {
            throw new WeightsError(
              `_rebuild_tensor_v2: size (${shape}) and stride (${strides}) differ in length`,
            );
          }
          return new TensorRef(storage, count(offset, "storage offset"), shape, strides);
        }
        case "torch._utils._rebuild_parameter": {
          if (args.length !== 3 || !(args[0] instanceof TensorRef)) {
            throw new WeightsError("_rebuild_parameter takes (tensor, requires_grad, hooks)");
          }
          return args[0];
        }
        default:
          throw new WeightsError(`global ${fn.qualified} cannot be called`);
      }
    },
    persistentLoad(pid: unknown): unknown {
      // ("storage", storage class or dtype, key, location, numel[, view metadata (legacy)])
      if (!Array.isArray(pid) || pid.length !== (legacy ? 6 : 5) || pid[0] !== "storage") {
        throw new WeightsError("persistent id is not a storage");
      }
      const [, type, key, , n] = pid;
      if (legacy && pid[5] !== null) {
        throw new WeightsError("storage views of torch < 0.4 are not supported");
      }
      if (!(type instanceof PickleGlobal)) {
        throw new WeightsError("storage type is not a torch storage class or dtype");
      }
      const info = type.module === "torch"
        ? STORAGE_CLASSES[type.name] ?? DTYPES[type.name]
        : undefined;
      if (!info) throw new WeightsError(`${type.qualified} is not a torch storage class or dtype`);
      if (typeof key !== "string" || !/^[\w.-]{1,64}$/.test(key)) {
        throw new WeightsError(`storage key ${JSON.stringify(key)} is not a plain name`);
      }
      const numel = count(n, `storage ${key} size`);
      const known = storages.get(key);
      if (known) {
        if (known.dtypeName !== type.name || known.numel !== numel) {
          throw new WeightsError(`storage ${key} is described two different ways`);
        }
        return known;
      }
      const s = new StorageRef(key, type.name, info.dtype, info.size, numel);
      storages.set(key, s);
      return s;
    },
    build(obj: unknown, _state: unknown): unknown {
      // An OrderedDict's state is its `_metadata` (module versions); a tensor's is hooks. Neither
      // changes the values.
      if (obj instanceof Map || obj instanceof TensorRef) return obj;
      throw new WeightsError("BUILD applies only to a dict or a tensor here");
    },
  };
}

/** Where a storage's bytes are: `readInto(byteOffset, into)` within the storage. */
type StorageReader = (s: StorageRef, byteOffset: number, into: Uint8Array) => Promise<void>;

/** The tensors of a parsed state dict, checked against their storages. */
function tensorEntries(
  root: unknown,
  file: string,
  read: StorageReader,
  ignore?: (name: string) => boolean,
): Map<string, TensorEntry> {
  if (!(root instanceof Map)) {
    throw new WeightsError(`${file}: the pickled object is not a dict of tensors`);
  }
  const out = new Map<string, TensorEntry>();
  // Bytes viewed per storage by distinct views (a tied weight is the same view, counted once).
  const viewed = new Map<StorageRef, { views: Set<string>; bytes: number }>();
  for (const [name, t] of root) {
    if (typeof name !== "string") {
      throw new WeightsError(`${file}: a key of the state dict is not a string`);
    }
    if (!(t instanceof TensorRef)) {
      throw new WeightsError(`${file}: "${name}" is not a tensor`);
    }
    // Tensors the caller ignores (buffers of older checkpoints, say) may be of any type.
    if (ignore?.(name)) continue;
    const s = t.storage;
    if (s.dtype === null) {
      throw new WeightsError(
        `${file}: tensor "${name}": storage type torch.${s.dtypeName} is not supported (float32, float16, bfloat16)`,
      );
    }
    const numel = t.shape.reduce((a, b) => a * b, 1);
    // The last element the view touches must lie inside its storage.
    let last = t.offset;
    for (let i = 0; i < t.shape.length; i++) last += (t.shape[i] - 1) * t.stride[i];
    if (numel > 0 && !(last < s.numel && Number.isSafeInteger(last * s.elementSize))) {
      throw new WeightsError(
        `${file}: tensor "${name}": shape [${t.shape}], stride [${t.stride}] at offset ${t.offset} reach beyond its storage of ${s.numel} elements`,
      );
    }
    if (numel > s.numel) {
      // Only a broadcast (stride 0) view could do this; a saved state dict has none, and
      // refusing it bounds every allocation by the storages' sizes.
      throw new WeightsError(
        `${file}: tensor "${name}": ${numel} elements view a storage of ${s.numel}`,
      );
    }
    const el = s.elementSize;
    const key = `${s.key}@${t.offset}:${t.shape}:${t.stride}`;
    // Views that together exceed their storage overlap, which no saved state dict does; refusing
    // them keeps what loading allocates within the size of the file.
    const v = viewed.get(s) ?? { views: new Set<string>(), bytes: 0 };
    viewed.set(s, v);
    if (!v.views.has(key)) {
      v.views.add(key);
      v.bytes += numel * el;
      if (v.bytes > s.numel * el) {
        throw new WeightsError(
          `${file}: tensor "${name}": the views of storage ${s.key} add up to ${v.bytes} bytes, more than its ${
            s.numel * el
          } (overlapping views; only identical views, as of a tied weight, may share bytes)`,
        );
      }
    }
    const contiguous = isContiguous(t.shape, t.stride);
    out.set(name, {
      dtype: s.dtype,
      shape: t.shape,
      byteLength: numel * el,
      key,
      readInto: async (into: Uint8Array) => {
        if (numel === 0) return;
        if (contiguous) return await read(s, t.offset * el, into);
        // A strided view: read the span it touches, then gather row-major.
        const span = new Uint8Array((last - t.offset + 1) * el);
        await read(s, t.offset * el, span);
        gather(span, into, t.shape, t.stride, el);
      },
    });
  }
  return out;
}

/** Whether strides are row-major (axes of size 1 may have any stride). */
function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expect = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expect) return false;
    expect *= shape[i];
  }
  return true;
}

/** Copies the elements of a strided view (of `el` bytes each) into row-major order. */
function gather(
  src: Uint8Array,
  dst: Uint8Array,
  shape: readonly number[],
  stride: readonly number[],
  el: number,
): void {
  if (src.byteOffset % el || dst.byteOffset % el) {
    // Element views need aligned arrays: go through fresh ones (the loader's are always fresh).
    const out = new Uint8Array(dst.byteLength);
    gather(src.slice(), out, shape, stride, el);
    dst.set(out);
    return;
  }
  const view = (b: Uint8Array): Uint8Array | Uint16Array | Uint32Array =>
    el === 4
      ? new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4)
      : el === 2
      ? new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2)
      : b;
  const from = view(src);
  const to = view(dst);
  const idx = new Array(shape.length).fill(0);
  let at = 0;
  for (let k = 0; k < to.length; k++) {
    to[k] = from[at];
    // Advance the index odometer, keeping `at` = Σ idx·stride.
    for (let a = shape.length - 1; a >= 0; a--) {
      idx[a]++;
      at += stride[a];
      if (idx[a] < shape[a]) break;
      at -= stride[a] * shape[a];
      idx[a] = 0;
    }
  }
}

/**
 * Opens a `torch.save` file (zip or legacy) for reading tensor by tensor. Tensors whose names
 * `ignore` accepts are left out, whatever their type (a GPT-NeoX checkpoint's boolean causal
 * mask buffers, say).
 *
 * @throws {WeightsError} naming the file (a {@link PickleError} for a refused or broken pickle).
 */
export async function openTorchCheckpoint(
  src: ByteSource,
  ignore?: (name: string) => boolean,
): Promise<Map<string, TensorEntry>> {
  const head = await src.read(0, Math.min(src.size, 512));
  if (isZip(head)) return await openZip(src, ignore);
  if (head[0] === 0x80 && head[1] === 0x02 && head[2] === 0x8a) {
    return await openLegacy(src, ignore);
  }
  const tar = head.length >= 262 && new TextDecoder().decode(head.subarray(257, 262)) === "ustar";
  throw new WeightsError(
    `${src.name}: not a torch.save file (neither a zip archive nor the legacy format)${
      tar
        ? "; this is the tar format of torch < 0.4: load it in Python and save it again with torch.save"
        : ""
    }`,
  );
}

async function openZip(
  src: ByteSource,
  ignore?: (name: string) => boolean,
): Promise<Map<string, TensorEntry>> {
  const zip = await ZipArchive.open(src);
  const pkl = [...zip.entries.values()].filter((e) => /^[^/]+\/data\.pkl$/.test(e.name));
  if (pkl.length !== 1) {
    throw new WeightsError(
      `${src.name}: a torch.save archive has one "<name>/data.pkl"; this one has ${pkl.length}`,
    );
  }
  const prefix = pkl[0].name.slice(0, -"data.pkl".length);
  const order = zip.entries.get(`${prefix}byteorder`);
  if (order) {
    const o = new TextDecoder().decode(await zip.read(order)).trim();
    if (o !== "little") {
      throw new WeightsError(`${src.name}: byteorder is "${o}"; only little-endian files load`);
    }
  }
  const storages = new Map<string, StorageRef>();
  const { value } = unpickle(
    await zip.read(pkl[0]),
    `${src.name}:${pkl[0].name}`,
    torchHooks(storages, false),
  );
  for (const s of storages.values()) {
    const e = zip.entries.get(`${prefix}data/${s.key}`);
    if (!e) {
      throw new WeightsError(`${src.name}: storage ${s.key}: no entry ${prefix}data/${s.key}`);
    }
    if (e.size < s.numel * s.elementSize) {
      throw new WeightsError(
        `${src.name}: storage ${s.key} needs ${
          s.numel * s.elementSize
        } bytes but ${e.name} has ${e.size}`,
      );
    }
  }
  return tensorEntries(value, src.name, (s, offset, into) => {
    return zip.readInto(zip.entries.get(`${prefix}data/${s.key}`)!, offset, into);
  }, ignore);
}

/** The legacy format's magic number, its first pickle. */
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

async function openLegacy(
  src: ByteSource,
  ignore?: (name: string) => boolean,
): Promise<Map<string, TensorEntry>> {
  // The pickles come first; read a prefix big enough to hold them, growing it if one is cut.
  let chunk = Math.min(src.size, 1 << 20);
  const storages = new Map<string, StorageRef>();
  while (true) {
    const bytes = await src.read(0, chunk);
    storages.clear();
    try {
      const none: PickleHooks = {
        allowGlobal: () => false,
        call: () => null,
        persistentLoad: () => {
          throw new WeightsError("persistent id outside the object");
        },
        build: () => {
          throw new WeightsError("BUILD outside the object");
        },
      };
      const magic = unpickle(bytes, src.name, none);
      if (magic.value !== LEGACY_MAGIC) {
        throw new WeightsError(`${src.name}: not a torch.save file (bad legacy magic number)`);
      }
      const proto = unpickle(bytes, src.name, none, magic.end);
      if (proto.value !== 1001) {
        throw new WeightsError(`${src.name}: legacy protocol ${String(proto.value)}, not 1001`);
      }
      const sysInfo = unpickle(bytes, src.name, none, proto.end);
      if (sysInfo.value instanceof Map && sysInfo.value.get("little_endian") === false) {
        throw new WeightsError(
          `${src.name}: written on a big-endian machine; only little-endian files load`,
        );
      }
      const obj = unpickle(bytes, src.name, torchHooks(storages, true), sysInfo.end);
      const keys = unpickle(bytes, src.name, none, obj.end);
      if (!Array.isArray(keys.value) || !keys.value.every((k) => typeof k === "string")) {
        throw new WeightsError(`${src.name}: the storage key list is not a list of names`);
      }
      // Then each storage in that order: an 8-byte element count and the raw elements.
      const offsets = new Map<string, number>();
      let p = keys.end;
      for (const key of keys.value as string[]) {
        const s = storages.get(key);
        if (!s) throw new WeightsError(`${src.name}: storage ${key} is used by no tensor`);
        if (offsets.has(key)) throw new WeightsError(`${src.name}: storage ${key} listed twice`);
        const n8 = await src.read(p, 8);
        const n = new DataView(n8.buffer).getBigInt64(0, true);
        if (n !== BigInt(s.numel)) {
          throw new WeightsError(
            `${src.name}: storage ${key} holds ${n} elements, but its tensors say ${s.numel}`,
          );
        }
        offsets.set(key, p + 8);
        p += 8 + s.numel * s.elementSize;
        if (p > src.size) {
          throw new WeightsError(
            `${src.name}: storage ${key} runs past the end of the file (truncated?)`,
          );
        }
      }
      for (const key of storages.keys()) {
        if (!offsets.has(key)) throw new WeightsError(`${src.name}: storage ${key} is missing`);
      }
      return tensorEntries(obj.value, src.name, (s, offset, into) => {
        return src.readInto(offsets.get(s.key)! + offset, into);
      }, ignore);
    } catch (e) {
      // A pickle cut off by the end of the prefix: read more, up to the whole file.
      if (e instanceof PickleError && / \(truncated\)$/.test(e.message) && chunk < src.size) {
        chunk = Math.min(src.size, chunk * 4);
        continue;
      }
      throw e;
    }
  }
}
