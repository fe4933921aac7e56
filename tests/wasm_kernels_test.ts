/**
 * Tests of the WebAssembly SIMD kernels through their TS wrapper, on the build the loader picks
 * (relaxed SIMD where the engine has it; `MAMBA_WASM_SIMD=plain` for `wasm/mamba_kernels.wasm`,
 * which `deno task test` also runs):
 * every kernel against a plain float64 TS loop on random data, the f16 widening over all 65536
 * bit patterns, the q8 error bound, the math functions' accuracy, and the kernel oracle cases of
 * the shared fixtures (selective_scan_ref, ssd_minimal_discrete).
 */

import assert from "node:assert/strict";
import {
  f16AllFinite,
  Q8_BLOCK,
  SCAN_INTERLEAVED,
  SCAN_SOFTPLUS,
  SSD_UNSCALED_X,
  WASM_ABI_VERSION,
  WasmKernels,
} from "../src/backends/wasm/kernels.ts";
import { readSafetensorsF32, rng, sharedDir, uniform } from "./wasm_kernels_util.ts";

// ----------------------------------------------------------------------------------------------
// helpers

/** Asserts |got - want| <= atol + rtol |want| element-wise (NaN must match NaN). */
function assertClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  atol: number,
  rtol: number,
  what: string,
): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let worst = -1, worstExcess = 0;
  for (let i = 0; i < want.length; i++) {
    const g = got[i], w = want[i];
    if (Number.isNaN(w)) {
      if (!Number.isNaN(g)) {
        throw new assert.AssertionError({ message: `${what}[${i}]: got ${g}, want NaN` });
      }
      continue;
    }
    if (g === w) continue;
    const excess = Math.abs(g - w) - (atol + rtol * Math.abs(w));
    if (!(excess <= 0) && (worst < 0 || excess > worstExcess || Number.isNaN(excess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    throw new assert.AssertionError({
      message: `${what}[${worst}]: got ${got[worst]}, want ${
        want[worst]
      } (atol ${atol}, rtol ${rtol})`,
    });
  }
}

/** Asserts |got[i] - want[i]| <= bound[i] element-wise. */
function assertWithin(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  bound: ArrayLike<number>,
  what: string,
) {
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    if (!(err <= bound[i])) {
      throw new assert.AssertionError({
        message: `${what}[${i}]: got ${got[i]}, want ${want[i]}, |err| ${err} > bound ${bound[i]}`,
      });
    }
  }
}

/** Exact decoder of one IEEE binary16 bit pattern. */
function halfToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Nearest binary16 of a (finite, in-range) number, for test data. */
function numberToHalf(x: number): number {
  const s = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a === 0) return s;
  let e = Math.floor(Math.log2(a));
  if (e < -14) return s | Math.round(a * 2 ** 24);
  let m = Math.round((a / 2 ** e - 1) * 1024);
  if (m === 1024) {
    m = 0;
    e++;
  }
  return s | ((e + 15) << 10) | m;
}

const softplusRef = (x: number) => (x > 20 ? x : Math.log1p(Math.exp(x)));
const siluRef = (x: number) => x / (1 + Math.exp(-x));

async function kernels(): Promise<WasmKernels> {
  return await WasmKernels.create();
}

// ----------------------------------------------------------------------------------------------
// loading, memory

Deno.test("wasm kernels: load, ABI, allocator, views survive growth", async () => {
  const k = await kernels();
  assert.equal(k.exports.abi_version(), WASM_ABI_VERSION);
  const a = k.allocF32(10);
  assert.equal(a.ptr % 64, 0);
  a.set([1, 2, 3]);
  const mark = k.mark();
  const big = k.allocF32(8 << 20); // forces memory.grow
  big.view[big.length - 1] = 7;
  assert.deepEqual([...a.view.subarray(0, 3)], [1, 2, 3]); // re-created view
  assert.equal(big.view[big.length - 1], 7);
  k.reset(mark);
  const b = k.allocF32(4);
  assert.equal(b.ptr, big.ptr); // space reused after reset
  k.reserve(1 << 20);
  const pages = k.memory.buffer.byteLength;
  k.allocF32(1 << 16);
  assert.equal(k.memory.buffer.byteLength, pages); // reserved: no growth
  assert.throws(() => k.alloc(0xffff_fff0), RangeError);
  // A second instance from the same compiled module is independent.
  const k2 = WasmKernels.fromModule(await WasmKernels.compile());
  const c = k2.allocF32(4);
  c.set([3, 1, 4, 1]);
  assert.equal(k2.argmax(c.ptr, 4), 2);
});

Deno.test("wasm kernels: a worker instantiates a module posted to it", async () => {
  const module = await WasmKernels.compile();
  const src = `
    import { WasmKernels } from ${
    JSON.stringify(new URL("../src/backends/wasm/kernels.ts", import.meta.url).href)
  };
    self.onmessage = (e) => {
      const k = WasmKernels.fromModule(e.data);
      const x = k.allocF32(5);
      x.set([0.5, -2, 9, 9, 1]);
      self.postMessage(k.argmax(x.ptr, 5));
    };`;
  const url = URL.createObjectURL(new Blob([src], { type: "text/javascript" }));
  const w = new Worker(url, { type: "module" });
  try {
    const got = await new Promise((resolve, reject) => {
      w.onmessage = (e) => resolve(e.data);
      w.onerror = (e) => reject(new Error(e.message));
      w.postMessage(module);
    });
    assert.equal(got, 2);
  } finally {
    w.terminate();
    URL.revokeObjectURL(url);
  }
});

// ----------------------------------------------------------------------------------------------
// f16

Deno.test("wasm kernels: f16 -> f32 exact for all 65536 bit patterns", async () => {
  const k = await kernels();
  const src = k.allocU16(65536 + 3); // + a non-multiple-of-8 tail
  for (let i = 0; i < 65539; i++) src.view[i] = i & 0xffff;
  const dst = k.allocF32(65539);
  k.f16ToF32(src.ptr, dst.ptr, 65539);
  const got = dst.view;
  const bits = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const want = new Float32Array(1), wantBits = new Uint32Array(want.buffer);
  for (let i = 0; i < 65539; i++) {
    const h = i & 0xffff;
    want[0] = halfToNumber(h);
    if (Number.isNaN(want[0])) {
      assert.ok(Number.isNaN(got[i]), `pattern ${h.toString(16)}: NaN expected`);
    } else {
      assert.equal(bits[i], wantBits[0], `pattern ${h.toString(16)}: ${got[i]} vs ${want[0]}`);
    }
  }
});

Deno.test("wasm kernels: matvec_f16 widens every bit pattern exactly, in every lane, both x paths", async () => {
  const k = await kernels();
  // Rows of K = 8 with the pattern in lane j, zeros elsewhere; x = e_j (scaled path) or
  // 2^20 e_j (|x| >= 2^15: unscaled fallback path).
  const K = 8, N = 65536;
  const w = k.allocU16(N * K), x = k.allocF32(K), y = k.allocF32(N);
  for (const scale of [1, 2 ** 20]) {
    for (let j = 0; j < K; j++) {
      w.view.fill(0);
      for (let r = 0; r < N; r++) w.view[r * K + j] = r;
      x.view.fill(0);
      x.view[j] = scale;
      k.matvecF16(w.ptr, x.ptr, y.ptr, N, K);
      const got = y.view;
      for (let r = 0; r < N; r++) {
        const want = Math.fround(halfToNumber(r) * scale);
        if (Number.isNaN(want)) assert.ok(Number.isNaN(got[r]), `pattern ${r}`);
        else {assert.ok(
            got[r] === want,
            `pattern ${r.toString(16)} lane ${j} x ${scale}: ${got[r]} vs ${want}`,
          );}
      }
    }
  }
  // K = 4 (the 4-wide load) and K = 3 (scalar tail).
  for (const kk of [4, 3]) {
    w.view.fill(0);
    for (let r = 0; r < N; r++) w.view[r * kk + kk - 1] = r;
    x.view.fill(0);
    x.view[kk - 1] = 1;
    k.matvecF16(w.ptr, x.ptr, y.ptr, N, kk);
    for (let r = 0; r < N; r++) {
      const want = Math.fround(halfToNumber(r));
      if (Number.isNaN(want)) assert.ok(Number.isNaN(y.view[r]));
      else assert.ok(y.view[r] === want, `K=${kk} pattern ${r.toString(16)}`);
    }
  }
});

