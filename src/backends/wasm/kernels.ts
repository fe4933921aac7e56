/**
 * Low-level host wrapper of the WebAssembly SIMD kernels (`wasm/mamba_kernels.wasm`, built from
 * `rust_kernels/` by `tools/build_wasm.sh`).
 *
 * One {@link WasmKernels} instance owns one module instance with its own linear memory: the
 * pointers the methods take are byte offsets into that memory, obtained from the instance's
 * bump allocator ({@link WasmKernels.alloc} and friends). Nothing here allocates per call.
 *
 * The class works unchanged inside a Web Worker, and can be built from a
 * `WebAssembly.Module` compiled elsewhere ({@link WasmKernels.fromModule}), so that a backend
 * can compile the module once and start one instance per worker, each owning a slice of the
 * channels (every kernel takes a row / channel / head range).
 *
 * Growing the memory (an allocation past the current size) detaches every typed array viewing
 * the old buffer. {@link WasmArray.view} re-creates its view when that happened; call
 * {@link WasmKernels.reserve} once up front to make all later allocations grow-free.
 *
 * @module
 */

/** Current version of the exported ABI (`abi_version()` of the module). */
export const WASM_ABI_VERSION = 1;

/** Flag of {@link WasmKernels.selectiveScan} / {@link WasmKernels.ssdScan}: softplus on `dt + dt_bias`. */
export const SCAN_SOFTPLUS = 1;
/**
 * Flag of {@link WasmKernels.ssdScan}: the input term is `x ⊗ B` (not `dt·x ⊗ B`), so that with
 * `A = 1` and `dt` holding a log-decay the kernel computes `ssd_minimal_discrete`.
 */
export const SSD_UNSCALED_X = 2;

/**
 * Flag of {@link WasmKernels.selectiveScan}: the state `h` and `A` are stored 4-channel-interleaved
 * ({@link WasmKernels.interleave4}), so a decode step uses them in place instead of transposing
 * them on every call. Needs `c0 % 4 == 0` and, with several groups, `(dim / ngroups) % 4 == 0`
 * (the kernel traps otherwise); the buffers hold `ceil(dim / 4) * 4 * n` floats.
 */
export const SCAN_INTERLEAVED = 4;

/** Elements per q8 scale block along K. */
export const Q8_BLOCK = 32;

/**
 * Bit of the `accumulate` argument of `matvec_f16` / `matmul_f16` (bit 0 = accumulate): the
 * caller has checked that no weight is ±inf or NaN ({@link f16AllFinite}), so the widening skips
 * its Inf/NaN fix-up.
 */
export const F16_FINITE = 2;

/** Whether no binary16 pattern in `bits` is ±inf or NaN (exponent field all ones). */
export function f16AllFinite(bits: Uint16Array): boolean {
  for (let i = 0; i < bits.length; i++) if ((bits[i] & 0x7c00) === 0x7c00) return false;
  return true;
}

