/**
 * The `SharedArrayBuffer` through which the ranks of the `wasm` backend talk: control words
 * (program sequence, barrier, abort flag), the parameters and op list of the program being run,
 * and the data regions (token ids, the two reduction buffers, logits, state staging).
 *
 * The buffer is growable (`maxByteLength`), so the calling thread can enlarge it before a program
 * needs more room and every worker sees the new length without a message.
 *
 * @module
 */

/** Int32 control words at the start of the buffer. */
export const CTL = {
  /** Incremented by rank 0 to start a program (workers wait on it). */
  SEQ: 0,
  /** What the program is: {@link CMD_RUN} or {@link CMD_EXIT}. */
  CMD: 1,
  /** Barrier arrival count. */
  BAR_COUNT: 2,
  /**
   * Barrier generation (waiters wait on it). Alone on the cache line at byte 192 (past the
   * program parameters): ranks spin reading it, and if it shared a line with the arrival count,
   * every arrival's increment would take that line away from all of them.
   */
  BAR_GEN: 48,
  /** Non-zero once a rank failed: every rank leaves the program. */
  ABORT: 4,
  /** Bytes of the UTF-8 error message at {@link ERR_OFFSET}. */
  ERR_LEN: 5,
  /** Number of workers that finished starting (setup handshake). */
  READY: 6,
} as const;

/** Int32 words of the control view (`new Int32Array(sab, 0, CTL_WORDS)`): bytes 0 to 256. */
export const CTL_WORDS = 64;

/** Run the program described by the parameters. */
export const CMD_RUN = 1;
/** Leave the worker loop. */
export const CMD_EXIT = 2;

/** Float64 program parameters, at byte {@link PRM_OFFSET}. */
export const PRM = {
  /** Number of ops. */
  NOPS: 0,
  /** Sequences of the compute ops. */
  BATCH: 1,
  /** Tokens per sequence. */
  SEQLEN: 2,
  /** Tokens per sequence per chunk. */
  CHUNK: 3,
  /** Byte offset of the ops (Int32, {@link OP_WORDS} per op). */
  OFF_OPS: 4,
  /** Byte offset of the token ids (Int32, `batch·seqLen`). */
  OFF_IDS: 5,
  /** Byte offset of the reduction region (2 buffers × ranks slots). */
  OFF_RED: 6,
  /** Bytes of one slot of the reduction region. */
  RED_SLOT: 7,
  /** Byte offset of the logits (`rows × paddedVocab` f32). */
  OFF_LOGITS: 8,
  /** Byte offset of the state staging area. */
  OFF_STAGE: 9,
  /** Non-zero: the ranks add the time of each kind of work to the profile area. */
  PROFILE: 10,
  /** Byte offset of the tokens picked by a DECODE op (Int32 `[steps, batch]`). */
  OFF_OUT: 11,
} as const;

/** Byte offset of the program parameters. */
export const PRM_OFFSET = 64;
/** Byte offset of the error message. */
export const ERR_OFFSET = 256;
/** Room for the error message. */
export const ERR_BYTES = 1792;
/** Byte offset of the profile: per rank (the first 16) {@link PROF_SLOTS} Float64 milliseconds. */
export const PROF_OFFSET = 2048;
/** Float64 slots per rank in the profile area. */
export const PROF_SLOTS = 16;

/** What the profile slots count (milliseconds spent in each kind of work, per rank). */
export const PROF = {
  /** Embedding lookup (and its broadcast). */
  embed: 0,
  /** Residual add + norm. */
  norm: 1,
  /** `in_proj`. */
  inProj: 2,
  /** Causal conv. */
  conv: 3,
  /** Mamba-1 `x_proj` partial. */
  xProj: 4,
  /** Mamba-1 `dt_proj`. */
  dtProj: 5,
  /** Selective scan / SSD. */
  scan: 6,
  /** Mamba-2 gate and gated norm. */
  gate: 7,
  /** `out_proj` partial. */
  outProj: 8,
  /** Copying partials to and from the shared buffer, summing them. */
  reduce: 9,
  /** Waiting at barriers. */
  wait: 10,
  /** LM head and copying logits out. */
  lmHead: 11,
  /** State ops. */
  state: 12,
  /** Whole programs. */
  total: 13,
  /** Number of programs. */
  programs: 14,
} as const;
/** Bytes before the first data region. */
export const HEADER_BYTES = 4096;

/** Int32 words per op. */
export const OP_WORDS = 8;

