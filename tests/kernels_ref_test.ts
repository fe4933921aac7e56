// The reference kernels on the oracle's kernel cases, and the chunked SSD against the recurrence.
import assert from "node:assert/strict";
import { selectiveScan } from "../src/backends/ref/selective_scan.ts";
import { ssdChunked, ssdRecurrent } from "../src/backends/ref/ssd.ts";
import { softplus } from "../src/backends/ref/ops.ts";
import { assertClose, loadExpected, TOL } from "./oracle_util.ts";

/** (batch, dim, L) channel-major → per batch (L, dim) token-major. */
function tokenMajor(a: Float32Array, dim: number, L: number, b: number) {
  const out = new Float32Array(L * dim);
  for (let d = 0; d < dim; d++) {
    for (let t = 0; t < L; t++) out[t * dim + d] = a[(b * dim + d) * L + t];
  }
  return out;
}

for (const name of ["ss_varBC_D_z_bias_softplus", "ss_plain_groups1"]) {
  Deno.test(`ref kernel: selective_scan_ref ${name}`, () => {
    const exp = loadExpected(name);
    const get = (k: string) => exp.arrays.get(k);
    const u = get("u")!;
    const [batch, D, L] = u.shape;
    const N = get("A")!.shape[1];
    const Bsh = get("B")!.shape;
    const G = Bsh.length === 4 ? Bsh[1] : 1;
    const softplusOn = (exp.json as unknown as { delta_softplus: boolean }).delta_softplus;
    const outWant = get("out")!.data;
    const stateWant = get("last_state")!.data;
    for (let b = 0; b < batch; b++) {
      // B/C (batch, [G,] N, L) → (L, G, N)
      const bc = (a: Float32Array) => {
        const o = new Float32Array(L * G * N);
        for (let g = 0; g < G; g++) {
          for (let n = 0; n < N; n++) {
            for (let t = 0; t < L; t++) o[(t * G + g) * N + n] = a[((b * G + g) * N + n) * L + t];
          }
        }
        return o;
      };
      const bias = get("delta_bias")?.data;
      const delta = tokenMajor(get("delta")!.data, D, L, b).map((v, i) => {
        const x = v + (bias ? bias[i % D] : 0);
        return softplusOn ? softplus(x) : x;
      });
      const h = new Float32Array(D * N);
      const z = get("z");
      const y = selectiveScan({
        L,
        D,
        N,
        G,
        u: tokenMajor(u.data, D, L, b),
        delta,
        A: get("A")!.data,
        B: bc(get("B")!.data),
        C: bc(get("C")!.data),
        Dskip: get("D")?.data,
        z: z ? tokenMajor(z.data, D, L, b) : undefined,
        h,
      });
      const want = tokenMajor(outWant, D, L, b);
      assertClose(y, want, TOL.kernel, `out batch ${b}`);
      assertClose(h, stateWant.subarray(b * D * N, (b + 1) * D * N), TOL.kernel, `state ${b}`);
    }
  });
}

Deno.test("ref kernel: ssd_minimal_discrete ssd_l64_block16 (chunked and recurrent)", () => {
  const exp = loadExpected("ssd_l64_block16");
  const get = (k: string) => exp.arrays.get(k)!;
  const [, L, H, P] = get("X").shape;
  const N = get("B").shape[3];
  for (const Q of [0, 16, 7, 64]) {
    const h = new Float32Array(H * P * N);
    const args = {
      L,
      H,
      P,
      N,
      G: H, // per-head B and C
      X: get("X").data,
      A: get("A").data,
      B: get("B").data,
      C: get("C").data,
      h,
    };
    const Y = Q === 0 ? ssdRecurrent(args) : ssdChunked(args, Q);
    assertClose(Y, get("Y").data, TOL.kernel, `Y (chunk ${Q || "recurrent"})`);
    assertClose(h, get("final_state").data, TOL.kernel, `final state (chunk ${Q || "recurrent"})`);
  }
});

Deno.test("ref kernel: chunked SSD ≡ recurrence from a non-zero state, with groups", () => {
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32) * 2 - 1;
  const L = 37, H = 4, P = 3, N = 5, G = 2;
  const X = Float32Array.from({ length: L * H * P }, rnd);
  const A = Float32Array.from({ length: L * H }, () => -Math.abs(rnd()));
  const B = Float32Array.from({ length: L * G * N }, rnd);
  const C = Float32Array.from({ length: L * G * N }, rnd);
  const h0 = Float32Array.from({ length: H * P * N }, rnd);
  const h1 = h0.slice();
  const yRec = ssdRecurrent({ L, H, P, N, G, X, A, B, C, h: h1 });
  for (const Q of [1, 4, 8, 37, 64]) {
    const h2 = h0.slice();
    const yChunk = ssdChunked({ L, H, P, N, G, X, A, B, C, h: h2 }, Q);
    assertClose(yChunk, yRec, { atol: 1e-5, rtol: 1e-5 }, `Y chunk ${Q}`);
    assertClose(h2, h1, { atol: 1e-5, rtol: 1e-5 }, `state chunk ${Q}`);
  }
  assert.ok(yRec.some((v) => Math.abs(v) > 0.1), "non-trivial output");
});
