/**
 * Entry point of a `wasm` backend worker (ranks 1…T−1). Messages, each answered `{ ok: true }`
 * or `{ error }`: `init` (the compiled kernel module, the shared buffer, the config and the
 * rank's shard), one `layer` per layer (its packed weight slice), then `head` (final norm, LM
 * head, embedding), answered `{ ready: true, bytes }`. After that the worker runs programs until
 * the exit command ({@link serveWorker}).
 *
 * @module
 */

import type { MambaConfig } from "../../config.ts";
import { RankEngine } from "./engine.ts";
import { WasmKernels } from "./kernels.ts";
import type { PackedHead, PackedLayer, Shard } from "./plan.ts";
import { serveWorker } from "./ranks.ts";

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

serveWorker<WorkerInit, PackedLayer, PackedHead, RankEngine>(
  (m) => new RankEngine(WasmKernels.fromModule(m.module), m.config, m.shard, m.sab, m.spin, true),
  (engine) => engine.weightBytesPerToken,
);
