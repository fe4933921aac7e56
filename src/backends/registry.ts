/**
 * Picks and builds a backend by name. Backends other than `ref` are imported on demand so that a
 * program that does not use them never loads their code.
 *
 * @module
 */

import type { Backend, BackendInit, BackendName } from "../backend.ts";
import { BackendError } from "../errors.ts";
import { RefBackend } from "./ref/backend.ts";
import type { WasmOptions } from "./wasm/options.ts";

/** A backend name, or `"auto"`: the fastest one that works here. */
export type BackendChoice = BackendName | "auto";

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
      return import("./webgpu/backend.ts").then((m) => m.WebGpuBackend.create(init));
    case "auto":
      return autoBackend(init, options);
    default:
      return Promise.reject(
        new BackendError(`backend "${name}" is not available (choose ref, wasm, webgpu or auto)`),
      );
  }
}

/**
 * `"auto"`: webgpu when a hardware WebGPU adapter exists, else wasm, else ref (with a note on
 * stderr). A software adapter (`isFallbackAdapter`, e.g. Mesa's llvmpipe) is slower than the CPU
 * backends.
 */
async function autoBackend(init: BackendInit, options: BackendOptions): Promise<Backend> {
  let why = "no WebGPU adapter";
  try {
    const adapter = await navigator.gpu?.requestAdapter();
    if (adapter && adapter.info.isFallbackAdapter) {
      why = `only a software WebGPU adapter (${adapter.info.description || "fallback"})`;
    } else if (adapter) {
      const m = await import("./webgpu/backend.ts");
      return await m.WebGpuBackend.create(init);
    }
  } catch (e) {
    why = `webgpu failed: ${(e as Error).message}`;
  }
  try {
    const m = await import("./wasm/backend.ts");
    return await m.WasmBackend.create(init, options.wasm);
  } catch (e) {
    why += `; wasm failed: ${(e as Error).message}`;
  }
  console.error(`mamba: backend "auto" falls back to "ref" (${why})`);
  return new RefBackend(init);
}