/** The raw exports of `mamba_kernels.wasm` (pointers are byte offsets, sizes element counts). */
export interface KernelExports {
  /** The module's own linear memory. */
  readonly memory: WebAssembly.Memory;
  /** ABI version (see {@link WASM_ABI_VERSION}). */
  abi_version(): number;
  /** Bump-allocates `bytes` (64-byte aligned); 0 when memory cannot grow. */
  alloc(bytes: number): number;
  /** Current heap top (a mark for `heap_reset`). */
  heap_top(): number;
  /** Frees everything allocated after `mark`. */
  heap_reset(mark: number): void;
  /** Grows memory so that `bytes` more can be allocated without growing; 1 on success. */
  heap_reserve(bytes: number): number;
  /** GEMV, f32 weights. */
  matvec_f32(
    w: number,
    x: number,
    y: number,
    n: number,
    k: number,
    r0: number,
    r1: number,
    acc: number,
  ): void;
  /** GEMV, f16 weights. */
  matvec_f16(
    w: number,
    x: number,
    y: number,
    n: number,
    k: number,
    r0: number,
    r1: number,
    acc: number,
  ): void;
  /** GEMV, q8 weights. */
  matvec_q8(
    wq: number,
    scales: number,
    x: number,
    y: number,
    n: number,
    k: number,
    r0: number,
    r1: number,
    acc: number,
  ): void;
  /** f32 → q8 quantization of rows [r0, r1). */
  quantize_q8(
    w: number,
    wq: number,
    scales: number,
    n: number,
    k: number,
    r0: number,
    r1: number,
  ): void;
  /** GEMM, f32 weights. */
  matmul_f32(
    x: number,
    ldx: number,
    w: number,
    y: number,
    ldy: number,
    m: number,
    n: number,
    k: number,
    r0: number,
    r1: number,
    acc: number,
  ): void;
  /** GEMM, f16 weights. */
  matmul_f16(
    x: number,
    ldx: number,
    w: number,
    y: number,
    ldy: number,
    m: number,
    n: number,
    k: number,
    r0: number,
    r1: number,
    acc: number,
  ): void;
  /** GEMM, q8 weights. */
  matmul_q8(
    x: number,
    ldx: number,
    wq: number,
    scales: number,
    y: number,
    ldy: number,
    m: number,
    n: number,
    k: number,
    r0: number,
    r1: number,
    acc: number,
  ): void;
  /** RMSNorm of `rows` rows. */
  rmsnorm(x: number, w: number, out: number, rows: number, n: number, eps: number): void;
  /** LayerNorm of `rows` rows (`b` may be 0). */
  layernorm(
    x: number,
    w: number,
    b: number,
    out: number,
    rows: number,
    n: number,
    eps: number,
  ): void;
  /** `residual += hidden; out = rmsnorm(residual)`. */
  add_rmsnorm(
    res: number,
    hid: number,
    w: number,
    out: number,
    rows: number,
    n: number,
    eps: number,
  ): void;
  /** `residual += hidden; out = layernorm(residual)`. */
  add_layernorm(
    res: number,
    hid: number,
    w: number,
    b: number,
    out: number,
    rows: number,
    n: number,
    eps: number,
  ): void;
  /** Mamba-2 gated RMSNorm. */
  gated_rmsnorm(
    y: number,
    z: number,
    ldz: number,
    w: number,
    out: number,
    rows: number,
    n: number,
    groupSize: number,
    eps: number,
    normBeforeGate: number,
  ): void;
  /** `out = silu(x)`. */
  silu(x: number, out: number, n: number): void;
  /** `out = x * silu(z)`. */
  mul_silu(x: number, z: number, out: number, n: number): void;
  /** PyTorch softplus. */
  softplus(x: number, out: number, n: number): void;
  /** `out = e^x`. */
  exp_f32(x: number, out: number, n: number): void;
  /** `out = ln(1 + x)`. */
  log1p_f32(x: number, out: number, n: number): void;
  /** `out = a + b`. */
  add_f32(a: number, b: number, out: number, n: number): void;
  /** binary16 → f32. */
  f16_to_f32(src: number, dst: number, n: number): void;
  /** Index of the maximum (-1 when n = 0). */
  argmax(x: number, n: number): number;
  /** Indices of the k largest, largest first; returns the count. */
  top_k(x: number, n: number, k: number, outIdx: number): number;
  /** Causal depthwise conv1d, sequence form. */
  conv1d_seq(
    state: number,
    x: number,
    ldx: number,
    w: number,
    b: number,
    out: number,
    ldo: number,
    l: number,
    dConv: number,
    c0: number,
    c1: number,
    silu: number,
  ): void;
  /** Causal depthwise conv1d, one token. */
  conv1d_step(
    state: number,
    x: number,
    w: number,
    b: number,
    out: number,
    dConv: number,
    c0: number,
    c1: number,
    silu: number,
  ): void;
  /** Mamba-1 selective scan, sequence form. */
  selective_scan(
    h: number,
    u: number,
    ldu: number,
    delta: number,
    ldd: number,
    a: number,
    b: number,
    c: number,
    ldbc: number,
    d: number,
    z: number,
    ldz: number,
    dtBias: number,
    y: number,
    ldy: number,
    l: number,
    dim: number,
    n: number,
    ngroups: number,
    c0: number,
    c1: number,
    flags: number,
  ): void;
  /** Mamba-1 selective scan, one token. */
  selective_scan_step(
    h: number,
    u: number,
    delta: number,
    a: number,
    b: number,
    c: number,
    d: number,
    z: number,
    dtBias: number,
    y: number,
    dim: number,
    n: number,
    ngroups: number,
    c0: number,
    c1: number,
    flags: number,
  ): void;
  /** [rows, n] row-major -> 4-row-interleaved. */
  interleave4(src: number, dst: number, rows: number, n: number): void;
  /** 4-row-interleaved -> [rows, n] row-major. */
  deinterleave4(src: number, dst: number, rows: number, n: number): void;
  /** Mamba-2 SSD recurrence, sequence form. */
  ssd_scan(
    state: number,
    x: number,
    ldx: number,
    dt: number,
    lddt: number,
    a: number,
    b: number,
    c: number,
    ldbc: number,
    d: number,
    dtBias: number,
    y: number,
    ldy: number,
    l: number,
    nheads: number,
    headdim: number,
    n: number,
    ngroups: number,
    h0: number,
    h1: number,
    flags: number,
  ): void;
  /** Mamba-2 SSD recurrence, one token. */
  ssd_step(
    state: number,
    x: number,
    dt: number,
    a: number,
    b: number,
    c: number,
    d: number,
    dtBias: number,
    y: number,
    nheads: number,
    headdim: number,
    n: number,
    ngroups: number,
    h0: number,
    h1: number,
    flags: number,
  ): void;
  /** Causal attention rows over a KV cache, tiled (see rust_kernels/src/attention.rs). */
  attn_rows(
    q: number,
    ldq: number,
    out: number,
    ldo: number,
    nq: number,
    pos0: number,
    k: number,
    v: number,
    cap: number,
    nHeads: number,
    nKv: number,
    hd: number,
    scale: number,
    j0: number,
    j1: number,
    ml: number,
  ): void;
  /** Combines split partials of `attn_rows` (flash-decoding's reduction). */
  attn_merge(
    acc: number,
    ml: number,
    splits: number,
    rows: number,
    hd: number,
    out: number,
    ldo: number,
  ): void;
  /** Rotate-half rotary embedding with host-computed cos / sin per row. */
  rotary(
    x: number,
    ldx: number,
    rows: number,
    heads: number,
    hd: number,
    rot: number,
    cos: number,
    sin: number,
  ): void;
  /** Exact (erf) GELU. */
  gelu(x: number, out: number, n: number): void;
}

