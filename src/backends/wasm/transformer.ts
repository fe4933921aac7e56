/**
 * The `wasm` backend for Transformer models (GPT-NeoX): the same SIMD kernels as the Mamba path
 * (`matmul_*` GEMM / GEMV, `layernorm`, `add`) plus the attention kernels of
 * `rust_kernels/src/attention.rs` (tiled causal attention for prefill, no L×L matrix; decoding
 * split over slot ranges and merged, flash-decoding; the rotary embedding; the exact GELU), run
 * tensor-parallel over T ranks — the calling thread and T − 1 Web Workers — as the Mamba path
 * is: see `transformer_rank.ts` for the split.
 *
 * The operations the model calls are recorded and run when a result is read: rank 0 writes the
 * op list into the shared buffer, bumps the program word the workers wait on, and runs its own
 * share. KV caches live in the ranks' memories (each rank its heads), as
 * `[batch, heads, capacity, headDim]` per layer, and double their capacity when they fill.
 *
 * @module
 */

import type {
  BlockNorm,
  KvTensors,
  TransformerBackend,
  TransformerBackendInit,
} from "../../backend.ts";
import { BackendError } from "../../errors.ts";
import type { GptNeoXConfig } from "../../neox_config.ts";
import { WasmKernels } from "./kernels.ts";
import type { WasmOptions } from "./options.ts";
import { abort, AbortedError, align64, canBlock, CMD_EXIT, CMD_RUN, readError } from "./shared.ts";
import {
  kvStageBytes,
  makeTShards,
  sliceBuffers,
  sliceHead,
  sliceLayer,
  THEADER_BYTES,
  TOP,
  TOP_WORDS,
  TPRM,
  TPRM_OFFSET,
  TransformerRank,
  type TShard,
} from "./transformer_rank.ts";
import type { TWorkerMessage } from "./transformer_worker.ts";
import {
  compileKernels,
  growableSab,
  postCommand,
  rankRequest,
  setupFailure,
  spinCounts,
  startRank,
} from "./ranks.ts";

/** An activation: a register of the program being recorded. */
export interface WasmTActivation {
  /** Register number. */
  readonly reg: number;
  /** Rows (tokens). */
  readonly rows: number;
  /** Columns (features). */
  readonly cols: number;
}

/** A KV cache: its id in every rank's table. */
export interface WasmKv {
  /** Id in the ranks' tables. */
  readonly id: number;
  /** Sequences. */
  readonly batch: number;
  /** Set by freeKv. */
  freed: boolean;
}

/** The WebAssembly backend of Transformer models. Create it with {@link WasmTransformerBackend.create}. */
export class WasmTransformerBackend implements TransformerBackend<WasmTActivation, WasmKv> {
  /** Always `"wasm"`. */
  readonly name = "wasm" as const;
  /** Number of ranks (threads) computing. */
  readonly threads: number;
  /** What each rank owns. */
  readonly shards: readonly TShard[];
  readonly #cfg: GptNeoXConfig;
  readonly #sab: SharedArrayBuffer;
  readonly #rank0: TransformerRank;
  readonly #workers: Worker[];
  #ops: number[] = [];
  #ids: Int32Array | null = null;
  /** Largest row count of the program's activations (sizes the reduction slots). */
  #maxRows = 0;
  #lm: { reg: number; rows: number } | null = null;
  #nextReg = 1;
  #nextKv = 1;
  #live = new Set<number>();
  #broken: string | null = null;
  #disposed = false;

  private constructor(
    cfg: GptNeoXConfig,
    shards: TShard[],
    sab: SharedArrayBuffer,
    rank0: TransformerRank,
    workers: Worker[],
  ) {
    this.#cfg = cfg;
    this.shards = shards;
    this.threads = shards.length;
    this.#sab = sab;
    this.#rank0 = rank0;
    this.#workers = workers;
  }

