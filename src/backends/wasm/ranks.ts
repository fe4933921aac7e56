/**
 * Starting and serving the ranks of the `wasm` backends (Mamba's and the Transformer's): the
 * shared buffer, the checks and the kernels they need first, a worker's setup messages, the error
 * a failed setup throws, and the loop a worker runs once it is set up. The two backends differ in
 * what a rank computes (`engine.ts`, `transformer_rank.ts`) and in how they slice the weights,
 * not in how ranks start and wait.
 *
 * @module
 */

import { BackendError } from "../../errors.ts";
import { WasmKernels } from "./kernels.ts";
import type { WasmOptions } from "./options.ts";
import { abort, AbortedError, CMD_EXIT, type CMD_RUN, CTL, CTL_WORDS } from "./shared.ts";

const MAX_SAB = [16 * 2 ** 30, 4 * 2 ** 30, 2 ** 31 - 65536, 2 ** 30];

/** A `SharedArrayBuffer` of `bytes` that can grow as far as this engine allows. */
export function growableSab(bytes: number): SharedArrayBuffer {
  for (const max of MAX_SAB) {
    try {
      return new SharedArrayBuffer(bytes, { maxByteLength: max });
    } catch {
      // this engine reserves less: try smaller
    }
  }
  throw new BackendError("wasm backend: cannot create a growable SharedArrayBuffer");
}

/** What a backend settles before it slices the model: the cores, and the threads asked for. */
export interface RankRequest {
  /** Cores the runtime reports (at least 1). */
  cores: number;
  /** Threads asked for (`options.threads`, else the cores). */
  asked: number;
}

/**
 * Checks that shared memory is available and the thread count valid.
 *
 * @throws {BackendError} when either is not.
 */
export function rankRequest(options: WasmOptions): RankRequest {
  if (typeof SharedArrayBuffer !== "function") {
    throw new BackendError("wasm backend: SharedArrayBuffer is not available here");
  }
  const cores = Math.max(1, globalThis.navigator?.hardwareConcurrency ?? 1);
  const asked = options.threads ?? cores;
  if (!Number.isSafeInteger(asked) || asked < 1) {
    throw new BackendError(`wasm backend: threads must be a positive integer, got ${asked}`);
  }
  return { cores, asked };
}

/**
 * Spin iterations before a rank sleeps at a barrier (`spin`) and between programs (`idleSpin`):
 * only when every rank can have a core, else spinning takes the core a rank waits for.
 */
export function spinCounts(ranks: number, cores: number): { spin: number; idleSpin: number } {
  return ranks <= cores ? { spin: 20000, idleSpin: 200000 } : { spin: 0, idleSpin: 0 };
}

/**
 * The compiled kernels of the build `simd` picks.
 *
 * @throws {BackendError} when they cannot be loaded.
 */
export async function compileKernels(simd: WasmOptions["simd"]): Promise<WebAssembly.Module> {
  try {
    return await WasmKernels.compileBuild(simd ?? "auto");
  } catch (e) {
    throw new BackendError(`wasm backend: cannot load the kernels: ${(e as Error).message}`);
  }
}

/**
 * Starts the worker of rank `rank` from `url` (it is pushed to `workers` at once, so that a failed
 * setup can terminate it) and sends it `messages` one at a time, each after the answer to the one
 * before: they are made as they are sent, so at most one rank's slice of a layer is in flight.
 * Resolves with the `bytes` of the last answer.
 *
 * @throws {BackendError} naming the rank, when the worker answers an error or fails.
 */
export async function startRank<M>(
  url: URL,
  rank: number,
  workers: Worker[],
  messages: Iterable<readonly [M, ArrayBuffer[]]>,
): Promise<number> {
  const worker = new Worker(url, { type: "module" });
  workers.push(worker);
  const send = (msg: M, transfer: ArrayBuffer[]) =>
    new Promise<{ bytes?: number }>((resolve, reject) => {
      worker.onmessage = (e: MessageEvent) => {
        if (e.data?.error === undefined) resolve(e.data);
        else reject(new BackendError(`wasm rank ${rank}: ${e.data.error}`));
      };
      worker.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        reject(new BackendError(`wasm rank ${rank}: ${e.message}`));
      };
      worker.postMessage(msg, transfer);
    });
  let last: { bytes?: number } = {};
  for (const [msg, transfer] of messages) last = await send(msg, transfer);
  worker.onmessage = null;
  worker.onerror = null;
  return last.bytes ?? 0;
}

