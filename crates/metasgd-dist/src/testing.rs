//! Fault injection for the tests and `mpi-check` (feature `testing`).

use std::cell::Cell;

use crate::Collective;

/// A rank that can be told to die at its n-th collective call from now, as
/// a killed or crashed process would: `die` ends it (a panic in a thread
/// group, which then breaks as an MPI job does; `process::exit` under MPI).
pub struct Dying<C> {
    inner: C,
    countdown: Cell<usize>,
    die: fn(usize) -> !,
}

impl<C: Collective> Dying<C> {
    /// `inner`, not armed; `die` receives the rank.
    pub fn new(inner: C, die: fn(usize) -> !) -> Self {
        Self {
            inner,
            countdown: Cell::new(0),
            die,
        }
    }

    /// Dies at the `n`-th collective call from now (0: never).
    pub fn arm(&self, n: usize) {
        self.countdown.set(n);
    }

    fn tick(&self) {
        match self.countdown.get() {
            0 => {}
            1 => (self.die)(self.inner.rank()),
            n => self.countdown.set(n - 1),
        }
    }
}

impl<C: Collective> Collective for Dying<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn all_to_all(&self, send: &[u8], recv: &mut [u8]) {
        self.tick();
        self.inner.all_to_all(send, recv);
    }
    fn all_gather(&self, send: &[u8], recv: &mut [u8]) {
        self.tick();
        self.inner.all_gather(send, recv);
    }
}