Deno.test("wasm kernels: matvec_f16 with the finite flag widens every finite pattern exactly", async () => {
  const k = await kernels();
  // Every non-inf/NaN pattern, in every lane of K = 8 and in the K = 4 / K = 3 tails; the flag
  // must give the same bits as the checked widening (and accumulate must still work with it).
  const finite = Array.from({ length: 65536 }, (_, h) => h).filter((h) => (h & 0x7c00) !== 0x7c00);
  const N = finite.length;
  assert.equal(f16AllFinite(new Uint16Array(finite)), true);
  assert.equal(f16AllFinite(new Uint16Array([0x3c00, 0x7c00])), false);
  assert.equal(f16AllFinite(new Uint16Array([0xfe00])), false);
  for (const kk of [8, 4, 3]) {
    const w = k.allocU16(N * kk), x = k.allocF32(kk), y = k.allocF32(N);
    for (let j = 0; j < kk; j++) {
      w.view.fill(0);
      for (let r = 0; r < N; r++) w.view[r * kk + j] = finite[r];
      x.view.fill(0);
      x.view[j] = 1;
      y.view.fill(0.5);
      k.matvecF16(w.ptr, x.ptr, y.ptr, N, kk, 0, N, true, true);
      for (let r = 0; r < N; r++) {
        const want = Math.fround(Math.fround(halfToNumber(finite[r])) + 0.5);
        assert.ok(y.view[r] === want, `K=${kk} lane ${j} pattern ${finite[r].toString(16)}`);
      }
    }
  }
});

Deno.test("wasm kernels: matvec_f16 with the finite flag vs f64 (row lengths, large x)", async () => {
  const k = await kernels();
  // Rows of several lengths (the 32-, 8- and 4-wide steps and the tail), x small (pre-scaled
  // path) and large (|x| >= 2^15: fallback). Each result within the f32 summation bound of the
  // exact dot product of the same halves.
  const N = 37;
  for (const kk of [8, 16, 24, 40, 776, 1536, 12, 13]) {
    for (const big of [false, true]) {
      const w = k.allocU16(N * kk), x = k.allocF32(kk), y = k.allocF32(N);
      for (let i = 0; i < N * kk; i++) w.view[i] = numberToHalf((Math.random() * 2 - 1) * 3);
      for (let i = 0; i < kk; i++) x.view[i] = (Math.random() * 2 - 1) * (big ? 1e5 : 1);
      y.view.fill(0.25);
      k.matvecF16(w.ptr, x.ptr, y.ptr, N, kk, 0, N, true, true);
      for (let r = 0; r < N; r++) {
        let want = 0.25, mag = 0.25;
        for (let i = 0; i < kk; i++) {
          const p = halfToNumber(w.view[r * kk + i]) * x.view[i];
          want += p;
          mag += Math.abs(p);
        }
        const bound = (kk + 4) * 2 ** -23 * mag;
        assert.ok(
          Math.abs(y.view[r] - want) <= bound,
          `K=${kk} big=${big} row ${r}: ${y.view[r]} vs ${want} (bound ${bound})`,
        );
      }
    }
  }
});

// ----------------------------------------------------------------------------------------------
// math functions

Deno.test("wasm kernels: exp, log1p, softplus, silu accuracy", async () => {
  const k = await kernels();
  const n = 200_003;
  const buf = k.allocF32(n), out = k.allocF32(n);
  const maxRel = (
    f: (x: number) => number,
    lo: number,
    hi: number,
    run: () => void,
    minAbs = 1e-37,
  ) => {
    const x = buf.view;
    for (let i = 0; i < n; i++) x[i] = Math.fround(lo + (hi - lo) * (i / (n - 1)));
    run();
    let worst = 0, at = 0;
    const o = out.view;
    for (let i = 0; i < n; i++) {
      const want = f(x[i]);
      if (Math.abs(want) < minAbs) {
        assert.ok(
          Math.abs(o[i] - want) <= 2e-45 + 1e-6 * minAbs,
          `tiny ${x[i]}: ${o[i]} vs ${want}`,
        );
        continue;
      }
      const rel = Math.abs(o[i] - want) / Math.abs(want);
      if (rel > worst || Number.isNaN(rel)) {
        worst = rel;
        at = x[i];
      }
    }
    return { worst, at };
  };
  const e1 = maxRel(Math.exp, -87, 88.7, () => k.exp(buf.ptr, out.ptr, n));
  assert.ok(e1.worst < 1.5e-7, `exp rel err ${e1.worst} at ${e1.at}`);
  const e2 = maxRel(Math.exp, -0.5, 0.5, () => k.exp(buf.ptr, out.ptr, n));
  assert.ok(e2.worst < 1.5e-7, `exp rel err ${e2.worst} at ${e2.at}`);
  const l1 = maxRel(Math.log1p, -0.999, 20, () => k.log1p(buf.ptr, out.ptr, n));
  assert.ok(l1.worst < 2.5e-7, `log1p rel err ${l1.worst} at ${l1.at}`);
  const l2 = maxRel(Math.log1p, -1e-6, 1e-6, () => k.log1p(buf.ptr, out.ptr, n), 1e-300);
  assert.ok(l2.worst < 2.5e-7, `log1p (tiny) rel err ${l2.worst} at ${l2.at}`);
  const l3 = maxRel(Math.log1p, 20, 1e30, () => k.log1p(buf.ptr, out.ptr, n));
  assert.ok(l3.worst < 2.5e-7, `log1p (large) rel err ${l3.worst} at ${l3.at}`);
  const s1 = maxRel(softplusRef, -60, 40, () => k.softplus(buf.ptr, out.ptr, n), 1e-300);
  assert.ok(s1.worst < 3e-7, `softplus rel err ${s1.worst} at ${s1.at}`);
  const s2 = maxRel(siluRef, -80, 80, () => k.silu(buf.ptr, out.ptr, n), 1e-30);
  assert.ok(s2.worst < 3e-7, `silu rel err ${s2.worst} at ${s2.at}`);

  // Special values.
  const sp = [0, -0, 1, -1, 88.8, 100, -104, -1000, Infinity, -Infinity, NaN, 20, 20.000002];
  buf.set(sp);
  k.exp(buf.ptr, out.ptr, sp.length);
  const ex = Array.from(out.view.subarray(0, sp.length));
  assert.deepEqual(ex.slice(0, 2), [1, 1]);
  assert.equal(ex[4], Infinity);
  assert.equal(ex[5], Infinity);
  assert.equal(ex[6], 0);
  assert.equal(ex[7], 0);
  assert.equal(ex[8], Infinity);
  assert.equal(ex[9], 0);
  assert.ok(Number.isNaN(ex[10]));
  k.softplus(buf.ptr, out.ptr, sp.length);
  const so = Array.from(out.view.subarray(0, sp.length));
  assert.equal(so[5], 100);
  assert.equal(so[7], 0);
  assert.equal(so[8], Infinity);
  assert.equal(so[9], 0);
  assert.ok(Number.isNaN(so[10]));
  assert.ok(Math.abs(so[11] - softplusRef(20)) < 1e-5);
  assert.equal(so[12], Math.fround(20.000002));
  k.silu(buf.ptr, out.ptr, sp.length);
  const si = Array.from(out.view.subarray(0, sp.length));
  assert.equal(si[0], 0);
  assert.equal(si[7], -0);
  assert.equal(si[8], Infinity);
  assert.ok(Number.isNaN(si[9])); // -inf * sigmoid(-inf) = -inf * 0, as in PyTorch
});

// ----------------------------------------------------------------------------------------------
// linear layers

/** float64 reference y = W x and the bound 1e-5 Σ|W x| + tiny per row. */
function matvecRef(w: ArrayLike<number>, x: ArrayLike<number>, n: number, kk: number) {
  const y = new Float64Array(n), bound = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    let s = 0, a = 0;
    for (let i = 0; i < kk; i++) {
      s += w[r * kk + i] * x[i];
      a += Math.abs(w[r * kk + i] * x[i]);
    }
    y[r] = s;
    bound[r] = 1e-5 * a + 1e-30;
  }
  return { y, bound };
}

