//! Ranks as threads of one process: the collective the tests use, and a
//! way to run the sharded optimizer without MPI.
//!
//! As with MPI, a rank that dies ends the job: a rank whose thread panics
//! marks the group broken, and every other rank's next (or current)
//! collective call panics too, instead of waiting forever.

use std::sync::{Arc, Condvar, Mutex};

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
    barrier: BreakableBarrier,
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
            barrier: BreakableBarrier::new(size),
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
        self.shared.barrier.wait(self.rank);
        for (r, slot) in self.shared.slots.iter().enumerate() {
            let slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            read(r, &slot);
        }
        // Nobody overwrites a slot before everyone has read it.
        self.shared.barrier.wait(self.rank);
    }
}

impl Drop for ThreadCollective {
    /// A rank dropped while its thread panics has died: the others learn it.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.barrier.break_by(self.rank);
        }
    }
}

/// A barrier that a dying rank can break (std's `Barrier` cannot).
#[derive(Debug)]
struct BreakableBarrier {
    size: usize,
    state: Mutex<BarrierState>,
    turn: Condvar,
}

#[derive(Debug)]
struct BarrierState {
    arrived: usize,
    round: u64,
    dead: Option<usize>,
}

impl BreakableBarrier {
    fn new(size: usize) -> Self {
        Self {
            size,
            state: Mutex::new(BarrierState {
                arrived: 0,
                round: 0,
                dead: None,
            }),
            turn: Condvar::new(),
        }
    }

    /// Waits for every rank; panics if a rank has died.
    fn wait(&self, me: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let round = s.round;
        s.arrived += 1;
        if s.arrived == self.size {
            s.arrived = 0;
            s.round += 1;
            self.turn.notify_all();
        }
        while s.round == round {
            if let Some(dead) = s.dead {
                drop(s);
                panic!("rank {me}: rank {dead} of the thread group died; the group is broken");
            }
            s = self.turn.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn break_by(&self, rank: usize) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.dead.get_or_insert(rank);
        self.turn.notify_all();
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