  /**
   * Compiles the kernels, starts `threads − 1` workers (`options.threads`, default
   * `navigator.hardwareConcurrency`, at most one per KV head) and copies each rank's weight
   * slice into its memory (`options.weights`: `"f32"` or `"f16"`, default as loaded).
   *
   * @throws {BackendError} when workers, shared memory or WebAssembly are unavailable, or
   *   `weights` is `"q8"`.
   */
  static async create(
    init: TransformerBackendInit,
    options: WasmOptions = {},
  ): Promise<WasmTransformerBackend> {
    const cfg = init.config;
    if (options.weights === "q8") {
      throw new BackendError('wasm backend: weights "q8" is not supported for Transformer models');
    }
    const { cores, asked } = rankRequest(options);
    const shards = makeTShards(cfg, Math.min(asked, cfg.nKvHeads));
    const { spin, idleSpin } = spinCounts(shards.length, cores);
    const module = await compileKernels(options.simd);
    const store = options.weights;
    const sab = growableSab(THEADER_BYTES);
    const workers: Worker[] = [];
    try {
      const url = new URL("./transformer_worker.ts", import.meta.url);
      const loads = shards.slice(1).map((shard) =>
        startRank<TWorkerMessage>(
          url,
          shard.rank,
          workers,
          (function* () {
            yield [{ kind: "init", module, sab, config: cfg, shard, spin, idleSpin }, []];
            for (let l = 0; l < cfg.nLayer; l++) {
              const layer = sliceLayer(cfg, init.weights, l, shard, store);
              yield [{ kind: "layer", layer }, sliceBuffers(layer)];
            }
            const head = sliceHead(init.weights, shard, store);
            yield [{ kind: "head", head }, sliceBuffers(head)];
          })(),
        )
      );
      for (const p of loads) p.catch(() => {}); // handled below, by Promise.all
      const k = await WasmKernels.create(module);
      const rank0 = new TransformerRank(k, cfg, shards[0], sab, spin, canBlock());
      for (let l = 0; l < cfg.nLayer; l++) {
        rank0.addLayer(sliceLayer(cfg, init.weights, l, shards[0], store));
        await new Promise((r) => setTimeout(r, 0)); // let the workers' answers through
      }
      rank0.setHead(sliceHead(init.weights, shards[0], store));
      await Promise.all(loads);
      return new WasmTransformerBackend(cfg, shards, sab, rank0, workers);
    } catch (e) {
      for (const w of workers) w.terminate();
      throw setupFailure(e);
    }
  }

  // ------------------------------------------------------------------------------------------
  // recording

  #check(): void {
    if (this.#disposed) throw new BackendError("the wasm backend was disposed");
    if (this.#broken) throw new BackendError(`the wasm backend failed earlier: ${this.#broken}`);
  }

  #op(code: number, ...args: number[]): void {
    this.#ops.push(code, ...args);
    for (let j = args.length + 1; j < TOP_WORDS; j++) this.#ops.push(0);
  }

