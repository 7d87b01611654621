//! The parallel kernel: every tensor cut into chunks, the chunks of all
//! tensors scheduled together on the caller's rayon pool (multi-tensor
//! apply), each chunk run by the serial SIMD loop.
//!
//! Scheduling allocates nothing: updates are gathered 64 at a time in
//! an array on the stack and split recursively with `rayon::join` (the list
//! where half its elements lie, a single tensor in halves) down to chunks of
//! at least [`PAR_CHUNK`] elements, more for large calls (about
//! [`TASKS_PER_THREAD`] tasks per thread). Without the `parallel` feature
//! the same code runs on the calling thread (`imp` below is the only
//! difference).

use crate::{Element, Update};

/// Whether this build has the parallel kernel (the `parallel` feature).
pub(crate) const AVAILABLE: bool = cfg!(feature = "parallel");

/// Tasks per pool thread a large call is cut into: enough for load balance,
/// few enough that scheduling costs vanish (on 1M elements and 2 threads,
/// 16 tasks of 64K run 4% faster than 64 tasks of 16K).
pub const TASKS_PER_THREAD: usize = 8;

/// The fewest elements per parallel task: about 3 µs of f32 work, large
/// enough that rayon's per-task cost is small next to it, small enough that
/// a call just above [`crate::PAR_THRESHOLD`] already splits (measured with
/// `kernel-compare threshold`: 8K-element chunks gained nothing at 16K
/// elements, 16K-element chunks make 32K elements 1.55x faster on 2 threads).
pub const PAR_CHUNK: usize = 16 * 1024;

/// Tensors gathered for one parallel pass (a list of more runs in several).
const BATCH: usize = 64;

/// Chunk boundaries fall on multiples of this many elements, so that no
/// chunk ends in a partial SIMD line.
const SPLIT_ALIGN: usize = 64;

#[cfg(feature = "parallel")]
mod imp {
    pub(super) fn current_num_threads() -> usize {
        rayon::current_num_threads()
    }

    pub(super) fn join(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
        rayon::join(a, b);
    }
}

#[cfg(not(feature = "parallel"))]
mod imp {
    pub(super) fn current_num_threads() -> usize {
        1
    }

    pub(super) fn join(a: impl FnOnce() + Send, b: impl FnOnce() + Send) {
        a();
        b();
    }
}

/// Threads in the pool the caller is running on (`pool.install` is
/// honoured); 1 without the `parallel` feature.
pub fn current_num_threads() -> usize {
    imp::current_num_threads()
}

/// `f` of every `block`-element block of `x` (the last may be shorter), in
/// order, computed on the current pool.
pub(crate) fn map_blocks<A: Element>(
    x: &[A],
    block: usize,
    f: impl Fn(&[A]) -> A + Sync,
) -> Vec<A> {
    let mut out = vec![A::ZERO; x.len().div_ceil(block)];
    fill_blocks(x, block, &mut out, &f);
    out
}

/// Halves `out` (and the blocks of `x` it stands for) down to a task size.
fn fill_blocks<A: Element>(x: &[A], block: usize, out: &mut [A], f: &(impl Fn(&[A]) -> A + Sync)) {
    if out.len() * block <= PAR_CHUNK || out.len() < 2 {
        for (o, b) in out.iter_mut().zip(x.chunks(block)) {
            *o = f(b);
        }
        return;
    }
    let mid = out.len() / 2;
    let (ol, or) = out.split_at_mut(mid);
    let (xl, xr) = x.split_at((mid * block).min(x.len()));
    imp::join(
        || fill_blocks(xl, block, ol, f),
        || fill_blocks(xr, block, or, f),
    );
}

/// Cuts `updates` into chunks and runs `f` on each, in parallel on the
/// current pool; on a one-thread pool `f` runs on each update whole.
pub(crate) fn for_each_chunk<'a, A: Element>(
    updates: impl IntoIterator<Item = Update<'a, A>>,
    f: impl Fn(Update<'a, A>) + Sync,
) {
    let threads = current_num_threads();
    if threads <= 1 {
        updates.into_iter().for_each(f);
        return;
    }
    let mut batch: [Option<Update<'a, A>>; BATCH] = [const { None }; BATCH];
    let (mut n, mut total) = (0, 0);
    for u in updates {
        total += u.len();
        batch[n] = Some(u);
        n += 1;
        if n == BATCH {
            run_list(&mut batch, total, chunk_size(total, threads), &f);
            (n, total) = (0, 0);
        }
    }
    run_list(&mut batch[..n], total, chunk_size(total, threads), &f);
}

fn chunk_size(total: usize, threads: usize) -> usize {
    (total / (threads * TASKS_PER_THREAD)).max(PAR_CHUNK)
}

/// Runs the updates in `list` (`total` elements together).
fn run_list<'a, A: Element>(
    list: &mut [Option<Update<'a, A>>],
    total: usize,
    size: usize,
    f: &(impl Fn(Update<'a, A>) + Sync),
) {
    if list.len() == 1 || total <= size {
        for u in list.iter_mut().filter_map(Option::take) {
            run_one(u, size, f);
        }
        return;
    }
    // Cut where half the elements lie, keeping at least one update a side.
    let len = |u: &Option<Update<'a, A>>| u.as_ref().map_or(0, Update::len);
    let (mut mid, mut left) = (1, len(&list[0]));
    while mid + 1 < list.len() && left + len(&list[mid]) <= total / 2 {
        left += len(&list[mid]);
        mid += 1;
    }
    let (l, r) = list.split_at_mut(mid);
    imp::join(
        || run_list(l, left, size, f),
        || run_list(r, total - left, size, f),
    );
}

/// Runs one update, halving it while it is longer than `size`.
fn run_one<'a, A: Element>(u: Update<'a, A>, size: usize, f: &(impl Fn(Update<'a, A>) + Sync)) {
    if u.len() <= size {
        return f(u);
    }
    let mid = (u.len() / 2).next_multiple_of(SPLIT_ALIGN).min(u.len());
    let (l, r) = u.split_at(mid);
    imp::join(|| run_one(l, size, f), || run_one(r, size, f));
}
