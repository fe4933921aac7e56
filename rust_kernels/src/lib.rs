//! WebAssembly SIMD kernels for Mamba-1 / Mamba-2 inference.
//!
//! `#![no_std]`, no dependencies, no wasm-bindgen: every kernel is an `extern "C"` function over
//! the module's own linear memory (exported as `memory`). Pointers are byte offsets into that
//! memory, sizes are element counts, flags are u32. Buffers come from the bump allocator
//! (`alloc`, `heap_top`, `heap_reset`, `heap_reserve`). All math is f32; f16 and q8 weights are
//! widened in registers. See `src/backends/wasm/kernels.ts` for the typed host wrapper.

#![no_std]

pub mod attention;
pub mod heap;
pub mod linear;
pub mod misc;
pub mod norm;
pub mod simd;
pub mod ssm;

/// Version of the exported ABI; bumped on any incompatible change of a signature or semantics.
#[no_mangle]
pub extern "C" fn abi_version() -> u32 {
    1
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
