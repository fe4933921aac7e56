/**
 * The `wasm` backend: the model on WebAssembly SIMD kernels (`kernels.ts`), multi-threaded like
 * tensor parallelism. Each of T ranks — the calling thread as rank 0, and T − 1 Web Workers —
 * owns one slice of the inner channels (see `plan.ts`) with its own kernel instance and memory
 * holding only its weights and its part of every state, plus a slice of the vocabulary. Per
 * layer the ranks meet twice, at two small reductions through a `SharedArrayBuffer`
 * (Mamba-1: `x_proj`, `out_proj`; Mamba-2: the gated norm's sums of squares, `out_proj`),
 * synchronised with `Atomics` (see `engine.ts`).
 *
 * The operations the model calls are recorded and run when a result is read: rank 0 writes the
 * op list into the shared buffer, bumps the program word that the workers wait on, and runs its
 * own share; nothing is posted per token. Weights are copied into wasm memory once, at load; f16
 * stays f16 and q8 is quantized there. States live in the ranks' memories and move through the
 * shared buffer only when uploaded, downloaded or cloned.
 *
 * @module
 */

import type { Backend, BackendInit, DecodeOptions, StateTensors } from "../../backend.ts";
import type { MambaConfig } from "../../config.ts";
import { BackendError } from "../../errors.ts";
import { Sampler, TokenHistory } from "../../sampling.ts";
import { RankEngine } from "./engine.ts";
import { WasmKernels } from "./kernels.ts";
import type { WasmOptions } from "./options.ts";
import { makeShards, maxRanks, packedBuffers, packHead, packLayer, type Shard } from "./plan.ts";
import {
  abort,
  AbortedError,
  align64,
  canBlock,
  CMD_EXIT,
  CMD_RUN,
  HEADER_BYTES,
  OP,
  OP_WORDS,
  PRM,
  PRM_OFFSET,
  PROF,
  PROF_OFFSET,
  PROF_SLOTS,
  readError,
} from "./shared.ts";
import type { WorkerMessage } from "./worker.ts";
import {
  compileKernels,
  growableSab,
  postCommand,
  rankRequest,
  setupFailure,
  spinCounts,
  startRank,
} from "./ranks.ts";

export type { WasmOptions, WasmWeights } from "./options.ts";

/** An activation of the `wasm` backend: a register of the program being recorded. */
export interface WasmActivation {
  /** Register number. */
  readonly reg: number;
  /** Rows (tokens). */
  readonly rows: number;
  /** Columns (features). */
  readonly cols: number;
  /** The program it belongs to (activations do not outlive the read that runs them). */
  readonly program: number;
}

/** A state of the `wasm` backend: its id in every rank's memory. */
export interface WasmState {
  /** Id in the ranks' state tables. */
  readonly id: number;
  /** Sequences. */
  readonly batch: number;
  /** Set by {@link WasmBackend.freeState}. */
  freed: boolean;
}

interface StageEntry {
  /** Op whose second argument is the staging offset. */
  op: number;
  bytes: number;
  /** Upload data (public layout); absent for a download. */
  data?: Float32Array;
  /** Download: where the result goes. */
  state?: WasmState;
}

/** The multi-threaded WebAssembly backend. Create it with {@link WasmBackend.create}. */
export class WasmBackend implements Backend<WasmActivation, WasmState> {
  /** Always `"wasm"`. */
  readonly name = "wasm" as const;
  /** States live in the ranks' wasm memories. */
  readonly hostState = false;
  /** Number of ranks (threads) computing. */
  readonly threads: number;
  /** What each rank owns. */
  readonly shards: readonly Shard[];
  /** Bytes of weights all ranks together read per decoded token (batch 1, last-token logits). */
  readonly weightBytesPerToken: number;
  /**
   * For benchmarks: while true, every rank adds the time it spends in each kind of work to a
   * profile that {@link WasmBackend.readProfile} returns (timing costs a little).
   */
  profiling = false;
  readonly #cfg: MambaConfig;
  readonly #sab: SharedArrayBuffer;
  readonly #engine: RankEngine;
  readonly #workers: Worker[];
  readonly #chunk: number;
  #ops: number[] = [];
  #ids: Int32Array | null = null;
  #shape: { batch: number; seqLen: number } | null = null;
  #rows = 0;
  #stage: StageEntry[] = [];
  #lmOut: { reg: number; rows: number } | null = null;
  /** A pending DECODE op: its steps, and whether rank 0 samples (needs the logits area). */
  #decode: { steps: number; sampled: boolean } | null = null;
  #live = new Set<number>();
  #nextReg = 1;
  #nextState = 1;
  #program = 0;
  #broken: string | null = null;
  #disposed = false;

