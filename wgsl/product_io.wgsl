// The bindings the decode products share (matvec.wgsl, skinny.wgsl), from 2 to 11: x, y, and
// the buffers of their prologues (PRO_ADD, PRO_RMS, RES_OUT) and epilogues (BIAS, CONV_EPI).
// Binding 0 (the parameters), 1 (W) and 12 on are each kernel's own.
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