/**
 * Adds to `bound` the error of the q8 kernels' integer path (K <= 32768): x rounded per full block
 * of 32 to 16-bit fixed point, `|x - xq·s| <= s/2` with `s = max|x| / 32767` of the block, so
 * row r is off by at most `Σ_blocks s/2 · Σ_block |w|` beyond the f32 rounding.
 */
function addQ8XRounding(
  bound: Float64Array,
  w: ArrayLike<number>,
  x: ArrayLike<number>,
  n: number,
  kk: number,
) {
  if (kk > 32768) return;
  for (let b = 0; b + Q8_BLOCK <= kk; b += Q8_BLOCK) {
    let amax = 0;
    for (let i = b; i < b + Q8_BLOCK; i++) amax = Math.max(amax, Math.abs(x[i]));
    const half = amax / 32767 / 2;
    for (let r = 0; r < n; r++) {
      let sw = 0;
      for (let i = b; i < b + Q8_BLOCK; i++) sw += Math.abs(w[r * kk + i]);
      bound[r] += half * sw;
    }
  }
}

const SHAPES: [number, number][] = [
  [1, 1],
  [5, 7],
  [13, 48],
  [9, 100],
  [37, 1536],
  [8, 35],
  [6, 3],
  [768, 64],
];

Deno.test("wasm kernels: matvec_f32 / matvec_f16 vs reference, row ranges, accumulate", async () => {
  const k = await kernels();
  const r = rng(1);
  for (const [n, kk] of SHAPES) {
    const mark = k.mark();
    const wf = uniform(r, n * kk);
    const wh = new Uint16Array(n * kk).map((_, i) => numberToHalf(wf[i]));
    const whf = Array.from(wh, halfToNumber);
    const x = k.upload(uniform(r, kk, -2, 2));
    const w32 = k.upload(wf), w16 = k.upload(wh);
    const y = k.allocF32(n);
    const ref32 = matvecRef(wf, x.view, n, kk), ref16 = matvecRef(whf, x.view, n, kk);

    k.matvecF32(w32.ptr, x.ptr, y.ptr, n, kk);
    assertWithin(y.view, ref32.y, ref32.bound, `f32 ${n}x${kk}`);
    k.matvecF16(w16.ptr, x.ptr, y.ptr, n, kk);
    assertWithin(y.view, ref16.y, ref16.bound, `f16 ${n}x${kk}`);

    // Split into row ranges + accumulate onto a bias.
    const bias = uniform(r, n);
    y.set(bias);
    const cut = Math.floor(n / 3);
    k.matvecF32(w32.ptr, x.ptr, y.ptr, n, kk, 0, cut, true);
    k.matvecF32(w32.ptr, x.ptr, y.ptr, n, kk, cut, n + 5, true); // row_end clamps to n
    assertWithin(
      y.view,
      ref32.y.map((v, i) => v + bias[i]),
      ref32.bound.map((b, i) => b + 1e-7 * Math.abs(bias[i])),
      "f32 acc",
    );
    y.set(bias);
    k.matvecF16(w16.ptr, x.ptr, y.ptr, n, kk, cut, n, true);
    const want16 = ref16.y.map((v, i) => (i >= cut ? v + bias[i] : bias[i]));
    assertWithin(
      y.view,
      want16,
      ref16.bound.map((b, i) => b + 1e-7 * Math.abs(bias[i])),
      "f16 range",
    );
    k.reset(mark);
  }
});

Deno.test("wasm kernels: quantize_q8 error bound and matvec_q8 vs dequantized reference", async () => {
  const k = await kernels();
  const r = rng(2);
  // 197 and 224: 6 and 7 full blocks (the GEMV goes four blocks at a time, then one by one).
  const more: [number, number][] = [[4, 64], [3, 33], [5, 197], [2, 224]];
  for (const [n, kk] of [...SHAPES, ...more]) {
    const mark = k.mark();
    const wf = uniform(r, n * kk);
    if (n * kk > 4) wf[3] = 0; // a zero and an all-zero block
    const w = k.upload(wf);
    const nb = Math.ceil(kk / Q8_BLOCK);
    const q = k.allocQ8(n, kk);
    k.quantizeQ8(w.ptr, q.q.ptr, q.scales.ptr, n, kk);
    const qv = q.q.view, sv = q.scales.view;
    const deq = new Float64Array(n * kk);
    for (let row = 0; row < n; row++) {
      for (let i = 0; i < kk; i++) {
        const s = sv[row * nb + Math.floor(i / Q8_BLOCK)];
        const qi = qv[row * kk + i];
        assert.ok(qi >= -127 && qi <= 127);
        deq[row * kk + i] = qi * s;
        // |w - q s| <= s / 2 (+ rounding of s itself)
        assert.ok(
          Math.abs(wf[row * kk + i] - qi * s) <= s * 0.5 * (1 + 1e-6) + 1e-30,
          `q8 bound ${row},${i}`,
        );
      }
      for (let b = 0; b < nb; b++) {
        let amax = 0;
        for (let i = b * Q8_BLOCK; i < Math.min(kk, (b + 1) * Q8_BLOCK); i++) {
          amax = Math.max(amax, Math.abs(wf[row * kk + i]));
        }
        assert.ok(Math.abs(sv[row * nb + b] - amax / 127) <= 1e-7 * amax, "scale = max|w| / 127");
      }
    }
    const xf = uniform(r, kk, -2, 2);
    const x = k.upload(xf);
    const y = k.allocF32(n);
    const ref = matvecRef(deq, xf, n, kk);
    // x is rounded per block of 32 to 16 bits: |Δx| <= max|x_block| / 65534.
    const bound = new Float64Array(n);
    for (let row = 0; row < n; row++) {
      let b = ref.bound[row];
      for (let blk = 0; blk < nb; blk++) {
        let xm = 0, wa = 0;
        for (let i = blk * Q8_BLOCK; i < Math.min(kk, (blk + 1) * Q8_BLOCK); i++) {
          xm = Math.max(xm, Math.abs(xf[i]));
          wa += Math.abs(deq[row * kk + i]);
        }
        b += (wa * xm) / 65534 * 1.001;
      }
      bound[row] = b;
    }
    k.matvecQ8(q.q.ptr, q.scales.ptr, x.ptr, y.ptr, n, kk);
    assertWithin(y.view, ref.y, bound, `q8 ${n}x${kk}`);
    // Against the original f32 weights the error stays within the quantization bound.
    const ref32 = matvecRef(wf, xf, n, kk);
    const sv2 = q.scales.view; // (earlier views may be detached by memory growth)
    const qBound = ref32.bound.map((b, row) => {
      let e = bound[row];
      for (let i = 0; i < kk; i++) {
        e += (sv2[row * nb + Math.floor(i / Q8_BLOCK)] / 2) * Math.abs(xf[i]);
      }
      return b + e;
    });
    assertWithin(y.view, ref32.y, qBound, `q8 vs f32 ${n}x${kk}`);
    // Row range + accumulate.
    y.view.fill(1);
    k.matvecQ8(q.q.ptr, q.scales.ptr, x.ptr, y.ptr, n, kk, 1, n, true);
    assertWithin(
      y.view,
      ref.y.map((v, i) => (i === 0 ? 1 : v + 1)),
      bound.map((b) => b + 1e-7),
      "q8 acc",
    );
    k.reset(mark);
  }
});

