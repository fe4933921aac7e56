/**
 * The recurrent inference state: what a Mamba model carries from one token to the next. Its size
 * is fixed by the config and the batch, whatever the length of the stream.
 *
 * @module
 */

import type { Backend, StateTensors } from "./backend.ts";
import type { MambaArch, MambaConfig } from "./config.ts";
import { DeviceLostError, InputError } from "./errors.ts";

/** The shape of a state: enough to check it against a model, and to (de)serialise it. */
export interface StateLayout {
  /** Mixer kind. */
  readonly arch: MambaArch;
  /** Number of layers. */
  readonly nLayer: number;
  /** Number of sequences. */
  readonly batch: number;
  /** Shape of one layer's conv state: `[batch, convDim, dConv]`. */
  readonly convShape: readonly number[];
  /** Shape of one layer's SSM state: `[batch, dInner, dState]` or `[batch, nheads, headdim, dState]`. */
  readonly ssmShape: readonly number[];
}

/** The state layout of `config` for `batch` sequences. */
export function stateLayout(config: MambaConfig, batch: number): StateLayout {
  return {
    arch: config.arch,
    nLayer: config.nLayer,
    batch,
    convShape: [batch, config.convDim, config.dConv],
    ssmShape: config.arch === "mamba1"
      ? [batch, config.dInner, config.dState]
      : [batch, config.nheads, config.headdim, config.dState],
  };
}

const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);

/** Zeroed host tensors for a layout. */
export function zeroStateTensors(layout: StateLayout): StateTensors {
  const conv: Float32Array[] = [];
  const ssm: Float32Array[] = [];
  for (let i = 0; i < layout.nLayer; i++) {
    conv.push(new Float32Array(size(layout.convShape)));
    ssm.push(new Float32Array(size(layout.ssmShape)));
  }
  return { conv, ssm };
}

const MAGIC = "MAMBAST1";

// Set by InferenceState's static block, which can reach its private fields.
let bindImpl: (state: InferenceState, backend: Backend) => Promise<unknown>;
let markImpl: (state: InferenceState) => void;

/** Where the authoritative copy of a state lives. Internal to the library. */
interface Binding {
  backend: Backend;
  handle: unknown;
  /** Whether `host` equals the backend's copy. */
  hostFresh: boolean;
}

/**
 * The recurrent state of a batch of sequences, per layer:
 *
 * - `conv[i]`: `[batch, convDim, dConv]` float32, the last `dConv` inputs of the causal
 *   convolution (x for Mamba-1, xBC for Mamba-2, before the conv), oldest first;
 * - `ssm[i]`: Mamba-1 `[batch, dInner, dState]`, Mamba-2 `[batch, nheads, headdim, dState]`
 *   float32, the SSM hidden state h.
 *
 * Arrays are row-major, last axis fastest — the layout of mamba_ssm's `conv_state` /
 * `ssm_state`. A state created by a model lives where its backend computes (the GPU for
 * `webgpu`); {@link InferenceState.sync} brings the host copy up to date.
 *
 * @example
 * ```ts
 * import { InferenceState, MambaLM } from "@mamba/mamba";
 * const lm = await MambaLM.load("./models/demo");
 * const state = lm.createState(1);
 * await lm.prefill(state, [[72, 105]]);
 * const saved = await state.toBytes();          // save…
 * const again = InferenceState.fromBytes(saved); // …and restore, here or on another backend
 * const branch = state.clone();                  // fork: independent from now on
 * ```
 */
export class InferenceState {
  /** The state's shapes. */
  readonly layout: StateLayout;
  #host: StateTensors;
  #binding: Binding | null = null;

  /** Wraps host tensors (zeroed when omitted) of `layout`. */
  constructor(layout: StateLayout, host?: StateTensors) {
    this.layout = layout;
    this.#host = host ?? zeroStateTensors(layout);
  }

  /** Number of sequences. */
  get batch(): number {
    return this.layout.batch;
  }

  /** Total bytes of state (all layers, conv + ssm, float32). */
  get byteLength(): number {
    return 4 * this.layout.nLayer * (size(this.layout.convShape) + size(this.layout.ssmShape));
  }

  /**
   * Per layer conv windows (see the class doc for the layout). Throws when the backend holds a
   * newer copy: `await state.sync()` first.
   */
  get conv(): readonly Float32Array[] {
    return this.#fresh().conv;
  }

  /** Per layer SSM states (see the class doc for the layout); same rule as {@link conv}. */
  get ssm(): readonly Float32Array[] {
    return this.#fresh().ssm;
  }