  private constructor(
    cfg: MambaConfig,
    shards: Shard[],
    sab: SharedArrayBuffer,
    engine: RankEngine,
    workers: Worker[],
    workerBytes: number,
    chunk: number,
  ) {
    this.#cfg = cfg;
    this.shards = shards;
    this.threads = shards.length;
    this.#sab = sab;
    this.#engine = engine;
    this.#workers = workers;
    this.#chunk = chunk;
    this.weightBytesPerToken = engine.weightBytesPerToken + workerBytes;
  }

  /**
   * Compiles the kernels, starts `threads − 1` workers and copies each rank's weight slice into
   * its memory.
   *
   * @throws {BackendError} when workers, shared memory or WebAssembly are unavailable, or a rank
   *   cannot hold its slice.
   */
  static async create(init: BackendInit, options: WasmOptions = {}): Promise<WasmBackend> {
    const cfg = init.config;
    const { cores, asked } = rankRequest(options);
    const chunk = options.chunkTokens ?? 256;
    if (!Number.isSafeInteger(chunk) || chunk < 1) {
      throw new BackendError(`wasm backend: chunkTokens must be a positive integer, got ${chunk}`);
    }
    const ranks = Math.min(asked, maxRanks(cfg));
    const shards = makeShards(cfg, ranks);
    const { spin, idleSpin } = spinCounts(ranks, cores);
    const module = await compileKernels(options.simd);
    const sab = growableSab(HEADER_BYTES);
    const workers: Worker[] = [];
    try {
      // Workers load concurrently, one layer message at a time (so at most one packed layer per
      // worker is in flight besides the caller's weights and the ranks' memories).
      const url = new URL("./worker.ts", import.meta.url);
      const loads = shards.slice(1).map((shard) =>
        startRank<WorkerMessage>(
          url,
          shard.rank,
          workers,
          (function* () {
            yield [{ kind: "init", module, sab, config: cfg, shard, spin, idleSpin }, []];
            for (const l of init.weights.layers) {
              const layer = packLayer(cfg, l, shard, options.weights, true);
              yield [{ kind: "layer", layer }, packedBuffers(layer)];
            }
            const head = packHead(cfg, init.weights, shard, options.weights, true);
            yield [{ kind: "head", head }, packedBuffers(head)];
          })(),
        )
      );
      for (const p of loads) p.catch(() => {}); // handled below, by Promise.all
      const k = await WasmKernels.create(module);
      const engine = new RankEngine(k, cfg, shards[0], sab, spin, canBlock());
      for (const l of init.weights.layers) {
        engine.addLayer(packLayer(cfg, l, shards[0], options.weights, false));
        await new Promise((r) => setTimeout(r, 0)); // let the workers' answers through
      }
      engine.setHead(packHead(cfg, init.weights, shards[0], options.weights, false));
      const workerBytes = (await Promise.all(loads)).reduce((a, b) => a + b, 0);
      return new WasmBackend(cfg, shards, sab, engine, workers, workerBytes, chunk);
    } catch (e) {
      for (const w of workers) w.terminate();
      throw setupFailure(
        e,
        ` (each thread's slice must fit in one 4 GiB wasm32 memory: use more threads, or` +
          ` f16 / q8 weights)`,
      );
    }
  }

  // ------------------------------------------------------------------------------------------
  // recording

