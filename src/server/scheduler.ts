/**
 * Continuous batching: every running request is one row of a shared batch state, decoded
 * together. A new request's prompt is prefilled into its own batch-1 state and joins the batch
 * between decode blocks; a finished or abandoned one leaves it there. The batch is rebuilt as a
 * new state from rows of the old one and of the joiners ({@link gatherRows}).
 *
 * Two groups of rows, each with its own batch state:
 *
 * - **fused**: decoded with the backend's {@link Backend.decodeTokens}, up to `blockSize`
 *   tokens per call (the device feeds each picked token back itself). On backends with
 *   {@link Backend.rowSamplers} (`wasm`, `webgpu`) every row picks with its own
 *   {@link Sampler} (`webgpu` runs each row's options and random stream on the GPU), so all
 *   requests go here; a backend whose fused decoding takes one sampling setup per batch would
 *   get only the greedy rows without repetition penalty, which all share one setup.
 * - **stepped**: the rest (every row on `ref`), one step per block, with the logits read back
 *   and each row picked by its own sampler.
 *
 * So each request keeps its own sampling parameters and random stream (a seed gives the same
 * tokens whatever else runs), and a greedy row's tokens are those of `lm.complete(…, {topK: 1})`.
 *
 * New requests join between calls. A call is drained (`DecodeOptions.drain`) as soon as a
 * request waits for a free row: it starts no further block, and ends once the blocks under way
 * (none on `wasm`, up to two on `webgpu`) are in.
 *
 * Sessions need the state a request ended in: prompt and every generated token fed, except a
 * final end-of-text token. A fused block may run past a row's end, so rows that keep their
 * state get a snapshot of the batch at the block's start, and their final state is that row
 * plus the tokens accepted since (one short prefill).
 *
 * @module
 */

import { setImmediate } from "node:timers";
import type { Backend } from "../backend.ts";
import { TextSink } from "../generate.ts";
import type { MambaLM } from "../model.ts";
import { Sampler, validateSamplingOptions } from "../sampling.ts";
import { bindState, type InferenceState, markComputed } from "../state.ts";
import type { Metrics } from "./metrics.ts";
import { gatherRows, putRow, type RowRef } from "./rows.ts";

/** Why a request stopped (OpenAI's `finish_reason`, plus `abort` for a client that left). */
export type FinishReason = "stop" | "length" | "abort";

/** One completion to run. */
export interface Job {
  /** Prompt ids to feed (at least one). */
  readonly ids: readonly number[];
  /** State to continue from (batch 1; not modified), e.g. a session's; none = empty. */
  readonly state?: InferenceState;
  /** Picks this request's tokens (its own options and random stream). */
  readonly sampler: Sampler;
  /** Most tokens to generate (≥ 1). */
  readonly maxTokens: number;
  /** End-of-text token (ends the completion, not fed, not counted). */
  readonly eos: number | undefined;
  /** Stop strings. */
  readonly stop: readonly string[];
  /** Whether the result carries the state the request ended in. */
  readonly keepState: boolean;
  /** Aborting (the client left) ends the request and frees its row. */
  readonly signal?: AbortSignal;
  /** Called with each text increment as tokens are accepted. */
  readonly onText?: (text: string) => void;
}

/** What a finished {@link Job} gives. */
export interface JobResult {
  /** The completion. */
  text: string;
  /** Tokens generated. */
  completionTokens: number;
  /** Why it ended. */
  finishReason: FinishReason;
  /** With `keepState` (and not aborted): the state after the prompt and the completion. */
  state?: InferenceState;
}

/** Thrown by {@link Scheduler.submit} when the batch and the queue are full. */
export class QueueFullError extends Error {}

/** Options of {@link Scheduler}. */
export interface SchedulerOptions {
  /** Most rows decoded together. */
  readonly maxBatch: number;
  /** Most requests waiting for a row. */
  readonly maxQueue: number;
  /** Tokens per fused decode call (new requests join between calls). */
  readonly blockSize: number;
  /**
   * Most prompt tokens prefilled between two decode blocks while other requests decode, so a
   * long prompt does not stall their streams. Default 512.
   */
  readonly prefillChunk?: number;
  /** Where to count tokens and latencies. */
  readonly metrics?: Metrics;
}

