/**
 * A zip reader for `torch.save` archives: the entry list comes from the central directory at the
 * end of the file (ZIP64 records included, as files over 4 GiB have), and an entry's bytes are
 * read only when asked for, from the {@link ByteSource}. Stored entries (what torch writes) can be
 * read by range; deflated ones are inflated through `DecompressionStream("deflate-raw")`.
 *
 * Every count, size and offset is checked against the file before it is used.
 *
 * @module
 */

import type { ByteSource } from "./byte_source.ts";
import { WeightsError } from "./errors.ts";

/** One file in the archive. */
export interface ZipEntry {
  /** Its path in the archive. */
  readonly name: string;
  /** 0 = stored, 8 = deflated. */
  readonly method: number;
  /** Bytes in the file. */
  readonly compressedSize: number;
  /** Bytes once inflated. */
  readonly size: number;
  /** Where its local header starts. */
  readonly localHeaderOffset: number;
}

const EOCD_SIG = 0x06054b50;
const ZIP64_LOCATOR_SIG = 0x07064b50;
const ZIP64_EOCD_SIG = 0x06064b50;
const CENTRAL_SIG = 0x02014b50;
const LOCAL_SIG = 0x04034b50;
/** Deflate cannot shrink data by more than about 1032:1; beyond that a size is a lie. */
const MAX_DEFLATE_RATIO = 1032;

/** Whether the first bytes look like a zip archive ("PK\3\4", or an empty "PK\5\6"). */
export function isZip(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x50 && head[1] === 0x4b &&
    ((head[2] === 3 && head[3] === 4) || (head[2] === 5 && head[3] === 6));
}

/** A zip archive opened over a {@link ByteSource}. */
export class ZipArchive {
  /** The entries by name. */
  readonly entries: ReadonlyMap<string, ZipEntry>;
  readonly #src: ByteSource;
  readonly #dataOffsets = new Map<string, number>();

  private constructor(src: ByteSource, entries: Map<string, ZipEntry>) {
    this.#src = src;
    this.entries = entries;
  }

  /** Reads the central directory of the archive in `src`. */
  static async open(src: ByteSource): Promise<ZipArchive> {
    const fail = (why: string): never => {
      throw new WeightsError(`${src.name}: not a readable zip archive: ${why}`);
    };
    // The end-of-central-directory record is 22 bytes plus a comment of at most 65535.
    const tailLen = Math.min(src.size, 22 + 65535 + 20);
    const tailStart = src.size - tailLen;
    const tail = await src.read(tailStart, tailLen);
    const tv = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
    let eocd = -1;
    for (let i = tailLen - 22; i >= 0; i--) {
      if (tv.getUint32(i, true) === EOCD_SIG && i + 22 + tv.getUint16(i + 20, true) <= tailLen) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) fail("no end-of-central-directory record");
    let count = tv.getUint16(eocd + 10, true);
    let cdSize = tv.getUint32(eocd + 12, true);
    let cdOffset = tv.getUint32(eocd + 16, true);
    // ZIP64: a locator just before the record points at the 64-bit end record.
    if (eocd >= 20 && tv.getUint32(eocd - 20, true) === ZIP64_LOCATOR_SIG) {
      const at = Number(tv.getBigUint64(eocd - 20 + 8, true));
      if (!(at >= 0 && at + 56 <= tailStart + eocd - 20)) fail("ZIP64 end record out of range");
      const rec = await src.read(at, 56);
      const rv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
      if (rv.getUint32(0, true) !== ZIP64_EOCD_SIG) fail("bad ZIP64 end record signature");
      count = safe(rv.getBigUint64(32, true), src.name);
      cdSize = safe(rv.getBigUint64(40, true), src.name);
      cdOffset = safe(rv.getBigUint64(48, true), src.name);
    }
    if (cdOffset + cdSize > src.size) {
      fail(`central directory [${cdOffset}, ${cdOffset + cdSize}) beyond the file`);
    }
    // Each central record has at least 46 bytes: a count beyond that is a lie.
    if (count * 46 > cdSize) fail(`${count} entries cannot fit in ${cdSize} bytes`);
    const cd = await src.read(cdOffset, cdSize);
    const cv = new DataView(cd.buffer, cd.byteOffset, cd.byteLength);
    const entries = new Map<string, ZipEntry>();
    const utf8 = new TextDecoder();
    let p = 0;
    for (let i = 0; i < count; i++) {
      if (p + 46 > cdSize || cv.getUint32(p, true) !== CENTRAL_SIG) {
        fail(`central directory entry ${i} is damaged`);
      }
      const method = cv.getUint16(p + 10, true);
      let compressedSize = cv.getUint32(p + 20, true);
      let size = cv.getUint32(p + 24, true);
      const nameLen = cv.getUint16(p + 28, true);
      const extraLen = cv.getUint16(p + 30, true);
      const commentLen = cv.getUint16(p + 32, true);
      let localHeaderOffset = cv.getUint32(p + 42, true);
      const end = p + 46 + nameLen + extraLen + commentLen;
      if (end > cdSize) fail(`central directory entry ${i} runs past the directory`);
      const name = utf8.decode(cd.subarray(p + 46, p + 46 + nameLen));
      // The ZIP64 extra field holds, in this order, whichever of the three is 0xffffffff.
      let x = p + 46 + nameLen;
      const xEnd = x + extraLen;
      while (x + 4 <= xEnd) {
        const id = cv.getUint16(x, true);
        const len = cv.getUint16(x + 2, true);
        if (x + 4 + len > xEnd) fail(`entry "${name}": extra field runs past its end`);
        if (id === 1) {
          let q = x + 4;
          const next = (): number => {
            if (q + 8 > x + 4 + len) fail(`entry "${name}": ZIP64 extra field too short`);
            const v = safe(cv.getBigUint64(q, true), src.name);
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = next();
          if (compressedSize === 0xffffffff) compressedSize = next();
          if (localHeaderOffset === 0xffffffff) localHeaderOffset = next();
        }
        x += 4 + len;
      }
      if (method !== 0 && method !== 8) {
        fail(`entry "${name}" uses compression method ${method} (only stored and deflated)`);
      }
      if (method === 0 && size !== compressedSize) {
        fail(`stored entry "${name}" has sizes ${compressedSize} and ${size}`);
      }
      if (localHeaderOffset + 30 + compressedSize > src.size) {
        fail(`entry "${name}" lies beyond the end of the file`);
      }
      if (method === 8 && size > MAX_DEFLATE_RATIO * compressedSize + 64) {
        fail(`entry "${name}" claims ${size} bytes from ${compressedSize} deflated`);
      }
      if (entries.has(name)) fail(`entry "${name}" appears twice`);
      entries.set(name, { name, method, compressedSize, size, localHeaderOffset });
      p = end;
    }
    return new ZipArchive(src, entries);
  }

  /** Where an entry's data starts (after its local header, whose lengths can differ). */
  async #dataOffset(e: ZipEntry): Promise<number> {
    let at = this.#dataOffsets.get(e.name);
    if (at !== undefined) return at;
    const h = await this.#src.read(e.localHeaderOffset, 30);
    const hv = new DataView(h.buffer, h.byteOffset, 30);
    if (hv.getUint32(0, true) !== LOCAL_SIG) {
      throw new WeightsError(`${this.#src.name}: zip entry "${e.name}": bad local header`);
    }
    at = e.localHeaderOffset + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
    if (at + e.compressedSize > this.#src.size) {
      throw new WeightsError(
        `${this.#src.name}: zip entry "${e.name}" lies beyond the end of the file`,
      );
    }
    this.#dataOffsets.set(e.name, at);
    return at;
  }