  #check(): void {
    if (this.#disposed) throw new BackendError("the wasm backend was disposed");
    if (this.#broken) throw new BackendError(`the wasm backend failed earlier: ${this.#broken}`);
  }

  #op(code: number, ...args: number[]): number {
    const i = this.#ops.length / OP_WORDS;
    this.#ops.push(code, ...args);
    for (let j = args.length + 1; j < OP_WORDS; j++) this.#ops.push(0);
    return i;
  }

  #act(rows: number, cols: number): WasmActivation {
    const reg = this.#nextReg++;
    this.#live.add(reg);
    return { reg, rows, cols, program: this.#program };
  }

  #use(a: WasmActivation): number {
    if (a.program !== this.#program || !this.#live.has(a.reg)) {
      throw new BackendError(
        "wasm backend: this activation was already used or read (activations are used once)",
      );
    }
    this.#live.delete(a.reg);
    return a.reg;
  }

  #setShape(batch: number, seqLen: number, rows: number): void {
    if (!this.#shape) this.#shape = { batch, seqLen };
    const s = this.#shape;
    if (s.batch !== batch || s.seqLen !== seqLen || rows !== batch * seqLen) {
      throw new BackendError(
        "wasm backend: every operation between two reads must have the same batch and length",
      );
    }
  }

  embed(ids: Int32Array): WasmActivation {
    this.#check();
    if (this.#ids) throw new BackendError("wasm backend: one embed per read");
    this.#ids = ids.slice();
    this.#rows = ids.length;
    const out = this.#act(ids.length, this.#cfg.dModel);
    this.#op(OP.EMBED, out.reg);
    return out;
  }

  addNorm(
    hidden: WasmActivation,
    residual: WasmActivation | null,
    layer: number | "final",
  ): { normed: WasmActivation; residual: WasmActivation } {
    this.#check();
    const h = this.#use(hidden);
    const r = residual ? this.#use(residual) : -1;
    const normed = this.#act(hidden.rows, hidden.cols);
    const res = this.#act(hidden.rows, hidden.cols);
    this.#op(OP.ADDNORM, h, r, layer === "final" ? -1 : layer, normed.reg, res.reg);
    return { normed, residual: res };
  }

  mixer(
    layer: number,
    x: WasmActivation,
    batch: number,
    seqLen: number,
    state: WasmState,
  ): WasmActivation {
    this.#check();
    if (state.freed) throw new BackendError("wasm backend: the state was freed");
    if (state.batch !== batch) {
      throw new BackendError(`wasm backend: state of ${state.batch} sequences, batch ${batch}`);
    }
    this.#setShape(batch, seqLen, x.rows);
    const out = this.#act(x.rows, x.cols);
    this.#op(OP.MIXER, layer, this.#use(x), state.id, out.reg);
    return out;
  }

  lmHead(x: WasmActivation, batch: number, seqLen: number, lastOnly: boolean): WasmActivation {
    this.#check();
    this.#setShape(batch, seqLen, x.rows);
    if (this.#lmOut) throw new BackendError("wasm backend: one LM head per read");
    const rows = lastOnly ? batch : batch * seqLen;
    const out = this.#act(rows, this.#cfg.paddedVocabSize);
    this.#op(OP.LMHEAD, this.#use(x), lastOnly ? 1 : 0, out.reg);
    this.#lmOut = { reg: out.reg, rows };
    return out;
  }

  /**
   * Stages host rows `[rows, dModel]` (see {@link Backend.upload}); every rank copies its chunk
   * of them into a register when the program runs.
   */
  upload(data: Float32Array, rows: number, cols: number): WasmActivation {
    this.#check();
    if (cols !== this.#cfg.dModel || data.length !== rows * cols) {
      throw new BackendError(
        `wasm backend: upload takes [rows, ${this.#cfg.dModel}] values, got ${data.length} as [${rows}, ${cols}]`,
      );
    }
    if (!this.#shape) this.#rows = rows;
    const out = this.#act(rows, cols);
    const op = this.#op(OP.UPLOAD, out.reg, 0);
    this.#stage.push({ op, bytes: data.length * 4, data: data.slice() });
    return out;
  }

  read(a: WasmActivation): Promise<Float32Array> {
    try {
      this.#check();
      if (this.#lmOut && a.reg === this.#lmOut.reg && a.program === this.#program) {
        this.#use(a);
        const rows = this.#lmOut.rows;
        const off = this.#flush(null);
        const V = this.#cfg.paddedVocabSize;
        return Promise.resolve(new Float32Array(this.#sab, off.logits, rows * V).slice());
      }
      const out = new Float32Array(a.rows * a.cols);
      this.#op(OP.READ, this.#use(a));
      this.#flush(out);
      return Promise.resolve(out);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  // ------------------------------------------------------------------------------------------
  // states

  #stateFloats(batch: number): { conv: number; ssm: number } {
    const c = this.#cfg;
    const ssm = c.arch === "mamba1" ? c.dInner * c.dState : c.nheads * c.headdim * c.dState;
    return { conv: batch * c.convDim * c.dConv, ssm: batch * ssm };
  }

  createState(batch: number): WasmState {
    this.#check();
    const id = this.#nextState++;
    this.#op(OP.STATE_NEW, id, batch);
    return { id, batch, freed: false };
  }

  uploadState(s: WasmState, host: StateTensors): void {
    this.#check();
    if (s.freed) throw new BackendError("wasm backend: the state was freed");
    const { conv, ssm } = this.#stateFloats(s.batch);
    const data = new Float32Array(this.#cfg.nLayer * (conv + ssm));
    for (let l = 0; l < this.#cfg.nLayer; l++) {
      data.set(host.conv[l], l * (conv + ssm));
      data.set(host.ssm[l], l * (conv + ssm) + conv);
    }
    const op = this.#op(OP.STATE_UPLOAD, s.id, 0);
    this.#stage.push({ op, bytes: data.length * 4, data });
  }

  downloadState(s: WasmState): Promise<StateTensors> {
    try {
      this.#check();
      if (s.freed) throw new BackendError("wasm backend: the state was freed");
      const { conv, ssm } = this.#stateFloats(s.batch);
      const op = this.#op(OP.STATE_DOWNLOAD, s.id, 0);
      const entry: StageEntry = { op, bytes: this.#cfg.nLayer * (conv + ssm) * 4, state: s };
      this.#stage.push(entry);
      const off = this.#flush(null);
      const base = off.stage.get(entry)!;
      const out: StateTensors = { conv: [], ssm: [] };
      for (let l = 0; l < this.#cfg.nLayer; l++) {
        const o = base + l * (conv + ssm) * 4;
        out.conv.push(new Float32Array(this.#sab, o, conv).slice());
        out.ssm.push(new Float32Array(this.#sab, o + conv * 4, ssm).slice());
      }
      return Promise.resolve(out);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  cloneState(s: WasmState): WasmState {
    this.#check();
    if (s.freed) throw new BackendError("wasm backend: the state was freed");
    const id = this.#nextState++;
    this.#op(OP.STATE_CLONE, id, s.id);
    return { id, batch: s.batch, freed: false };
  }

  freeState(s: WasmState): void {
    if (s.freed || this.#disposed) return;
    s.freed = true;
    this.#op(OP.STATE_FREE, s.id);
  }

  /** Copies rows of one state into another (see {@link Backend.copyStateRows}). */
  copyStateRows(src: WasmState, srcRow: number, dst: WasmState, dstRow: number, count: number) {
    this.#check();
    if (src.freed || dst.freed) throw new BackendError("wasm backend: the state was freed");
    this.#op(OP.STATE_COPY_ROWS, dst.id, dstRow, src.id, srcRow, count);
  }

  /** {@link decodeTokens} picks with {@link DecodeOptions.samplers} when given. */
  readonly rowSamplers = true;

  /**
   * Fused decoding (see {@link Backend.decodeTokens}): each block of tokens is one program in
   * which the ranks feed a token, pick the next and feed it again without returning to the
   * caller. Greedy picking (no repetition penalty) is an argmax of each rank's slice of the
   * vocabulary and one small reduction; any other sampling gathers the logits and runs the
   * library's {@link Sampler} on rank 0, so the picks equal those of step-by-step decoding.
   * Blocks grow 1, 2, 4, … up to `blockSize` tokens.
   */
  async *decodeTokens(
    state: WasmState,
    tokens: Int32Array,
    n: number,
    options: DecodeOptions,
  ): AsyncGenerator<number[][]> {
    this.#check();
    if (state.freed) throw new BackendError("wasm backend: the state was freed");
    const B = state.batch;
    if (tokens.length !== B) {
      throw new BackendError(`wasm backend: ${tokens.length} tokens for ${B} sequences`);
    }
    if (this.#ids || this.#live.size > 0) {
      throw new BackendError("wasm backend: decodeTokens with operations pending");
    }
    const s = options.sampling;
    const V = this.#cfg.paddedVocabSize;
    const vocab = Math.min(s.vocabSize ?? V, V);
    const rowSamplers = options.samplers;
    if (rowSamplers && rowSamplers.length !== B) {
      throw new BackendError(`wasm backend: ${rowSamplers.length} samplers for ${B} sequences`);
    }
    const sampled = rowSamplers
      ? rowSamplers.some((r) => !r.options.greedy || r.options.repetitionPenalty !== 1)
      : !s.greedy || s.repetitionPenalty !== 1;
    const sampler = sampled && !rowSamplers ? new Sampler(s) : null;
    const history = Array.from(
      tokens,
      (t, b) => new TokenHistory([...(options.history?.[b] ?? []), t]),
    );
    const maxBlock = Math.max(1, Math.floor(options.blockSize ?? 64));
    let cur = Int32Array.from(tokens);
    let block = 1;
    for (let done = 0; done < n && !options.drain?.aborted;) {
      this.#check();
      if (state.freed) throw new BackendError("wasm backend: the state was freed");
      const steps = Math.min(block, maxBlock, n - done);
      this.#ids = cur;
      this.#shape = { batch: B, seqLen: 1 };
      this.#rows = B;
      this.#decode = { steps, sampled };
      this.#op(OP.DECODE, state.id, steps, vocab, sampled ? 1 : 0);
      this.#engine.sampleHook = sampled
        ? (logits, out) => {
          for (let b = 0; b < B; b++) {
            const pick = rowSamplers?.[b] ?? sampler!;
            const id = pick.sample(logits.subarray(b * V, (b + 1) * V), history[b].ids);
            out[b] = id;
            history[b].push(id);
          }
        }
        : null;
      let off;
      try {
        off = this.#flush(null);
      } finally {
        this.#engine.sampleHook = null;
      }
      const picks = new Int32Array(this.#sab, off.out, steps * B).slice();
      const result = Array.from({ length: B }, (_, b) => {
        const row: number[] = [];
        for (let i = 0; i < steps; i++) row.push(picks[i * B + b]);
        return row;
      });
      cur = picks.slice((steps - 1) * B);
      done += steps;
      block = Math.min(2 * block, maxBlock);
      yield result;
    }
  }

  // ------------------------------------------------------------------------------------------
  // running

  /**
   * Runs the recorded program on all ranks; returns where the logits and staged states are.
   * `readOut` receives the register of a READ op.
   */
  #flush(
    readOut: Float32Array | null,
  ): { logits: number; out: number; stage: Map<StageEntry, number> } {
    const cfg = this.#cfg;
    const T = this.threads;
    const nOps = this.#ops.length / OP_WORDS;
    const batch = this.#shape?.batch ?? 1;
    const seqLen = this.#shape?.seqLen ?? Math.max(this.#rows, 1);
    const chunk = Math.min(seqLen, this.#chunk);
    const V = cfg.paddedVocabSize;
    // As the ranks' scratch (RankEngine): d_model + 1 floats a row for the gated norm's sums.
    const wide = Math.max(cfg.dModel + 1, cfg.dtRank + 2 * cfg.dState, cfg.ngroups);
    let off = HEADER_BYTES;
    const offOps = off;
    off = align64(off + nOps * OP_WORDS * 4);
    const offIds = off;
    off = align64(off + (this.#ids?.length ?? 0) * 4);
    const slot = align64(batch * chunk * wide * 4);
    const offRed = off;
    if (T > 1) off += 2 * T * slot;
    const offLogits = off;
    const logitRows = this.#lmOut?.rows ?? (this.#decode?.sampled ? batch : 0);
    off = align64(off + logitRows * V * 4);
    const offOut = off;
    off = align64(off + (this.#decode?.steps ?? 0) * batch * 4);
    const stage = new Map<StageEntry, number>();
    for (const e of this.#stage) {
      stage.set(e, off);
      this.#ops[e.op * OP_WORDS + 2] = off / 64;
      off = align64(off + e.bytes);
    }
    const sab = this.#sab;
    if (sab.byteLength < off) {
      try {
        if (off > sab.maxByteLength) throw new RangeError(`${off} bytes asked`);
        sab.grow(Math.min(sab.maxByteLength, align64(off + (1 << 20))));
      } catch (e) {
        // The recorded operations (maybe creating states) cannot run: the backend is unusable.
        this.#broken = `cannot grow the shared buffer to ${off} bytes: ${(e as Error).message}`;
        throw new BackendError(`wasm backend: ${this.#broken}`);
      }
    }
    const prm = new Float64Array(sab, PRM_OFFSET, 16);
    prm[PRM.NOPS] = nOps;
    prm[PRM.BATCH] = batch;
    prm[PRM.SEQLEN] = seqLen;
    prm[PRM.CHUNK] = chunk;
    prm[PRM.OFF_OPS] = offOps;
    prm[PRM.OFF_IDS] = offIds;
    prm[PRM.OFF_RED] = offRed;
    prm[PRM.RED_SLOT] = slot;
    prm[PRM.OFF_LOGITS] = offLogits;
    prm[PRM.PROFILE] = this.profiling ? 1 : 0;
    prm[PRM.OFF_OUT] = offOut;
    new Int32Array(sab, offOps, nOps * OP_WORDS).set(this.#ops);
    if (this.#ids) new Int32Array(sab, offIds, this.#ids.length).set(this.#ids);
    for (const e of this.#stage) {
      if (e.data) new Float32Array(sab, stage.get(e)!, e.data.length).set(e.data);
    }
    // The recorded program is consumed whatever happens next.
    this.#ops = [];
    this.#ids = null;
    this.#shape = null;
    this.#rows = 0;
    this.#stage = [];
    this.#lmOut = null;
    this.#decode = null;
    this.#live.clear();
    this.#program++;
    if (T > 1) postCommand(sab, CMD_RUN);
    try {
      this.#engine.readOut = readOut;
      this.#engine.run();
    } catch (e) {
      let msg: string;
      if (e instanceof AbortedError) msg = readError(sab);
      else {
        msg = `wasm rank 0: ${(e as Error)?.message ?? e}`;
        abort(sab, msg);
      }
      this.#broken = msg;
      throw new BackendError(msg);
    } finally {
      this.#engine.readOut = null;
    }
    return { logits: offLogits, out: offOut, stage };
  }

  /**
   * The profile gathered while {@link WasmBackend.profiling} was on: per rank (the first 16),
   * milliseconds spent in each kind of work (`programs` counts the programs run). Resets it
   * unless `reset` is false.
   */
  readProfile(reset = true): Record<keyof typeof PROF, number>[] {
    const out: Record<keyof typeof PROF, number>[] = [];
    for (let r = 0; r < Math.min(this.threads, 16); r++) {
      const slots = new Float64Array(this.#sab, PROF_OFFSET + r * PROF_SLOTS * 8, PROF_SLOTS);
      const rec = {} as Record<keyof typeof PROF, number>;
      for (const [k, i] of Object.entries(PROF)) rec[k as keyof typeof PROF] = slots[i];
      out.push(rec);
      if (reset) slots.fill(0);
    }
    return out;
  }

  /** Stops the workers and drops the weights. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    postCommand(this.#sab, CMD_EXIT);
    for (const w of this.#workers) w.terminate();
    this.#workers.length = 0;
  }
}
