// What the decode products share (matvec.wgsl, skinny.wgsl, skinny_regs.wgsl): the parameter
// block (binding 0), the bindings from 2 to 11 (x, y, and the buffers of their prologues PRO_ADD,
// PRO_RMS, RES_OUT and epilogues BIAS, CONV_EPI), 12 for the skinny kernels' ADD_RES, and the
// epilogue itself (finish_output). Binding 1 (W) and the rest are each kernel's own.

struct P {
  M: u32,        // rows of x
  N: u32,        // output rows of W handled here (one part of a split matrix)
  K: u32,        // reduction length
  wStride: u32,  // elements per W row (a multiple of 8 for f16, 4 for f32; zero padded)
  xStride: u32,  // elements between x rows
  xOff: u32,     // element offset of x[0, 0]
  yStride: u32,
  yOff: u32,
  nBase: u32,    // output column (and bias index) of this part's row 0
  eps: f32,
  rStride: u32,  // elements between rows of resIn / resOut
  convLo: u32,   // CONV_EPI: first output column that is a conv channel
  convC: u32,    //           conv channels (row stride of convOut and of the state)
  ySplit: u32,   // KSPLIT: elements between the partial sums of two ranges of K (skinny.wgsl)
}

@group(0) @binding(0) var<uniform> p: P;
#if XVEC
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
#else
@group(0) @binding(2) var<storage, read> x: array<f32>;
#endif
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
#if BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif
#if PRO_ADD
@group(0) @binding(5) var<storage, read> resIn: array<vec4<f32>>;
#endif
#if PRO_RMS
@group(0) @binding(6) var<storage, read> normW: array<vec4<f32>>;
#endif
#if RES_OUT
@group(0) @binding(7) var<storage, read_write> resOut: array<vec4<f32>>;
#endif
#if CONV_EPI
@group(0) @binding(8) var<storage, read_write> convState: array<f32>;
@group(0) @binding(9) var<storage, read> convW: array<f32>;
#if CONV_BIAS
@group(0) @binding(10) var<storage, read> convB: array<f32>;
#endif
@group(0) @binding(11) var<storage, read_write> convOut: array<f32>;
#endif
#if ADD_RES
@group(0) @binding(12) var<storage, read> resAdd: array<f32>;
#endif

#if CONV_EPI
const CK = ${CK}u; // the conv's taps (d_conv); CKM = CK − 1

// The causal conv step of channel c of row m, whose new input is r (an output of the product):
// the state shifts by one, and SiLU(conv + bias) goes to convOut. Every tap is read before the
// shifted ones are written back: loads that follow a store to the same buffer would each wait
// for the one before. Needs the kernel's `p.convC` (channels: the state's and convOut's rows).
fn conv_step(m: u32, c: u32, r: f32) {
  let s = (m * p.convC + c) * CK;
#unroll J CKM
  let s${J} = convState[s + ${J}u + 1u];
#endunroll
#if CONV_BIAS
  var acc = convB[c];
#else
  var acc = 0.0;
#endif
  acc += convW[c * CK + CK - 1u] * r;
#unroll J CKM
  acc += convW[c * CK + ${J}u] * s${J};
#endunroll
#unroll J CKM
  convState[s + ${J}u] = s${J};
#endunroll
  convState[s + CK - 1u] = r;
  convOut[m * p.convC + c] = silu(acc);
}
#endif

// The epilogue of the output of row m, column col (the part's nBase included), whose sum is r
// (already scaled by 1/rms where the product normalises x): the bias, the block's residual
// (ADD_RES, laid out like y), the activation, the store to y at index `at`, and the conv step.
fn finish_output(m: u32, col: u32, at: u32, sum: f32) {
  var r = sum;
#if BIAS
  r += bias[col];
#endif
#if ADD_RES
  r += resAdd[p.yOff + m * p.yStride + col];
#endif
#if SOFTPLUS
  r = softplus(r);
#endif
#if GELU
  r = gelu_erf(r);
#endif
  y[at] = r;
#if CONV_EPI
  if (col >= p.convLo && col < p.convLo + p.convC) {
    conv_step(m, col - p.convLo, r);
  }
#endif
}
