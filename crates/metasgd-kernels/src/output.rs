//! Output buffers for the allocating step.
//!
//! The buffer is left uninitialised: the kernel's write is its only pass
//! (a zero fill would be a second one). A large allocation comes straight
//! from the operating system, and every 4 KiB page of it is faulted in and
//! zeroed by the kernel on its first write: for a 64 MiB output that costs
//! several times the update itself. On Linux the buffer is therefore advised
//! as transparent-huge-page backed (`MADV_HUGEPAGE`), which turns thousands
//! of faults into a few dozen.

use core::mem::MaybeUninit;

use crate::Element;

/// Below this many bytes the advice is not worth a system call.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// Room for `n` elements, uninitialised, advised for huge pages when large.
/// Fill it through [`crate::Theta::Into`].
pub fn uninit_slice<A: Element>(n: usize) -> Box<[MaybeUninit<A>]> {
    let mut b = Box::new_uninit_slice(n);
    advise_huge_pages(&mut b);
    b
}

#[cfg(target_os = "linux")]
fn advise_huge_pages<A>(v: &mut [MaybeUninit<A>]) {
    const HUGE: usize = 2 << 20;
    let bytes = size_of_val(v);
    if bytes < HUGE_PAGE_MIN_BYTES {
        return;
    }
    let start = v.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE);
    let end = (start + bytes) / HUGE * HUGE;
    if end > first {
        // SAFETY: `[first, end)` lies inside the allocation behind `v`, which
        // we own mutably, and is aligned to 2 MiB (a multiple of the page
        // size). MADV_HUGEPAGE only changes how the kernel backs those pages,
        // not what they hold. A failure (an old kernel, THP disabled) leaves
        // the ordinary pages, so it is ignored.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<A>(_: &mut [MaybeUninit<A>]) {}
