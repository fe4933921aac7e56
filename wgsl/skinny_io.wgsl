// The parameter block and bindings of the two skinny products (skinny.wgsl, skinny_regs.wgsl),
// so that the backend dispatches both the same way: binding 0 the parameters, 1 the weights (W
// rows of f16 pairs packed in u32 with F16, else f32; 16-byte loads), then product_io's.

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
  rStride: u32,  // elements between rows of resIn / resOut (skinny.wgsl)
  convLo: u32,   // CONV_EPI: first output column that is a conv channel
  convC: u32,    //           conv channels (row stride of convOut and of the state)
  ySplit: u32,   // KSPLIT: elements between the partial sums of two ranges of K (skinny.wgsl)
}

@group(0) @binding(0) var<uniform> p: P;
#if F16
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
const VEC = 8u;            // weights per 16-byte load
alias WV = vec4<u32>;
#else
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
const VEC = 4u;
alias WV = vec4<f32>;
#endif
#include product_io
