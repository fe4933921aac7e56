/**
 * The state of a Transformer: its KV cache, the keys and values of every token seen so far, in
 * every attention layer. Unlike a Mamba state it grows with the context.
 *
 * @module
 */

import type { KvTensors, TransformerBackend } from "./backend.ts";
import { DeviceLostError, InputError } from "./errors.ts";
import { frameState, stateData, unframeState } from "./state_bytes.ts";

/** The shape of a KV cache, apart from its length. */
export interface KvLayout {
  /** Always `"kv"`. */
  readonly kind: "kv";
  /** Attention layers. */
  readonly nLayer: number;
  /** Sequences. */
  readonly batch: number;
  /** Key/value heads per layer. */
  readonly nKvHeads: number;
  /** Channels per head. */
  readonly headDim: number;
}

const MAGIC = "MAMBAKV1";

let bindImpl: (state: KvCacheState, backend: TransformerBackend) => unknown;
let advanceImpl: (state: KvCacheState, tokens: number) => void;

/**
 * The KV cache of a batch of sequences, all of the same length: per attention layer, keys
 * (after the rotary embedding) and values `[batch, nKvHeads, length, headDim]`. It lives where
 * the model computes (GPU memory on `webgpu`) and grows there by doubling its capacity.
 *
 * @example
 * ```ts
 * import { GptNeoXLM, KvCacheState, loadModel } from "@mamba/mamba";
 * const lm = await loadModel("path/to/pythia-160m");
 * if (lm instanceof GptNeoXLM) {
 *   const state = lm.createState(1);
 *   await lm.prefill(state, [[510, 3158, 8516]]);
 *   const branch = state.clone(); // fork
 *   const saved = await state.toBytes();
 *   const again = KvCacheState.fromBytes(saved);
 * }
 * ```
 */
export class KvCacheState {
  /** The cache's shape apart from its length. */
  readonly layout: KvLayout;
  #length = 0;
  /** The host copy, when the cache was restored and not yet bound to a backend. */
  #host: KvTensors | null = null;
  #binding: { backend: TransformerBackend; handle: unknown } | null = null;
  #freed = false;

  /** An empty cache of `layout`. */
  constructor(layout: KvLayout) {
    this.layout = layout;
  }

  /** Number of sequences. */
  get batch(): number {
    return this.layout.batch;
  }

  /** Tokens held per sequence. */
  get length(): number {
    return this.#length;
  }

  /** Bytes the keys and values of `length` tokens take (float32). */
  static bytesFor(layout: KvLayout, length: number): number {
    return 2 * 4 * layout.nLayer * layout.batch * layout.nKvHeads * layout.headDim * length;
  }

