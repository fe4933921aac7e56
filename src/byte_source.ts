/**
 * Random access to the bytes of a checkpoint file without holding the file in memory: a local
 * file read through one handle (seek + read), an http(s) resource read with `Range` requests, or
 * bytes already in memory. The loaders ask for one tensor's byte range at a time, so a model
 * never needs its file's size in memory on top of its weights.
 *
 * Every read is checked against the source's size before anything is allocated, so a corrupt
 * offset gives a {@link WeightsError} naming the file, never a huge allocation.
 *
 * @module
 */

import { WeightsError } from "./errors.ts";

/** Bytes that can be read at any offset. */
export interface ByteSource {
  /** A name for error messages (the path or URL). */
  readonly name: string;
  /** Size in bytes. */
  readonly size: number;
  /** Reads `length` bytes at `offset` into a new array. */
  read(offset: number, length: number): Promise<Uint8Array<ArrayBuffer>>;
  /** Reads `into.byteLength` bytes at `offset` into `into` (no intermediate copy). */
  readInto(offset: number, into: Uint8Array): Promise<void>;
  /** Releases the file handle, if any. */
  close(): void;
}

/** Throws unless [offset, offset + length) lies inside a source of `size` bytes. */
export function checkRange(name: string, size: number, offset: number, length: number): void {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 ||
    offset + length > size
  ) {
    throw new WeightsError(
      `${name}: bytes [${offset}, ${
        offset + length
      }) lie beyond the end of the file (${size} bytes; truncated or corrupt?)`,
    );
  }
}

/** A source over bytes in memory (tests, the fuzzer, small files). */
export class MemorySource implements ByteSource {
  readonly name: string;
  readonly size: number;
  #bytes: Uint8Array;
  /** Wraps `bytes` (not copied). */
  constructor(bytes: Uint8Array, name = "bytes") {
    this.#bytes = bytes;
    this.name = name;
    this.size = bytes.byteLength;
  }
  read(offset: number, length: number): Promise<Uint8Array<ArrayBuffer>> {
    checkRange(this.name, this.size, offset, length);
    return Promise.resolve(this.#bytes.slice(offset, offset + length));
  }
  readInto(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.name, this.size, offset, into.byteLength);
    into.set(this.#bytes.subarray(offset, offset + into.byteLength));
    return Promise.resolve();
  }
  close(): void {}
}

/** A local file, read through one handle. Reads are serialised (one seek + read at a time). */
export class FileSource implements ByteSource {
  readonly name: string;
  readonly size: number;
  #file: Deno.FsFile;
  #queue: Promise<unknown> = Promise.resolve();

  private constructor(file: Deno.FsFile, size: number, name: string) {
    this.#file = file;
    this.size = size;
    this.name = name;
  }

  /** Opens `path` (a path or a file: URL). */
  static async open(path: string | URL, name = String(path)): Promise<FileSource> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw new WeightsError(`cannot open ${name}: ${(e as Error).message}`);
    }
    const { size } = await file.stat();
    return new FileSource(file, size, name);
  }

  read(offset: number, length: number): Promise<Uint8Array<ArrayBuffer>> {
    checkRange(this.name, this.size, offset, length);
    const out = new Uint8Array(length);
    return this.readInto(offset, out).then(() => out);
  }

  readInto(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.name, this.size, offset, into.byteLength);
    const run = this.#queue.then(async () => {
      await this.#file.seek(offset, Deno.SeekMode.Start);
      let done = 0;
      while (done < into.byteLength) {
        // Reads of at most 64 MiB: Deno copies each read through its own buffer.
        const n = await this.#file.read(
          into.subarray(done, Math.min(into.byteLength, done + 2 ** 26)),
        );
        if (n === null) {
          throw new WeightsError(`${this.name}: file ended early (it changed while being read?)`);
        }
        done += n;
      }
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  close(): void {
    try {
      this.#file.close();
    } catch {
      // already closed
    }
  }
}

/**
 * An http(s) resource read with `Range` requests. A server that ignores `Range` (answers 200
 * with the whole body) is read once into memory instead, as there is no other way.
 */
export class HttpSource implements ByteSource {
  readonly name: string;
  readonly size: number;
  #url: URL;
  #init: RequestInit;

  private constructor(url: URL, size: number, init: RequestInit) {
    this.#url = url;
    this.size = size;
    this.name = url.href;
    this.#init = init;
  }

  /** Opens `url`, learning its size from a one-byte range request. */
  static async open(url: URL, init: RequestInit = {}): Promise<ByteSource> {
    let res: Response;
    try {
      res = await fetch(url, { ...init, headers: { ...init.headers, Range: "bytes=0-0" } });
    } catch (e) {
      throw new WeightsError(`cannot fetch ${url.href}: ${(e as Error).message}`);
    }
    if (res.status === 206) {
      await res.body?.cancel();
      const total = /\/(\d+)\s*$/.exec(res.headers.get("content-range") ?? "")?.[1];
      if (total === undefined) {
        throw new WeightsError(`${url.href}: a 206 answer without the size in Content-Range`);
      }
      return new HttpSource(url, Number(total), init);
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw new WeightsError(`cannot fetch ${url.href}: HTTP ${res.status}`);
    }
    return new MemorySource(new Uint8Array(await res.arrayBuffer()), url.href);
  }

  async read(offset: number, length: number): Promise<Uint8Array<ArrayBuffer>> {
    const out = new Uint8Array(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.name, this.size, offset, into.byteLength);
    if (into.byteLength === 0) return;
    const range = `bytes=${offset}-${offset + into.byteLength - 1}`;
    let res: Response;
    try {
      res = await fetch(this.#url, {
        ...this.#init,
        headers: { ...this.#init.headers, Range: range },
      });
    } catch (e) {
      throw new WeightsError(`cannot fetch ${this.name} (${range}): ${(e as Error).message}`);
    }
    if (res.status !== 206 || !res.body) {
      await res.body?.cancel();
      throw new WeightsError(`${this.name}: HTTP ${res.status} to a request for ${range}`);
    }
    let done = 0;
    for await (const chunk of res.body) {
      if (done + chunk.byteLength > into.byteLength) {
        await res.body.cancel().catch(() => {});
        throw new WeightsError(`${this.name}: the server sent more than the ${range} asked for`);
      }
      into.set(chunk, done);
      done += chunk.byteLength;
    }
    if (done !== into.byteLength) {
      throw new WeightsError(`${this.name}: the answer to ${range} ended after ${done} bytes`);
    }
  }

  close(): void {}
}

/** Opens a local path or a file:/http(s): URL as a {@link ByteSource}. */
export async function openSource(url: URL): Promise<ByteSource> {
  if (url.protocol === "file:") return await FileSource.open(url, decodeURIComponent(url.pathname));
  if (url.protocol === "http:" || url.protocol === "https:") return await HttpSource.open(url);
  throw new WeightsError(`cannot read ${url.href}: only file:, http: and https: URLs`);
}
