/**
 * The byte framing shared by saved states (`InferenceState`, `KvCacheState`): an 8-byte magic, a
 * u32 little-endian JSON header length, the JSON header, padding to 4 bytes, then float32 data.
 * Reading checks the frame against the bytes present before anything else is trusted.
 *
 * @module
 */

import { InputError } from "./errors.ts";

/** Writes a frame of `dataBytes` bytes of data after `header`; `fill` writes the data. */
export function frameState(
  magic: string,
  header: unknown,
  dataBytes: number,
  fill: (data: Float32Array) => void,
): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const dataStart = Math.ceil((12 + json.length) / 4) * 4;
  const out = new Uint8Array(dataStart + dataBytes);
  out.set(new TextEncoder().encode(magic), 0);
  new DataView(out.buffer).setUint32(8, json.length, true);
  out.set(json, 12);
  fill(new Float32Array(out.buffer, dataStart));
  return out;
}

/**
 * Reads a frame's header: checks the magic and the header's bounds, parses the JSON. `bad`
 * makes the error for the caller's later checks too (an {@link InputError} naming `what`).
 */
export function unframeState(
  bytes: Uint8Array,
  magic: string,
  what: string,
): { header: unknown; dataStart: number; bad: (why: string) => InputError } {
  const bad = (why: string) => new InputError(`not a saved ${what}: ${why}`);
  if (!(bytes instanceof Uint8Array)) throw bad("expected a Uint8Array");
  if (bytes.length < 12) throw bad("too short");
  if (new TextDecoder().decode(bytes.subarray(0, 8)) !== magic) throw bad("wrong magic");
  const n = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(8, true);
  if (12 + n > bytes.length) {
    throw bad(`header of ${n} bytes runs beyond the end of the ${bytes.length} bytes`);
  }
  let header: unknown;
  try {
    header = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(12, 12 + n)),
    );
  } catch {
    throw bad("header is not JSON");
  }
  // (not `& ~3`: n may pass 2^31)
  return { header, dataStart: Math.ceil((12 + n) / 4) * 4, bad };
}

/** The frame's data as float32 (an aligned copy). */
export function stateData(bytes: Uint8Array, dataStart: number): Float32Array {
  return new Float32Array(new Uint8Array(bytes.subarray(dataStart)).buffer);
}
