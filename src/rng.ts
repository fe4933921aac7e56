/**
 * Small, fast, seedable pseudo-random number generator used by the samplers.
 *
 * The generator is xoshiro128** (Blackman & Vigna), seeded through SplitMix32 so
 * that any integer seed (including 0) yields a well-mixed, non-zero state. It never
 * touches `Math.random`, so a given seed always produces the same sequence on
 * every platform and backend.
 *
 * @module
 */

import { InputError, OptionError } from "./errors.ts";

/** Largest seed magnitude that is handled exactly (2^53 − 1). */
const MAX_SAFE = Number.MAX_SAFE_INTEGER;

function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/**
 * Returns a fresh random 32-bit seed from the platform's cryptographic RNG
 * (`crypto.getRandomValues`). Used when the caller gives no seed.
 *
 * @example
 * ```ts
 * import { randomSeed } from "./rng.ts";
 * const seed = randomSeed();
 * console.log(Number.isInteger(seed)); // true
 * ```
 */
export function randomSeed(): number {
  const buf = new Uint32Array(1);
  crypto.getRandomValues(buf);
  return buf[0];
}

/**
 * xoshiro128** pseudo-random generator with a 128-bit state.
 *
 * @example
 * ```ts
 * import { Xoshiro128 } from "./rng.ts";
 * const a = new Xoshiro128(42);
 * const b = new Xoshiro128(42);
 * console.log(a.nextUint32() === b.nextUint32()); // true
 * const u = a.nextFloat(); // uniform in [0, 1)
 * ```
 */
export class Xoshiro128 {
  #s0 = 0;
  #s1 = 0;
  #s2 = 0;
  #s3 = 0;

  /**
   * Creates a generator from an integer seed. Seeds are taken modulo 2^53; both the
   * low and the high 32-bit halves influence the state.
   *
   * @param seed A finite integer (negative values are allowed).
   * @throws {OptionError} (a `MambaError`) if `seed` is not a finite integer.
   *
   * @example
   * ```ts
   * import { Xoshiro128 } from "./rng.ts";
   * const rng = new Xoshiro128(1234);
   * ```
   */
  constructor(seed: number) {
    if (!Number.isInteger(seed)) {
      throw new OptionError("seed", `seed must be a finite integer, got ${seed}`);
    }
    const mag = Math.abs(seed) % (MAX_SAFE + 1);
    const lo = mag >>> 0;
    const hi = Math.floor(mag / 0x100000000) >>> 0;
    const st = { s: (lo ^ Math.imul(hi, 0x632be5ab) ^ (seed < 0 ? 0x5bd1e995 : 0)) | 0 };
    this.#s0 = splitmix32(st);
    this.#s1 = splitmix32(st);
    this.#s2 = splitmix32(st);
    this.#s3 = splitmix32(st);
    if ((this.#s0 | this.#s1 | this.#s2 | this.#s3) === 0) this.#s0 = 1;
  }

  /**
   * Creates a generator from a raw 128-bit state given as four 32-bit words
   * (`s[0]..s[3]`, as in the reference C code). The state must not be all zero.
   *
   * @example
   * ```ts
   * import { Xoshiro128 } from "./rng.ts";
   * const rng = Xoshiro128.fromState([1, 2, 3, 4]);
   * console.log(rng.nextUint32()); // 11520
   * ```
   */
  static fromState(state: ArrayLike<number>): Xoshiro128 {
    if (state.length !== 4) throw new InputError("xoshiro128 state must have 4 words");
    const c = new Xoshiro128(0);
    c.#s0 = state[0] | 0;
    c.#s1 = state[1] | 0;
    c.#s2 = state[2] | 0;
    c.#s3 = state[3] | 0;
    if ((c.#s0 | c.#s1 | c.#s2 | c.#s3) === 0) {
      throw new InputError("xoshiro128 state must not be all zero");
    }
    return c;
  }

  /**
   * The current 128-bit state as four 32-bit words, as {@link Xoshiro128.fromState} takes it
   * (to continue the stream elsewhere, e.g. in the GPU sampler).
   *
   * @example
   * ```ts
   * import { Xoshiro128 } from "./rng.ts";
   * const rng = new Xoshiro128(3);
   * const copy = Xoshiro128.fromState(rng.state());
   * console.log(rng.nextUint32() === copy.nextUint32()); // true
   * ```
   */
  state(): Uint32Array {
    return Uint32Array.of(this.#s0, this.#s1, this.#s2, this.#s3);
  }

  /**
   * Next uniformly distributed unsigned 32-bit integer.
   *
   * @example
   * ```ts
   * import { Xoshiro128 } from "./rng.ts";
   * const x = new Xoshiro128(7).nextUint32(); // 0 <= x < 2 ** 32
   * ```
   */
  nextUint32(): number {
    const s0 = this.#s0, s1 = this.#s1, s2 = this.#s2, s3 = this.#s3;
    const r = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    const n2 = s2 ^ s0;
    const n3 = s3 ^ s1;
    this.#s1 = s1 ^ n2;
    this.#s0 = s0 ^ n3;
    this.#s2 = n2 ^ t;
    this.#s3 = rotl(n3, 11);
    return r;
  }

  /**
   * Next uniformly distributed double in `[0, 1)` with 53 random bits.
   *
   * @example
   * ```ts
   * import { Xoshiro128 } from "./rng.ts";
   * const u = new Xoshiro128(7).nextFloat(); // 0 <= u < 1
   * ```
   */
  nextFloat(): number {
    const a = this.nextUint32() >>> 5; // 27 bits
    const b = this.nextUint32() >>> 6; // 26 bits
    return (a * 67108864 + b) / 9007199254740992;
  }

  /**
   * Independent copy of the generator in its current position.
   *
   * @example
   * ```ts
   * import { Xoshiro128 } from "./rng.ts";
   * const a = new Xoshiro128(1);
   * const b = a.clone();
   * console.log(a.nextUint32() === b.nextUint32()); // true
   * ```
   */
  clone(): Xoshiro128 {
    const c = new Xoshiro128(0);
    c.#s0 = this.#s0;
    c.#s1 = this.#s1;
    c.#s2 = this.#s2;
    c.#s3 = this.#s3;
    return c;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