Deno.test("wasm kernels: matmul_f32/f16/q8 equal the matvec references (strides, ranges, tails)", async () => {
  const k = await kernels();
  const r = rng(3);
  const cases: [number, number, number][] = [
    [1, 5, 7],
    [3, 13, 48],
    [4, 8, 16],
    [5, 9, 100],
    [67, 10, 40], // crosses the q8 64-token block; f32/f16: one block, a partial token panel
    [6, 7, 1100], // crosses the 512 and 1024 K chunks
    [9, 33, 64],
    [3, 5, 7], // K < 32: q8 has no full block
    [3, 5, 33000], // K > 32768: q8 and f16 leave their integer / pre-scaled paths
    [131, 9, 40], // f32/f16: two token blocks (of at most 125 or 126 tokens)
  ];
  for (const [m, n, kk] of cases) {
    const mark = k.mark();
    const ldx = kk + 3, ldy = n + 2;
    const xf = uniform(r, m * ldx, -2, 2);
    const wf = uniform(r, n * kk);
    const wh = new Uint16Array(n * kk).map((_, i) => numberToHalf(wf[i]));
    const x = k.upload(xf), w32 = k.upload(wf), w16 = k.upload(wh);
    const q = k.allocQ8(n, kk);
    k.quantizeQ8(w32.ptr, q.q.ptr, q.scales.ptr, n, kk);
    const nb = Math.ceil(kk / Q8_BLOCK);
    const deq = Array.from(
      q.q.view,
      (v, i) => v * q.scales.view[Math.floor(i / kk) * nb + Math.floor((i % kk) / Q8_BLOCK)],
    );
    const y = k.allocF32(m * ldy);
    const variants: [string, ArrayLike<number>, () => void, () => void][] = [
      ["f32", wf, () => k.matmulF32(x.ptr, ldx, w32.ptr, y.ptr, ldy, m, n, kk), () => {
        k.matmulF32(x.ptr, ldx, w32.ptr, y.ptr, ldy, m, n, kk, 0, 3, true);
        k.matmulF32(x.ptr, ldx, w32.ptr, y.ptr, ldy, m, n, kk, 3, n, true);
      }],
      [
        "f16",
        Array.from(wh, halfToNumber),
        () => k.matmulF16(x.ptr, ldx, w16.ptr, y.ptr, ldy, m, n, kk),
        () => {
          k.matmulF16(x.ptr, ldx, w16.ptr, y.ptr, ldy, m, n, kk, 0, 3, true);
          k.matmulF16(x.ptr, ldx, w16.ptr, y.ptr, ldy, m, n, kk, 3, n, true);
        },
      ],
      ["q8", deq, () => k.matmulQ8(x.ptr, ldx, q.q.ptr, q.scales.ptr, y.ptr, ldy, m, n, kk), () => {
        k.matmulQ8(x.ptr, ldx, q.q.ptr, q.scales.ptr, y.ptr, ldy, m, n, kk, 0, 3, true);
        k.matmulQ8(x.ptr, ldx, q.q.ptr, q.scales.ptr, y.ptr, ldy, m, n, kk, 3, n, true);
      }],
    ];
    for (const [name, wref, run, runAcc] of variants) {
      const sentinel = 12345;
      y.view.fill(sentinel);
      run();
      const yv = y.view;
      for (let t = 0; t < m; t++) {
        const xt = xf.subarray(t * ldx, t * ldx + kk);
        const ref = matvecRef(wref, xt, n, kk);
        if (name === "q8") addQ8XRounding(ref.bound, wref, xt, n, kk);
        assertWithin(
          yv.subarray(t * ldy, t * ldy + n),
          ref.y,
          ref.bound,
          `matmul ${name} ${m}x${n}x${kk} token ${t}`,
        );
        assert.equal(yv[t * ldy + n], sentinel, "padding of y untouched");
      }
      y.view.fill(0.5);
      runAcc();
      for (let t = 0; t < m; t++) {
        const xt = xf.subarray(t * ldx, t * ldx + kk);
        const ref = matvecRef(wref, xt, n, kk);
        if (name === "q8") addQ8XRounding(ref.bound, wref, xt, n, kk);
        assertWithin(
          y.view.subarray(t * ldy, t * ldy + n),
          ref.y.map((v) => v + 0.5),
          ref.bound.map((b) => b + 1e-7),
          `matmul ${name} acc token ${t}`,
        );
      }
    }
    k.reset(mark);
  }
});

// ----------------------------------------------------------------------------------------------
// norms, element-wise

function rmsRef(x: ArrayLike<number>, w: ArrayLike<number>, eps: number): number[] {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return Array.from(x, (v, i) => v * r * w[i]);
}

function lnRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  b: ArrayLike<number> | null,
  eps: number,
): number[] {
  let mean = 0;
  for (let i = 0; i < x.length; i++) mean += x[i];
  mean /= x.length;
  let v = 0;
  for (let i = 0; i < x.length; i++) v += (x[i] - mean) ** 2;
  const r = 1 / Math.sqrt(v / x.length + eps);
  return Array.from(x, (xi, i) => (xi - mean) * r * w[i] + (b ? b[i] : 0));
}

Deno.test("wasm kernels: rmsnorm, layernorm, add_*norm, gated_rmsnorm", async () => {
  const k = await kernels();
  const r = rng(4);
  const eps = 1e-5;
  for (const n of [1, 7, 64, 768, 1539]) {
    const mark = k.mark();
    const rows = 3;
    const xf = uniform(r, rows * n, -3, 3), wf = uniform(r, n, 0.5, 1.5), bf = uniform(r, n);
    const x = k.upload(xf), w = k.upload(wf), b = k.upload(bf), out = k.allocF32(rows * n);
    const rowsOf = (a: ArrayLike<number>, i: number) =>
      Array.prototype.slice.call(a, i * n, (i + 1) * n) as number[];
    k.rmsnorm(x.ptr, w.ptr, out.ptr, n, eps, rows);
    assertClose(
      out.view,
      Array.from({ length: rows }, (_, i) => rmsRef(rowsOf(xf, i), wf, eps)).flat(),
      1e-6,
      1e-5,
      `rmsnorm ${n}`,
    );
    k.layernorm(x.ptr, w.ptr, b.ptr, out.ptr, n, eps, rows);
    assertClose(
      out.view,
      Array.from({ length: rows }, (_, i) => lnRef(rowsOf(xf, i), wf, bf, eps)).flat(),
      1e-5,
      1e-5,
      `layernorm ${n}`,
    );
    k.layernorm(x.ptr, w.ptr, 0, out.ptr, n, eps, rows);
    assertClose(
      out.view,
      Array.from({ length: rows }, (_, i) => lnRef(rowsOf(xf, i), wf, null, eps)).flat(),
      1e-5,
      1e-5,
      `layernorm nobias ${n}`,
    );

    // Fused residual add + norm.
    const resF = uniform(r, rows * n), res = k.upload(resF);
    const sum = Array.from(resF, (v, i) => Math.fround(v + xf[i]));
    k.addRmsnorm(res.ptr, x.ptr, w.ptr, out.ptr, n, eps, rows);
    assert.deepEqual(Array.from(res.view), sum);
    assertClose(
      out.view,
      Array.from({ length: rows }, (_, i) => rmsRef(rowsOf(sum, i), wf, eps)).flat(),
      1e-6,
      1e-5,
      `add_rmsnorm ${n}`,
    );
    res.set(resF);
    k.addLayernorm(res.ptr, x.ptr, w.ptr, b.ptr, out.ptr, n, eps, rows);
    assert.deepEqual(Array.from(res.view), sum);
    assertClose(
      out.view,
      Array.from({ length: rows }, (_, i) => lnRef(rowsOf(sum, i), wf, bf, eps)).flat(),
      1e-5,
      1e-5,
      `add_layernorm ${n}`,
    );

    // Gated RMSNorm, z strided, groups.
    const ldz = n + 5;
    const zf = uniform(r, rows * ldz, -4, 4), z = k.upload(zf);
    for (const groupSize of [n, Math.max(1, Math.floor(n / 3))]) {
      for (const before of [false, true]) {
        k.gatedRmsnorm(x.ptr, z.ptr, w.ptr, out.ptr, n, groupSize, eps, rows, ldz, before);
        const want: number[] = [];
        for (let i = 0; i < rows; i++) {
          const yr = rowsOf(xf, i),
            g = Array.from({ length: n }, (_, j) => siluRef(zf[i * ldz + j]));
          const pre = before ? yr : yr.map((v, j) => v * g[j]);
          for (let s = 0; s < n; s += groupSize) {
            const e = Math.min(n, s + groupSize);
            const o = rmsRef(pre.slice(s, e), wf.slice(s, e), eps);
            want.push(...(before ? o.map((v, j) => v * g[s + j]) : o));
          }
        }
        assertClose(
          out.view,
          want,
          1e-6,
          2e-5,
          `gated_rmsnorm n=${n} gs=${groupSize} before=${before}`,
        );
      }
    }
    k.reset(mark);
  }
});