  /** Bytes of keys and values held (float32; the backend's capacity may be up to twice this). */
  get byteLength(): number {
    return KvCacheState.bytesFor(this.layout, this.#length);
  }

  #live(): void {
    if (this.#freed) throw new InputError("this KV cache was freed");
  }

  /** An independent copy (same backend), for branching continuations. */
  clone(): KvCacheState {
    this.#live();
    const c = new KvCacheState(this.layout);
    c.#length = this.#length;
    const b = this.#binding;
    if (b) c.#binding = { backend: b.backend, handle: b.backend.cloneKv(b.handle, this.#length) };
    else if (this.#host) {
      const h = this.#host;
      c.#host = { length: h.length, k: h.k.map((a) => a.slice()), v: h.v.map((a) => a.slice()) };
    }
    return c;
  }

  /** Empties the cache (its memory is kept for reuse). */
  reset(): void {
    this.#live();
    this.#length = 0;
    this.#host = null;
  }

  /** Frees the cache's memory on its backend; the cache cannot be used afterwards. */
  free(): void {
    if (this.#freed) return;
    this.#freed = true;
    const b = this.#binding;
    if (b && !b.backend.lostReason) b.backend.freeKv(b.handle);
    this.#binding = null;
    this.#host = null;
  }

  /** Copies the keys and values out to the host. */
  async tensors(): Promise<KvTensors> {
    this.#live();
    const b = this.#binding;
    if (b) return await b.backend.downloadKv(b.handle, this.#length);
    if (this.#host) return this.#host;
    const { nLayer } = this.layout;
    const empty = () => Array.from({ length: nLayer }, () => new Float32Array(0));
    return { length: 0, k: empty(), v: empty() };
  }

  /**
   * Serialises the cache: `"MAMBAKV1"`, a u32 little-endian JSON header length, the JSON
   * (`layout` and `length`), padding to 4 bytes, then per layer the keys and the values as
   * little-endian float32 `[batch, nKvHeads, length, headDim]`.
   */
  async toBytes(): Promise<Uint8Array> {
    const t = await this.tensors();
    const header = { layout: this.layout, length: this.#length };
    return frameState(MAGIC, header, this.byteLength, (f) => {
      let o = 0;
      for (let i = 0; i < this.layout.nLayer; i++) {
        f.set(t.k[i], o);
        o += t.k[i].length;
        f.set(t.v[i], o);
        o += t.v[i].length;
      }
    });
  }

  /**
   * Restores a cache written by {@link toBytes}; it moves to a model's backend when first used.
   *
   * @throws {InputError} on bytes that are not a saved KV cache or are truncated.
   */
  static fromBytes(bytes: Uint8Array): KvCacheState {
    const { header: raw, dataStart, bad } = unframeState(bytes, MAGIC, "KvCacheState");
    const header = raw as { layout?: KvLayout; length?: number } | null;
    const l = header?.layout;
    const pos = (v: unknown) => Number.isSafeInteger(v) && (v as number) > 0;
    if (
      typeof l !== "object" || l === null || l.kind !== "kv" || !pos(l.nLayer) ||
      !pos(l.batch) || !pos(l.nKvHeads) || !pos(l.headDim) ||
      !Number.isSafeInteger(header?.length) || header!.length! < 0
    ) {
      throw bad("bad layout");
    }
    const layout: KvLayout = {
      kind: "kv",
      nLayer: l.nLayer,
      batch: l.batch,
      nKvHeads: l.nKvHeads,
      headDim: l.headDim,
    };
    const length = header!.length!;
    const total = KvCacheState.bytesFor(layout, length);
    if (bytes.length !== dataStart + total) {
      throw bad(`expected ${dataStart + total} bytes, got ${bytes.length}`);
    }
    const f = stateData(bytes, dataStart);
    const per = total / 4 / layout.nLayer / 2;
    const k: Float32Array[] = [];
    const v: Float32Array[] = [];
    for (let i = 0; i < layout.nLayer; i++) {
      k.push(f.slice(2 * i * per, (2 * i + 1) * per));
      v.push(f.slice((2 * i + 1) * per, (2 * i + 2) * per));
    }
    const state = new KvCacheState(layout);
    state.#length = length;
    state.#host = { length, k, v };
    return state;
  }

  static {
    bindImpl = (state, backend) => {
      state.#live();
      const b = state.#binding;
      if (b?.backend.lostReason) {
        throw new DeviceLostError(
          `this KV cache lived on the ${b.backend.name} backend and is gone with it: ` +
            b.backend.lostReason,
        );
      }
      if (b && b.backend === backend) return b.handle;
      if (b) {
        throw new InputError(
          `this KV cache lives on another backend (${b.backend.name}); save it with toBytes() ` +
            "and restore it with KvCacheState.fromBytes() to move it",
        );
      }
      const handle = backend.createKv(state.batch);
      if (state.#host && state.#host.length > 0) {
        backend.reserveKv(handle, state.#host.length);
        backend.uploadKv(handle, state.#host);
      }
      state.#host = null;
      state.#binding = { backend, handle };
      return handle;
    };
    advanceImpl = (state, tokens) => {
      state.#length += tokens;
    };
  }
}

/** The backend handle of `state` on `backend`, uploading a restored cache. Internal. */
export function bindKv(state: KvCacheState, backend: TransformerBackend): unknown {
  return bindImpl(state, backend);
}

/** Records that `tokens` more tokens were written into `state`. Internal. */
export function advanceKv(state: KvCacheState, tokens: number): void {
  advanceImpl(state, tokens);
}
