//! Stand-in for the parallel kernel when the `parallel` feature is off: the
//! same API, run on the calling thread, so call sites carry no `cfg`.

use crate::{Element, Update};

/// Whether this build has the parallel kernel.
pub const AVAILABLE: bool = false;

/// Tasks per thread (unused without the `parallel` feature).
pub const TASKS_PER_THREAD: usize = 8;

/// The fewest elements per parallel task (unused without the `parallel` feature).
pub const PAR_CHUNK: usize = 16 * 1024;

/// Always 1 without the `parallel` feature.
pub fn current_num_threads() -> usize {
    1
}

/// Runs `f` on each update, one after another.
pub fn for_each_chunk<'a, A: Element>(
    updates: impl IntoIterator<Item = Update<'a, A>>,
    f: impl Fn(Update<'a, A>) + Send + Sync,
) {
    updates.into_iter().for_each(f);
}