  #fresh(): StateTensors {
    if (this.#binding && !this.#binding.hostFresh) {
      throw new InputError(
        `this state lives on the ${this.#binding.backend.name} backend; await state.sync() before reading it`,
      );
    }
    return this.#host;
  }

  /** Brings the host copy up to date with the backend's. */
  async sync(): Promise<void> {
    const b = this.#binding;
    if (!b || b.hostFresh) return;
    const t = await b.backend.downloadState(b.handle);
    for (let i = 0; i < this.layout.nLayer; i++) {
      this.#host.conv[i].set(t.conv[i]);
      this.#host.ssm[i].set(t.ssm[i]);
    }
    b.hostFresh = true;
  }

  /** An independent copy (same backend), for branching continuations. */
  clone(): InferenceState {
    const b = this.#binding;
    const copyHost = (): StateTensors => ({
      conv: this.#host.conv.map((a) => a.slice()),
      ssm: this.#host.ssm.map((a) => a.slice()),
    });
    if (b && !b.backend.hostState) {
      const c = new InferenceState(this.layout, copyHost());
      c.#binding = {
        backend: b.backend,
        handle: b.backend.cloneState(b.handle),
        hostFresh: b.hostFresh,
      };
      return c;
    }
    return new InferenceState(this.layout, copyHost());
  }

  /**
   * Frees the backend's copy of the state now (GPU memory on `webgpu`, the ranks' memory on
   * `wasm`) instead of leaving it until the model is disposed. The state falls back to its host
   * copy as of the last {@link sync} (or {@link toBytes}): call it on states you are done with.
   */
  release(): void {
    const b = this.#binding;
    this.#binding = null;
    if (b && !b.backend.hostState && !b.backend.lostReason) b.backend.freeState(b.handle);
  }

  /** Resets every sequence to the empty state. */
  reset(): void {
    for (const a of this.#host.conv) a.fill(0);
    for (const a of this.#host.ssm) a.fill(0);
    const b = this.#binding;
    if (b && !b.backend.hostState) b.backend.uploadState(b.handle, this.#host);
    if (b) b.hostFresh = true;
  }

  /**
   * Serialises the state: `"MAMBAST1"`, a u32 little-endian JSON header length, the JSON layout,
   * padding to 4 bytes, then per layer the conv and the SSM tensors as little-endian float32.
   */
  async toBytes(): Promise<Uint8Array> {
    await this.sync();
    const header = new TextEncoder().encode(JSON.stringify(this.layout));
    const headerEnd = 12 + header.length;
    const dataStart = (headerEnd + 3) & ~3;
    const out = new Uint8Array(dataStart + this.byteLength);
    out.set(new TextEncoder().encode(MAGIC), 0);
    new DataView(out.buffer).setUint32(8, header.length, true);
    out.set(header, 12);
    const f = new Float32Array(out.buffer, dataStart);
    let o = 0;
    for (let i = 0; i < this.layout.nLayer; i++) {
      f.set(this.#host.conv[i], o);
      o += this.#host.conv[i].length;
      f.set(this.#host.ssm[i], o);
      o += this.#host.ssm[i].length;
    }
    return out;
  }

  /**
   * Restores a state written by {@link toBytes}.
   *
   * @throws {InputError} on bytes that are not a state or are truncated.
   */
  static fromBytes(bytes: Uint8Array): InferenceState {
    const bad = (why: string) => new InputError(`not a saved InferenceState: ${why}`);
    if (bytes.length < 12) throw bad("too short");
    if (new TextDecoder().decode(bytes.subarray(0, 8)) !== MAGIC) throw bad("wrong magic");
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const n = dv.getUint32(8, true);
    if (12 + n > bytes.length) throw bad("header beyond the end");
    let layout: StateLayout;
    try {
      layout = JSON.parse(new TextDecoder().decode(bytes.subarray(12, 12 + n)));
    } catch {
      throw bad("header is not JSON");
    }
    const okShape = (s: unknown) =>
      Array.isArray(s) && s.every((d) => Number.isSafeInteger(d) && d > 0);
    if (
      (layout.arch !== "mamba1" && layout.arch !== "mamba2") ||
      !Number.isSafeInteger(layout.nLayer) || layout.nLayer <= 0 ||
      !okShape(layout.convShape) || !okShape(layout.ssmShape) ||
      layout.convShape[0] !== layout.batch || layout.ssmShape[0] !== layout.batch
    ) {
      throw bad("bad layout");
    }
    const dataStart = (12 + n + 3) & ~3;
    const state = new InferenceState(layout);
    if (bytes.length !== dataStart + state.byteLength) {
      throw bad(`expected ${dataStart + state.byteLength} bytes, got ${bytes.length}`);
    }
    const data = new Uint8Array(bytes.subarray(dataStart)); // aligned copy
    const f = new Float32Array(data.buffer);
    let o = 0;
    for (let i = 0; i < layout.nLayer; i++) {
      const c = state.#host.conv[i];
      c.set(f.subarray(o, o + c.length));
      o += c.length;
      const s = state.#host.ssm[i];
      s.set(f.subarray(o, o + s.length));
      o += s.length;
    }
    return state;
  }

  static {
    bindImpl = async (state, backend) => {
      const b = state.#binding;
      if (b && b.backend === backend) return b.handle;
      if (b?.backend.lostReason) {
        // Its device is gone: the host copy carries on if it was up to date.
        if (!b.hostFresh) {
          throw new DeviceLostError(
            `this state lived on the ${b.backend.name} backend and changed there since its ` +
              `last sync: ${b.backend.lostReason}`,
          );
        }
      } else if (b) {
        await state.sync();
        if (!b.backend.hostState) b.backend.freeState(b.handle);
      }
      let handle: unknown = state.#host;
      if (!backend.hostState) {
        handle = backend.createState(state.batch);
        backend.uploadState(handle, state.#host);
      }
      state.#binding = { backend, handle, hostFresh: true };
      return handle;
    };
    markImpl = (state) => {
      const b = state.#binding;
      if (b && !b.backend.hostState) b.hostFresh = false;
    };
  }
}

/**
 * The backend handle of `state` for `backend`, moving the state there if it lives elsewhere.
 * Internal to the library (the model calls it before running a state).
 */
export function bindState(state: InferenceState, backend: Backend): Promise<unknown> {
  return bindImpl(state, backend);
}

/** Records that `backend` changed its copy of `state` (so the host copy is stale). Internal. */
export function markComputed(state: InferenceState): void {
  markImpl(state);
}