interface Row {
  readonly job: Job;
  readonly resolve: (r: JobResult) => void;
  readonly reject: (e: unknown) => void;
  readonly arrived: number;
  readonly sink: TextSink;
  /** Prompt and accepted ids (for the repetition penalty). */
  readonly history: number[];
  text: string;
  produced: number;
  /** Last accepted token, not yet fed to the batch state. */
  pending: number;
  /** The batch-1 state a joining row brings (prefilled), or being prefilled. */
  start?: InferenceState;
  /** Prompt tokens prefilled so far. */
  fed: number;
  /** Where this row's final state starts: `base` plus `unfed` is what it must hold. */
  base?: RowRef;
  unfed: number[];
  finished?: FinishReason;
  /** Whether the caller has its answer. */
  answered: boolean;
  lastAt: number;
  removeAbort?: () => void;
}

interface Group {
  readonly fused: boolean;
  /**
   * One entry per sequence of `state`: its request, or null for a free slot (a request left;
   * the slot is still decoded, with a dummy token, until a new request takes it or the batch
   * is packed smaller).
   */
  slots: (Row | null)[];
  joining: Row[];
  state: InferenceState | null;
}

/** The requests decoding in a group. */
const live = (g: Group): Row[] => g.slots.filter((r): r is Row => r !== null && !r.finished);

/**
 * Lets the event loop run (network I/O, timers) before the next block. `setImmediate` runs after
 * the loop has polled for I/O (a message to oneself through a MessageChannel comes back before
 * pending network I/O is served), and costs microseconds where `setTimeout(…, 0)` costs about
 * 2 ms (Deno 2.9), several times a decode call.
 */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * A longer yield, through the timer phase: enough for the HTTP side to write streamed chunks out
 * and take new connections, which one `setImmediate` turn is not when several streams are open
 * (four streaming clients on the 2-core VM, demo model: time to first token 47–52 → 28–33 ms on
 * wasm, 1.5–1.6 s → 0.5–0.6 s on lavapipe; see bench/RESULTS.md). It costs ~2 ms, so it is taken
 * once a request, after its first token.
 */
const flush = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/** Runs {@link Job}s with continuous batching on one model. */
export class Scheduler {
  readonly #lm: MambaLM;
  readonly #opt: SchedulerOptions;
  readonly #queue: Row[] = [];
  /** Admitted requests whose prompts are being prefilled (a chunk at a time). */
  readonly #prefilling: Row[] = [];
  readonly #fused: Group = { fused: true, slots: [], joining: [], state: null };
  readonly #stepped: Group = { fused: false, slots: [], joining: [], state: null };
  /** Picks for free slots (their tokens are thrown away). */
  readonly #idle: Sampler;
  #running = false;
  #closed = false;
  /** Drains the decode call under way (see `DecodeOptions.drain`). */
  #drain: AbortController | null = null;

  /** A scheduler for `lm`. */
  constructor(lm: MambaLM, options: SchedulerOptions) {
    this.#lm = lm;
    this.#opt = options;
    this.#idle = new Sampler({ topK: 1, vocabSize: lm.config.vocabSize });
  }

  /** Rows decoding or about to join. */
  get active(): number {
    const g = [this.#fused, this.#stepped];
    const n = g.reduce((n, x) => n + live(x).length + x.joining.length, 0);
    return n + this.#prefilling.filter((r) => !r.finished).length;
  }

  /** Requests waiting for a row. */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Queues a job; resolves when it ends.
   *
   * @throws {QueueFullError} (synchronously) when `maxBatch` rows run and `maxQueue` wait.
   */
  submit(job: Job): Promise<JobResult> {
    if (this.#closed) throw new QueueFullError("the server is shutting down");
    if (this.active + this.#queue.length >= this.#opt.maxBatch + this.#opt.maxQueue) {
      throw new QueueFullError(
        `${this.#opt.maxBatch} requests are running and ${this.#opt.maxQueue} waiting`,
      );
    }
    return new Promise<JobResult>((resolve, reject) => {
      const now = performance.now();
      const row: Row = {
        job,
        resolve,
        reject,
        arrived: now,
        sink: new TextSink(this.#lm.tokenizer, [...job.stop]),
        history: [...job.ids],
        text: "",
        produced: 0,
        pending: -1,
        unfed: [],
        fed: 0,
        answered: false,
        lastAt: now,
      };
      if (job.signal) {
        const onAbort = () => this.#abort(row);
        job.signal.addEventListener("abort", onAbort, { once: true });
        row.removeAbort = () => job.signal!.removeEventListener("abort", onAbort);
        if (job.signal.aborted) return this.#abort(row);
      }
      this.#queue.push(row);
      this.#drainIfWaiting();
      this.#loop();
    });
  }

  /** Ends the decode call under way early when a request waits and a row is free for it. */
  #drainIfWaiting(): void {
    if (this.#drain && this.#queue.length > 0 && this.active < this.#opt.maxBatch) {
      this.#drain.abort();
    }
  }

  /** Stops taking jobs; running ones finish. */
  close(): void {
    this.#closed = true;
  }

  #abort(row: Row): void {
    if (row.finished) return;
    const q = this.#queue.indexOf(row);
    if (q >= 0) this.#queue.splice(q, 1);
    row.finished = "abort";
    this.#end(row);
    this.#drainIfWaiting();
  }

  /** Answers a row's caller, once. */
  #end(row: Row, state?: InferenceState): void {
    if (row.answered) {
      state?.release();
      return;
    }
    row.answered = true;
    row.removeAbort?.();
    const finishReason = row.finished ?? "abort";
    row.resolve({ text: row.text, completionTokens: row.produced, finishReason, state });
  }