/**
 * The error a failed setup throws, after its workers were terminated: a `BackendError` as it
 * was, anything else as one, and `hint` appended where a rank could not allocate its memory.
 */
export function setupFailure(e: unknown, hint = ""): BackendError {
  let msg = (e as Error)?.message ?? String(e);
  if (hint && /cannot (allocate|reserve)/.test(msg)) msg += hint;
  return e instanceof BackendError && msg === e.message
    ? e
    : new BackendError(msg.startsWith("wasm") ? msg : `wasm backend: ${msg}`);
}

/** What a worker's rank does with its setup messages and then with each program. */
export interface WorkerRank<L, H> {
  /** Takes the rank's slice of the next layer. */
  addLayer(layer: L): void;
  /** Takes the rank's slice of the head; setup ends with it. */
  setHead(head: H): void;
  /** Runs the program in the shared buffer. */
  run(): void;
}

/** The setup messages of a rank's worker (see {@link serveWorker}). */
export type RankMessage<I, L, H> =
  | I
  | { readonly kind: "layer"; readonly layer: L }
  | { readonly kind: "head"; readonly head: H };

/**
 * Rank 0's side of {@link serveWorker}'s loop: sets the command word (run the recorded program, or
 * exit) and bumps the program sequence word, waking the ranks that sleep on it.
 */
export function postCommand(sab: SharedArrayBuffer, command: typeof CMD_RUN | typeof CMD_EXIT) {
  const ctl = new Int32Array(sab, 0, CTL_WORDS);
  Atomics.store(ctl, CTL.CMD, command);
  Atomics.add(ctl, CTL.SEQ, 1);
  Atomics.notify(ctl, CTL.SEQ);
}

/**
 * The body of a rank's worker: answers the setup messages (`init`, made into a rank by `make`,
 * then one `layer` per layer, then `head`) with `{ ok: true }` or `{ error }`, the last with
 * `{ ready: true, bytes }` (`bytes`: the weight bytes the rank reads per token); then waits for
 * rank 0 to bump the program sequence word, runs the program, and repeats until the exit
 * command, without returning to its event loop (so no message is needed per token).
 */
export function serveWorker<
  I extends {
    readonly kind: "init";
    readonly sab: SharedArrayBuffer;
    readonly shard: { readonly rank: number };
    readonly idleSpin: number;
  },
  L,
  H,
  R extends WorkerRank<L, H>,
>(make: (init: I) => R, bytes: (rank: R) => number): void {
  const scope = globalThis as unknown as {
    onmessage: ((e: MessageEvent<RankMessage<I, L, H>>) => void) | null;
    postMessage(message: unknown): void;
    close(): void;
  };
  let rank: R | null = null;
  let init: I | null = null;
  scope.onmessage = (e: MessageEvent<RankMessage<I, L, H>>) => {
    const m = e.data;
    try {
      if (m.kind === "init") [init, rank] = [m as I, make(m as I)];
      else if (m.kind === "layer") rank!.addLayer((m as { layer: L }).layer);
      else rank!.setHead((m as { head: H }).head);
    } catch (err) {
      scope.onmessage = null;
      scope.postMessage({ error: (err as Error)?.message ?? String(err) });
      return;
    }
    if (m.kind !== "head") {
      scope.postMessage({ ok: true });
      return;
    }
    scope.onmessage = null;
    const ctl = new Int32Array(init!.sab, 0, CTL_WORDS);
    // Read the sequence word before answering: rank 0 may start the first program right after.
    let seq = Atomics.load(ctl, CTL.SEQ);
    scope.postMessage({ ready: true, bytes: bytes(rank!) });
    for (;;) {
      let i = 0;
      while (Atomics.load(ctl, CTL.SEQ) === seq) {
        if (++i > init!.idleSpin) Atomics.wait(ctl, CTL.SEQ, seq, 1000);
      }
      seq = Atomics.load(ctl, CTL.SEQ);
      if (Atomics.load(ctl, CTL.CMD) === CMD_EXIT) break;
      if (Atomics.load(ctl, CTL.ABORT)) continue;
      try {
        rank!.run();
      } catch (err) {
        if (!(err instanceof AbortedError)) {
          abort(init!.sab, `wasm rank ${init!.shard.rank}: ${(err as Error)?.stack ?? err}`);
        }
      }
    }
    scope.close();
  };
}
