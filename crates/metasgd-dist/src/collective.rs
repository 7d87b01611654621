//! What ZeRO-1 needs from a transport.

/// The collective operations of a group of ranks, on bytes.
///
/// Every rank of the group must call the same operations in the same order
/// with buffers of the same sizes, as with MPI.
pub trait Collective {
    /// This rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Block `r` of `send` (its `len / size` bytes) goes to rank `r`;
    /// `recv` receives one block from every rank, in rank order.
    fn all_to_all(&self, send: &[u8], recv: &mut [u8]);
    /// Every rank's `send` (all of the same length) lands in `recv`, in rank order.
    fn all_gather(&self, send: &[u8], recv: &mut [u8]);

    /// One `u64` from every rank, in rank order: how the ranks agree on a
    /// status before anything moves.
    fn all_gather_u64(&self, value: u64) -> Vec<u64>
    where
        Self: Sized,
    {
        let mut out = vec![0u8; 8 * self.size()];
        self.all_gather(&value.to_le_bytes(), &mut out);
        out.chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect()
    }
}
