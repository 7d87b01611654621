//! Sharded checkpoints: one file per rank, re-partitioned on load.
//!
//! Rank `r` of `R` writes `shard-{r:05}-of-{R:05}.safetensors`: `metasgd`'s
//! checkpoint format (hyperparameters, counters, and its real learning
//! rates as `alpha.0`, a 1-d tensor; no slot before the first step) plus
//! `__metadata__` keys `shard_rank`, `shard_ranks`, `shard_offset` (where
//! its rates start in the flat buffer), `global_len` and `shapes` (the
//! tensor shapes, e.g. `[[3,4],[4],[]]`). Once every rank has written,
//! rank 0 removes the shards of any other rank count. Loading on any rank
//! count reads the files whose shards overlap the new one (from the
//! complete set with the most steps, should an interrupted save have left
//! two).

use std::path::{Path, PathBuf};

use metasgd_core::{Error, MetaSGD, Result};
use metasgd_kernels::Element;
use ndarray::{ArrayD, IxDyn};

use crate::sharded::{agree, offsets};
use crate::{Collective, Partition, ShardedMetaSGD};

const KEYS: [&str; 5] = [
    "shard_rank",
    "shard_ranks",
    "shard_offset",
    "global_len",
    "shapes",
];

/// The file rank `rank` of `ranks` writes in `dir`.
pub(crate) fn shard_file(dir: &Path, rank: usize, ranks: usize) -> PathBuf {
    dir.join(format!("shard-{rank:05}-of-{ranks:05}.safetensors"))
}

