//! After the first step, the in-place steps allocate nothing: a counting
//! global allocator watches the test thread and every worker of the pool,
//! on 1 and 2 threads, serial and parallel sizes, lists, and strided views.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use metasgd::ndarray::{Array1, Array2, ArrayView1, ArrayViewMut1, s};
use metasgd::{MetaSGD, Optimizer};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the threads whose allocations count (the test's and the pool's).
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every method forwards to the system allocator unchanged; the
// counter is a side effect that allocates nothing itself.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if WATCHED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if WATCHED.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on watched threads.
fn count(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

fn data(n: usize, seed: u64) -> Array1<f32> {
    Array1::from(metasgd_kernels::testdata::values::<f32>(n, seed, 0))
}

#[test]
fn in_place_steps_allocate_nothing_after_the_first() {
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .start_handler(|_| WATCHED.with(|w| w.set(true)))
            .build()
            .unwrap();
        // Sizes below and above the parallel threshold, an empty and a 1-element tensor.
        let sizes = [300_000, 17, 0, 1, 70_001, 40_000];
        let mut params: Vec<Array1<f32>> = sizes.iter().map(|&n| data(n, 1)).collect();
        let grads: Vec<Array1<f32>> = sizes.iter().map(|&n| data(n, 2)).collect();
        let mut big = data(500_000, 3);
        let big_grad = data(500_000, 4);
        // Columns 1..60 of a matrix: a strided view with contiguous rows.
        let mut matrix = Array2::<f32>::from_elem((300, 64), 0.5);
        let matrix_grad = Array2::<f32>::from_elem((300, 59), 0.25);
        // Every other element: a view with no contiguous rows at all.
        let mut sparse = data(2000, 5);
        let sparse_grad = data(1000, 6);

        let mut single = MetaSGD::new(0.01_f32);
        let mut list = MetaSGD::new(0.01_f32);
        let mut columns = MetaSGD::new(0.01_f32);
        let mut every_other = MetaSGD::new(0.01_f32);
        // The caller's lists of views are made once (they are the caller's
        // allocations, not the optimizer's).
        let mut views: Vec<ArrayViewMut1<f32>> = params.iter_mut().map(|p| p.view_mut()).collect();
        let grad_views: Vec<ArrayView1<f32>> = grads.iter().map(|g| g.view()).collect();
        WATCHED.with(|w| w.set(true));
        pool.install(|| {
            for round in 0..3 {
                let n = count(|| {
                    single
                        .step_inplace(big.view_mut(), big_grad.view())
                        .unwrap();
                    list.step_list_inplace(&mut views, &grad_views).unwrap();
                    columns
                        .step_inplace(matrix.slice_mut(s![.., 1..60]), matrix_grad.view())
                        .unwrap();
                    every_other
                        .step_inplace(sparse.slice_mut(s![..;2]), sparse_grad.view())
                        .unwrap();
                });
                // The first round creates the per-parameter state (and the
                // pool's thread-local bookkeeping); later rounds allocate nothing.
                if round > 0 {
                    assert_eq!(n, 0, "{threads} thread(s), round {round}: {n} allocations");
                }
            }
        });
        // The counter does see allocations: the allocating step makes its output.
        let allocating = pool.install(|| count(|| drop(single.step(&big, &big_grad).unwrap())));
        assert!(allocating >= 1, "the counting allocator saw nothing");
        WATCHED.with(|w| w.set(false));
        assert_eq!(single.get_step_count(), 4);
        assert_eq!(list.get_step_count(), 3);
    }
}
