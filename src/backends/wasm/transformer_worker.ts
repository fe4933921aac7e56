/**
 * Entry point of a `wasm` Transformer worker (ranks 1…T−1), as `worker.ts` is for Mamba:
 * messages `init` (kernel module, shared buffer, config, shard), one `layer` per layer (its
 * weight slice), then `head`, each answered `{ ok: true }` or `{ error }` (`head` with
 * `{ ready: true, bytes }`). Then it runs programs until the exit command ({@link serveWorker}).
 *
 * @module
 */

import type { GptNeoXConfig } from "../../neox_config.ts";
import { WasmKernels } from "./kernels.ts";
import { serveWorker } from "./ranks.ts";
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

serveWorker<TWorkerInit, TLayerSlice, THeadSlice, TransformerRank>(
  (m) =>
    new TransformerRank(WasmKernels.fromModule(m.module), m.config, m.shard, m.sab, m.spin, true),
  (rank) => rank.weightBytes,
);