/** Typed-array constructors a {@link WasmArray} can view memory with. */
export type WasmArrayType = Float32Array | Uint16Array | Int8Array | Int32Array | Uint8Array;

type ArrayCtor<T extends WasmArrayType> = {
  new (buffer: ArrayBuffer, byteOffset: number, length: number): T;
  readonly BYTES_PER_ELEMENT: number;
};

/**
 * A buffer in a kernel instance's memory: its byte offset `ptr` (what the kernels take) and a
 * typed view that survives memory growth (re-created on access when the memory grew).
 */
export class WasmArray<T extends WasmArrayType> {
  #view: T;
  readonly #memory: WebAssembly.Memory;
  readonly #ctor: ArrayCtor<T>;

  /**
   * Wraps `length` elements at byte offset `ptr` of `memory` (normally made by
   * {@link WasmKernels.allocF32} and friends).
   */
  constructor(
    memory: WebAssembly.Memory,
    /** Byte offset in the instance's memory. */
    readonly ptr: number,
    /** Number of elements. */
    readonly length: number,
    ctor: ArrayCtor<T>,
  ) {
    this.#memory = memory;
    this.#ctor = ctor;
    this.#view = new ctor(memory.buffer as ArrayBuffer, ptr, length);
  }

  /** A typed view of the buffer (valid until the memory grows again). */
  get view(): T {
    if (this.#view.buffer !== this.#memory.buffer) {
      this.#view = new this.#ctor(this.#memory.buffer as ArrayBuffer, this.ptr, this.length);
    }
    return this.#view;
  }

  /** Byte offset of element `i` (for kernels that take a pointer into the middle). */
  at(i: number): number {
    return this.ptr + i * this.#ctor.BYTES_PER_ELEMENT;
  }

  /** Copies `src` into the buffer starting at element `offset`. */
  set(src: ArrayLike<number>, offset = 0): void {
    (this.view as unknown as { set(a: ArrayLike<number>, o: number): void }).set(src, offset);
  }