  /** Reads `length` bytes at `offset` of the (inflated) entry into `into`. */
  async readInto(e: ZipEntry, offset: number, into: Uint8Array): Promise<void> {
    const length = into.byteLength;
    if (offset < 0 || offset + length > e.size) {
      throw new WeightsError(
        `${this.#src.name}: bytes [${offset}, ${
          offset + length
        }) lie beyond zip entry "${e.name}" (${e.size} bytes)`,
      );
    }
    const at = await this.#dataOffset(e);
    if (e.method === 0) return await this.#src.readInto(at + offset, into);
    await this.#inflate(e, at, offset, into);
  }

  /** Reads a whole entry. */
  async read(e: ZipEntry): Promise<Uint8Array> {
    const out = new Uint8Array(e.size);
    await this.readInto(e, 0, out);
    return out;
  }

  /**
   * Inflates a deflated entry, keeping only the bytes [offset, offset + into.length) (so no
   * buffer of the whole entry is made), and checks it inflates to exactly its declared size.
   */
  async #inflate(e: ZipEntry, at: number, offset: number, into: Uint8Array): Promise<void> {
    const ds = new DecompressionStream("deflate-raw");
    const writer = ds.writable.getWriter();
    const src = this.#src;
    const feed = (async () => {
      try {
        const CHUNK = 1 << 22;
        for (let o = 0; o < e.compressedSize; o += CHUNK) {
          await writer.write(await src.read(at + o, Math.min(CHUNK, e.compressedSize - o)));
        }
        await writer.close();
      } catch (err) {
        // Fail the reading side too, or it would wait for ever.
        await writer.abort(err).catch(() => {});
        throw err;
      }
    })();
    feed.catch(() => {}); // awaited below; this only keeps it from being "unhandled" meanwhile
    let done = 0;
    const reader = ds.readable.getReader();
    const fail = (why: string) => new WeightsError(`${src.name}: zip entry "${e.name}": ${why}`);
    try {
      while (true) {
        const { value, done: end } = await reader.read();
        if (end) break;
        if (done + value.byteLength > e.size) throw fail(`inflates to more than ${e.size} bytes`);
        // The part of this chunk inside the range asked for.
        const from = Math.max(offset, done);
        const to = Math.min(offset + into.byteLength, done + value.byteLength);
        if (from < to) into.set(value.subarray(from - done, to - done), from - offset);
        done += value.byteLength;
      }
      await feed;
    } catch (err) {
      await reader.cancel().catch(() => {});
      await feed.catch(() => {});
      if (err instanceof WeightsError) throw err;
      throw fail(`corrupt deflate data (${(err as Error).message})`);
    }
    if (done !== e.size) throw fail(`inflates to ${done} bytes, not ${e.size}`);
  }
}

/** A u64 that must be a safe integer. */
function safe(v: bigint, file: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new WeightsError(`${file}: not a readable zip archive: field value ${v} is too large`);
  }
  return Number(v);
}
