/**
 * Entry point of a `wasm` backend worker (ranks 1…T−1). The first message carries the compiled
 * kernel module, the shared buffer, the config, the rank's shard and its packed weights; the
 * worker copies them into its own kernel instance, answers `{ ready: true }` (or `{ error }`),
 * then loops: wait for rank 0 to bump the program sequence word, run the program, repeat, until
 * the exit command. It never returns to its event loop in between, so no message is needed per
 * token.
 *
 * @module
 */

import type { MambaConfig } from "../../config.ts";
import { RankEngine } from "./engine.ts";
import { WasmKernels } from "./kernels.ts";
import type { PackedModel, Shard } from "./plan.ts";
import { abort, AbortedError, CMD_EXIT, CTL } from "./shared.ts";

/** The setup message. */
export interface WorkerInit {
  /** The compiled kernels. */
  readonly module: WebAssembly.Module;
  /** The shared buffer. */
  readonly sab: SharedArrayBuffer;
  /** The model config. */
  readonly config: MambaConfig;
  /** This worker's shard. */
  readonly shard: Shard;
  /** Its weight slice (dropped once copied into wasm memory). */
  packed?: PackedModel;
  /** Spin iterations before sleeping at a barrier. */
  readonly spin: number;
  /** Spin iterations before sleeping between programs. */
  readonly idleSpin: number;
}

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<WorkerInit>) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
};

/** Runs programs from sequence number `seq` on until the exit command. */
function serve(engine: RankEngine, init: WorkerInit, seq: number): void {
  const ctl = new Int32Array(init.sab, 0, 16);
  for (;;) {
    let i = 0;
    while (Atomics.load(ctl, CTL.SEQ) === seq) {
      if (++i > init.idleSpin) Atomics.wait(ctl, CTL.SEQ, seq, 1000);
    }
    seq = Atomics.load(ctl, CTL.SEQ);
    if (Atomics.load(ctl, CTL.CMD) === CMD_EXIT) return;
    if (Atomics.load(ctl, CTL.ABORT)) continue;
    try {
      engine.run();
    } catch (e) {
      if (!(e instanceof AbortedError)) {
        abort(init.sab, `wasm rank ${init.shard.rank}: ${(e as Error)?.stack ?? e}`);
      }
    }
  }
}

/** Builds the engine, dropping the message's reference to the weights (they live in wasm now). */
function start(init: WorkerInit): RankEngine {
  const slot = init as { packed?: PackedModel };
  const packed = slot.packed!;
  slot.packed = undefined;
  const k = WasmKernels.fromModule(init.module);
  return new RankEngine(k, init.config, init.shard, packed, init.sab, init.spin, true);
}

scope.onmessage = (e: MessageEvent<WorkerInit>) => {
  scope.onmessage = null;
  let engine: RankEngine;
  try {
    engine = start(e.data);
  } catch (err) {
    scope.postMessage({ error: (err as Error)?.message ?? String(err) });
    return;
  }
  // Read the sequence word before answering: rank 0 may start the first program right after.
  const seq = Atomics.load(new Int32Array(e.data.sab, 0, 16), CTL.SEQ);
  scope.postMessage({ ready: true, bytes: engine.weightBytesPerToken });
  serve(engine, e.data, seq);
  scope.close();
};
