//! Output buffers for the allocating step.
//!
//! A large fresh allocation comes straight from the operating system, and
//! every 4 KiB page of it is faulted in and zeroed on its first write: for a
//! 64 MiB output that costs several times the update itself. On Linux the
//! buffer is therefore advised as transparent-huge-page backed
//! (`MADV_HUGEPAGE`), which turns thousands of faults into a few dozen.

use crate::Element;

/// Below this many bytes the advice is not worth a system call.
const HUGE_PAGE_MIN_BYTES: usize = 4 << 20;

/// A zero-filled `Vec` of `n` elements, advised for huge pages when large.
///
/// The zeros come from `calloc`-style allocation, so no separate fill pass
/// touches the pages before the kernel writes them.
pub fn zeroed_vec<A: Element>(n: usize) -> Vec<A> {
    let mut v = vec![A::ZERO; n];
    advise_huge_pages(&mut v);
    v
}

#[cfg(target_os = "linux")]
fn advise_huge_pages<A>(v: &mut [A]) {
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
        // size). MADV_HUGEPAGE only changes how the kernel backs those pages;
        // their contents (still zero) stay as they are. A failure (an old
        // kernel, THP disabled) leaves the ordinary pages, so it is ignored.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages<A>(_: &mut [A]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_of_any_size() {
        for n in [0, 1, 1000, (HUGE_PAGE_MIN_BYTES / 4) * 3 + 5] {
            let v = zeroed_vec::<f32>(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|x| x.to_bits() == 0));
        }
    }
}
