/**
 * The reference backend's view of the weights: everything widened to float32, `A = −exp(A_log)`
 * precomputed.
 *
 * @module
 */

import { f16ArrayToF32 } from "../../half.ts";
import type { HostTensor, LayerWeights, ModelWeights, NormWeights } from "../../weights.ts";
import type { TransformerWeights } from "../../neox_weights.ts";

/** A host tensor as float32 values. */
export function f32(t: HostTensor): Float32Array;
export function f32(t: HostTensor | undefined): Float32Array | undefined;
export function f32(t: HostTensor | undefined): Float32Array | undefined {
  if (!t) return undefined;
  return t.dtype === "f32" ? t.data : f16ArrayToF32(t.data);
}

/** A norm in float32. */
export interface RefNorm {
  /** Scale. */
  weight: Float32Array;
  /** Shift (LayerNorm). */
  bias?: Float32Array;
}

/** One block's weights in float32. */
export interface RefLayer {
  /** Pre-norm. */
  norm: RefNorm;
  /** See {@link LayerWeights}. */
  inProj: Float32Array;
  /** See {@link LayerWeights}. */
  inProjBias?: Float32Array;
  /** `[convDim, dConv]`. */
  convWeight: Float32Array;
  /** `[convDim]`. */
  convBias?: Float32Array;
  /** M1 only. */
  xProj?: Float32Array;
  /** M1 only. */
  dtProjWeight?: Float32Array;
  /** dt bias. */
  dtBias: Float32Array;
  /** `A = −exp(A_log)`. */
  A: Float32Array;
  /** Skip. */
  D: Float32Array;
  /** M2 gated-norm scale. */
  gatedNorm?: Float32Array;
  /** Output projection. */
  outProj: Float32Array;
  /** Output bias. */
  outProjBias?: Float32Array;
}

const norm = (n: NormWeights): RefNorm => ({ weight: f32(n.weight), bias: f32(n.bias) });

/** Converts one block. */
export function refLayer(l: LayerWeights): RefLayer {
  return {
    norm: norm(l.norm),
    inProj: f32(l.inProj),
    inProjBias: f32(l.inProjBias),
    convWeight: f32(l.convWeight),
    convBias: f32(l.convBias),
    xProj: f32(l.xProj),
    dtProjWeight: f32(l.dtProjWeight),
    dtBias: f32(l.dtBias),
    A: f32(l.aLog).map((v) => -Math.exp(v)),
    D: f32(l.d),
    gatedNorm: f32(l.gatedNorm),
    outProj: f32(l.outProj),
    outProjBias: f32(l.outProjBias),
  };
}

/** Converts the whole model. */
export function refWeights(w: ModelWeights): {
  embedding: Float32Array;
  layers: RefLayer[];
  normF: RefNorm;
  lmHead: Float32Array;
} {
  const embedding = f32(w.embedding);
  return {
    embedding,
    layers: w.layers.map(refLayer),
    normF: norm(w.normF),
    lmHead: w.lmHead === w.embedding ? embedding : f32(w.lmHead),
  };
}

/** One Transformer block's weights in float32. */
export interface RefTransformerLayer {
  /** Pre-attention norm. */
  norm: RefNorm;
  /** Pre-MLP norm. */
  norm2: RefNorm;
  /** `[q | k | v]` projection and bias. */
  qkv: Float32Array;
  /** Its bias. */
  qkvBias?: Float32Array;
  /** Attention output projection. */
  out: Float32Array;
  /** Its bias. */
  outBias?: Float32Array;
  /** MLP up projection. */
  fc1: Float32Array;
  /** Its bias. */
  fc1Bias?: Float32Array;
  /** MLP down projection. */
  fc2: Float32Array;
  /** Its bias. */
  fc2Bias?: Float32Array;
}

/** Converts a Transformer model. */
export function refTransformerWeights(w: TransformerWeights): {
  embedding: Float32Array;
  layers: RefTransformerLayer[];
  normF: RefNorm;
  lmHead: Float32Array;
} {
  const embedding = f32(w.embedding);
  return {
    embedding,
    layers: w.layers.map((l) => ({
      norm: norm(l.norm),
      norm2: norm(l.norm2),
      qkv: f32(l.qkv),
      qkvBias: f32(l.qkvBias),
      out: f32(l.out),
      outBias: f32(l.outBias),
      fc1: f32(l.fc1),
      fc1Bias: f32(l.fc1Bias),
      fc2: f32(l.fc2),
      fc2Bias: f32(l.fc2Bias),
    })),
    normF: norm(w.normF),
    lmHead: w.lmHead === w.embedding ? embedding : f32(w.lmHead),
  };
}
