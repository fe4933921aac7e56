/**
 * `BackendChain`: the backend a model computes with, and the backends of its preference still
 * to try when that backend's device is lost. Both model classes (`MambaLM`, `GptNeoXLM`) keep
 * one; asking it for a live backend moves the model down the chain when needed.
 *
 * States need nothing from here: they remember the backend they were bound to and check its
 * `lostReason` themselves (src/state.ts, src/kv_state.ts), so a move only has to hand out a new
 * backend object.
 *
 * @module
 */

import type { BackendName } from "./backend.ts";
import { BackendError, DeviceLostError } from "./errors.ts";

/** What the chain needs of a backend: whether its device is lost, and how to let it go. */
export interface LosableBackend {
  /** Why the backend can no longer compute (its device was lost), or undefined while it can. */
  readonly lostReason?: string;
  /** Frees everything the backend holds. */
  dispose(): void;
}

/**
 * Builds the first backend of `names` that starts (over the model's weights, read again if need
 * be) and returns it with the names after it: `createBackendChain` or
 * `createTransformerBackendChain` bound to the model's weights and options.
 */
export type BuildBackends<B> = (
  names: BackendName[],
) => Promise<{ backend: B; rest: BackendName[] }>;

/** The current backend of a model and the ones to move to when its device is lost. */
export class BackendChain<B extends LosableBackend> {
  #current: B;
  #rest: BackendName[];
  /** Builds the next backend; dropped once nothing is left to move to (it may hold weights). */
  #build: BuildBackends<B> | undefined;
  /** The move in progress, shared by the calls that find the device lost meanwhile. */
  #moving: Promise<B> | null = null;
  /** Set by {@link dispose}: a move that finishes afterwards frees what it built. */
  #disposed = false;
  /** Whether the model was given a list of backends (for the advice when none is left). */
  readonly #hadList: boolean;

  /**
   * `backend` computes now; `rest` (the names after it in the model's preference) are built by
   * `build` when its device is lost. With no `rest`, a lost device is an error.
   */
  constructor(backend: B, rest: readonly BackendName[] = [], build?: BuildBackends<B>) {
    this.#current = backend;
    this.#rest = build ? [...rest] : [];
    this.#build = this.#rest.length ? build : undefined;
    this.#hadList = this.#rest.length > 0;
  }

  /** The backend computing now (it may be lost: see {@link live}). */
  get current(): B {
    return this.#current;
  }

  /**
   * The backend to compute with now: the current one, or, when its device was lost, the next
   * backend of the chain, built once however many calls ask meanwhile. The lost one is disposed.
   *
   * @throws {DeviceLostError} when the device was lost and there is no backend to move to.
   */
  async live(): Promise<B> {
    const lost = this.#current;
    if (!lost.lostReason) return lost;
    const build = this.#build;
    if (!build) {
      const advice = this.#hadList
        ? "every backend of the model's list was tried"
        : 'load with backend "auto" or a list';
      throw new DeviceLostError(`${lost.lostReason}; no backend to move to (${advice})`);
    }
    this.#moving ??= (async () => {
      console.error(
        `mamba: ${lost.lostReason}; moving the model to the "${this.#rest[0]}" backend`,
      );
      const { backend, rest } = await build(this.#rest);
      if (this.#disposed) {
        // dispose() ran during the move (and freed the lost backend): free the new one too.
        backend.dispose();
        throw new BackendError("the model was disposed while it moved to another backend");
      }
      this.#rest = rest;
      if (!rest.length) this.#build = undefined;
      this.#current = backend;
      lost.dispose();
      return backend;
    })().finally(() => this.#moving = null);
    return await this.#moving;
  }

  /**
   * Frees the current backend, once; a move in progress frees what it builds instead of
   * switching to it.
   */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#build = undefined;
    this.#current.dispose();
  }
}