Deno.test("wasm kernels: silu, mul_silu, softplus, add (tails, aliasing)", async () => {
  const k = await kernels();
  const r = rng(5);
  for (const n of [1, 3, 4, 5, 31, 1000]) {
    const mark = k.mark();
    const xf = uniform(r, n, -30, 30), zf = uniform(r, n, -8, 8);
    const x = k.upload(xf), z = k.upload(zf), out = k.allocF32(n);
    k.silu(x.ptr, out.ptr, n);
    assertClose(out.view, Array.from(xf, siluRef), 1e-30, 1e-6, "silu");
    k.softplus(x.ptr, out.ptr, n);
    assertClose(out.view, Array.from(xf, softplusRef), 1e-30, 1e-6, "softplus");
    k.mulSilu(x.ptr, z.ptr, out.ptr, n);
    assertClose(out.view, Array.from(xf, (v, i) => v * siluRef(zf[i])), 1e-30, 1e-6, "mul_silu");
    k.add(x.ptr, z.ptr, out.ptr, n);
    assert.deepEqual(Array.from(out.view), Array.from(xf, (v, i) => Math.fround(v + zf[i])));
    k.silu(x.ptr, x.ptr, n); // in place
    assertClose(x.view, Array.from(xf, siluRef), 1e-30, 1e-6, "silu in place");
    k.reset(mark);
  }
});

Deno.test("wasm kernels: argmax and top_k", async () => {
  const k = await kernels();
  const r = rng(6);
  const x = k.allocF32(50280), idx = k.allocI32(64);
  for (const n of [1, 2, 3, 4, 5, 7, 8, 9, 50280]) {
    const v = uniform(r, n);
    x.set(v);
    let best = 0;
    for (let i = 1; i < n; i++) if (v[i] > v[best]) best = i;
    assert.equal(k.argmax(x.ptr, n), best, `argmax n=${n}`);
    for (const kk of [1, 5, 40]) {
      const got = k.topK(x.ptr, n, kk, idx.ptr);
      const want = Array.from(v.keys()).sort((a, b) => v[b] - v[a] || a - b).slice(0, kk);
      assert.equal(got, want.length);
      assert.deepEqual(Array.from(idx.view.subarray(0, got)), want, `top_k n=${n} k=${kk}`);
    }
  }
  // Ties -> first index; NaN ignored; all -inf -> 0; n = 0 -> -1.
  x.set([1, 3, 3, 2, 3, 0, 3, 3, 3]);
  assert.equal(k.argmax(x.ptr, 9), 1);
  x.set([NaN, 1, NaN, 2, NaN, NaN, 0.5]);
  assert.equal(k.argmax(x.ptr, 7), 3);
  x.set([-Infinity, -Infinity, -Infinity, -Infinity, -Infinity]);
  assert.equal(k.argmax(x.ptr, 5), 0);
  assert.equal(k.argmax(x.ptr, 0), -1);
  x.set([2, 5, 5, NaN, 1, 5]);
  assert.equal(k.topK(x.ptr, 6, 4, idx.ptr), 4);
  assert.deepEqual(Array.from(idx.view.subarray(0, 4)), [1, 2, 5, 0]);
  assert.equal(k.topK(x.ptr, 6, 0, idx.ptr), 0);
});

// ----------------------------------------------------------------------------------------------
// conv1d

Deno.test("wasm kernels: conv1d seq and step vs reference (SIMD and generic paths)", async () => {
  const k = await kernels();
  const r = rng(7);
  for (const [C, dConv, L] of [[10, 4, 7], [13, 4, 2], [8, 3, 5], [6, 4, 1], [5, 2, 9]]) {
    for (const silu of [false, true]) {
      for (const withBias of [true, false]) {
        const mark = k.mark();
        const ldx = C + 3, ldo = C + 1;
        const xf = uniform(r, L * ldx), wf = uniform(r, C * dConv), bf = uniform(r, C);
        const st0 = uniform(r, C * dConv);
        const x = k.upload(xf), w = k.upload(wf), b = k.upload(bf);
        const state = k.upload(st0), out = k.allocF32(L * ldo);
        // reference
        const want = new Float64Array(L * ldo), wantState = Float64Array.from(st0);
        for (let c = 0; c < C; c++) {
          const win = Array.from(st0.subarray(c * dConv, (c + 1) * dConv));
          for (let t = 0; t < L; t++) {
            win.shift();
            win.push(xf[t * ldx + c]);
            let o = withBias ? bf[c] : 0;
            for (let j = 0; j < dConv; j++) o += wf[c * dConv + j] * win[j];
            want[t * ldo + c] = silu ? siluRef(o) : o;
          }
          wantState.set(win, c * dConv);
        }
        // whole range at once, or split in two channel ranges
        const cut = Math.min(C, 5);
        k.conv1dSeq(
          state.ptr,
          x.ptr,
          ldx,
          w.ptr,
          withBias ? b.ptr : 0,
          out.ptr,
          ldo,
          L,
          dConv,
          0,
          cut,
          silu,
        );
        k.conv1dSeq(
          state.ptr,
          x.ptr,
          ldx,
          w.ptr,
          withBias ? b.ptr : 0,
          out.ptr,
          ldo,
          L,
          dConv,
          cut,
          C,
          silu,
        );
        const o = out.view;
        for (let t = 0; t < L; t++) {
          assertClose(
            o.subarray(t * ldo, t * ldo + C),
            want.subarray(t * ldo, t * ldo + C),
            1e-6,
            1e-5,
            `conv seq C=${C} d=${dConv} t=${t}`,
          );
        }
        assertClose(state.view, wantState, 0, 0, "conv state after seq");
        // step by step from the same initial state
        state.set(st0);
        const xs = k.allocF32(C), os = k.allocF32(C);
        for (let t = 0; t < L; t++) {
          xs.set(xf.subarray(t * ldx, t * ldx + C));
          k.conv1dStep(state.ptr, xs.ptr, w.ptr, withBias ? b.ptr : 0, os.ptr, dConv, 0, C, silu);
          assertClose(os.view, want.subarray(t * ldo, t * ldo + C), 1e-6, 1e-5, `conv step t=${t}`);
        }
        assertClose(state.view, wantState, 0, 0, "conv state after steps");
        // in place: out = x (same stride)
        state.set(st0);
        const inPlace = k.upload(xf);
        k.conv1dSeq(
          state.ptr,
          inPlace.ptr,
          ldx,
          w.ptr,
          withBias ? b.ptr : 0,
          inPlace.ptr,
          ldx,
          L,
          dConv,
          0,
          C,
          silu,
        );
        for (let t = 0; t < L; t++) {
          assertClose(
            inPlace.view.subarray(t * ldx, t * ldx + C),
            want.subarray(t * ldo, t * ldo + C),
            1e-6,
            1e-5,
            `conv in place t=${t}`,
          );
        }
        k.reset(mark);
      }
    }
  }
});

// ----------------------------------------------------------------------------------------------
// Mamba-1 selective scan

interface ScanCase {
  dim: number;
  n: number;
  L: number;
  ngroups: number;
  hasD: boolean;
  hasZ: boolean;
  hasBias: boolean;
  softplus: boolean;
}

