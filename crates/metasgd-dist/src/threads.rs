//! Ranks as threads of one process: the collective the tests use, and a
//! way to run the sharded optimizer without MPI.

use std::sync::{Arc, Barrier, Mutex};

use crate::Collective;

/// Creates the members of an in-process group.
#[derive(Debug)]
pub struct ThreadGroup;

/// One rank of an in-process group: move it to its own thread.
#[derive(Debug)]
pub struct ThreadCollective {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    barrier: Barrier,
    /// What each rank contributed to the current operation.
    slots: Vec<Mutex<Vec<u8>>>,
}

impl ThreadGroup {
    /// `size` ranks; `None` for an empty group. Each must run on its own
    /// thread (collectives wait for all ranks).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(size: usize) -> Option<Vec<ThreadCollective>> {
        if size == 0 {
            return None;
        }
        let shared = Arc::new(Shared {
            barrier: Barrier::new(size),
            slots: (0..size).map(|_| Mutex::new(Vec::new())).collect(),
        });
        Some(
            (0..size)
                .map(|rank| ThreadCollective {
                    rank,
                    shared: Arc::clone(&shared),
                })
                .collect(),
        )
    }
}

impl ThreadCollective {
    /// This rank (also [`Collective::rank`]).
    pub fn rank_index(&self) -> usize {
        self.rank
    }

    fn deposit(&self, send: &[u8]) {
        let mut slot = self.shared.slots[self.rank]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slot.clear();
        slot.extend_from_slice(send);
    }

    /// Runs `read` on every rank's contribution, in rank order, between the
    /// two barriers that make the exchange safe.
    fn exchange(&self, send: &[u8], mut read: impl FnMut(usize, &[u8])) {
        self.deposit(send);
        self.shared.barrier.wait();
        for (r, slot) in self.shared.slots.iter().enumerate() {
            let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            read(r, &slot);
        }
        // Nobody overwrites a slot before everyone has read it.
        self.shared.barrier.wait();
    }
}

impl Collective for ThreadCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.slots.len()
    }

    fn all_to_all(&self, send: &[u8], recv: &mut [u8]) {
        let block = send.len() / self.size();
        let me = self.rank;
        self.exchange(send, |r, theirs| {
            recv[r * block..(r + 1) * block].copy_from_slice(&theirs[me * block..(me + 1) * block]);
        });
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) {
        let n = send.len();
        self.exchange(send, |r, theirs| {
            recv[r * n..(r + 1) * n].copy_from_slice(theirs)
        });
    }
}
