/**
 * A pickle reader that runs no code: it understands only the opcodes `torch.save` writes (protocol
 * 2), in the spirit of PyTorch's `weights_only=True` unpickler. A pickle names Python callables
 * with GLOBAL and calls them with REDUCE; here each GLOBAL must pass the caller's allow-list, and
 * every call is the caller's own TypeScript function for that name, so a pickle asking for
 * `os.system` or `builtins.eval` is refused before anything happens.
 *
 * Values: `None` → `null`, bools, ints (numbers; `bigint` beyond 2^53), floats, `str` (and the
 * old byte strings, as latin-1 text), lists → arrays, tuples → {@link PickleTuple}, dicts → `Map`.
 *
 * @module
 */

import { WeightsError } from "./errors.ts";

/** A pickle that is malformed or asks for an opcode or a global outside the allow-list. */
export class PickleError extends WeightsError {}

/** A Python tuple: a frozen array. */
export type PickleTuple = readonly unknown[];

/** A reference to a Python global (`module.name`), as GLOBAL pushes it. */
export class PickleGlobal {
  /** The module and the name, e.g. `torch._utils` and `_rebuild_tensor_v2`. */
  constructor(readonly module: string, readonly name: string) {}
  /** `module.name`. */
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

/** What the pickle may refer to, and what its calls do. */
export interface PickleHooks {
  /** Whether GLOBAL `module.name` is allowed. */
  allowGlobal(module: string, name: string): boolean;
  /** REDUCE / NEWOBJ: calls an allowed global with `args`. Throws for a global that cannot be called. */
  call(fn: PickleGlobal, args: PickleTuple): unknown;
  /** BINPERSID: resolves a persistent id (torch: a storage). */
  persistentLoad(pid: unknown): unknown;
  /** BUILD: sets `state` on `obj`; returns the object to keep. */
  build(obj: unknown, state: unknown): unknown;
}

/** Opcode names, for messages. */
const OPCODE_NAMES: Record<number, string> = {
  0x80: "PROTO",
  0x2e: "STOP",
  0x28: "MARK",
  0x67: "GET",
  0x68: "BINGET",
  0x6a: "LONG_BINGET",
  0x70: "PUT",
  0x71: "BINPUT",
  0x72: "LONG_BINPUT",
  0x7d: "EMPTY_DICT",
  0x5d: "EMPTY_LIST",
  0x29: "EMPTY_TUPLE",
  0x74: "TUPLE",
  0x85: "TUPLE1",
  0x86: "TUPLE2",
  0x87: "TUPLE3",
  0x73: "SETITEM",
  0x75: "SETITEMS",
  0x61: "APPEND",
  0x65: "APPENDS",
  0x4a: "BININT",
  0x4b: "BININT1",
  0x4d: "BININT2",
  0x8a: "LONG1",
  0x47: "BINFLOAT",
  0x58: "BINUNICODE",
  0x8c: "SHORT_BINUNICODE",
  0x54: "BINSTRING",
  0x55: "SHORT_BINSTRING",
  0x4e: "NONE",
  0x88: "NEWTRUE",
  0x89: "NEWFALSE",
  0x63: "GLOBAL",
  0x52: "REDUCE",
  0x62: "BUILD",
  0x81: "NEWOBJ",
  0x51: "BINPERSID",
};

/** Names of the opcodes that are refused, so the error can say which one it met. */
const REFUSED_NAMES: Record<number, string> = {
  0x93: "STACK_GLOBAL",
  0x69: "INST",
  0x6f: "OBJ",
  0x50: "PERSID",
  0x82: "EXT1",
  0x83: "EXT2",
  0x84: "EXT4",
  0x92: "NEWOBJ_EX",
  0x95: "FRAME",
  0x94: "MEMOIZE",
  0x49: "INT",
  0x4c: "LONG",
  0x8b: "LONG4",
  0x46: "FLOAT",
  0x53: "STRING",
  0x56: "UNICODE",
  0x8d: "BINUNICODE8",
  0x42: "BINBYTES",
  0x43: "SHORT_BINBYTES",
  0x8e: "BINBYTES8",
  0x96: "BYTEARRAY8",
  0x97: "NEXT_BUFFER",
  0x98: "READONLY_BUFFER",
  0x8f: "EMPTY_SET",
  0x90: "ADDITEMS",
  0x91: "FROZENSET",
  0x32: "DUP",
  0x30: "POP",
  0x31: "POP_MARK",
  0x64: "DICT",
  0x6c: "LIST",
};

const MARK = Symbol("mark");
const utf8 = new TextDecoder("utf-8", { fatal: true });
const latin1 = new TextDecoder("latin1");

/**
 * Reads one pickle from `bytes` at `start`.
 *
 * @param name the file, for messages
 * @returns the value and the offset just past its STOP
 * @throws {PickleError} on a malformed pickle, a refused opcode or a refused global.
 */
export function unpickle(
  bytes: Uint8Array,
  name: string,
  hooks: PickleHooks,
  start = 0,
): { value: unknown; end: number } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const stack: unknown[] = [];
  const memo = new Map<number, unknown>();
  let p = start;
  let op = 0;
  let opAt = 0;
  const fail = (why: string): never => {
    const opName = OPCODE_NAMES[op] ?? REFUSED_NAMES[op] ?? `0x${op.toString(16)}`;
    throw new PickleError(`${name}: pickle: ${opName} at byte ${opAt}: ${why}`);
  };
  const need = (n: number) => {
    if (p + n > bytes.byteLength) fail(`needs ${n} bytes, the pickle ends (truncated)`);
  };
  const pop = (): unknown => {
    if (stack.length === 0) fail("stack underflow");
    const v = stack.pop();
    if (v === MARK) fail("unexpected MARK");
    return v;
  };
  const top = (): unknown => {
    if (stack.length === 0 || stack[stack.length - 1] === MARK) fail("stack underflow");
    return stack[stack.length - 1];
  };
  /** The items above the last MARK, removed with the MARK. */
  const popMark = (): unknown[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) fail("no MARK on the stack");
    const items = stack.slice(i + 1);
    stack.length = i;
    return items;
  };
  const line = (): string => {
    const nl = bytes.indexOf(0x0a, p);
    if (nl < 0 || nl - p > 256) fail("no end of line");
    const s = latin1.decode(bytes.subarray(p, nl));
    p = nl + 1;
    return s;
  };
  const text = (n: number, decoder: TextDecoder): string => {
    need(n);
    let s: string;
    try {
      s = decoder.decode(bytes.subarray(p, p + n));
    } catch {
      return fail("string is not valid UTF-8");
    }
    p += n;
    return s;
  };
  const get = (i: number) => {
    if (!memo.has(i)) fail(`memo ${i} was never set`);
    stack.push(memo.get(i));
  };
  const put = (i: number) => memo.set(i, top());
  const setItems = (dict: unknown, items: unknown[]) => {
    if (!(dict instanceof Map)) fail("target is not a dict");
    if (items.length % 2) fail("odd number of items");
    for (let i = 0; i < items.length; i += 2) {
      (dict as Map<unknown, unknown>).set(items[i], items[i + 1]);
    }
  };
  const append = (list: unknown, items: unknown[]) => {
    if (!Array.isArray(list) || Object.isFrozen(list)) fail("target is not a list");
    for (const v of items) (list as unknown[]).push(v);
  };
  const tuple = (items: unknown[]): PickleTuple => {
    if (items.includes(MARK)) fail("unexpected MARK");
    return Object.freeze(items);
  };

  while (true) {
    opAt = p;
    need(1);
    op = bytes[p++];
    switch (op) {
      case 0x80: // PROTO
        need(1);
        if (bytes[p] > 5) fail(`unknown protocol ${bytes[p]}`);
        p += 1;
        break;
      case 0x2e: // STOP
        if (stack.length !== 1) fail(`stack holds ${stack.length} items at STOP, not 1`);
        return { value: pop(), end: p };
      case 0x28: // MARK
        stack.push(MARK);
        break;
      case 0x67: { // GET
        const s = line();
        if (!/^\d{1,9}$/.test(s)) fail(`bad memo index "${s}"`);
        get(Number(s));
        break;
      }
      case 0x68: // BINGET
        need(1);
        get(bytes[p]);
        p += 1;
        break;
      case 0x6a: // LONG_BINGET
        need(4);
        get(dv.getUint32(p, true));
        p += 4;
        break;
      case 0x70: { // PUT
        const s = line();
        if (!/^\d{1,9}$/.test(s)) fail(`bad memo index "${s}"`);
        put(Number(s));
        break;
      }
      case 0x71: // BINPUT
        need(1);
        put(bytes[p]);
        p += 1;
        break;
      case 0x72: // LONG_BINPUT
        need(4);
        put(dv.getUint32(p, true));
        p += 4;
        break;
      case 0x7d: // EMPTY_DICT
        stack.push(new Map());
        break;
      case 0x5d: // EMPTY_LIST
        stack.push([]);
        break;
      case 0x29: // EMPTY_TUPLE
        stack.push(tuple([]));
        break;
      case 0x74: // TUPLE
        stack.push(tuple(popMark()));
        break;
      case 0x85: // TUPLE1
      case 0x86: // TUPLE2
      case 0x87: { // TUPLE3
        const n = op - 0x84;
        const items: unknown[] = [];
        for (let i = 0; i < n; i++) items.unshift(pop());
        stack.push(tuple(items));
        break;
      }
      case 0x73: { // SETITEM
        const v = pop();
        const k = pop();
        setItems(top(), [k, v]);
        break;
      }
      case 0x75: { // SETITEMS
        const items = popMark();
        setItems(top(), items);
        break;
      }
      case 0x61: { // APPEND
        const v = pop();
        append(top(), [v]);
        break;
      }
      case 0x65: { // APPENDS
        const items = popMark();
        append(top(), items);
        break;
      }
      case 0x4a: // BININT
        need(4);
        stack.push(dv.getInt32(p, true));
        p += 4;
        break;
      case 0x4b: // BININT1
        need(1);
        stack.push(bytes[p]);
        p += 1;
        break;
      case 0x4d: // BININT2
        need(2);
        stack.push(dv.getUint16(p, true));
        p += 2;
        break;
      case 0x8a: { // LONG1: little-endian two's complement of n bytes
        need(1);
        const n = bytes[p];
        p += 1;
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[p + i]);
        if (n > 0 && bytes[p + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        p += n;
        const small = v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER);
        stack.push(small ? Number(v) : v);
        break;
      }
      case 0x47: // BINFLOAT (big-endian)
        need(8);
        stack.push(dv.getFloat64(p, false));
        p += 8;
        break;
      case 0x58: { // BINUNICODE
        need(4);
        const n = dv.getUint32(p, true);
        p += 4;
        stack.push(text(n, utf8));
        break;
      }
      case 0x8c: { // SHORT_BINUNICODE
        need(1);
        const n = bytes[p];
        p += 1;
        stack.push(text(n, utf8));
        break;
      }
      case 0x54: { // BINSTRING
        need(4);
        const n = dv.getInt32(p, true);
        if (n < 0) fail(`negative length ${n}`);
        p += 4;
        stack.push(text(n, latin1));
        break;
      }
      case 0x55: { // SHORT_BINSTRING
        need(1);
        const n = bytes[p];
        p += 1;
        stack.push(text(n, latin1));
        break;
      }
      case 0x4e: // NONE
        stack.push(null);
        break;
      case 0x88: // NEWTRUE
        stack.push(true);
        break;
      case 0x89: // NEWFALSE
        stack.push(false);
        break;
      case 0x63: { // GLOBAL
        const module = line();
        const gname = line();
        if (!hooks.allowGlobal(module, gname)) {
          fail(
            `global ${module}.${gname} is not allowed (only what torch.save writes for tensors)`,
          );
        }
        stack.push(new PickleGlobal(module, gname));
        break;
      }
      case 0x52: // REDUCE
      case 0x81: { // NEWOBJ
        const args = pop();
        const fn = pop();
        if (!(fn instanceof PickleGlobal)) fail("the callable is not a global");
        if (!Array.isArray(args) || !Object.isFrozen(args)) fail("the arguments are not a tuple");
        stack.push(callHook(() => hooks.call(fn as PickleGlobal, args as PickleTuple)));
        break;
      }
      case 0x62: { // BUILD
        const state = pop();
        const obj = pop();
        stack.push(callHook(() => hooks.build(obj, state)));
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        stack.push(callHook(() => hooks.persistentLoad(pid)));
        break;
      }
      default:
        fail(
          REFUSED_NAMES[op]
            ? "opcode is not allowed (torch.save does not write it)"
            : "unknown opcode",
        );
    }
  }

  /** Runs a hook, turning its error into one that says where in the pickle it happened. */
  function callHook(f: () => unknown): unknown {
    try {
      return f();
    } catch (e) {
      if (e instanceof WeightsError) return fail(e.message);
      throw e;
    }
  }
}