  /** A copy of the buffer's contents. */
  toArray(): T {
    return this.view.slice() as T;
  }
}

let defaultModule: Promise<WebAssembly.Module> | undefined;

/** Reads the bytes at a `file:`, `http(s):`, or other fetchable URL. */
async function readUrl(url: URL): Promise<Uint8Array<ArrayBuffer>> {
  if (
    url.protocol === "file:" && typeof Deno !== "undefined" && typeof Deno.readFile === "function"
  ) {
    return (await Deno.readFile(url)) as Uint8Array<ArrayBuffer>;
  }
  const res = await fetch(url);
  if (!res.ok) throw new Error(`mamba wasm: cannot fetch ${url.href}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

/**
 * A kernel module instance with its own memory, its allocator, and one thin method per kernel.
 * Pointer arguments are byte offsets into {@link WasmKernels.memory} (`WasmArray.ptr`); an
 * optional pointer is 0 for "absent". Row / channel / head ranges are half-open `[start, end)`.
 *
 * @example
 * ```ts
 * import { WasmKernels } from "./kernels.ts";
 * const k = await WasmKernels.create();
 * const w = k.allocF32(4 * 8), x = k.allocF32(8), y = k.allocF32(4);
 * w.view.fill(1); x.view.fill(2);
 * k.matvecF32(w.ptr, x.ptr, y.ptr, 4, 8);
 * console.log(y.view); // Float32Array [16, 16, 16, 16]
 * ```
 */
export class WasmKernels {
  /** The raw exports (for calls not wrapped here). */
  readonly exports: KernelExports;
  /** The instance's linear memory. */
  readonly memory: WebAssembly.Memory;

  private constructor(instance: WebAssembly.Instance) {
    this.exports = instance.exports as unknown as KernelExports;
    this.memory = this.exports.memory;
    const v = this.exports.abi_version();
    if (v !== WASM_ABI_VERSION) {
      throw new Error(`mamba wasm: ABI version ${v}, this wrapper expects ${WASM_ABI_VERSION}`);
    }
  }

  /** URL of the committed module, relative to this file (local checkout or remote import). */
  static readonly defaultUrl: URL = new URL("../../../wasm/mamba_kernels.wasm", import.meta.url);

  /**
   * Compiles a module (cached when `source` is omitted: the committed `mamba_kernels.wasm`).
   * The result can be posted to workers and passed to {@link WasmKernels.fromModule} there.
   */
  static compile(source?: URL | string | BufferSource): Promise<WebAssembly.Module> {
    if (source === undefined) {
      defaultModule ??= readUrl(WasmKernels.defaultUrl).then((b) => WebAssembly.compile(b)).catch(
        (e) => {
          defaultModule = undefined; // let a later call retry
          throw e;
        },
      );
      return defaultModule;
    }
    if (typeof source === "string" || source instanceof URL) {
      return readUrl(new URL(source)).then((b) => WebAssembly.compile(b));
    }
    return WebAssembly.compile(source);
  }

  /**
   * Creates an instance from a compiled module, module bytes, a URL, or (by default) the
   * committed `mamba_kernels.wasm`.
   */
  static async create(
    source?: WebAssembly.Module | URL | string | BufferSource,
  ): Promise<WasmKernels> {
    const module = source instanceof WebAssembly.Module
      ? source
      : await WasmKernels.compile(source);
    return new WasmKernels(await WebAssembly.instantiate(module, {}));
  }

  /** Synchronously instantiates an already compiled module (e.g. one received by a worker). */
  static fromModule(module: WebAssembly.Module): WasmKernels {
    return new WasmKernels(new WebAssembly.Instance(module, {}));
  }

  // ------------------------------------------------------------------------------------------
  // memory

  /** Allocates `bytes` bytes (64-byte aligned) and returns the pointer; throws when out of memory. */
  alloc(bytes: number): number {
    // wasm32 pointers are u32, but an exported i32 arrives signed: past 2 GiB it would be negative.
    const p = this.exports.alloc(bytes) >>> 0;
    if (p === 0) throw new RangeError(`mamba wasm: cannot allocate ${bytes} bytes`);
    return p;
  }

  /** Allocates `n` f32. */
  allocF32(n: number): WasmArray<Float32Array> {
    return new WasmArray(this.memory, this.alloc(n * 4), n, Float32Array);
  }

  /** Allocates `n` u16 (binary16 bit patterns). */
  allocU16(n: number): WasmArray<Uint16Array> {
    return new WasmArray(this.memory, this.alloc(n * 2), n, Uint16Array);
  }

  /** Allocates `n` i8 (q8 weights). */
  allocI8(n: number): WasmArray<Int8Array> {
    return new WasmArray(this.memory, this.alloc(n), n, Int8Array);
  }

  /** Allocates `n` i32. */
  allocI32(n: number): WasmArray<Int32Array> {
    return new WasmArray(this.memory, this.alloc(n * 4), n, Int32Array);
  }

  /** Allocates room for a q8 matrix [n, k]: int8 weights and `n × ceil(k/32)` f32 scales. */
  allocQ8(n: number, k: number): { q: WasmArray<Int8Array>; scales: WasmArray<Float32Array> } {
    return { q: this.allocI8(n * k), scales: this.allocF32(n * Math.ceil(k / Q8_BLOCK)) };
  }

  /** Copies `src` into newly allocated memory. */
  upload(src: Float32Array): WasmArray<Float32Array>;
  /** Copies `src` into newly allocated memory. */
  upload(src: Uint16Array): WasmArray<Uint16Array>;
  /** Copies `src` into newly allocated memory. */
  upload(src: Int8Array): WasmArray<Int8Array>;
  /** Copies `src` into newly allocated memory. */
  upload(src: Float32Array | Uint16Array | Int8Array): WasmArray<WasmArrayType> {
    const a: WasmArray<WasmArrayType> = src instanceof Float32Array
      ? this.allocF32(src.length)
      : src instanceof Uint16Array
      ? this.allocU16(src.length)
      : this.allocI8(src.length);
    a.set(src);
    return a;
  }

  /** The current heap top: a mark for {@link WasmKernels.reset}. */
  mark(): number {
    return this.exports.heap_top() >>> 0;
  }

  /** Frees every allocation made after `mark` (their views must no longer be used). */
  reset(mark: number): void {
    this.exports.heap_reset(mark);
  }

  /** Grows the memory once so that `bytes` more bytes can be allocated without growing. */
  reserve(bytes: number): void {
    if (!this.exports.heap_reserve(bytes)) {
      throw new RangeError(`mamba wasm: cannot reserve ${bytes} bytes`);
    }
  }

  /** A fresh f32 view of `n` elements at `ptr` (valid until the memory grows). */
  f32(ptr: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, ptr, n);
  }

  // ------------------------------------------------------------------------------------------
  // linear layers: y = x · Wᵀ, W [n, k] row-major

  /** `y[r] (+)= W[r,:]·x` for rows `[r0, r1)` of f32 W [n, k]. */
  matvecF32(
    w: number,
    x: number,
    y: number,
    n: number,
    k: number,
    r0 = 0,
    r1 = n,
    accumulate = false,
  ): void {
    this.exports.matvec_f32(w, x, y, n, k, r0, r1, accumulate ? 1 : 0);
  }

  /** As {@link WasmKernels.matvecF32} with binary16 W. */
  matvecF16(
    w: number,
    x: number,
    y: number,
    n: number,
    k: number,
    r0 = 0,
    r1 = n,
    accumulate = false,
    finite = false,
  ): void {
    this.exports.matvec_f16(
      w,
      x,
      y,
      n,
      k,
      r0,
      r1,
      (accumulate ? 1 : 0) | (finite ? F16_FINITE : 0),
    );
  }

  /** As {@link WasmKernels.matvecF32} with q8 W (`wq` int8 [n, k], `scales` [n, ceil(k/32)]). */
  matvecQ8(
    wq: number,
    scales: number,
    x: number,
    y: number,
    n: number,
    k: number,
    r0 = 0,
    r1 = n,
    accumulate = false,
  ): void {
    this.exports.matvec_q8(wq, scales, x, y, n, k, r0, r1, accumulate ? 1 : 0);
  }

  /** Quantizes f32 W [n, k] (rows `[r0, r1)`) to q8 (`wq`, `scales`). */
  quantizeQ8(w: number, wq: number, scales: number, n: number, k: number, r0 = 0, r1 = n): void {
    this.exports.quantize_q8(w, wq, scales, n, k, r0, r1);
  }

  /**
   * `Y[t, r] (+)= X[t,:]·W[r,:]` for `m` tokens, rows `[r0, r1)` of f32 W [n, k]; X rows are
   * `ldx` floats apart, Y rows `ldy` apart.
   */
  matmulF32(
    x: number,
    ldx: number,
    w: number,
    y: number,
    ldy: number,
    m: number,
    n: number,
    k: number,
    r0 = 0,
    r1 = n,
    accumulate = false,
  ): void {
    this.exports.matmul_f32(x, ldx, w, y, ldy, m, n, k, r0, r1, accumulate ? 1 : 0);
  }

  /** As {@link WasmKernels.matmulF32} with binary16 W. */
  matmulF16(
    x: number,
    ldx: number,
    w: number,
    y: number,
    ldy: number,
    m: number,
    n: number,
    k: number,
    r0 = 0,
    r1 = n,
    accumulate = false,
  ): void {
    this.exports.matmul_f16(x, ldx, w, y, ldy, m, n, k, r0, r1, accumulate ? 1 : 0);
  }

  /** As {@link WasmKernels.matmulF32} with q8 W. */
  matmulQ8(
    x: number,
    ldx: number,
    wq: number,
    scales: number,
    y: number,
    ldy: number,
    m: number,
    n: number,
    k: number,
    r0 = 0,
    r1 = n,
    accumulate = false,
  ): void {
    this.exports.matmul_q8(x, ldx, wq, scales, y, ldy, m, n, k, r0, r1, accumulate ? 1 : 0);
  }

  // ------------------------------------------------------------------------------------------
  // norms and element-wise

  /** RMSNorm of `rows` rows of `n`: `out = x / sqrt(mean(x²) + eps) * w`. */
  rmsnorm(x: number, w: number, out: number, n: number, eps: number, rows = 1): void {
    this.exports.rmsnorm(x, w, out, rows, n, eps);
  }

  /** LayerNorm of `rows` rows of `n` (`b` 0 for no bias). */
  layernorm(x: number, w: number, b: number, out: number, n: number, eps: number, rows = 1): void {
    this.exports.layernorm(x, w, b, out, rows, n, eps);
  }

  /** `residual += hidden; out = rmsnorm(residual) * w`, per row. */
  addRmsnorm(
    residual: number,
    hidden: number,
    w: number,
    out: number,
    n: number,
    eps: number,
    rows = 1,
  ): void {
    this.exports.add_rmsnorm(residual, hidden, w, out, rows, n, eps);
  }

  /** `residual += hidden; out = layernorm(residual)`, per row. */
  addLayernorm(
    residual: number,
    hidden: number,
    w: number,
    b: number,
    out: number,
    n: number,
    eps: number,
    rows = 1,
  ): void {
    this.exports.add_layernorm(residual, hidden, w, b, out, rows, n, eps);
  }

  /**
   * Mamba-2 gated RMSNorm over `rows` rows of `n` (`z` rows `ldz` apart), groups of
   * `groupSize`: `out = rmsnorm(y * silu(z)) * w`, or `rmsnorm(y) * w * silu(z)` when
   * `normBeforeGate`.
   */
  gatedRmsnorm(
    y: number,
    z: number,
    w: number,
    out: number,
    n: number,
    groupSize: number,
    eps: number,
    rows = 1,
    ldz = n,
    normBeforeGate = false,
  ): void {
    this.exports.gated_rmsnorm(y, z, ldz, w, out, rows, n, groupSize, eps, normBeforeGate ? 1 : 0);
  }

  /** `out = silu(x)`. */
  silu(x: number, out: number, n: number): void {
    this.exports.silu(x, out, n);
  }

  /** `out = x * silu(z)`. */
  mulSilu(x: number, z: number, out: number, n: number): void {
    this.exports.mul_silu(x, z, out, n);
  }

  /** PyTorch softplus: `x > 20 ? x : log1p(exp(x))`. */
  softplus(x: number, out: number, n: number): void {
    this.exports.softplus(x, out, n);
  }

  /** `out = e^x` (the kernels' exp). */
  exp(x: number, out: number, n: number): void {
    this.exports.exp_f32(x, out, n);
  }

  /** `out = ln(1 + x)` (the kernels' log1p). */
  log1p(x: number, out: number, n: number): void {
    this.exports.log1p_f32(x, out, n);
  }

  /** `out = a + b`. */
  add(a: number, b: number, out: number, n: number): void {
    this.exports.add_f32(a, b, out, n);
  }

  /** Widens `n` binary16 bit patterns at `src` to f32 at `dst`. */
  f16ToF32(src: number, dst: number, n: number): void {
    this.exports.f16_to_f32(src, dst, n);
  }

  /** Index of the largest of `n` floats (first on ties, NaN ignored). */
  argmax(x: number, n: number): number {
    return this.exports.argmax(x, n);
  }

  /** Writes the indices of the `k` largest (largest first) to i32 `outIdx`; returns the count. */
  topK(x: number, n: number, k: number, outIdx: number): number {
    return this.exports.top_k(x, n, k, outIdx);
  }

  // ------------------------------------------------------------------------------------------
  // sequence mixing

  /**
   * Causal depthwise conv1d over `l` tokens, channels `[c0, c1)`: `state` [C, dConv] (oldest
   * first, updated), `x` [l, ldx], `w` [C, dConv], `b` [C] or 0, `out` [l, ldo].
   */
  conv1dSeq(
    state: number,
    x: number,
    ldx: number,
    w: number,
    b: number,
    out: number,
    ldo: number,
    l: number,
    dConv: number,
    c0: number,
    c1: number,
    silu: boolean,
  ): void {
    this.exports.conv1d_seq(state, x, ldx, w, b, out, ldo, l, dConv, c0, c1, silu ? 1 : 0);
  }

  /** One token of {@link WasmKernels.conv1dSeq} (`x`, `out` [C]). */
  conv1dStep(
    state: number,
    x: number,
    w: number,
    b: number,
    out: number,
    dConv: number,
    c0: number,
    c1: number,
    silu: boolean,
  ): void {
    this.exports.conv1d_step(state, x, w, b, out, dConv, c0, c1, silu ? 1 : 0);
  }

  /**
   * Mamba-1 selective scan over `p.l` tokens for channels `[p.c0, p.c1)`; see
   * `rust_kernels/src/ssm.rs` for the exact layouts. `d`, `z`, `dtBias` 0 when absent.
   */
  selectiveScan(p: SelectiveScanArgs): void {
    this.exports.selective_scan(
      p.h,
      p.u,
      p.ldu,
      p.delta,
      p.ldd,
      p.a,
      p.b,
      p.c,
      p.ldbc,
      p.d ?? 0,
      p.z ?? 0,
      p.ldz ?? 0,
      p.dtBias ?? 0,
      p.y,
      p.ldy,
      p.l,
      p.dim,
      p.n,
      p.ngroups ?? 1,
      p.c0 ?? 0,
      p.c1 ?? p.dim,
      p.flags ?? 0,
    );
  }

  /** One token of the Mamba-1 selective scan (positional form of the raw export). */
  selectiveScanStep(
    h: number,
    u: number,
    delta: number,
    a: number,
    b: number,
    c: number,
    d: number,
    z: number,
    dtBias: number,
    y: number,
    dim: number,
    n: number,
    ngroups: number,
    c0: number,
    c1: number,
    flags: number,
  ): void {
    this.exports.selective_scan_step(
      h,
      u,
      delta,
      a,
      b,
      c,
      d,
      z,
      dtBias,
      y,
      dim,
      n,
      ngroups,
      c0,
      c1,
      flags,
    );
  }

  /**
   * Converts a row-major [rows, n] matrix (Mamba-1 state or A) at `src` to the 4-row-interleaved
   * layout of {@link SCAN_INTERLEAVED} at `dst` (`ceil(rows / 4) * 4 * n` floats; element
   * (r, j) at `(r >> 2) * 4n + 4j + (r & 3)`).
   */
  interleave4(src: number, dst: number, rows: number, n: number): void {
    this.exports.interleave4(src, dst, rows, n);
  }

  /** Inverse of {@link WasmKernels.interleave4}. */
  deinterleave4(src: number, dst: number, rows: number, n: number): void {
    this.exports.deinterleave4(src, dst, rows, n);
  }

  /** Mamba-2 SSD recurrence over `p.l` tokens for heads `[p.h0, p.h1)`. */
  ssdScan(p: SsdScanArgs): void {
    this.exports.ssd_scan(
      p.state,
      p.x,
      p.ldx,
      p.dt,
      p.lddt,
      p.a,
      p.b,
      p.c,
      p.ldbc,
      p.d ?? 0,
      p.dtBias ?? 0,
      p.y,
      p.ldy,
      p.l,
      p.nheads,
      p.headdim,
      p.n,
      p.ngroups ?? 1,
      p.h0 ?? 0,
      p.h1 ?? p.nheads,
      p.flags ?? 0,
    );
  }

  /** One token of the Mamba-2 SSD recurrence (positional form of the raw export). */
  ssdStep(
    state: number,
    x: number,
    dt: number,
    a: number,
    b: number,
    c: number,
    d: number,
    dtBias: number,
    y: number,
    nheads: number,
    headdim: number,
    n: number,
    ngroups: number,
    h0: number,
    h1: number,
    flags: number,
  ): void {
    this.exports.ssd_step(
      state,
      x,
      dt,
      a,
      b,
      c,
      d,
      dtBias,
      y,
      nheads,
      headdim,
      n,
      ngroups,
      h0,
      h1,
      flags,
    );
  }
}

/**
 * Arguments of {@link WasmKernels.selectiveScan} (all pointers are byte offsets; `ld*` are row
 * strides in floats between consecutive tokens).
 */
export interface SelectiveScanArgs {
  /** State [dim, n], updated in place. */
  h: number;
  /** Input u [l, ldu]. */
  u: number;
  /** Row stride of u. */
  ldu: number;
  /** Raw dt [l, ldd] (before bias / softplus). */
  delta: number;
  /** Row stride of delta. */
  ldd: number;
  /** A [dim, n] (= -exp(A_log)). */
  a: number;
  /** B [l, ldbc], group g at column g*n. */
  b: number;
  /** C [l, ldbc], group g at column g*n. */
  c: number;
  /** Row stride of B and C. */
  ldbc: number;
  /** D [dim] or 0. */
  d?: number;
  /** Gate z [l, ldz] or 0. */
  z?: number;
  /** Row stride of z. */
  ldz?: number;
  /** dt bias [dim] or 0. */
  dtBias?: number;
  /** Output y [l, ldy]. */
  y: number;
  /** Row stride of y. */
  ldy: number;
  /** Number of tokens. */
  l: number;
  /** Number of channels (d_inner). */
  dim: number;
  /** State size (d_state). */
  n: number;
  /** Groups of B/C (1 for Mamba-1). */
  ngroups?: number;
  /** First channel. */
  c0?: number;
  /** End channel (exclusive). */
  c1?: number;
  /** {@link SCAN_SOFTPLUS} | {@link SCAN_INTERLEAVED}. */
  flags?: number;
}

/** Arguments of {@link WasmKernels.ssdScan} (pointers are byte offsets, `ld*` token strides in floats). */
export interface SsdScanArgs {
  /** State [nheads, headdim, n], updated in place. */
  state: number;
  /** x [l, ldx], head h at column h*headdim. */
  x: number;
  /** Row stride of x. */
  ldx: number;
  /** Raw dt [l, lddt], head h at column h. */
  dt: number;
  /** Row stride of dt. */
  lddt: number;
  /** A [nheads] (= -exp(A_log)). */
  a: number;
  /** B [l, ldbc], group g at column g*n. */
  b: number;
  /** C [l, ldbc]. */
  c: number;
  /** Row stride of B and C. */
  ldbc: number;
  /** D [nheads] or 0. */
  d?: number;
  /** dt bias [nheads] or 0. */
  dtBias?: number;
  /** Output y [l, ldy]. */
  y: number;
  /** Row stride of y. */
  ldy: number;
  /** Number of tokens. */
  l: number;
  /** Number of heads. */
  nheads: number;
  /** Head dimension P. */
  headdim: number;
  /** State size N. */
  n: number;
  /** Groups of B/C. */
  ngroups?: number;
  /** First head. */
  h0?: number;
  /** End head (exclusive). */
  h1?: number;
  /** {@link SCAN_SOFTPLUS} | {@link SSD_UNSCALED_X}. */
  flags?: number;
}