  #emit(row: Row, text: string): void {
    if (!text) return;
    row.text += text;
    row.job.onText?.(text);
  }

  /**
   * Takes a picked token for a row: end-of-text, a stop string or the length limit finish it.
   * Returns whether it finished.
   */
  #accept(row: Row, id: number): boolean {
    const m = this.#opt.metrics;
    const now = performance.now();
    if (row.produced === 0) m?.ttft.observe((now - row.arrived) / 1000);
    if (id === row.job.eos) {
      this.#emit(row, row.sink.finish());
      row.finished = "stop";
      return true;
    }
    row.produced++;
    if (m) m.generatedTokens++;
    row.history.push(id);
    row.unfed.push(id);
    row.pending = id;
    this.#emit(row, row.sink.push(id));
    if (row.sink.stopped) {
      row.finished = "stop";
      return true;
    }
    if (row.produced >= row.job.maxTokens) {
      this.#emit(row, row.sink.finish());
      row.finished = "length";
      return true;
    }
    return false;
  }

  /** Answers a finished row, computing its final state first when it keeps one. */
  async #finalize(row: Row): Promise<void> {
    if (row.answered || !row.job.keepState || !row.base) return this.#end(row);
    try {
      const state = await gatherRows(this.#lm, [row.base]);
      if (row.unfed.length) await this.#lm.prefill(state, [row.unfed]);
      this.#end(row, state);
    } catch (e) {
      this.#fail([row], e);
    }
  }

  #fail(rows: Row[], e: unknown): void {
    for (const r of rows) {
      r.finished ??= "abort";
      if (r.answered) continue;
      r.answered = true;
      r.removeAbort?.();
      r.reject(e);
    }
  }

  async #loop(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      for (;;) {
        await this.#admit();
        const groups = [this.#fused, this.#stepped].filter((g) =>
          g.joining.length || g.slots.length
        );
        if (!groups.length && !this.#queue.length && !this.#prefilling.length) break;
        for (const g of groups) await this.#block(g);
        // Let the HTTP side run: new requests, disconnects, streamed chunks.
        await tick();
      }
    } catch (e) {
      // Not expected (each step catches its own failures): fail everything rather than hang.
      const all = [...this.#queue.splice(0), ...this.#prefilling.splice(0)];
      for (const g of [this.#fused, this.#stepped]) {
        all.push(...live(g), ...g.joining);
        this.#drop(g);
      }
      this.#fail(all, e);
    } finally {
      this.#running = false;
    }
  }

  /**
   * Takes waiting requests into free rows and prefills their prompts: all of them when nothing
   * decodes, otherwise `prefillChunk` tokens, then the decoding rows get their next block.
   */
  async #admit(): Promise<void> {
    const lm = this.#lm;
    while (this.#queue.length && this.active < this.#opt.maxBatch) {
      this.#prefilling.push(this.#queue.shift()!);
    }
    const decoding = live(this.#fused).length + live(this.#stepped).length > 0;
    let budget = decoding ? this.#opt.prefillChunk ?? 512 : Infinity;
    while (this.#prefilling.length && budget > 0) {
      const row = this.#prefilling[0];
      const job = row.job;
      const drop = () => {
        this.#prefilling.shift();
        row.start?.release();
        row.start = undefined;
      };
      if (row.finished) { // the client left
        drop();
        continue;
      }
      try {
        row.start ??= job.state ? job.state.clone() : lm.createState(1);
        const n = Math.min(budget, job.ids.length - row.fed);
        const chunk = [job.ids.slice(row.fed, row.fed + n)];
        const last = row.fed + n === job.ids.length;
        // The prompt's last chunk also picks the first token (on the device where it can: the
        // logits are not read back, which is most of a short prompt's time to first token).
        const picked = last
          ? await lm.prefillAndPick(row.start, chunk, [job.sampler], [row.history])
          : (await lm.prefill(row.start, chunk), null);
        row.fed += n;
        budget -= n;
        if (this.#opt.metrics) this.#opt.metrics.promptTokens += n;
        if (!picked || row.finished) continue;
        this.#prefilling.shift();
        row.base = { state: row.start, row: 0 };
        const first = picked[0];
        if (this.#accept(row, first)) {
          await this.#finalize(row);
          row.start.release();
          row.start = undefined;
        } else (this.#fusable(job.sampler) ? this.#fused : this.#stepped).joining.push(row);
        // Before the next decode call holds the thread (webgpu's read-back blocks until the GPU
        // is idle; wasm's rank 0 computes here), let the first token's chunk go out and the
        // requests that came meanwhile in.
        await flush();
      } catch (e) {
        drop();
        this.#fail([row], e);
      }
      await tick();
    }
  }

  #fusable(s: Sampler): boolean {
    const be = this.#lm.backend;
    if (!be.decodeTokens) return false;
    return be.rowSamplers === true || (s.options.greedy && s.options.repetitionPenalty === 1);
  }

  /** Frees a group's batch. */
  #drop(g: Group): void {
    g.state?.release();
    for (const r of g.joining) r.start?.release();
    Object.assign(g, { slots: [], joining: [], state: null });
  }

  /**
   * Brings the joining rows into the group's batch: into free slots in place (one row copied
   * each) when there are enough; otherwise, or when fewer than half the slots are in use, packs
   * the live rows and the joiners into a new state of just their number.
   */
  async #rebuild(g: Group): Promise<void> {
    g.slots = g.slots.map((r) => (r && !r.finished ? r : null));
    const rows = live(g);
    const joining = g.joining;
    const need = rows.length + joining.length;
    if (need === 0) return this.#drop(g);
    const size = g.slots.length;
    const free = size - rows.length;
    if (!joining.length && 2 * need >= size) return;
    if (g.state && joining.length <= free && 2 * need >= size) {
      const put = putRow(this.#lm);
      if (put) {
        for (const r of joining) {
          const slot = g.slots.indexOf(null);
          await put({ state: r.start!, row: 0 }, { state: g.state, row: slot });
          g.slots[slot] = r;
        }
        if (this.#opt.metrics) this.#opt.metrics.joinsInPlace += joining.length;
        this.#joined(g);
        return;
      }
    }
    const parts: RowRef[] = [];
    g.slots.forEach((r, i) => r && parts.push({ state: g.state!, row: i }));
    for (const r of joining) parts.push({ state: r.start!, row: 0 });
    const next = await gatherRows(this.#lm, parts);
    if (this.#opt.metrics) this.#opt.metrics.repacks++;
    g.state?.release();
    g.state = next;
    g.slots = [...rows, ...joining];
    this.#joined(g);
  }

  /** The joiners are in the batch: their own states go. */
  #joined(g: Group): void {
    for (const r of g.joining) {
      r.start!.release();
      r.start = undefined;
    }
    g.joining = [];
  }

  async #block(g: Group): Promise<void> {
    try {
      await this.#rebuild(g);
    } catch (e) {
      this.#fail([...live(g), ...g.joining], e);
      this.#drop(g);
      return;
    }
    const rows = live(g);
    if (!rows.length) return;
    const m = this.#opt.metrics;
    if (m) {
      m.blocks++;
      m.blockRows += rows.length;
    }
    const done: Row[] = [];
    const snapshot: { state: InferenceState | null } = { state: null };
    try {
      if (g.fused) await this.#fusedBlock(g, done, snapshot);
      else await this.#steppedBlock(g, done);
      for (const r of done) await this.#finalize(r);
    } catch (e) {
      this.#fail(rows, e);
    } finally {
      snapshot.state?.release();
    }
    if (!live(g).length && !g.joining.length) this.#drop(g);
  }

  /**
   * One fused decode call of up to `blockSize` tokens. Rows that keep their state are copied
   * first (`snapshot` gets the copy, to free after): a call may run past a row's end.
   */
  async #fusedBlock(
    g: Group,
    done: Row[],
    snapshot: { state: InferenceState | null },
  ): Promise<void> {
    const lm = this.#lm;
    const be: Backend = lm.backend;
    const slots = g.slots;
    const state = g.state!;
    const keep: RowRef[] = [];
    slots.forEach((r, i) => {
      if (!r || r.finished) return;
      r.unfed = [r.pending];
      if (r.job.keepState) keep.push({ state, row: i });
    });
    if (keep.length) {
      const snap = await gatherRows(lm, keep);
      snapshot.state = snap;
      let j = 0;
      for (const r of slots) {
        if (r && !r.finished && r.job.keepState) r.base = { state: snap, row: j++ };
      }
    }
    const penalty = slots.some((r) => r && r.job.sampler.options.repetitionPenalty !== 1);
    const pad = lm.tokenizer?.eosTokenId ?? 0;
    const handle = await bindState(state, be);
    markComputed(state);
    const drain = this.#drain = new AbortController();
    // A request that came while this call was being set up (the HTTP side runs at every await
    // above) drains it before it starts: otherwise it would wait for the call's first block.
    this.#drainIfWaiting();
    const blocks = be.decodeTokens!(
      handle,
      Int32Array.from(slots, (r) => (r && !r.finished ? r.pending : pad)),
      this.#opt.blockSize,
      {
        sampling: validateSamplingOptions({ topK: 1, vocabSize: lm.config.vocabSize }),
        samplers: be.rowSamplers ? slots.map((r) => r?.job.sampler ?? this.#idle) : undefined,
        history: penalty ? slots.map((r) => r?.history.slice(0, -1) ?? []) : undefined,
        blockSize: this.#opt.blockSize,
        drain: drain.signal,
      },
    );
    try {
      await this.#consume(blocks, slots, done);
    } finally {
      this.#drain = null;
    }
  }

  /** Takes a fused call's blocks; rows that finish go to `done`. */
  async #consume(
    blocks: AsyncGenerator<number[][]>,
    slots: (Row | null)[],
    done: Row[],
  ): Promise<void> {
    for await (const block of blocks) {
      const len = block[0].length;
      const now = performance.now();
      for (let t = 0; t < len; t++) {
        slots.forEach((r, b) => {
          if (!r || r.finished) return;
          if (this.#accept(r, block[b][t])) done.push(r);
        });
      }
      for (const r of slots) {
        if (!r || r.finished) continue;
        this.#opt.metrics?.interToken.observe((now - r.lastAt) / 1000 / len, len);
        r.lastAt = now;
      }
      // Every row done: the rest of the call is wasted work (the state is dropped).
      if (slots.every((r) => !r || r.finished)) break;
      // Let the HTTP side take its turn (new requests, streamed chunks, disconnects): `wasm`
      // computes on this thread. A row that finished frees a slot a waiting request can take.
      await tick();
      this.#drainIfWaiting();
    }
  }

  /** One step of every row, picked on the host. */
  async #steppedBlock(g: Group, done: Row[]): Promise<void> {
    const lm = this.#lm;
    const slots = g.slots;
    const state = g.state!;
    const pad = lm.tokenizer?.eosTokenId ?? 0;
    const logits = await lm.step(state, slots.map((r) => (r && !r.finished ? r.pending : pad)));
    const V = lm.config.paddedVocabSize;
    const now = performance.now();
    slots.forEach((r, b) => {
      if (!r || r.finished) return;
      r.base = { state, row: b };
      r.unfed = [];
      const id = r.job.sampler.sample(logits.subarray(b * V, (b + 1) * V), r.history);
      if (this.#accept(r, id)) done.push(r);
      else {
        this.#opt.metrics?.interToken.observe((now - r.lastAt) / 1000);
        r.lastAt = now;
      }
    });
  }
}
