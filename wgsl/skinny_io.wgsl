// The weight binding of the two skinny products (skinny.wgsl, skinny_regs.wgsl), so that the
// backend dispatches both the same way: binding 1 the weights (W rows of f16 pairs packed in u32
// with F16, else f32; 16-byte loads), then product_io's parameters and bindings.
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
