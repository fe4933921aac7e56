/**
 * The two committed builds of the kernels (`tools/build_wasm.sh`): the plain one contains no
 * relaxed-SIMD instruction (so it runs on engines without relaxed SIMD), the relaxed one uses
 * `f32x4.relaxed_madd`; the loader's choice (`pickWasmSimd`, `MAMBA_WASM_SIMD`); and both builds
 * give the same linear-layer results up to the rounding that fusing the multiply-add changes.
 *
 * The kernel and oracle suites themselves run on the build the loader picks; `deno task test`
 * runs them a second time with `MAMBA_WASM_SIMD=plain`.
 */

import assert from "node:assert/strict";
import {
  pickWasmSimd,
  relaxedSimdSupported,
  WasmKernels,
  type WasmSimd,
} from "../src/backends/wasm/kernels.ts";
import { rng, uniform } from "./wasm_kernels_util.ts";

/** Reads an unsigned LEB128 at `p.i`. */
function uleb(b: Uint8Array, p: { i: number }): number {
  let r = 0, shift = 0, byte;
  do {
    byte = b[p.i++];
    r += (byte & 0x7f) * 2 ** shift;
    shift += 7;
  } while (byte & 0x80);
  return r;
}

/** Skips a signed LEB128 at `p.i`. */
function skipLeb(b: Uint8Array, p: { i: number }): void {
  while (b[p.i++] & 0x80);
}

/**
 * Counts the `0xfd`-prefixed (SIMD) instructions of every function body by their sub-opcode,
 * decoding each instruction's immediates (the MVP, sign-extension, saturating-conversion,
 * bulk-memory, reference-type and SIMD instructions that LLVM emits). Throws on an opcode it does
 * not know, so that a new kind of instruction cannot slip past uncounted.
 */
function simdOpcodes(wasm: Uint8Array): Map<number, number> {
  const counts = new Map<number, number>();
  const p = { i: 8 };
  while (p.i < wasm.length) {
    const id = wasm[p.i++];
    const size = uleb(wasm, p);
    const end = p.i + size;
    if (id !== 10) {
      p.i = end;
      continue;
    }
    const nbodies = uleb(wasm, p);
    for (let f = 0; f < nbodies; f++) {
      const bodySize = uleb(wasm, p);
      const bodyEnd = p.i + bodySize;
      const nlocals = uleb(wasm, p);
      for (let l = 0; l < nlocals; l++) {
        uleb(wasm, p);
        p.i++; // value type
      }
      while (p.i < bodyEnd) {
        const op = wasm[p.i++];
        if (op === 0x02 || op === 0x03 || op === 0x04) { // block, loop, if: block type
          const t = wasm[p.i];
          if (t === 0x40 || (t >= 0x7b && t <= 0x7f) || t === 0x70 || t === 0x6f) p.i++;
          else skipLeb(wasm, p); // type index (s33)
        } else if (op === 0x0c || op === 0x0d || op === 0x10) { // br, br_if, call
          uleb(wasm, p);
        } else if (op === 0x0e) { // br_table
          const n = uleb(wasm, p);
          for (let j = 0; j <= n; j++) uleb(wasm, p);
        } else if (op === 0x11) { // call_indirect: type, table
          uleb(wasm, p);
          uleb(wasm, p);
        } else if (op === 0x1c) { // select t*
          const n = uleb(wasm, p);
          p.i += n;
        } else if (op >= 0x20 && op <= 0x26) { // local.*, global.*, table.get/set
          uleb(wasm, p);
        } else if (op >= 0x28 && op <= 0x3e) { // loads, stores: memarg
          uleb(wasm, p);
          uleb(wasm, p);
        } else if (op === 0x3f || op === 0x40) { // memory.size, memory.grow
          uleb(wasm, p);
        } else if (op === 0x41 || op === 0x42) { // i32.const, i64.const
          skipLeb(wasm, p);
        } else if (op === 0x43) {
          p.i += 4;
        } else if (op === 0x44) {
          p.i += 8;
        } else if (op === 0xd0) { // ref.null t
          p.i++;
        } else if (op === 0xd2) { // ref.func
          uleb(wasm, p);
        } else if (op === 0xfc) {
          const sub = uleb(wasm, p);
          if (sub <= 7) { /* saturating truncations */ }
          else if (sub === 8) { // memory.init: data index, memory
            uleb(wasm, p);
            uleb(wasm, p);
          } else if (sub === 9 || sub === 11 || sub === 13 || (sub >= 15 && sub <= 17)) {
            uleb(wasm, p); // data.drop, memory.fill, elem.drop, table.grow/size/fill
          } else if (sub === 10 || sub === 12 || sub === 14) { // memory.copy, table.init/copy
            uleb(wasm, p);
            uleb(wasm, p);
          } else throw new Error(`unknown opcode 0xfc ${sub} at byte ${p.i}`);
        } else if (op === 0xfd) {
          const sub = uleb(wasm, p);
          counts.set(sub, (counts.get(sub) ?? 0) + 1);
          if (sub <= 11 || sub === 92 || sub === 93) { // loads, stores, load*_zero: memarg
            uleb(wasm, p);
            uleb(wasm, p);
          } else if (sub === 12 || sub === 13) { // v128.const, i8x16.shuffle
            p.i += 16;
          } else if (sub >= 21 && sub <= 34) { // extract / replace lane
            p.i++;
          } else if (sub >= 84 && sub <= 91) { // load / store lane: memarg, lane
            uleb(wasm, p);
            uleb(wasm, p);
            p.i++;
          } else if (sub > 0x113) throw new Error(`unknown opcode 0xfd ${sub} at byte ${p.i}`);
        } else if (
          !(op <= 0x01 || op === 0x05 || op === 0x0b || op === 0x0f || op === 0x1a ||
            op === 0x1b || (op >= 0x45 && op <= 0xc4) || op === 0xd1)
        ) {
          throw new Error(`unknown opcode 0x${op.toString(16)} at byte ${p.i - 1}`);
        }
      }
      assert.equal(p.i, bodyEnd, `function ${f}: decoding ended off the body's end`);
    }
    p.i = end;
  }
  return counts;
}