/** float64 reference of the selective scan on token-major buffers (same layouts as the kernel). */
function scanRef(
  c: ScanCase,
  h0: Float32Array,
  u: Float32Array,
  ldu: number,
  delta: Float32Array,
  A: Float32Array,
  B: Float32Array,
  C: Float32Array,
  ldbc: number,
  D: Float32Array,
  z: Float32Array,
  bias: Float32Array,
) {
  const { dim, n, L, ngroups } = c;
  const h = Float64Array.from(h0);
  const y = new Float64Array(L * dim);
  const cpg = dim / ngroups;
  for (let t = 0; t < L; t++) {
    for (let ch = 0; ch < dim; ch++) {
      let d = delta[t * dim + ch] + (c.hasBias ? bias[ch] : 0);
      if (c.softplus) d = softplusRef(d);
      const uu = u[t * ldu + ch];
      const g = Math.floor(ch / cpg);
      let acc = 0;
      for (let s = 0; s < n; s++) {
        const hi = ch * n + s;
        h[hi] = Math.exp(d * A[hi]) * h[hi] + d * uu * B[t * ldbc + g * n + s];
        acc += h[hi] * C[t * ldbc + g * n + s];
      }
      if (c.hasD) acc += D[ch] * uu;
      if (c.hasZ) acc *= siluRef(z[t * dim + ch]);
      y[t * dim + ch] = acc;
    }
  }
  return { h, y };
}

Deno.test("wasm kernels: selective_scan seq / step / channel ranges vs reference", async () => {
  const k = await kernels();
  const r = rng(8);
  const cases: ScanCase[] = [
    { dim: 10, n: 16, L: 9, ngroups: 1, hasD: true, hasZ: true, hasBias: true, softplus: true },
    { dim: 7, n: 5, L: 4, ngroups: 1, hasD: false, hasZ: false, hasBias: false, softplus: false },
    { dim: 12, n: 8, L: 6, ngroups: 3, hasD: true, hasZ: false, hasBias: true, softplus: true },
    { dim: 9, n: 3, L: 33, ngroups: 1, hasD: true, hasZ: true, hasBias: false, softplus: true },
    { dim: 64, n: 16, L: 17, ngroups: 1, hasD: true, hasZ: true, hasBias: true, softplus: true },
    // more than one block of 64 channel groups in the one-token path, a partial last group
    { dim: 266, n: 4, L: 3, ngroups: 1, hasD: true, hasZ: true, hasBias: true, softplus: true },
  ];
  for (const c of cases) {
    const { dim, n, L, ngroups } = c;
    const mark = k.mark();
    const ldu = dim + 2, ldbc = ngroups * n + 3;
    const uF = uniform(r, L * ldu), dF = uniform(r, L * dim, -3, 1);
    const aF = uniform(r, dim * n, -4, -0.1), bF = uniform(r, L * ldbc), cF = uniform(r, L * ldbc);
    const DF = uniform(r, dim), zF = uniform(r, L * dim, -3, 3), biasF = uniform(r, dim, -1, 1);
    const h0 = uniform(r, dim * n);
    const want = scanRef(c, h0, uF, ldu, dF, aF, bF, cF, ldbc, DF, zF, biasF);
    const u = k.upload(uF), de = k.upload(dF), a = k.upload(aF), B = k.upload(bF), C = k.upload(cF);
    const D = k.upload(DF), z = k.upload(zF), bias = k.upload(biasF), h = k.upload(h0);
    const y = k.allocF32(L * dim);
    const flags = c.softplus ? SCAN_SOFTPLUS : 0;
    const args = {
      h: h.ptr,
      u: u.ptr,
      ldu,
      delta: de.ptr,
      ldd: dim,
      a: a.ptr,
      b: B.ptr,
      c: C.ptr,
      ldbc,
      d: c.hasD ? D.ptr : 0,
      z: c.hasZ ? z.ptr : 0,
      ldz: dim,
      dtBias: c.hasBias ? bias.ptr : 0,
      y: y.ptr,
      ldy: dim,
      l: L,
      dim,
      n,
      ngroups,
      flags,
    };
    const hScale = Math.max(...want.h.map(Math.abs)), yScale = Math.max(...want.y.map(Math.abs));
    // whole
    k.selectiveScan(args);
    assertClose(y.view, want.y, 1e-6 * yScale, 1e-5, `scan y ${JSON.stringify(c)}`);
    assertClose(h.view, want.h, 1e-6 * hScale, 1e-5, "scan h");
    // split channel ranges (a worker's slice each), not aligned to 4
    h.set(h0);
    y.view.fill(0);
    const cut = Math.min(dim, 5);
    k.selectiveScan({ ...args, c0: 0, c1: cut });
    k.selectiveScan({ ...args, c0: cut, c1: dim });
    assertClose(y.view, want.y, 1e-6 * yScale, 1e-5, "scan y (ranges)");
    assertClose(h.view, want.h, 1e-6 * hScale, 1e-5, "scan h (ranges)");
    // y written over u (same stride)
    h.set(h0);
    const uy = k.upload(uF);
    k.selectiveScan({ ...args, u: uy.ptr, y: uy.ptr, ldy: ldu });
    for (let t = 0; t < L; t++) {
      assertClose(
        uy.view.subarray(t * ldu, t * ldu + dim),
        want.y.subarray(t * dim, (t + 1) * dim),
        1e-6 * yScale,
        1e-5,
        "scan y over u",
      );
    }
    // step by step on contiguous per-token vectors
    h.set(h0);
    const us = k.allocF32(dim),
      ds = k.allocF32(dim),
      bs = k.allocF32(ngroups * n),
      cs = k.allocF32(ngroups * n);
    const zs = k.allocF32(dim), ys = k.allocF32(dim);
    for (let t = 0; t < L; t++) {
      us.set(uF.subarray(t * ldu, t * ldu + dim));
      ds.set(dF.subarray(t * dim, (t + 1) * dim));
      bs.set(bF.subarray(t * ldbc, t * ldbc + ngroups * n));
      cs.set(cF.subarray(t * ldbc, t * ldbc + ngroups * n));
      zs.set(zF.subarray(t * dim, (t + 1) * dim));
      k.selectiveScanStep(
        h.ptr,
        us.ptr,
        ds.ptr,
        a.ptr,
        bs.ptr,
        cs.ptr,
        c.hasD ? D.ptr : 0,
        c.hasZ ? zs.ptr : 0,
        c.hasBias ? bias.ptr : 0,
        ys.ptr,
        dim,
        n,
        ngroups,
        0,
        dim,
        flags,
      );
      assertClose(
        ys.view,
        Array.from(y.view.subarray(t * dim, (t + 1) * dim)),
        0,
        0,
        `step == seq, t=${t}`,
      );
    }
    assertClose(h.view, want.h, 1e-6 * hScale, 1e-5, "scan h (steps)");
    // 4-channel-interleaved state and A: same numbers bit for bit, whole or split at 4.
    if (ngroups === 1 || (dim / ngroups) % 4 === 0) {
      const padded = Math.ceil(dim / 4) * 4 * n;
      const hi = k.allocF32(padded), ai = k.allocF32(padded), hBack = k.allocF32(dim * n);
      h.set(h0);
      k.selectiveScan(args);
      const yRef = y.toArray(), hRef = h.toArray();
      for (const cuts of [[0, dim], [0, 4, dim]]) {
        h.set(h0);
        k.interleave4(h.ptr, hi.ptr, dim, n);
        k.interleave4(a.ptr, ai.ptr, dim, n);
        y.view.fill(0);
        for (let i = 0; i + 1 < cuts.length; i++) {
          k.selectiveScan({
            ...args,
            h: hi.ptr,
            a: ai.ptr,
            flags: flags | SCAN_INTERLEAVED,
            c0: cuts[i],
            c1: cuts[i + 1],
          });
        }
        k.deinterleave4(hi.ptr, hBack.ptr, dim, n);
        assertClose(y.view, yRef, 0, 0, "interleaved y");
        assertClose(hBack.view, hRef, 0, 0, "interleaved h");
      }
      // One token per call (the decoding path, blocked over channel groups): same bits.
      h.set(h0);
      k.interleave4(h.ptr, hi.ptr, dim, n);
      y.view.fill(0);
      for (let t = 0; t < L; t++) {
        k.selectiveScan({
          ...args,
          h: hi.ptr,
          a: ai.ptr,
          u: u.at(t * ldu),
          delta: de.at(t * dim),
          b: B.at(t * ldbc),
          c: C.at(t * ldbc),
          z: c.hasZ ? z.at(t * dim) : 0,
          y: y.at(t * dim),
          l: 1,
          flags: flags | SCAN_INTERLEAVED,
        });
      }
      k.deinterleave4(hi.ptr, hBack.ptr, dim, n);
      assertClose(y.view, yRef, 0, 0, "interleaved y, token by token");
      assertClose(hBack.view, hRef, 0, 0, "interleaved h, token by token");
      assert.throws(
        () =>
          k.selectiveScan({
            ...args,
            h: hi.ptr,
            a: ai.ptr,
            flags: flags | SCAN_INTERLEAVED,
            c0: 2,
          }),
        WebAssembly.RuntimeError,
      );
    }
    k.reset(mark);
  }
});