fn shapes_text(shapes: &[Vec<usize>]) -> String {
    let inner: Vec<String> = shapes
        .iter()
        .map(|s| {
            format!(
                "[{}]",
                s.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    format!("[{}]", inner.join(","))
}

/// The rank counts of the complete shard sets in `dir` (every rank's file present).
fn complete_sets(dir: &Path) -> Result<Vec<usize>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io_at(dir, &e))?;
    let mut found: std::collections::BTreeMap<usize, std::collections::BTreeSet<usize>> =
        Default::default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name
            .strip_prefix("shard-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            && let Some((r, of)) = rest.split_once("-of-")
            && let (Ok(r), Ok(n)) = (r.parse::<usize>(), of.parse::<usize>())
        {
            found.entry(n).or_default().insert(r);
        }
    }
    if found.is_empty() {
        return Err(Error::invalid_checkpoint(
            "file",
            format!("no shard-*-of-*.safetensors files in {}", dir.display()),
        ));
    }
    let complete: Vec<usize> = found
        .iter()
        .filter(|(n, ranks)| **n > 0 && ranks.len() == **n && ranks.iter().all(|r| r < n))
        .map(|(n, _)| *n)
        .collect();
    if complete.is_empty() {
        let have: Vec<String> = found
            .iter()
            .map(|(n, r)| format!("{} of {n}", r.len()))
            .collect();
        return Err(Error::invalid_checkpoint(
            "file",
            format!(
                "no complete set of shards in {} (found {})",
                dir.display(),
                have.join(", ")
            ),
        ));
    }
    Ok(complete)
}

/// The set to load: the complete one with the most steps (a save that was
/// interrupted before the old set was removed leaves two).
fn newest_set<A: Element>(dir: &Path) -> Result<usize> {
    let sets = complete_sets(dir)?;
    if let [only] = sets[..] {
        return Ok(only);
    }
    let mut best: Option<(usize, usize)> = None;
    for n in sets {
        let path = shard_file(dir, 0, n);
        let bytes = std::fs::read(&path).map_err(|e| Error::io_at(&path, &e))?;
        let (opt, _) = MetaSGD::<A>::from_state_bytes_with_metadata(&bytes, &KEYS)?;
        let steps = opt.get_step_count() + opt.skipped_steps();
        if best.is_none_or(|(s, _)| steps > s) {
            best = Some((steps, n));
        }
    }
    best.map(|(_, n)| n)
        .ok_or_else(|| Error::invalid_checkpoint("file", "no shard set"))
}

/// Everything observable of a shard file's optimizer but its rates.
fn settings<A: Element>(o: &MetaSGD<A>) -> (u64, u64, usize, usize, usize, bool) {
    (
        o.get_base_lr().bits(),
        o.get_alpha_lr().bits(),
        o.get_inner_steps(),
        o.get_step_count(),
        o.skipped_steps(),
        o.per_param_lrs().is_empty(),
    )
}

impl<A: Element, C: Collective> ShardedMetaSGD<A, C> {
    /// Writes this rank's shard to `dir/shard-{rank}-of-{ranks}.safetensors`
    /// (atomically, like `MetaSGD::save_state`). Every rank calls it with the
    /// same directory (shared storage across machines, or gather the files
    /// before loading); every rank learns whether all succeeded.
    pub fn save_state(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let me = self.comm.rank();
        let local = self.write_shard(dir, me);
        agree(&self.comm, local.as_ref().err())?;
        // Every rank's shard is on disk: shards of other rank counts (an
        // older layout) are out of date. Rank 0 removes them.
        let cleaned = if me == 0 {
            self.remove_other_sets(dir)
        } else {
            Ok(())
        };
        agree(&self.comm, cleaned.as_ref().err())?;
        cleaned
    }

    fn remove_other_sets(&self, dir: &Path) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io_at(dir, &e))?;
        let mine = format!("-of-{:05}.safetensors", self.part.ranks);
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("shard-")
                && name.ends_with(".safetensors")
                && !name.ends_with(&mine)
            {
                std::fs::remove_file(entry.path()).map_err(|e| Error::io_at(&entry.path(), &e))?;
            }
        }
        Ok(())
    }

    fn write_shard(&self, dir: &Path, me: usize) -> Result<()> {
        let real = self.part.real(me);
        let slots: Vec<ArrayD<A>> = match self.inner.per_param_lrs().first() {
            Some(a) => {
                let v: Vec<A> = a.iter().take(real.len()).copied().collect();
                vec![ArrayD::from_shape_vec(IxDyn(&[real.len()]), v).expect("1-d")]
            }
            None => Vec::new(),
        };
        let mut shard = self.inner.clone();
        shard.reset_per_param_lr();
        let shard = if slots.is_empty() {
            shard
        } else {
            shard.with_state_slots(slots)?
        };
        let extra = [
            ("shard_rank", me.to_string()),
            ("shard_ranks", self.part.ranks.to_string()),
            ("shard_offset", real.start.to_string()),
            ("global_len", self.part.global_len.to_string()),
            ("shapes", shapes_text(&self.shapes)),
        ];
        shard.save_state_with_metadata(shard_file(dir, me, self.part.ranks), &extra)
    }

    /// Loads a sharded checkpoint from `dir`, written on any number of
    /// ranks, onto this group: each rank reads the files whose shards
    /// overlap its own and keeps its new shard. `shapes` must be those the
    /// checkpoint was written with. Collective: every rank calls it; an
    /// error on any rank is an error on every rank.
    pub fn load_state(comm: C, dir: impl AsRef<Path>, shapes: Vec<Vec<usize>>) -> Result<Self> {
        let local = Self::read_shard(&comm, dir.as_ref(), &shapes);
        agree(&comm, local.as_ref().err())?;
        let inner = local?;
        let (offsets, total) = offsets(&shapes);
        let part = Partition::new(total, comm.size());
        Ok(Self::assemble(comm, inner, shapes, offsets, part))
    }

    fn read_shard(comm: &C, dir: &Path, shapes: &[Vec<usize>]) -> Result<MetaSGD<A>> {
        let old_ranks = newest_set::<A>(dir)?;
        let (_, total) = offsets(shapes);
        let old = Partition::new(total, old_ranks);
        let new = Partition::new(total, comm.size());
        let mine = new.shard(comm.rank());
        let mut rates: Vec<A> = Vec::new();
        let mut first: Option<MetaSGD<A>> = None;
        for r in 0..old_ranks {
            let real = old.real(r);
            let overlaps = real.start < mine.end.min(total) && mine.start < real.end;
            if r != 0 && !overlaps {
                continue;
            }
            let path = shard_file(dir, r, old_ranks);
            let bytes = std::fs::read(&path).map_err(|e| Error::io_at(&path, &e))?;
            let (opt, meta) = MetaSGD::<A>::from_state_bytes_with_metadata(&bytes, &KEYS)?;
            let expect = [
                ("shard_rank", r.to_string()),
                ("shard_ranks", old_ranks.to_string()),
                ("shard_offset", real.start.to_string()),
                ("global_len", total.to_string()),
                ("shapes", shapes_text(shapes)),
            ];
            for (k, want) in expect {
                if meta[k] != want {
                    return Err(Error::invalid_checkpoint(
                        format!("__metadata__.{k}"),
                        format!("{} in {}, expected {want}", meta[k], path.display()),
                    ));
                }
            }
            let lrs = opt.per_param_lrs();
            if let Some(a) = lrs.first() {
                if lrs.len() != 1 || a.shape() != [real.len()] {
                    return Err(Error::invalid_checkpoint(
                        "alpha.0",
                        format!(
                            "shape {:?} in {}, expected [{}]",
                            a.shape(),
                            path.display(),
                            real.len()
                        ),
                    ));
                }
            } else if lrs.len() > 1 {
                return Err(Error::invalid_checkpoint(
                    "alpha.0",
                    "a shard holds one slot",
                ));
            }
            if let Some(f) = &first
                && (settings(f) != settings(&opt) || f.get_non_finite() != opt.get_non_finite())
            {
                return Err(Error::invalid_checkpoint(
                    "file",
                    format!(
                        "{} disagrees with shard 0 on settings or counters",
                        path.display()
                    ),
                ));
            }
            if overlaps && let Some(a) = lrs.first() {
                // Keep the part of this old shard that falls in the new one.
                let (lo, hi) = (real.start.max(mine.start), real.end.min(mine.end));
                rates.resize(hi - mine.start, A::ZERO);
                for i in lo..hi {
                    rates[i - mine.start] = a[i - real.start];
                }
            }
            if first.is_none() {
                first = Some(opt);
            }
        }
        let first = first.ok_or_else(|| Error::invalid_checkpoint("file", "no shard 0"))?;
        let mut inner = first;
        if inner.per_param_lrs().is_empty() {
            return Ok(inner);
        }
        // Padding (past the real elements) starts at the base rate, as a fresh shard would.
        let base = inner.get_base_lr();
        rates.resize(new.shard_len, base);
        for v in rates.iter_mut().skip(new.real(comm.rank()).len()) {
            *v = base;
        }
        inner.reset_per_param_lr();
        inner.with_state_slots(vec![
            ArrayD::from_shape_vec(IxDyn(&[new.shard_len]), rates).expect("1-d"),
        ])
    }
}
