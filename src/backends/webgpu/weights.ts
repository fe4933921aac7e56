/**
 * The weights of the `webgpu` backend in GPU memory. Large matrices keep their host dtype (f32,
 * or f16 bit patterns packed two to a u32) with rows zero-padded to a multiple of the kernels'
 * vector width, and are split into row ranges when one would exceed the device's largest
 * storage binding. Everything small (norms, conv taps, biases, A, D) is widened to f32.
 *
 * @module
 */

import type { HostTensor, ModelWeights, NormWeights } from "../../weights.ts";
import { f32 } from "../ref/weights.ts";
import type { Buf, Recorder } from "./recorder.ts";

/** One row range of a matrix. */
export interface MatrixPart {
  /** The rows' data. */
  readonly buf: Buf;
  /** First row. */
  readonly n0: number;
  /** Number of rows. */
  readonly n: number;
}

/** A `[N, K]` weight matrix (PyTorch `Linear` layout) on the GPU. */
export interface GpuMatrix {
  /** Rows (output features). */
  readonly N: number;
  /** Columns (input features). */
  readonly K: number;
  /** Whether the elements are f16. */
  readonly f16: boolean;
  /** Elements per stored row (K rounded up to 4 for f32, 8 for f16). */
  readonly stride: number;
  /** Row ranges, each within one storage binding. */
  readonly parts: readonly MatrixPart[];
}

/** A norm's parameters. */
export interface GpuNorm {
  /** Scale. */
  readonly weight: Buf;
  /** Shift (LayerNorm). */
  readonly bias?: Buf;
}

/** One block's weights. */
export interface GpuLayer {
  /** Pre-norm. */
  readonly norm: GpuNorm;
  /** in_proj. */
  readonly inProj: GpuMatrix;
  /** in_proj bias. */
  readonly inProjBias?: Buf;
  /** Conv taps `[convDim, dConv]`. */
  readonly convWeight: Buf;
  /** Conv bias. */
  readonly convBias?: Buf;
  /** Mamba-1 x_proj. */
  readonly xProj?: GpuMatrix;
  /** Mamba-1 dt_proj, always f32. */
  readonly dtProj?: GpuMatrix;
  /** dt bias. */
  readonly dtBias: Buf;
  /** `A = −exp(A_log)`. */
  readonly A: Buf;
  /** Skip. */
  readonly D: Buf;
  /** Mamba-2 gated norm scale. */
  readonly gatedNorm?: Buf;
  /** out_proj. */
  readonly outProj: GpuMatrix;
  /** out_proj bias. */
  readonly outProjBias?: Buf;
}

/** The whole model. */
export interface GpuWeights {
  /** `[paddedVocab, dModel]`. */
  readonly embedding: GpuMatrix;
  /** Blocks. */
  readonly layers: readonly GpuLayer[];
  /** Final norm. */
  readonly normF: GpuNorm;
  /** `[paddedVocab, dModel]` (the embedding itself when tied). */
  readonly lmHead: GpuMatrix;
  /** Bytes uploaded. */
  readonly bytes: number;
}

/** Uploads a matrix (f32 or f16 as stored; `forceF32` widens). */
export function uploadMatrix(
  rec: Recorder,
  t: HostTensor,
  label: string,
  forceF32 = false,
): GpuMatrix {
  const [N, K] = t.shape.length === 2 ? t.shape : [t.shape[0], 1];
  const half = t.dtype === "f16" && !forceF32;
  const data: Float32Array | Uint16Array = half ? t.data : f32(t);
  const vec = half ? 8 : 4;
  const stride = Math.ceil(K / vec) * vec;
  const elemBytes = half ? 2 : 4;
  const rowBytes = stride * elemBytes;
  const maxRows = Math.max(
    1,
    Math.floor(Math.min(rec.ctx.maxBinding, rec.ctx.maxBuffer) / rowBytes),
  );
  const parts: MatrixPart[] = [];
  for (let n0 = 0; n0 < N; n0 += maxRows) {
    const n = Math.min(maxRows, N - n0);
    const buf = rec.buffer(n * rowBytes, `${label}[${n0}..]`);
    if (stride === K) {
      rec.write(buf, 0, data.subarray(n0 * K, (n0 + n) * K));
    } else {
      const padded = half ? new Uint16Array(n * stride) : new Float32Array(n * stride);
      for (let r = 0; r < n; r++) {
        padded.set(data.subarray((n0 + r) * K, (n0 + r + 1) * K), r * stride);
      }
      rec.write(buf, 0, padded);
    }
    parts.push({ buf, n0, n });
  }
  return { N, K, f16: half, stride, parts };
}

/** Uploads a small tensor as f32. */
export function uploadF32(rec: Recorder, data: Float32Array, label: string): Buf {
  const buf = rec.buffer(data.byteLength, label);
  rec.write(buf, 0, data);
  return buf;
}

/** Uploads every weight of the model. */
export function uploadWeights(rec: Recorder, w: ModelWeights): GpuWeights {
  let bytes = 0;
  const count = (m: GpuMatrix) => {
    for (const p of m.parts) bytes += p.buf.size;
    return m;
  };
  const vec = (t: HostTensor | undefined, label: string): Buf | undefined => {
    if (!t) return undefined;
    const b = uploadF32(rec, f32(t), label);
    bytes += b.size;
    return b;
  };
  const norm = (n: NormWeights, label: string): GpuNorm => ({
    weight: vec(n.weight, `${label}.weight`)!,
    bias: vec(n.bias, `${label}.bias`),
  });
  const embedding = count(uploadMatrix(rec, w.embedding, "embedding"));
  const layers = w.layers.map((l, i): GpuLayer => {
    const p = `layers.${i}`;
    const A = f32(l.aLog).map((v) => -Math.exp(v));
    const ab = uploadF32(rec, A, `${p}.A`);
    bytes += ab.size;
    return {
      norm: norm(l.norm, `${p}.norm`),
      inProj: count(uploadMatrix(rec, l.inProj, `${p}.in_proj`)),
      inProjBias: vec(l.inProjBias, `${p}.in_proj.bias`),
      convWeight: vec(l.convWeight, `${p}.conv.weight`)!,
      convBias: vec(l.convBias, `${p}.conv.bias`),
      xProj: l.xProj ? count(uploadMatrix(rec, l.xProj, `${p}.x_proj`)) : undefined,
      dtProj: l.dtProjWeight
        ? count(uploadMatrix(rec, l.dtProjWeight, `${p}.dt_proj`, true))
        : undefined,
      dtBias: vec(l.dtBias, `${p}.dt_bias`)!,
      A: ab,
      D: vec(l.d, `${p}.D`)!,
      gatedNorm: vec(l.gatedNorm, `${p}.norm`),
      outProj: count(uploadMatrix(rec, l.outProj, `${p}.out_proj`)),
      outProjBias: vec(l.outProjBias, `${p}.out_proj.bias`),
    };
  });
  const lmHead = w.lmHead === w.embedding
    ? embedding
    : count(uploadMatrix(rec, w.lmHead, "lm_head"));
  return { embedding, layers, normF: norm(w.normF, "norm_f"), lmHead, bytes };
}