// ----------------------------------------------------------------------------------------------
// Mamba-2 SSD

interface SsdCase {
  nheads: number;
  headdim: number;
  n: number;
  ngroups: number;
  L: number;
  /** Range of A (default [-3, -0.2]). */
  a?: [number, number];
}

Deno.test("wasm kernels: ssd_scan seq / step / head ranges vs reference", async () => {
  const k = await kernels();
  const r = rng(9);
  const cases: SsdCase[] = [
    { nheads: 4, headdim: 8, n: 16, ngroups: 1, L: 9 },
    { nheads: 6, headdim: 6, n: 10, ngroups: 2, L: 5 },
    { nheads: 3, headdim: 5, n: 3, ngroups: 3, L: 12 },
    { nheads: 2, headdim: 64, n: 128, ngroups: 1, L: 3 },
    // Weak decays (the scaled state of the sequence form runs long), and strong ones down to
    // exp underflowing to 0 (its renormalization within and at the end of the sequence).
    { nheads: 3, headdim: 7, n: 9, ngroups: 1, L: 40, a: [-0.05, -0.001] },
    { nheads: 4, headdim: 4, n: 8, ngroups: 2, L: 30, a: [-120, -2] },
  ];
  for (const c of cases) {
    const { nheads, headdim: P, n, ngroups, L } = c;
    const mark = k.mark();
    const di = nheads * P,
      ldx = di + 1,
      lddt = nheads + 2,
      ldbc = 2 * ngroups * n + 1,
      ldy = di + 3;
    const xF = uniform(r, L * ldx),
      dtF = uniform(r, L * lddt, -4, 1),
      aF = uniform(r, nheads, ...(c.a ?? [-3, -0.2]));
    const bcF = uniform(r, L * ldbc), DF = uniform(r, nheads), biasF = uniform(r, nheads);
    const s0 = uniform(r, nheads * P * n);
    // reference (B at column g*n, C at ngroups*n + g*n of the shared bc buffer)
    const st = Float64Array.from(s0), want = new Float64Array(L * ldy);
    const hpg = nheads / ngroups;
    for (let t = 0; t < L; t++) {
      for (let h = 0; h < nheads; h++) {
        const g = Math.floor(h / hpg);
        const dt = softplusRef(dtF[t * lddt + h] + biasF[h]);
        const dA = Math.exp(dt * aF[h]);
        for (let p = 0; p < P; p++) {
          const xv = xF[t * ldx + h * P + p];
          let acc = 0;
          for (let s = 0; s < n; s++) {
            const i = (h * P + p) * n + s;
            st[i] = dA * st[i] + dt * xv * bcF[t * ldbc + g * n + s];
            acc += st[i] * bcF[t * ldbc + ngroups * n + g * n + s];
          }
          want[t * ldy + h * P + p] = acc + DF[h] * xv;
        }
      }
    }
    const x = k.upload(xF),
      dt = k.upload(dtF),
      a = k.upload(aF),
      bc = k.upload(bcF),
      D = k.upload(DF);
    const bias = k.upload(biasF), state = k.upload(s0), y = k.allocF32(L * ldy);
    const args = {
      state: state.ptr,
      x: x.ptr,
      ldx,
      dt: dt.ptr,
      lddt,
      a: a.ptr,
      b: bc.ptr,
      c: bc.at(ngroups * n),
      ldbc,
      d: D.ptr,
      dtBias: bias.ptr,
      y: y.ptr,
      ldy,
      l: L,
      nheads,
      headdim: P,
      n,
      ngroups,
      flags: SCAN_SOFTPLUS,
    };
    const sScale = Math.max(...st.map(Math.abs));
    const check = (what: string) => {
      for (let t = 0; t < L; t++) {
        const yw = want.subarray(t * ldy, t * ldy + di);
        const ys = Math.max(...yw.map(Math.abs));
        assertClose(
          y.view.subarray(t * ldy, t * ldy + di),
          yw,
          1e-6 * ys,
          1e-5,
          `${what} y t=${t} ${JSON.stringify(c)}`,
        );
      }
      assertClose(state.view, st, 1e-6 * sScale, 1e-5, `${what} state`);
    };
    k.ssdScan(args);
    check("ssd");
    state.set(s0);
    const cut = Math.floor(nheads / 2);
    k.ssdScan({ ...args, h0: cut, h1: nheads });
    k.ssdScan({ ...args, h0: 0, h1: cut });
    check("ssd ranges");
    // y written over x (same stride)
    state.set(s0);
    const xy = k.upload(xF);
    k.ssdScan({ ...args, x: xy.ptr, y: xy.ptr, ldy: ldx });
    for (let t = 0; t < L; t++) {
      const yw = want.subarray(t * ldy, t * ldy + di);
      const ys = Math.max(...yw.map(Math.abs));
      assertClose(
        xy.view.subarray(t * ldx, t * ldx + di),
        yw,
        1e-6 * ys,
        1e-5,
        `ssd y over x t=${t}`,
      );
    }
    // steps
    state.set(s0);
    const xs = k.allocF32(di),
      dts = k.allocF32(nheads),
      bs = k.allocF32(ngroups * n),
      cs = k.allocF32(ngroups * n);
    const ys = k.allocF32(di);
    for (let t = 0; t < L; t++) {
      xs.set(xF.subarray(t * ldx, t * ldx + di));
      dts.set(dtF.subarray(t * lddt, t * lddt + nheads));
      bs.set(bcF.subarray(t * ldbc, t * ldbc + ngroups * n));
      cs.set(bcF.subarray(t * ldbc + ngroups * n, t * ldbc + 2 * ngroups * n));
      k.ssdStep(
        state.ptr,
        xs.ptr,
        dts.ptr,
        a.ptr,
        bs.ptr,
        cs.ptr,
        D.ptr,
        bias.ptr,
        ys.ptr,
        nheads,
        P,
        n,
        ngroups,
        0,
        nheads,
        SCAN_SOFTPLUS,
      );
      // The sequence form keeps its state scaled by the running decay (two multiply-adds per
      // element instead of three), so it rounds differently: both are held to the reference.
      const yw = want.subarray(t * ldy, t * ldy + di);
      assertClose(ys.view, yw, 1e-6 * Math.max(...yw.map(Math.abs)), 1e-5, `ssd step t=${t}`);
    }
    assertClose(state.view, st, 1e-6 * sScale, 1e-5, "ssd state (steps)");
    k.reset(mark);
  }
});

