//! How the flat parameter buffer is cut into shards.

use std::ops::Range;

/// A flat buffer of `global_len` elements, padded to `shard_len * ranks`,
/// cut into contiguous shards of `shard_len`: rank `r` owns
/// `[r * shard_len, (r + 1) * shard_len)`, of which the part below
/// `global_len` is real and the rest padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Real elements in all tensors together.
    pub global_len: usize,
    /// Ranks.
    pub ranks: usize,
    /// Elements per shard, padding included: `ceil(global_len / ranks)`.
    pub shard_len: usize,
}

impl Partition {
    /// The partition of `global_len` elements over `ranks` (at least 1).
    pub fn new(global_len: usize, ranks: usize) -> Self {
        let ranks = ranks.max(1);
        Self {
            global_len,
            ranks,
            shard_len: global_len.div_ceil(ranks),
        }
    }

    /// Rank `r`'s shard, padding included.
    pub fn shard(&self, r: usize) -> Range<usize> {
        r * self.shard_len..(r + 1) * self.shard_len
    }

    /// Rank `r`'s real elements (the shard without its padding).
    pub fn real(&self, r: usize) -> Range<usize> {
        let s = self.shard(r);
        s.start.min(self.global_len)..s.end.min(self.global_len)
    }

    /// The padded length.
    pub fn padded_len(&self) -> usize {
        self.shard_len * self.ranks
    }
}

#[cfg(test)]
mod tests {
    use super::Partition;

    #[test]
    fn shards_cover_everything_once() {
        for n in 0..40 {
            for ranks in 1..7 {
                let p = Partition::new(n, ranks);
                let mut covered = 0;
                for r in 0..ranks {
                    let real = p.real(r);
                    assert_eq!(real.start, covered.min(n).max(real.start));
                    covered += real.len();
                    assert!(p.shard(r).len() == p.shard_len);
                }
                assert_eq!(covered, n);
                assert!(p.padded_len() >= n && p.padded_len() < n + ranks);
            }
        }
    }
}
