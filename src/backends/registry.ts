/**
 * Picks and builds a backend by name. Backends other than `ref` are imported on demand so that a
 * program that does not use them never loads their code.
 *
 * @module
 */

import type { Backend, BackendInit, BackendName } from "../backend.ts";
import { BackendError } from "../errors.ts";
import { RefBackend } from "./ref/backend.ts";

/** A backend name, or `"auto"`: the fastest one that works here. */
export type BackendChoice = BackendName | "auto";

/** Builds backend `name` over the given weights. */
export function createBackend(name: BackendChoice, init: BackendInit): Promise<Backend> {
  switch (name) {
    case "ref":
      return Promise.resolve(new RefBackend(init));
    case "auto":
      return Promise.resolve(new RefBackend(init));
    default:
      return Promise.reject(
        new BackendError(`backend "${name}" is not available (choose ref, wasm, webgpu or auto)`),
      );
  }
}