Deno.test("wasm kernels: ssd_step prefetch stays in range (state at the end of memory, head ranges)", async () => {
  // ssd_scan's first token reads one float per cache line of the next four state rows ahead
  // (a software prefetch): with the state ending exactly at the end of memory, a read past the
  // range would trap. The results must equal those of a state elsewhere, bit for bit.
  const k = await kernels();
  const r = rng(21);
  const cases = [
    { nheads: 4, headdim: 8, n: 16, ngroups: 2 },
    { nheads: 3, headdim: 64, n: 128, ngroups: 1 },
    { nheads: 5, headdim: 12, n: 10, ngroups: 5 },
    { nheads: 2, headdim: 6, n: 7, ngroups: 1 },
  ];
  for (const { nheads, headdim: P, n, ngroups } of cases) {
    const mark = k.mark();
    const di = nheads * P, sBytes = nheads * P * n * 4;
    const x = k.upload(uniform(r, di)), dt = k.upload(uniform(r, nheads, -4, 1));
    const a = k.upload(uniform(r, nheads, -3, -0.2)), D = k.upload(uniform(r, nheads));
    const bias = k.upload(uniform(r, nheads));
    const bm = k.upload(uniform(r, ngroups * n)), cm = k.upload(uniform(r, ngroups * n));
    const s0 = uniform(r, nheads * P * n);
    const ref = k.upload(s0), yRef = k.allocF32(di), y = k.allocF32(di);
    // pad so that the state's (64-byte rounded) end is the end of memory
    k.exports.heap_reserve(sBytes + 65536);
    const pad = k.memory.buffer.byteLength - k.exports.heap_top() - Math.ceil(sBytes / 64) * 64;
    if (pad > 0) k.alloc(pad);
    const state = k.upload(s0);
    assert.ok(
      k.memory.buffer.byteLength - (state.ptr + sBytes) < 64,
      "state not at the end of memory",
    );
    const step = (st: number, out: number, h0: number, h1: number) =>
      k.ssdStep(
        st,
        x.ptr,
        dt.ptr,
        a.ptr,
        bm.ptr,
        cm.ptr,
        D.ptr,
        bias.ptr,
        out,
        nheads,
        P,
        n,
        ngroups,
        h0,
        h1,
        SCAN_SOFTPLUS,
      );
    for (const [h0, h1] of [[0, nheads], [nheads - 1, nheads], [0, 1], [1, nheads]]) {
      ref.set(s0);
      state.set(s0);
      yRef.view.fill(0);
      y.view.fill(0);
      step(ref.ptr, yRef.ptr, h0, h1);
      step(state.ptr, y.ptr, h0, h1);
      const what = `${JSON.stringify({ nheads, P, n, ngroups, h0, h1 })}`;
      assertClose(y.view, Array.from(yRef.view), 0, 0, `ssd_step y at memory end ${what}`);
      assertClose(state.view, Array.from(ref.view), 0, 0, `ssd_step state at memory end ${what}`);
      // heads outside the range untouched
      for (let i = 0; i < nheads * P * n; i++) {
        const h = Math.floor(i / (P * n));
        if ((h < h0 || h >= h1) && state.view[i] !== s0[i]) {
          throw new Error(`ssd_step wrote head ${h} outside [${h0}, ${h1}) ${what}`);
        }
      }
    }
    k.reset(mark);
  }
});

// ----------------------------------------------------------------------------------------------
// oracle cases (shared fixtures)

const shared = sharedDir();
const oracle = shared ? `${shared}/fixtures/oracle` : undefined;

interface OracleJson {
  shapes: Record<string, number[]>;
  inputs: string[];
  delta_softplus?: boolean;
  tolerance: { atol: number; rtol: number };
}

function loadCase(
  name: string,
): { meta: OracleJson; t: Map<string, { shape: number[]; data: Float32Array }> } {
  const meta = JSON.parse(Deno.readTextFileSync(`${oracle}/${name}/expected.json`)) as OracleJson;
  return { meta, t: readSafetensorsF32(`${oracle}/${name}/expected.safetensors`) };
}

for (const name of ["ss_varBC_D_z_bias_softplus", "ss_plain_groups1"]) {
  Deno.test({
    name: `wasm kernels: oracle ${name} (selective_scan_ref)`,
    ignore: !oracle,
    fn: async () => {
      const { meta, t } = loadCase(name);
      const k = await kernels();
      const get = (n: string) => t.get(n)?.data;
      const [batch, dim, L] = meta.shapes.u;
      const n = meta.shapes.A[1];
      const bShape = meta.shapes.B;
      const G = bShape.length === 4 ? bShape[1] : 1;
      const A = k.upload(get("A")!);
      const D = get("D") ? k.upload(get("D")!).ptr : 0;
      const bias = get("delta_bias") ? k.upload(get("delta_bias")!).ptr : 0;
      const outW = get("out")!, lastW = get("last_state")!;
      const { atol, rtol } = meta.tolerance;
      for (let b = 0; b < batch; b++) {
        // (batch, dim, L) -> token-major [L, dim]; B/C (batch, [G,] n, L) -> [L, G*n]
        const tm = (src: Float32Array) => {
          const o = new Float32Array(L * dim);
          for (let c = 0; c < dim; c++) {
            for (let s = 0; s < L; s++) o[s * dim + c] = src[(b * dim + c) * L + s];
          }
          return o;
        };
        const bc = (src: Float32Array) => {
          const o = new Float32Array(L * G * n);
          for (let g = 0; g < G; g++) {
            for (let i = 0; i < n; i++) {
              for (let s = 0; s < L; s++) {
                o[s * G * n + g * n + i] = src[((b * G + g) * n + i) * L + s];
              }
            }
          }
          return o;
        };
        const mark = k.mark();
        const u = k.upload(tm(get("u")!)), de = k.upload(tm(get("delta")!));
        const z = get("z") ? k.upload(tm(get("z")!)).ptr : 0;
        const B = k.upload(bc(get("B")!)), C = k.upload(bc(get("C")!));
        const h = k.allocF32(dim * n);
        h.view.fill(0);
        const y = k.allocF32(L * dim);
        k.selectiveScan({
          h: h.ptr,
          u: u.ptr,
          ldu: dim,
          delta: de.ptr,
          ldd: dim,
          a: A.ptr,
          b: B.ptr,
          c: C.ptr,
          ldbc: G * n,
          d: D,
          z,
          ldz: dim,
          dtBias: bias,
          y: y.ptr,
          ldy: dim,
          l: L,
          dim,
          n,
          ngroups: G,
          flags: meta.delta_softplus ? SCAN_SOFTPLUS : 0,
        });
        const wantY = new Float32Array(L * dim);
        for (let c = 0; c < dim; c++) {
          for (let s = 0; s < L; s++) wantY[s * dim + c] = outW[(b * dim + c) * L + s];
        }
        assertClose(y.view, wantY, atol, rtol, `${name} out, batch ${b}`);
        assertClose(
          h.view,
          lastW.subarray(b * dim * n, (b + 1) * dim * n),
          atol,
          rtol,
          `${name} last_state, batch ${b}`,
        );
        k.reset(mark);
      }
    },
  });
}

Deno.test({
  name: "wasm kernels: oracle ssd_l64_block16 (ssd_minimal_discrete)",
  ignore: !oracle,
  fn: async () => {
    const { meta, t } = loadCase("ssd_l64_block16");
    const k = await kernels();
    const [batch, L, H, P] = meta.shapes.X;
    const n = meta.shapes.B[3];
    const X = t.get("X")!.data, A = t.get("A")!.data, B = t.get("B")!.data, C = t.get("C")!.data;
    const Yw = t.get("Y")!.data, Sw = t.get("final_state")!.data;
    const { atol, rtol } = meta.tolerance;
    // A holds the log-decay dt·A per (t, h): pass it as dt with A_h = 1 and unscaled x;
    // B/C are per head: ngroups = nheads.
    const ones = k.upload(new Float32Array(H).fill(1));
    for (let b = 0; b < batch; b++) {
      const mark = k.mark();
      const x = k.upload(X.subarray(b * L * H * P, (b + 1) * L * H * P));
      const dt = k.upload(A.subarray(b * L * H, (b + 1) * L * H));
      const Bp = k.upload(B.subarray(b * L * H * n, (b + 1) * L * H * n));
      const Cp = k.upload(C.subarray(b * L * H * n, (b + 1) * L * H * n));
      const state = k.allocF32(H * P * n);
      state.view.fill(0);
      const y = k.allocF32(L * H * P);
      k.ssdScan({
        state: state.ptr,
        x: x.ptr,
        ldx: H * P,
        dt: dt.ptr,
        lddt: H,
        a: ones.ptr,
        b: Bp.ptr,
        c: Cp.ptr,
        ldbc: H * n,
        y: y.ptr,
        ldy: H * P,
        l: L,
        nheads: H,
        headdim: P,
        n,
        ngroups: H,
        flags: SSD_UNSCALED_X,
      });
      assertClose(y.view, Yw.subarray(b * L * H * P, (b + 1) * L * H * P), atol, rtol, "ssd Y");
      assertClose(
        state.view,
        Sw.subarray(b * H * P * n, (b + 1) * H * P * n),
        atol,
        rtol,
        "ssd final_state",
      );
      k.reset(mark);
    }
  },
});