/** Op codes of a program (arguments in the following words). */
export const OP = {
  /** `(id, batch)`: allocate a zeroed state. */
  STATE_NEW: 1,
  /** `(id)`: free a state. */
  STATE_FREE: 2,
  /** `(dst, src)`: allocate `dst` as a copy of `src`. */
  STATE_CLONE: 3,
  /** `(id, stage/64)`: overwrite a state from the staging area (public layout). */
  STATE_UPLOAD: 4,
  /** `(id, stage/64)`: write a state to the staging area (public layout). */
  STATE_DOWNLOAD: 5,
  /**
   * `(state, steps, vocab, sampled)`: fused decoding — `steps` times: feed the current token of
   * each sequence (the ids area first, then the picks), pick the next one (argmax over ids below
   * `vocab` across the ranks, or, when `sampled`, rank 0's sampler on the gathered logits), and
   * write the picks to the output area.
   */
  DECODE: 6,
  /** `(dst, dstRow, src, srcRow, count)`: copy sequences of one state into another. */
  STATE_COPY_ROWS: 7,
  /** `(out)`: look up the token ids. */
  EMBED: 10,
  /** `(hidden, residual | -1, layer | -1, normedOut, residualOut)`. */
  ADDNORM: 11,
  /** `(layer, x, state, out)`. */
  MIXER: 12,
  /** `(x, lastOnly, out)`: logits into the logits region. */
  LMHEAD: 13,
  /** `(reg)`: rank 0 copies a register to the host. */
  READ: 14,
  /** `(out, stage/64)`: every rank copies host rows `[B·L, dModel]` from the staging area. */
  UPLOAD: 15,
} as const;

/** Rounds up to a multiple of 64 bytes. */
export function align64(n: number): number {
  return Math.ceil(n / 64) * 64;
}

/** Thrown on every rank once one rank failed (the message names the failure). */
export class AbortedError extends Error {}

/** Whether this thread may block in `Atomics.wait` (not a browser's main thread). */
export function canBlock(): boolean {
  try {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 1, 0);
    return true;
  } catch {
    return false;
  }
}

/** Reads the error message a failed rank left. */
export function readError(sab: SharedArrayBuffer): string {
  const ctl = new Int32Array(sab, 0, CTL_WORDS);
  const n = Math.min(Atomics.load(ctl, CTL.ERR_LEN), ERR_BYTES);
  const bytes = new Uint8Array(n);
  bytes.set(new Uint8Array(sab, ERR_OFFSET, n));
  return new TextDecoder().decode(bytes);
}

/** Records that this rank failed (first writer wins) and wakes every waiting rank. */
export function abort(sab: SharedArrayBuffer, message: string): void {
  const ctl = new Int32Array(sab, 0, CTL_WORDS);
  if (Atomics.compareExchange(ctl, CTL.ABORT, 0, 1) === 0) {
    const bytes = new TextEncoder().encode(message).subarray(0, ERR_BYTES);
    new Uint8Array(sab, ERR_OFFSET, bytes.length).set(bytes);
    Atomics.store(ctl, CTL.ERR_LEN, bytes.length);
  }
  Atomics.add(ctl, CTL.BAR_GEN, 1);
  Atomics.notify(ctl, CTL.BAR_GEN);
  Atomics.notify(ctl, CTL.SEQ);
}

/**
 * A reusable barrier of `ranks` threads on the control words: each arrival spins for a while (the
 * ranks normally run on their own cores and arrive within microseconds), then sleeps in
 * `Atomics.wait` (or keeps spinning where blocking is not allowed).
 */
export class Barrier {
  readonly #ctl: Int32Array;
  readonly #ranks: number;
  readonly #spin: number;
  readonly #block: boolean;

  /** A barrier over `sab`'s control words. */
  constructor(sab: SharedArrayBuffer, ranks: number, spin = 20000, block = true) {
    this.#ctl = new Int32Array(sab, 0, CTL_WORDS);
    this.#ranks = ranks;
    this.#spin = spin;
    this.#block = block;
  }

  /** Waits until all ranks arrived; throws {@link AbortedError} when a rank failed. */
  arrive(): void {
    if (this.#ranks === 1) return;
    const c = this.#ctl;
    const gen = Atomics.load(c, CTL.BAR_GEN);
    if (Atomics.load(c, CTL.ABORT)) throw new AbortedError("aborted");
    if (Atomics.add(c, CTL.BAR_COUNT, 1) === this.#ranks - 1) {
      Atomics.store(c, CTL.BAR_COUNT, 0);
      Atomics.add(c, CTL.BAR_GEN, 1);
      Atomics.notify(c, CTL.BAR_GEN);
      return;
    }
    for (let i = 0; i < this.#spin; i++) {
      if (Atomics.load(c, CTL.BAR_GEN) !== gen) return this.#check();
    }
    while (Atomics.load(c, CTL.BAR_GEN) === gen) {
      if (this.#block) Atomics.wait(c, CTL.BAR_GEN, gen, 1000);
    }
    this.#check();
  }

  #check(): void {
    if (Atomics.load(this.#ctl, CTL.ABORT)) throw new AbortedError("aborted");
  }
}