  #act(rows: number, cols: number): WasmTActivation {
    const reg = this.#nextReg++;
    this.#live.add(reg);
    this.#maxRows = Math.max(this.#maxRows, rows);
    return { reg, rows, cols };
  }

  #use(a: WasmTActivation): number {
    if (!this.#live.has(a.reg)) {
      throw new BackendError(
        "wasm backend: this activation was already used or read (activations are used once)",
      );
    }
    this.#live.delete(a.reg);
    return a.reg;
  }

  #peek(a: WasmTActivation): number {
    if (!this.#live.has(a.reg)) throw new BackendError("wasm backend: this activation is gone");
    return a.reg;
  }

  #which(which: BlockNorm): number {
    return which === "mlp" ? 1 : 0;
  }

  embed(ids: Int32Array): WasmTActivation {
    this.#check();
    if (this.#ids) throw new BackendError("wasm backend: one embed per read");
    this.#ids = ids.slice();
    const out = this.#act(ids.length, this.#cfg.dModel);
    this.#op(TOP.EMBED, out.reg);
    return out;
  }

  addNorm(
    hidden: WasmTActivation,
    residual: WasmTActivation | null,
    layer: number | "final",
    which: BlockNorm = "mixer",
  ): { normed: WasmTActivation; residual: WasmTActivation } {
    this.#check();
    const h = this.#use(hidden);
    const r = residual ? this.#use(residual) : -1;
    const normed = this.#act(hidden.rows, hidden.cols);
    const res = this.#act(hidden.rows, hidden.cols);
    const l = layer === "final" ? -1 : layer;
    this.#op(TOP.ADDNORM, h, r, l, this.#which(which), normed.reg, res.reg, hidden.rows);
    return { normed, residual: res };
  }

  norm(x: WasmTActivation, layer: number, which: BlockNorm): WasmTActivation {
    this.#check();
    const out = this.#act(x.rows, x.cols);
    this.#op(TOP.NORM, this.#peek(x), layer, this.#which(which), out.reg, x.rows);
    return out;
  }

  attention(
    layer: number,
    x: WasmTActivation,
    batch: number,
    seqLen: number,
    kv: WasmKv,
    pos: number,
  ): WasmTActivation {
    this.#check();
    if (kv.freed) throw new BackendError("wasm backend: the KV cache was freed");
    const out = this.#act(x.rows, this.#cfg.dModel);
    this.#op(TOP.ATTN, layer, this.#use(x), out.reg, batch, seqLen, kv.id, pos);
    return out;
  }

  mlp(layer: number, x: WasmTActivation): WasmTActivation {
    this.#check();
    const out = this.#act(x.rows, this.#cfg.dModel);
    this.#op(TOP.MLP, layer, this.#use(x), out.reg, x.rows);
    return out;
  }

  add(a: WasmTActivation, b: WasmTActivation): WasmTActivation {
    this.#check();
    const out = this.#act(a.rows, a.cols);
    this.#op(TOP.ADD, this.#use(a), this.#use(b), out.reg, a.rows);
    return out;
  }

  lmHead(x: WasmTActivation, batch: number, seqLen: number, lastOnly: boolean): WasmTActivation {
    this.#check();
    if (this.#lm) throw new BackendError("wasm backend: one LM head per read");
    const rows = lastOnly ? batch : batch * seqLen;
    const out = this.#act(rows, this.#cfg.paddedVocabSize);
    this.#op(TOP.LMHEAD, this.#use(x), batch, seqLen, lastOnly ? 1 : 0);
    this.#lm = { reg: out.reg, rows };
    return out;
  }

  read(a: WasmTActivation): Promise<Float32Array> {
    this.#check();
    if (!this.#lm || this.#lm.reg !== a.reg) {
      return Promise.reject(new BackendError("wasm backend: only LM head outputs can be read"));
    }
    this.#use(a);
    const V = this.#cfg.paddedVocabSize;
    const rows = this.#lm.rows;
    const logits = this.#run(rows * V * 4, 0);
    const out = new Float32Array(this.#sab, logits, rows * V).slice();
    return Promise.resolve(out);
  }

  /**
   * Runs the recorded program on every rank; returns the byte offset of the logits region (of
   * `logitBytes`), with a staging region of `stageBytes` that `fill` may write first.
   */
  #run(logitBytes: number, stageBytes: number, fill?: (stage: Float32Array) => void): number {
    const T = this.threads;
    const d = this.#cfg.dModel;
    const ids = this.#ids ?? new Int32Array(0);
    const nOps = this.#ops.length / TOP_WORDS;
    const slot = align64(Math.max(1, this.#maxRows) * d * 4);
    const offOps = THEADER_BYTES;
    const offIds = offOps + align64(Math.max(nOps, 16) * TOP_WORDS * 4);
    const offRed = offIds + align64(ids.length * 4);
    const offLogits = offRed + 2 * T * slot;
    const offStage = offLogits + align64(logitBytes);
    const stage = Math.max(stageBytes, align64(ids.length * d * 4));
    const need = offStage + stage;
    if (need > this.#sab.byteLength) {
      try {
        this.#sab.grow(need);
      } catch (e) {
        throw new BackendError(
          `wasm backend: cannot grow the shared buffer to ${need} bytes: ${(e as Error).message}`,
        );
      }
    }
    new Int32Array(this.#sab, offOps, this.#ops.length).set(this.#ops);
    new Int32Array(this.#sab, offIds, ids.length).set(ids);
    const prm = new Float64Array(this.#sab, TPRM_OFFSET, 16);
    prm[TPRM.NOPS] = nOps;
    prm[TPRM.OFF_OPS] = offOps;
    prm[TPRM.OFF_IDS] = offIds;
    prm[TPRM.OFF_RED] = offRed;
    prm[TPRM.RED_SLOT] = slot;
    prm[TPRM.OFF_LOGITS] = offLogits;
    prm[TPRM.OFF_STAGE] = offStage;
    prm[TPRM.NIDS] = ids.length;
    this.#ops = [];
    this.#ids = null;
    this.#lm = null;
    this.#maxRows = 0;
    this.#live.clear();
    fill?.(new Float32Array(this.#sab, offStage, stage / 4));
    if (T > 1) postCommand(this.#sab, CMD_RUN);
    try {
      this.#rank0.run();
    } catch (e) {
      if (!(e instanceof AbortedError)) {
        abort(this.#sab, `wasm rank 0: ${(e as Error)?.stack ?? e}`);
      }
      this.#broken = readError(this.#sab);
      throw new BackendError(`wasm backend: ${this.#broken}`);
    }
    return offLogits;
  }

  /** The staging region of the last program. */
  #stage(floats: number): Float32Array {
    const prm = new Float64Array(this.#sab, TPRM_OFFSET, 16);
    return new Float32Array(this.#sab, prm[TPRM.OFF_STAGE], floats);
  }

  // ------------------------------------------------------------------------------------------
  // KV caches (their ops join the program; uploads and downloads run it)

  createKv(batch: number): WasmKv {
    this.#check();
    const id = this.#nextKv++;
    this.#op(TOP.KV_NEW, id, batch);
    return { id, batch, freed: false };
  }

  reserveKv(kv: WasmKv, length: number, limit = Infinity): void {
    this.#check();
    if (kv.freed) throw new BackendError("wasm backend: the KV cache was freed");
    this.#op(TOP.KV_RESERVE, kv.id, length, Number.isFinite(limit) ? limit : -1);
  }

  uploadKv(kv: WasmKv, host: KvTensors): void {
    this.#check();
    const c = this.#cfg;
    const per = kv.batch * c.nKvHeads * host.length * c.headDim;
    this.#op(TOP.KV_UPLOAD, kv.id, host.length);
    this.#run(0, kvStageBytes(c, kv.batch, host.length), (stage) => {
      for (let l = 0; l < c.nLayer; l++) {
        stage.set(host.k[l].subarray(0, per), 2 * l * per);
        stage.set(host.v[l].subarray(0, per), (2 * l + 1) * per);
      }
    });
  }

  downloadKv(kv: WasmKv, length: number): Promise<KvTensors> {
    this.#check();
    const c = this.#cfg;
    const per = kv.batch * c.nKvHeads * length * c.headDim;
    this.#op(TOP.KV_DOWNLOAD, kv.id, length);
    this.#run(0, kvStageBytes(c, kv.batch, length));
    const stage = this.#stage(2 * c.nLayer * per);
    const k: Float32Array[] = [];
    const v: Float32Array[] = [];
    for (let l = 0; l < c.nLayer; l++) {
      k.push(stage.slice(2 * l * per, (2 * l + 1) * per));
      v.push(stage.slice((2 * l + 1) * per, (2 * l + 2) * per));
    }
    return Promise.resolve({ length, k, v });
  }

  cloneKv(kv: WasmKv, length: number): WasmKv {
    this.#check();
    const id = this.#nextKv++;
    this.#op(TOP.KV_CLONE, id, kv.id, length);
    return { id, batch: kv.batch, freed: false };
  }

  freeKv(kv: WasmKv): void {
    if (kv.freed || this.#disposed || this.#broken) return;
    kv.freed = true;
    this.#op(TOP.KV_FREE, kv.id);
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    if (this.#workers.length) {
      postCommand(this.#sab, CMD_EXIT);
      for (const w of this.#workers) w.terminate();
    }
  }
}
