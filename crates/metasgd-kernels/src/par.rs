//! The parallel kernel: every tensor cut into chunks, all chunks of all
//! tensors scheduled in one rayon pass (multi-tensor apply) on the caller's
//! pool, each chunk run by the serial SIMD kernel. Chunks hold at least
//! [`PAR_CHUNK`] elements, more for large calls (about [`TASKS_PER_THREAD`]
//! tasks per thread), so that rayon's per-task cost stays negligible.

use rayon::prelude::*;

use crate::{Element, Update};

/// Whether this build has the parallel kernel.
pub const AVAILABLE: bool = true;

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

/// Threads in the pool the caller is running on (`pool.install` is honoured).
pub fn current_num_threads() -> usize {
    rayon::current_num_threads()
}

/// Cuts `updates` into chunks (see the module docs) and runs `f` on each, all
/// in one pass on the current pool; on a one-thread pool `f` runs on each
/// update whole, as cutting would only add work. Benchmarks use it to run
/// baselines with exactly the kernels' scheduling.
pub fn for_each_chunk<'a, A: Element>(
    updates: impl IntoIterator<Item = Update<'a, A>>,
    f: impl Fn(Update<'a, A>) + Send + Sync,
) {
    if current_num_threads() <= 1 {
        updates.into_iter().for_each(f);
        return;
    }
    let chunks = split(updates);
    if chunks.len() <= 1 {
        chunks.into_iter().for_each(f);
    } else {
        chunks.into_par_iter().for_each(f);
    }
}

fn split<'a, A: Element>(updates: impl IntoIterator<Item = Update<'a, A>>) -> Vec<Update<'a, A>> {
    let updates: Vec<Update<'a, A>> = updates.into_iter().collect();
    let total: usize = updates.iter().map(Update::len).sum();
    let size = (total / (current_num_threads() * TASKS_PER_THREAD)).max(PAR_CHUNK);
    let mut chunks = Vec::new();
    for mut u in updates {
        while u.len() > size {
            let (head, rest) = u.split_at(size);
            chunks.push(head);
            u = rest;
        }
        if !u.is_empty() {
            chunks.push(u);
        }
    }
    chunks
}
