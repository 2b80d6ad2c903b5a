//! The broker's global allocator: the system allocator, except that a single
//! allocation of 4 GiB or more is served by an anonymous `MAP_NORESERVE` mapping.
//!
//! Why: decoders of untrusted input (the Kafka message decoders of the
//! `kafka-protocol` crate among them) reserve `Vec` capacity from a length read off
//! the wire before decoding a single element. A 14-byte Kafka request declaring an
//! array of `i32::MAX` elements asks for ~150 GB; the system allocator refuses, and
//! a refused allocation aborts the process: one request would kill the broker. With
//! this allocator such a reservation is only address space: the decoder touches
//! the few pages of the elements it actually decodes, fails on the short buffer,
//! and the mapping is returned. The broker itself never makes an allocation this
//! large (its logs are memory-mapped files, its batches at most `max_batch_bytes`).
//!
//! Under `vm.overcommit_memory = 2` (strict accounting) the kernel still refuses
//! such a mapping, and the allocation aborts as before.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped, not taken from the heap.
const HUGE: usize = 4 << 30;
/// Mappings are page-aligned: larger alignments go to the system allocator.
const PAGE: usize = 4096;

/// See the module documentation.
pub struct GuardedAlloc;

fn mapped(layout: &Layout) -> bool {
    layout.size() >= HUGE && layout.align() <= PAGE
}

// SAFETY: every method upholds `GlobalAlloc`'s contract: a block is released by the
// path that produced it, decided by the same `mapped` test on the layout the
// caller must pass back unchanged; mapped blocks are page-aligned (≥ the layout's
// alignment) and zero-filled, and `realloc` preserves the old contents up to the
// smaller size.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees (non-zero size).
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if mapped(&layout) {
            // Anonymous mappings are zero-filled.
            map(layout.size())
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if mapped(&layout) {
            // SAFETY: `ptr` came from `map(layout.size())`, as `mapped` says.
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            // SAFETY: `ptr` came from the system allocator with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` with `layout.align()` is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        if !mapped(&layout) && !mapped(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: `new_layout` is valid (above); the blocks do not overlap.
        unsafe {
            let new = self.alloc(new_layout);
            if !new.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new
        }
    }
}

/// An anonymous, private, unreserved mapping of `size` bytes; null on failure.
fn map(size: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping touches no existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr.cast()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_reservation_is_address_space_and_small_ones_are_the_heap() {
        let a = GuardedAlloc;
        let huge = Layout::from_size_align(150 << 30, 8).expect("layout");
        // SAFETY: a valid non-zero layout; the block is written within bounds and
        // released with the same layout.
        unsafe {
            let p = a.alloc(huge);
            assert!(!p.is_null(), "a 150 GB reservation is refused");
            p.write(7);
            p.add((150 << 30) - 1).write(9);
            let q = a.realloc(p, huge, 64);
            assert!(!q.is_null());
            assert_eq!(q.read(), 7);
            a.dealloc(q, Layout::from_size_align(64, 8).expect("layout"));
        }
        let small = Layout::from_size_align(100, 16).expect("layout");
        // SAFETY: as above.
        unsafe {
            let p = a.alloc_zeroed(small);
            assert!(!p.is_null());
            assert_eq!(p.add(99).read(), 0);
            a.dealloc(p, small);
        }
    }
}
