//! Ranks as MPI processes (feature `mpi`): rsmpi's collectives on bytes.

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::Collective;

/// A [`Collective`] over an MPI communicator (usually the world of
/// `mpi::initialize()`).
pub struct MpiCollective {
    comm: SimpleCommunicator,
}

impl MpiCollective {
    /// Wraps a communicator.
    pub fn new(comm: SimpleCommunicator) -> Self {
        Self { comm }
    }

    /// The communicator, for the rest of the program's MPI calls.
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.comm
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        usize::try_from(self.comm.rank()).expect("MPI ranks are non-negative")
    }

    fn size(&self) -> usize {
        usize::try_from(self.comm.size()).expect("MPI sizes are positive")
    }

    fn all_to_all(&self, send: &[u8], recv: &mut [u8]) {
        self.comm.all_to_all_into(send, recv);
    }

    fn all_gather(&self, send: &[u8], recv: &mut [u8]) {
        self.comm.all_gather_into(send, recv);
    }
}
