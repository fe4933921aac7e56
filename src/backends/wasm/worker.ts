/**
 * Entry point of a `wasm` backend worker (ranks 1…T−1). Messages, each answered `{ ok: true }`
 * or `{ error }`: `init` (the compiled kernel module, the shared buffer, the config and the
 * rank's shard), one `layer` per layer (its packed weight slice), then `head` (final norm, LM
 * head, embedding), answered `{ ready: true, bytes }`. After that the worker loops: wait for rank
 * 0 to bump the program sequence word, run the program, repeat, until the exit command. It never
 * returns to its event loop in between, so no message is needed per token.
 *
 * @module
 */

import type { MambaConfig } from "../../config.ts";
import { RankEngine } from "./engine.ts";
import { WasmKernels } from "./kernels.ts";
import type { PackedHead, PackedLayer, Shard } from "./plan.ts";
import { abort, AbortedError, CMD_EXIT, CTL, CTL_WORDS } from "./shared.ts";

/** The first message. */
export interface WorkerInit {
  /** Message kind. */
  readonly kind: "init";
  /** The compiled kernels. */
  readonly module: WebAssembly.Module;
  /** The shared buffer. */
  readonly sab: SharedArrayBuffer;
  /** The model config. */
  readonly config: MambaConfig;
  /** This worker's shard. */
  readonly shard: Shard;
  /** Spin iterations before sleeping at a barrier. */
  readonly spin: number;
  /** Spin iterations before sleeping between programs. */
  readonly idleSpin: number;
}

/** The messages a worker receives. */
export type WorkerMessage =
  | WorkerInit
  | { readonly kind: "layer"; readonly layer: PackedLayer }
  | { readonly kind: "head"; readonly head: PackedHead };

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<WorkerMessage>) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
};

/** Runs programs from sequence number `seq` on until the exit command. */
function serve(engine: RankEngine, init: WorkerInit, seq: number): void {
  const ctl = new Int32Array(init.sab, 0, CTL_WORDS);
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

let engine: RankEngine | null = null;
let init: WorkerInit | null = null;

scope.onmessage = (e: MessageEvent<WorkerMessage>) => {
  const m = e.data;
  try {
    if (m.kind === "init") {
      init = m;
      const k = WasmKernels.fromModule(m.module);
      engine = new RankEngine(k, m.config, m.shard, m.sab, m.spin, true);
    } else if (m.kind === "layer") {
      engine!.addLayer(m.layer);
    } else {
      engine!.setHead(m.head);
    }
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
  // Read the sequence word before answering: rank 0 may start the first program right after.
  const seq = Atomics.load(new Int32Array(init!.sab, 0, CTL_WORDS), CTL.SEQ);
  scope.postMessage({ ready: true, bytes: engine!.weightBytesPerToken });
  serve(engine!, init!, seq);
  scope.close();
};
