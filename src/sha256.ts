/**
 * Incremental SHA-256 (FIPS 180-4). Web Crypto digests only whole buffers, and a checkpoint is
 * gigabytes: this hashes a download chunk by chunk as it streams to disk, so the file is checked
 * against the Hub's LFS etag (its sha256) without being read twice or held in memory.
 *
 * @module
 */

/** Round constants: the first 32 bits of the fractional parts of the cube roots of the first 64 primes. */
// deno-fmt-ignore
const K = new Int32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** The initial hash value: the first 32 bits of the fractional parts of the square roots of the first 8 primes. */
// deno-fmt-ignore
const H0 = [
  0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/** A SHA-256 computation fed in pieces: `update` as often as needed, then `digest` once. */
export class Sha256 {
  #h = new Int32Array(H0);
  #w = new Int32Array(64);
  /** The partial 64-byte block not yet compressed. */
  #block = new Uint8Array(64);
  #blockLen = 0;
  /** Bytes hashed so far (a double: exact up to 2^53, far beyond any file). */
  #length = 0;
  #done = false;

  /** Adds `data` to the message. */
  update(data: Uint8Array): this {
    if (this.#done) throw new Error("Sha256: update after digest");
    this.#length += data.length;
    let i = 0;
    if (this.#blockLen > 0) {
      const take = Math.min(64 - this.#blockLen, data.length);
      this.#block.set(data.subarray(0, take), this.#blockLen);
      this.#blockLen += take;
      i = take;
      if (this.#blockLen < 64) return this;
      compress(this.#h, this.#w, this.#block, 0, 64);
      this.#blockLen = 0;
    }
    const whole = (data.length - i) & ~63;
    if (whole > 0) compress(this.#h, this.#w, data, i, whole);
    i += whole;
    if (i < data.length) {
      this.#block.set(data.subarray(i));
      this.#blockLen = data.length - i;
    }
    return this;
  }

  /** The 32-byte hash of everything added. The object cannot be used afterwards. */
  digest(): Uint8Array {
    if (this.#done) throw new Error("Sha256: digest called twice");
    // Padding: a 1 bit, zeros up to 56 mod 64 bytes, then the length in bits, big-endian.
    const bits = this.#length * 8;
    const pad = new Uint8Array(((this.#blockLen + 8) >> 6 << 6) + 64 - this.#blockLen);
    pad[0] = 0x80;
    const view = new DataView(pad.buffer);
    view.setUint32(pad.length - 8, Math.floor(bits / 2 ** 32));
    view.setUint32(pad.length - 4, bits >>> 0);
    this.update(pad);
    this.#done = true;
    const out = new Uint8Array(32);
    const ov = new DataView(out.buffer);
    for (let j = 0; j < 8; j++) ov.setUint32(4 * j, this.#h[j]);
    return out;
  }

  /** The hash as 64 lowercase hex digits (the form of the Hub's LFS etags). */
  hex(): string {
    return Array.from(this.digest(), (b) => b.toString(16).padStart(2, "0")).join("");
  }
}

/**
 * Compresses the `len / 64` blocks of `data` from `pos` into the state `h` (`w`: scratch for the
 * message schedule). One loop over all blocks, all in int32 arithmetic, so that V8 compiles it
 * tight (about as fast as a download arrives).
 */
function compress(h: Int32Array, w: Int32Array, data: Uint8Array, pos: number, len: number): void {
  for (let off = pos, end = pos + len; off < end; off += 64) {
    for (let t = 0; t < 16; t++) {
      const p = off + 4 * t;
      w[t] = (data[p] << 24) | (data[p + 1] << 16) | (data[p + 2] << 8) | data[p + 3];
    }
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15], y = w[t - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[t] = (((w[t - 16] + s0) | 0) + ((w[t - 7] + s1) | 0)) | 0;
    }
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (((((k + S1) | 0) + ch) | 0) + ((K[t] + w[t]) | 0)) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      k = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] = (h[0] + a) | 0;
    h[1] = (h[1] + b) | 0;
    h[2] = (h[2] + c) | 0;
    h[3] = (h[3] + d) | 0;
    h[4] = (h[4] + e) | 0;
    h[5] = (h[5] + f) | 0;
    h[6] = (h[6] + g) | 0;
    h[7] = (h[7] + k) | 0;
  }
}
