/**
 * Picks and builds a backend by name. Backends other than `ref` are imported on demand so that a
 * program that does not use them never loads their code.
 *
 * @module
 */

import type {
  Backend,
  BackendInit,
  BackendName,
  TransformerBackend,
  TransformerBackendInit,
} from "../backend.ts";
import { BackendError } from "../errors.ts";
import { RefBackend } from "./ref/backend.ts";
import type { WasmOptions } from "./wasm/options.ts";
import { quietly, requestAdapter } from "./quiet_adapter.ts";
import { softwareBackends } from "../work_budget.ts";

/** A backend name, or `"auto"`: the fastest one that works here. */
export type BackendChoice = BackendName | "auto";

/**
 * Which backend to use: one name, `"auto"` (a hardware WebGPU adapter, else `"wasm"`, else
 * `"ref"`), or names to try in order. With `"auto"` or a list, a backend that fails to start is
 * skipped, and a model whose device is lost later moves on to the next one.
 */
export type BackendPreference = BackendChoice | readonly BackendName[];

const NAMES: readonly string[] = ["ref", "wasm", "webgpu"];

/** Per-backend options of {@link createBackend}. */
export interface BackendOptions {
  /** Options of the `wasm` backend (threads, weight storage). */
  wasm?: WasmOptions;
}

/** Builds backend `name` over the given weights. */
export function createBackend(
  name: BackendChoice,
  init: BackendInit,
  options: BackendOptions = {},
): Promise<Backend> {
  switch (name) {
    case "ref":
      return Promise.resolve(new RefBackend(init));
    case "wasm":
      return import("./wasm/backend.ts").then((m) => m.WasmBackend.create(init, options.wasm));
    case "webgpu":
      // Creating the device probes Vulkan again: keep libwayland's noise off stderr there too.
      return quietly(async () => {
        const { WebGpuBackend } = await import("./webgpu/backend.ts");
        const backend = await WebGpuBackend.create(init);
        // A software adapter computes slower than the CPU: abortable slices must be smaller.
        if ((await requestAdapter())?.info.isFallbackAdapter) softwareBackends.add(backend);
        return backend;
      });
    case "auto":
      return createBackendChain("auto", init, options).then((c) => c.backend);
    default:
      return Promise.reject(
        new BackendError(`backend "${name}" is not available (choose ref, wasm, webgpu or auto)`),
      );
  }
}

/**
 * Builds the first backend of `preference` that starts, and returns it with the names after it
 * (where to go when its device is lost). A single name fails as that backend fails; `"auto"` and
 * lists skip a backend that fails (noting why on stderr when they end on `ref`).
 */
export function createBackendChain(
  preference: BackendPreference,
  init: BackendInit,
  options: BackendOptions = {},
): Promise<{ backend: Backend; rest: BackendName[] }> {
  return chain(preference, (name) => createBackend(name, init, options));
}

/** Builds backend `name` over a Transformer's weights. */
export function createTransformerBackend(
  name: BackendName,
  init: TransformerBackendInit,
  options: BackendOptions = {},
): Promise<TransformerBackend> {
  switch (name) {
    case "ref":
      return Promise.resolve(new RefBackend(init));
    case "wasm":
      return import("./wasm/transformer.ts").then((m) =>
        m.WasmTransformerBackend.create(init, options.wasm)
      );
    case "webgpu":
      return import("./webgpu/transformer.ts").then((m) => m.WebGpuTransformerBackend.create(init));
    default:
      return Promise.reject(
        new BackendError(`backend "${name}" is not available (choose ref, wasm, webgpu or auto)`),
      );
  }
}

/** As {@link createBackendChain}, for a Transformer model. */
export function createTransformerBackendChain(
  preference: BackendPreference,
  init: TransformerBackendInit,
  options: BackendOptions = {},
): Promise<{ backend: TransformerBackend; rest: BackendName[] }> {
  return chain(preference, (name) => createTransformerBackend(name, init, options));
}

/** The first backend of `preference` that `build` starts, and the names after it. */
async function chain<B>(
  preference: BackendPreference,
  build: (name: BackendName) => Promise<B>,
): Promise<{ backend: B; rest: BackendName[] }> {
  if (typeof preference === "string" && preference !== "auto") {
    if (!NAMES.includes(preference)) {
      throw new BackendError(
        `backend "${preference}" is not available (choose ref, wasm, webgpu or auto)`,
      );
    }
    return { backend: await build(preference), rest: [] };
  }
  const why: string[] = [];
  const order = preference === "auto" ? await autoOrder(why) : [...preference];
  if (order.length === 0) throw new BackendError("no backend given (an empty list)");
  for (const name of order) {
    if (!NAMES.includes(name)) {
      throw new BackendError(`backend "${name}" is not available (choose ref, wasm or webgpu)`);
    }
  }
  for (let i = 0; i < order.length; i++) {
    try {
      const backend = await build(order[i]);
      if (why.length && order[i] === "ref") {
        console.error(`mamba: falling back to the "ref" backend (${why.join("; ")})`);
      }
      return { backend, rest: order.slice(i + 1) };
    } catch (e) {
      if (i === order.length - 1) throw e;
      why.push(`${order[i]} failed: ${(e as Error).message}`);
    }
  }
  throw new BackendError("unreachable");
}

/**
 * `"auto"`: webgpu when a hardware WebGPU adapter exists, then wasm, then ref. A software
 * adapter (`isFallbackAdapter`, e.g. Mesa's llvmpipe) is slower than the CPU backends.
 */
async function autoOrder(why: string[]): Promise<BackendName[]> {
  try {
    const adapter = await requestAdapter();
    if (adapter && !adapter.info.isFallbackAdapter) return ["webgpu", "wasm", "ref"];
    why.push(
      adapter
        ? `only a software WebGPU adapter (${adapter.info.description || "fallback"})`
        : "no WebGPU adapter",
    );
  } catch (e) {
    why.push(`webgpu failed: ${(e as Error).message}`);
  }
  return ["wasm", "ref"];
}
