/**
 * Entry point of a `wasm` Transformer worker (ranks 1…T−1), as `worker.ts` is for Mamba:
 * messages `init` (kernel module, shared buffer, config, shard), one `layer` per layer (its
 * weight slice), then `head`, each answered `{ ok: true }` or `{ error }` (`head` with
 * `{ ready: true, bytes }`). Then it loops: wait for rank 0 to bump the program sequence word,
 * run the program, repeat, until the exit command — no message per token.
 *
 * @module
 */

import type { GptNeoXConfig } from "../../neox_config.ts";
import { WasmKernels } from "./kernels.ts";
import { abort, AbortedError, CMD_EXIT, CTL, CTL_WORDS } from "./shared.ts";
import {
  type THeadSlice,
  type TLayerSlice,
  TransformerRank,
  type TShard,
} from "./transformer_rank.ts";

/** The first message. */
export interface TWorkerInit {
  /** Message kind. */
  readonly kind: "init";
  /** The compiled kernels. */
  readonly module: WebAssembly.Module;
  /** The shared buffer. */
  readonly sab: SharedArrayBuffer;
  /** The model config. */
  readonly config: GptNeoXConfig;
  /** This worker's shard. */
  readonly shard: TShard;
  /** Spin iterations before sleeping at a barrier. */
  readonly spin: number;
  /** Spin iterations before sleeping between programs. */
  readonly idleSpin: number;
}

/** The messages a worker receives. */
export type TWorkerMessage =
  | TWorkerInit
  | { readonly kind: "layer"; readonly layer: TLayerSlice }
  | { readonly kind: "head"; readonly head: THeadSlice };

const scope = globalThis as unknown as {
  onmessage: ((e: MessageEvent<TWorkerMessage>) => void) | null;
  postMessage(message: unknown): void;
  close(): void;
};

let rank: TransformerRank | null = null;
let init: TWorkerInit | null = null;

scope.onmessage = (e: MessageEvent<TWorkerMessage>) => {
  const m = e.data;
  try {
    if (m.kind === "init") {
      init = m;
      rank = new TransformerRank(
        WasmKernels.fromModule(m.module),
        m.config,
        m.shard,
        m.sab,
        m.spin,
        true,
      );
    } else if (m.kind === "layer") rank!.addLayer(m.layer);
    else rank!.setHead(m.head);
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
  scope.postMessage({ ready: true, bytes: rank!.weightBytes });
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
