//! A bump allocator over the module's linear memory. The host allocates its buffers once at load
//! time (weights, states, activations); nothing allocates per token. `heap_reset` rolls the heap
//! back to a mark taken with `heap_top` (arena style). Memory grows on demand, never shrinks.

use core::arch::wasm32::{memory_grow, memory_size};

extern "C" {
    static __heap_base: u8;
}

static mut TOP: usize = 0;

const ALIGN: usize = 64;
const PAGE: u64 = 65536;

unsafe fn top() -> usize {
    if TOP == 0 {
        TOP = (&__heap_base as *const u8 as usize + ALIGN - 1) & !(ALIGN - 1);
    }
    TOP
}

/// Allocates `bytes` bytes aligned to 64 and returns the address, or 0 when the memory cannot
/// grow that far (4 GiB wasm32 limit or the engine's limit). The contents are unspecified (zero
/// for never-used memory).
#[no_mangle]
pub unsafe extern "C" fn alloc(bytes: usize) -> usize {
    let start = top();
    let end = start as u64 + bytes as u64;
    let rounded = (end + ALIGN as u64 - 1) & !(ALIGN as u64 - 1);
    if rounded > (1u64 << 32) - ALIGN as u64 {
        return 0;
    }
    let have = memory_size(0) as u64 * PAGE;
    if rounded > have {
        let pages = (rounded - have + PAGE - 1) / PAGE;
        if memory_grow(0, pages as usize) == usize::MAX {
            return 0;
        }
    }
    TOP = rounded as usize;
    start
}

/// Current top of the heap: pass it to `heap_reset` to free everything allocated after it.
#[no_mangle]
pub unsafe extern "C" fn heap_top() -> usize {
    top()
}

/// Frees every allocation made after `mark` (a value returned by `heap_top`). Marks below the
/// heap base or above the current top are ignored.
#[no_mangle]
pub unsafe extern "C" fn heap_reset(mark: usize) {
    let base = (&__heap_base as *const u8 as usize + ALIGN - 1) & !(ALIGN - 1);
    if mark >= base && mark <= top() {
        TOP = (mark + ALIGN - 1) & !(ALIGN - 1);
    }
}

/// Grows the memory (if needed) so that at least `bytes` more bytes can be allocated without
/// another `memory.grow` (which would detach the host's typed-array views). Returns 1 on success.
#[no_mangle]
pub unsafe extern "C" fn heap_reserve(bytes: usize) -> u32 {
    let want = top() as u64 + bytes as u64;
    if want > 1u64 << 32 {
        return 0;
    }
    let have = memory_size(0) as u64 * PAGE;
    if want > have {
        let pages = (want - have + PAGE - 1) / PAGE;
        if memory_grow(0, pages as usize) == usize::MAX {
            return 0;
        }
    }
    1
}
