/**
 * The recurrent inference state: what a Mamba model carries from one token to the next. Its size
 * is fixed by the config and the batch, whatever the length of the stream.
 *
 * @module
 */

import type { Backend, StateTensors } from "./backend.ts";
import type { MambaArch, MambaConfig } from "./config.ts";
import { DeviceLostError, InputError } from "./errors.ts";
import { frameState, stateData, unframeState } from "./state_bytes.ts";

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

/**
 * Bytes of a state of `layout` (all layers, conv + ssm, float32). May exceed 2^53 for absurd
 * layouts, in which case it is only approximately right (still far too large to allocate).
 */
export function stateByteLength(layout: StateLayout): number {
  return 4 * layout.nLayer * (size(layout.convShape) + size(layout.ssmShape));
}

/**
 * The default most bytes {@link MambaLM.createState} allocates for one state: half of the
 * machine's memory, or 4 GiB where it cannot be read (no `--allow-sys`). Memory for typed arrays
 * is taken lazily, so without a cap a state far larger than the machine succeeds at once and
 * fails (or gets the process killed) later, when it is first written.
 */
export function defaultMaxStateBytes(): number {
  try {
    const total = Deno.systemMemoryInfo().total;
    if (Number.isFinite(total) && total > 0) return Math.floor(total / 2);
  } catch {
    // no permission, or not Deno: the fixed default
  }
  return 4 * 1024 ** 3;
}

/** `n` bytes for messages: the exact count, and GiB / MiB for a reader. */
export function formatBytes(n: number): string {
  const unit = n >= 1024 ** 3
    ? `${(n / 1024 ** 3).toFixed(1)} GiB`
    : `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${n} bytes (${unit})`;
}

/**
 * Zeroed host tensors for a layout.
 *
 * @throws {InputError} when the memory cannot be allocated (naming the bytes it needs).
 */
export function zeroStateTensors(layout: StateLayout): StateTensors {
  const conv: Float32Array[] = [];
  const ssm: Float32Array[] = [];
  try {
    for (let i = 0; i < layout.nLayer; i++) {
      conv.push(new Float32Array(size(layout.convShape)));
      ssm.push(new Float32Array(size(layout.ssmShape)));
    }
  } catch (e) {
    if (!(e instanceof RangeError)) throw e;
    throw new InputError(
      `cannot allocate a state of ${formatBytes(stateByteLength(layout))}: ${e.message}`,
      { cause: e },
    );
  }
  return { conv, ssm };
}

/**
 * Checks an untrusted layout (a parsed state header) field by field, naming the first bad one.
 * Shapes must be positive safe integers whose products stay exact.
 */
function checkLayout(raw: unknown, bad: (why: string) => InputError): StateLayout {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw bad(`the header must be a JSON object, got ${raw === null ? "null" : typeof raw}`);
  }
  const l = raw as Record<string, unknown>;
  if (l.arch !== "mamba1" && l.arch !== "mamba2") {
    throw bad(`header field arch must be "mamba1" or "mamba2", got ${JSON.stringify(l.arch)}`);
  }
  const posInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) > 0;
  if (!posInt(l.nLayer)) {
    throw bad(`header field nLayer must be a positive integer, got ${l.nLayer}`);
  }
  if (!posInt(l.batch)) throw bad(`header field batch must be a positive integer, got ${l.batch}`);
  const shape = (name: "convShape" | "ssmShape", rank: number): number[] => {
    const s = l[name];
    if (!Array.isArray(s) || s.length !== rank || !s.every(posInt)) {
      throw bad(`header field ${name} must be ${rank} positive integers, got ${JSON.stringify(s)}`);
    }
    if (!Number.isSafeInteger(size(s))) {
      throw bad(`header field ${name} ${JSON.stringify(s)} holds more values than can be counted`);
    }
    if (s[0] !== l.batch) {
      throw bad(`header field ${name} starts with ${s[0]} but batch is ${l.batch}`);
    }
    return s;
  };
  const convShape = shape("convShape", 3);
  const ssmShape = shape("ssmShape", l.arch === "mamba1" ? 3 : 4);
  return {
    arch: l.arch,
    nLayer: l.nLayer as number,
    batch: l.batch as number,
    convShape,
    ssmShape,
  };
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
    return stateByteLength(this.layout);
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
    return frameState(MAGIC, this.layout, this.byteLength, (f) => {
      let o = 0;
      for (let i = 0; i < this.layout.nLayer; i++) {
        f.set(this.#host.conv[i], o);
        o += this.#host.conv[i].length;
        f.set(this.#host.ssm[i], o);
        o += this.#host.ssm[i].length;
      }
    });
  }

  /**
   * Restores a state written by {@link toBytes}.
   *
   * @throws {InputError} on bytes that are not a state or are truncated.
   */
  static fromBytes(bytes: Uint8Array): InferenceState {
    const { header: raw, dataStart, bad } = unframeState(bytes, MAGIC, "InferenceState");
    const layout = checkLayout(raw, bad);
    // Every size is checked against the bytes actually present before anything is allocated:
    // the data can take no more memory than the input already does.
    const need = dataStart + stateByteLength(layout);
    if (bytes.length !== need) {
      throw bad(
        `expected ${need} bytes for the header's nLayer ${layout.nLayer}, convShape ` +
          `${JSON.stringify(layout.convShape)} and ssmShape ${JSON.stringify(layout.ssmShape)}, ` +
          `got ${bytes.length}`,
      );
    }
    const state = new InferenceState(layout);
    const f = stateData(bytes, dataStart);
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
