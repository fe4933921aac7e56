/**
 * Sessions: named recurrent states that a request continues from. A Mamba session's whole
 * history is its fixed-size state, so keeping one costs the same however long it ran, and
 * resuming it never reads the earlier text again.
 *
 * Sessions are held in memory (least recently used first out, within a byte budget) and written
 * through to a {@link SessionStore} (a directory by default), so they outlive the memory budget
 * and the server process.
 *
 * @module
 */

import { InferenceState } from "../state.ts";

/** Where sessions live beyond memory: bytes of {@link InferenceState.toBytes} by id. */
export interface SessionStore {
  /** The bytes saved under `id`, or undefined. */
  get(id: string): Promise<Uint8Array | undefined>;
  /** Saves (or replaces) `id`. */
  put(id: string, bytes: Uint8Array): Promise<void>;
  /** Removes `id`; whether it existed. */
  delete(id: string): Promise<boolean>;
}

/** Session ids: also file names, so a safe alphabet. */
export const SESSION_ID = /^[A-Za-z0-9_.-]{1,128}$/;

/** A {@link SessionStore} of one file per session, `<dir>/<id>.state`. */
export class DirectorySessionStore implements SessionStore {
  /** The directory. */
  readonly dir: string;

  /** A store in `dir` (created when missing). */
  constructor(dir: string) {
    this.dir = dir.replace(/\/+$/, "") || "/";
    Deno.mkdirSync(this.dir, { recursive: true });
  }

  #path(id: string): string {
    if (!SESSION_ID.test(id) || id.startsWith(".")) throw new RangeError(`bad session id ${id}`);
    return `${this.dir}/${id}.state`;
  }

  /** Reads `<dir>/<id>.state`. */
  async get(id: string): Promise<Uint8Array | undefined> {
    try {
      return await Deno.readFile(this.#path(id));
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return undefined;
      throw e;
    }
  }

  /** Writes `<dir>/<id>.state` (through a temporary file, so a crash leaves the old one). */
  async put(id: string, bytes: Uint8Array): Promise<void> {
    const path = this.#path(id);
    const tmp = `${path}.${crypto.randomUUID()}.tmp`;
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  }

  /** Removes `<dir>/<id>.state`. */
  async delete(id: string): Promise<boolean> {
    try {
      await Deno.remove(this.#path(id));
      return true;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return false;
      throw e;
    }
  }
}

/** A {@link SessionStore} in memory (sessions end with the process). */
export class MemorySessionStore implements SessionStore {
  readonly #map = new Map<string, Uint8Array>();

  /** The bytes of `id`. */
  get(id: string): Promise<Uint8Array | undefined> {
    return Promise.resolve(this.#map.get(id));
  }

  /** Saves `id`. */
  put(id: string, bytes: Uint8Array): Promise<void> {
    this.#map.set(id, bytes);
    return Promise.resolve();
  }

  /** Removes `id`. */
  delete(id: string): Promise<boolean> {
    return Promise.resolve(this.#map.delete(id));
  }
}

/** The sessions of a server: an LRU of states in memory over a {@link SessionStore}. */
export class Sessions {
  readonly #store: SessionStore;
  readonly #budget: number;
  /** In memory, least recently used first. */
  readonly #mem = new Map<string, InferenceState>();
  readonly #busy = new Set<string>();
  #bytes = 0;

  /** Sessions over `store`, keeping at most `budgetBytes` of state in memory. */
  constructor(store: SessionStore, budgetBytes: number) {
    this.#store = store;
    this.#budget = budgetBytes;
  }

  /** Sessions held in memory. */
  get inMemory(): number {
    return this.#mem.size;
  }

  /** Bytes of state held in memory. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A fresh random id. */
  newId(): string {
    return crypto.randomUUID();
  }

  /** The state of `id` (memory first, then the store), or undefined when there is none. */
  async get(id: string): Promise<InferenceState | undefined> {
    const hit = this.#mem.get(id);
    if (hit) {
      this.#mem.delete(id);
      this.#mem.set(id, hit);
      return hit;
    }
    const bytes = await this.#store.get(id);
    if (!bytes) return undefined;
    const state = InferenceState.fromBytes(bytes);
    this.#remember(id, state);
    return state;
  }

  /** Saves `state` (batch 1) as `id`: to the store, then into memory. */
  async put(id: string, state: InferenceState): Promise<void> {
    await this.#store.put(id, await state.toBytes());
    const old = this.#mem.get(id);
    this.#forget(id);
    if (old && old !== state) old.release();
    this.#remember(id, state);
  }

  /** Drops `id` everywhere; whether it existed. */
  async delete(id: string): Promise<boolean> {
    const inMem = this.#forget(id);
    const stored = await this.#store.delete(id);
    return inMem || stored;
  }

  /** Copies `id` to `to`; false when `id` does not exist. */
  async fork(id: string, to: string): Promise<boolean> {
    const state = await this.get(id);
    if (!state) return false;
    await this.put(to, state.clone());
    return true;
  }

  /** Whether `id` exists (in memory or in the store). */
  async has(id: string): Promise<boolean> {
    return this.#mem.has(id) || (await this.#store.get(id)) !== undefined;
  }

  /** Marks `id` as used by a running request; false when it already is. */
  acquire(id: string): boolean {
    if (this.#busy.has(id)) return false;
    this.#busy.add(id);
    return true;
  }

  /** Ends {@link acquire}. */
  release(id: string): void {
    this.#busy.delete(id);
  }

  #remember(id: string, state: InferenceState): void {
    this.#mem.set(id, state);
    this.#bytes += state.byteLength;
    // Oldest out first; they are all in the store already.
    for (const [old, s] of this.#mem) {
      if (this.#bytes <= this.#budget) break;
      this.#forget(old);
      s.release();
    }
  }

  #forget(id: string): boolean {
    const s = this.#mem.get(id);
    if (!s) return false;
    this.#mem.delete(id);
    this.#bytes -= s.byteLength;
    return true;
  }
}