/** Relaxed-SIMD sub-opcodes of the 0xfd prefix (0x100 relaxed_swizzle … 0x113 dot_add). */
const isRelaxed = (sub: number) => sub >= 0x100 && sub <= 0x113;
const RELAXED_MADD = 0x105;
const RELAXED_MIN = 0x10d;
const RELAXED_MAX = 0x10e;

async function bytesOf(simd: WasmSimd): Promise<Uint8Array> {
  return await Deno.readFile(WasmKernels.urlOf(simd));
}

Deno.test("wasm builds: the plain build has no relaxed-SIMD instruction, the relaxed one fuses", async () => {
  const plain = simdOpcodes(await bytesOf("plain"));
  const relaxed = simdOpcodes(await bytesOf("relaxed"));
  const relaxedIn = (m: Map<number, number>) => [...m].filter(([s]) => isRelaxed(s));
  assert.deepEqual(relaxedIn(plain), [], "relaxed opcodes in wasm/mamba_kernels.wasm");
  assert.ok((plain.get(0xe6) ?? 0) > 50, "the plain build multiplies f32x4 (decoder sanity)");
  assert.ok(
    (relaxed.get(RELAXED_MADD) ?? 0) >= 8,
    `f32x4.relaxed_madd in the relaxed build: ${relaxed.get(RELAXED_MADD) ?? 0}`,
  );
  // Besides the fused multiply-add only `exp`'s clamps are relaxed (`relaxed_min` / `max`, with
  // the NaN operand second: see `pmin` in simd.rs); no other relaxed instruction slipped in.
  assert.deepEqual(
    relaxedIn(relaxed).map(([s]) => s).sort(),
    [RELAXED_MADD, RELAXED_MIN, RELAXED_MAX],
  );
});

Deno.test("wasm builds: the relaxed-SIMD probe and the loader's choice", () => {
  // Deno's V8 implements relaxed SIMD.
  assert.equal(relaxedSimdSupported(), true);
  assert.equal(pickWasmSimd("plain"), "plain");
  assert.equal(pickWasmSimd("relaxed"), "relaxed");
  const env = Deno.env.get("MAMBA_WASM_SIMD");
  assert.equal(pickWasmSimd(), env === "plain" ? "plain" : "relaxed");
  assert.throws(() => pickWasmSimd("fast" as "auto"), /"auto", "relaxed" or "plain"/);
});

Deno.test("wasm builds: MAMBA_WASM_SIMD forces the build, an explicit choice wins", () => {
  const before = Deno.env.get("MAMBA_WASM_SIMD");
  try {
    Deno.env.set("MAMBA_WASM_SIMD", "plain");
    assert.equal(pickWasmSimd(), "plain");
    assert.equal(pickWasmSimd("auto"), "plain");
    assert.equal(pickWasmSimd("relaxed"), "relaxed");
    Deno.env.set("MAMBA_WASM_SIMD", "relaxed");
    assert.equal(pickWasmSimd(), "relaxed");
    Deno.env.set("MAMBA_WASM_SIMD", "avx");
    assert.throws(() => pickWasmSimd(), /MAMBA_WASM_SIMD must be/);
  } finally {
    if (before === undefined) Deno.env.delete("MAMBA_WASM_SIMD");
    else Deno.env.set("MAMBA_WASM_SIMD", before);
  }
});

Deno.test("wasm builds: plain and relaxed linear layers agree to rounding", async () => {
  const builds = await Promise.all(
    (["plain", "relaxed"] as const).map(async (s) =>
      WasmKernels.create(await WasmKernels.compileBuild(s))
    ),
  );
  const r = rng(15);
  const m = 9, n = 13, k = 203;
  const x = uniform(r, m * k, -1, 1), w = uniform(r, n * k, -1, 1);
  const out: Float32Array[][] = [];
  for (const kk of builds) {
    const xa = kk.allocF32(m * k), wa = kk.allocF32(n * k), y = kk.allocF32(m * n);
    xa.set(x);
    wa.set(w);
    kk.matmulF32(xa.ptr, k, wa.ptr, y.ptr, n, m, n, k);
    const mm = y.toArray();
    kk.matvecF32(wa.ptr, xa.ptr, y.ptr, n, k);
    out.push([mm, y.toArray()]);
  }
  let differ = 0;
  for (let c = 0; c < 2; c++) {
    const [a, b] = [out[0][c], out[1][c]];
    for (let i = 0; i < a.length; i++) {
      // k products of |.| <= 1: each fused step changes the sum by at most one rounding of it.
      assert.ok(Math.abs(a[i] - b[i]) <= k * 2 ** -24 * 16, `${c}:${i}: ${a[i]} vs ${b[i]}`);
      if (a[i] !== b[i]) differ++;
    }
  }
  // Fused and unfused sums of 203 random products differ somewhere: the relaxed build fuses.
  assert.ok(differ > 0, "the relaxed build's results equal the plain build's bit for bit");
});
