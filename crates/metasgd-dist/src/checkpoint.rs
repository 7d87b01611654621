//! Sharded checkpoints: a generation per save, committed by a record that
//! rank 0 writes last.
//!
//! ```text
//! dir/COMMIT                                      the commit record, replaced atomically
//! dir/gen-00000007/shard-00000-of-00002.safetensors  rank 0's shard (and the caller's tensors)
//! dir/gen-00000007/shard-00001-of-00002.safetensors  rank 1's shard
//! dir/gen-00000006/...                            older committed generations (`keep_last`)
//! ```
//!
//! A shard is `metasgd`'s checkpoint format (checksummed; hyperparameters,
//! counters, and the rank's real rates as `alpha.0`, a 1-d tensor; no slot
//! before the first step) plus `__metadata__` keys `shard_rank`,
//! `shard_ranks`, `shard_offset` (where its rates start in the flat buffer),
//! `global_len` and `shapes` (e.g. `[[3,4],[4],[]]`).
//!
//! One save ([`ShardedMetaSGD::save_state`]):
//! 1. rank 0 picks the generation (one past every generation in `dir`);
//! 2. every rank writes its shard into `gen-N/` and syncs it; the ranks
//!    agree that every write succeeded;
//! 3. rank 0 writes the commit record (the generation, the rank count, the
//!    shapes, each shard's size and CRC32C, the kept generations, and a
//!    CRC32C of the record itself) atomically and last;
//! 4. only then does rank 0 remove the generations older than the newest
//!    `keep_last` (default 2).
//!
//! A process killed anywhere before step 3 leaves the previous record, which
//! names a complete previous generation: the job resumes from it. Loading
//! reads the record, checks each shard's size and checksum against it before
//! decoding, and re-partitions onto any rank count. Directories written
//! before the commit protocol (shard files directly in `dir`, no record)
//! still load.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use metasgd_core::checkpoint::{
    NamedTensors, at_path, crc32c_hex, read_bounded, sync_dir, write_atomically,
};
use metasgd_core::{Error, MetaSGD, Result};
use metasgd_kernels::Element;
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use serde::{Deserialize, Serialize};

use crate::agree::agree;
use crate::sharded::{offsets, padding_rate};
use crate::{Collective, Partition, ShardedMetaSGD};

/// The commit record's file name.
pub const COMMIT_FILE: &str = "COMMIT";

const RECORD_FORMAT: &str = "metasgd-sharded";
const RECORD_VERSION: u32 = 1;
/// Bounds on what a record may claim, checked before anything is read.
const MAX_RECORD_BYTES: u64 = 16 << 20;
const MAX_RANKS: usize = 1 << 20;
const MAX_KEPT: usize = 1 << 10;

pub(crate) const KEYS: [&str; 5] = [
    "shard_rank",
    "shard_ranks",
    "shard_offset",
    "global_len",
    "shapes",
];

/// The file name of rank `rank` of `ranks`.
fn shard_name(rank: usize, ranks: usize) -> String {
    format!("shard-{rank:05}-of-{ranks:05}.safetensors")
}

fn generation_name(generation: u64) -> String {
    format!("gen-{generation:08}")
}

/// The generation a directory entry names, if it is one.
fn parse_generation(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("gen-")?;
    (digits.len() >= 8 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
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

/// The commit record (`dir/COMMIT`): which generation of a sharded
/// checkpoint is committed, its rank count and shapes, each shard's size and
/// CRC32C, and the kept generations; written by rank 0 last, atomically, as
/// pretty JSON followed by a line `crc32c <8 hex digits>` of the JSON.
///
/// Loading goes through it; it is public so that tools can tell which
/// generation a directory holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRecord {
    format: String,
    version: u32,
    /// The committed generation (`gen-{generation:08}`).
    generation: u64,
    /// Ranks that wrote it (one shard each).
    ranks: usize,
    global_len: usize,
    shapes: Vec<Vec<usize>>,
    shards: Vec<ShardEntry>,
    /// Committed generations on disk, oldest first, this one last.
    kept: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardEntry {
    file: String,
    bytes: u64,
    crc32c: String,
}

impl CommitRecord {
    /// The record's bytes: pretty JSON, then a line with its CRC32C.
    fn to_bytes(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid_checkpoint(COMMIT_FILE, e.to_string()))?;
        Ok(format!("{body}\ncrc32c {}\n", crc32c_hex(body.as_bytes())).into_bytes())
    }

    /// The committed generation: its shards are in `gen-{generation:08}/`.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The number of ranks (and shards) of the committed generation.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The tensor shapes the checkpoint was written with.
    pub fn shapes(&self) -> &[Vec<usize>] {
        &self.shapes
    }

    /// Parses and checks a record: its checksum first, then every field
    /// ([`Error::InvalidCheckpoint`] otherwise). The file names it lists
    /// must be exactly the expected ones: a record never makes the loader
    /// open another path.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::invalid_checkpoint(COMMIT_FILE, reason);
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
        let (body, tail) = text
            .rsplit_once("\ncrc32c ")
            .ok_or_else(|| bad("no checksum line".into()))?;
        let stored = tail
            .strip_suffix('\n')
            .filter(|h| h.len() == 8 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| bad("the checksum line is not 8 lowercase hex digits".into()))?;
        let computed = crc32c_hex(body.as_bytes());
        if stored != computed {
            return Err(bad(format!(
                "checksum mismatch: stored {stored}, computed {computed} (the record is corrupt)"
            )));
        }
        let r: CommitRecord = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
        if r.format != RECORD_FORMAT || r.version != RECORD_VERSION {
            return Err(bad(format!(
                "format {:?} version {}, expected {RECORD_FORMAT:?} version {RECORD_VERSION}",
                r.format, r.version
            )));
        }
        if r.ranks == 0 || r.ranks > MAX_RANKS || r.shards.len() != r.ranks {
            return Err(bad(format!(
                "{} ranks with {} shards",
                r.ranks,
                r.shards.len()
            )));
        }
        for (rank, s) in r.shards.iter().enumerate() {
            if s.file != shard_name(rank, r.ranks) {
                return Err(bad(format!(
                    "shard {rank} is named {:?}, expected {:?}",
                    s.file,
                    shard_name(rank, r.ranks)
                )));
            }
            if s.crc32c.len() != 8 || !s.crc32c.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(format!("shard {rank}: checksum {:?}", s.crc32c)));
            }
        }
        let (_, total) = offsets(&r.shapes);
        if total != r.global_len {
            return Err(bad(format!(
                "global_len {} but the shapes hold {total}",
                r.global_len
            )));
        }
        if r.generation == 0
            || r.kept.len() > MAX_KEPT
            || r.kept.last() != Some(&r.generation)
            || r.kept.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(bad(format!(
                "generation {} with kept {:?}",
                r.generation, r.kept
            )));
        }
        Ok(r)
    }

    /// Reads `dir/COMMIT`; `Ok(None)` when there is none.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(COMMIT_FILE);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io_at(&path, &e)),
            Ok(_) => {
                let bytes = read_bounded(&path, MAX_RECORD_BYTES)?;
                Self::parse(&bytes).map(Some).map_err(|e| at_path(&path, e))
            }
        }
    }
}

/// One past every generation in `dir` (committed or not), creating `dir`.
fn next_generation(dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io_at(dir, &e))?;
    let mut newest = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io_at(dir, &e))? {
        let entry = entry.map_err(|e| Error::io_at(dir, &e))?;
        if let Some(g) = parse_generation(&entry.file_name().to_string_lossy()) {
            newest = newest.max(g);
        }
    }
    if let Ok(Some(r)) = CommitRecord::read(dir) {
        newest = newest.max(r.generation);
    }
    newest
        .checked_add(1)
        .ok_or_else(|| Error::invalid_checkpoint("generation", "no generation number left"))
}

/// Where a checkpoint's shards are.
enum Source {
    /// A committed generation.
    Committed { dir: PathBuf, record: CommitRecord },
    /// The layout before the commit protocol: shard files in `dir`.
    Legacy { dir: PathBuf, ranks: usize },
}

impl Source {
    fn find<A: Element>(dir: &Path) -> Result<Self> {
        match CommitRecord::read(dir)? {
            Some(record) => Ok(Source::Committed {
                dir: dir.join(generation_name(record.generation)),
                record,
            }),
            None => Ok(Source::Legacy {
                dir: dir.to_path_buf(),
                ranks: legacy_newest_set::<A>(dir)?,
            }),
        }
    }

    fn ranks(&self) -> usize {
        match self {
            Source::Committed { record, .. } => record.ranks,
            Source::Legacy { ranks, .. } => *ranks,
        }
    }

    /// Shard `rank`'s bytes; for a committed generation, checked against
    /// the record's size and checksum before anything else reads them.
    fn read(&self, rank: usize) -> Result<(PathBuf, Vec<u8>)> {
        match self {
            Source::Committed { dir, record } => {
                let entry = &record.shards[rank];
                let path = dir.join(shard_name(rank, record.ranks));
                let bytes = read_bounded(&path, entry.bytes)?;
                let crc = crc32c_hex(&bytes);
                if bytes.len() as u64 != entry.bytes || crc != entry.crc32c {
                    return Err(Error::invalid_checkpoint(
                        "file",
                        format!(
                            "{} is {} bytes with checksum {crc}; the commit record says {} bytes, {} (the shard is corrupt)",
                            path.display(),
                            bytes.len(),
                            entry.bytes,
                            entry.crc32c
                        ),
                    ));
                }
                Ok((path, bytes))
            }
            Source::Legacy { dir, ranks } => {
                let path = dir.join(shard_name(rank, *ranks));
                let bytes = std::fs::read(&path).map_err(|e| Error::io_at(&path, &e))?;
                Ok((path, bytes))
            }
        }
    }
}

/// The rank counts of the complete legacy shard sets in `dir`.
fn legacy_complete_sets(dir: &Path) -> Result<Vec<usize>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io_at(dir, &e))?;
    let mut found: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
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
            format!(
                "no {COMMIT_FILE} record and no shard-*-of-*.safetensors files in {}",
                dir.display()
            ),
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

/// The legacy set to load: the complete one with the most steps.
fn legacy_newest_set<A: Element>(dir: &Path) -> Result<usize> {
    let sets = legacy_complete_sets(dir)?;
    if let [only] = sets[..] {
        return Ok(only);
    }
    let mut best: Option<(usize, usize)> = None;
    for n in sets {
        let path = dir.join(shard_name(0, n));
        let bytes = std::fs::read(&path).map_err(|e| Error::io_at(&path, &e))?;
        let opt = MetaSGD::<A>::from_state_bytes_with(&bytes, &KEYS)?.optimizer;
        let steps = opt.get_step_count() + opt.skipped_steps();
        if best.is_none_or(|(s, _)| steps > s) {
            best = Some((steps, n));
        }
    }
    best.map(|(_, n)| n)
        .ok_or_else(|| Error::invalid_checkpoint("file", "no shard set"))
}

impl<A: Element, C: Collective> ShardedMetaSGD<A, C> {
    /// Keeps the newest `n` committed generations on disk (default 2; 0 is
    /// stored as 1): older ones are removed after each commit.
    pub fn with_keep_last(mut self, n: usize) -> Self {
        self.keep_last = n.max(1);
        self
    }

    /// Saves this rank's shard as a new generation in `dir`, committed by
    /// rank 0 once every rank's shard is on disk (see the module docs).
    /// Every rank calls it with the same directory (shared storage across
    /// machines). On error on any rank, every rank returns an error and the
    /// last committed generation is untouched.
    pub fn save_state(&self, dir: impl AsRef<Path>) -> Result<()> {
        self.save_state_with_tensors(dir, &[])
    }

    /// [`ShardedMetaSGD::save_state`] with the caller's tensors (the
    /// replicated model) in the same commit: rank 0 stores them once, in
    /// its shard; the other ranks' `tensors` are ignored. A crash can never
    /// leave a model of one step beside an optimizer of another.
    pub fn save_state_with_tensors(
        &self,
        dir: impl AsRef<Path>,
        tensors: &[(&str, ArrayViewD<'_, A>)],
    ) -> Result<()> {
        let dir = dir.as_ref();
        let me = self.comm.rank();
        // 1. Rank 0 picks the generation.
        let proposal = if me == 0 { next_generation(dir) } else { Ok(0) };
        agree(&self.comm, "save", proposal.as_ref().err())?;
        let generation = self.comm.all_gather_u64(*proposal.as_ref().unwrap_or(&0))[0];
        // 2. Every rank writes and syncs its shard.
        let written = self.write_shard(dir, generation, if me == 0 { tensors } else { &[] });
        agree(&self.comm, "save", written.as_ref().err())?;
        let (bytes, crc) = written.unwrap_or_default();
        let mut sizes = vec![0u8; 16 * self.comm.size()];
        let mine: Vec<u8> = [bytes.to_le_bytes(), u64::from(crc).to_le_bytes()].concat();
        self.comm.all_gather(&mine, &mut sizes);
        // 3. Rank 0 commits, atomically and last.
        let committed = if me == 0 {
            self.commit(dir, generation, &sizes)
        } else {
            Ok(None)
        };
        agree(&self.comm, "save", committed.as_ref().err())?;
        // 4. Only now may older generations go.
        let cleaned = match committed {
            Ok(Some(kept)) => remove_stale(dir, &kept),
            _ => Ok(()),
        };
        agree(&self.comm, "save", cleaned.as_ref().err())
    }

    /// Writes this rank's shard of `generation`; returns its size and CRC32C.
    fn write_shard(
        &self,
        dir: &Path,
        generation: u64,
        tensors: &[(&str, ArrayViewD<'_, A>)],
    ) -> Result<(u64, u32)> {
        let me = self.comm.rank();
        let real = self.part.real(me);
        // The real part of this rank's shard: its rates and the rule's state.
        let cut = |a: &ArrayD<A>| {
            let v: Vec<A> = a.iter().take(real.len()).copied().collect();
            ArrayD::from_shape_vec(IxDyn(&[real.len()]), v).expect("1-d")
        };
        let slots = self.inner.per_param_lrs().first().map(cut);
        let prev = self.inner.previous_gradients().first().map(cut);
        let mut shard = self.inner.clone();
        shard.reset_per_param_lr();
        let shard = shard
            .with_state_slots(slots.into_iter().collect())?
            .with_rule_state(prev.into_iter().collect())?;
        let extra = [
            ("shard_rank", me.to_string()),
            ("shard_ranks", self.part.ranks.to_string()),
            ("shard_offset", real.start.to_string()),
            ("global_len", self.part.global_len.to_string()),
            ("shapes", shapes_text(&self.shapes)),
        ];
        let bytes = shard.state_bytes_with(&extra, tensors)?;
        let gen_dir = dir.join(generation_name(generation));
        std::fs::create_dir_all(&gen_dir).map_err(|e| Error::io_at(&gen_dir, &e))?;
        write_atomically(&gen_dir.join(shard_name(me, self.part.ranks)), &bytes)?;
        Ok((bytes.len() as u64, crc32c::crc32c(&bytes)))
    }

    /// Rank 0: writes the commit record for `generation`; returns the kept
    /// generations (`None`: the previous record was unreadable, so nothing
    /// is removed).
    fn commit(&self, dir: &Path, generation: u64, sizes: &[u8]) -> Result<Option<Vec<u64>>> {
        sync_dir(dir)?;
        let previous = CommitRecord::read(dir);
        let mut kept: Vec<u64> = match &previous {
            Ok(Some(r)) => r.kept.iter().copied().filter(|&g| g < generation).collect(),
            _ => Vec::new(),
        };
        kept.push(generation);
        let drop = kept.len().saturating_sub(self.keep_last);
        kept.drain(..drop);
        let shards = sizes
            .chunks_exact(16)
            .enumerate()
            .map(|(rank, c)| {
                let word = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().expect("8 bytes"));
                ShardEntry {
                    file: shard_name(rank, self.part.ranks),
                    bytes: word(0),
                    crc32c: format!("{:08x}", word(8) as u32),
                }
            })
            .collect();
        let record = CommitRecord {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            generation,
            ranks: self.part.ranks,
            global_len: self.part.global_len,
            shapes: self.shapes.clone(),
            shards,
            kept: kept.clone(),
        };
        write_atomically(&dir.join(COMMIT_FILE), &record.to_bytes()?)?;
        Ok(previous.is_ok().then_some(kept))
    }

    /// Loads the checkpoint in `dir` (its last committed generation,
    /// written on any number of ranks) onto this group: each rank reads the
    /// shards that overlap its own. `shapes` must be those the checkpoint
    /// was written with. Collective: every rank calls it; an error on any
    /// rank is an error on every rank ([`Error::PeerFailed`] names the rank
    /// and its cause).
    pub fn load_state(comm: C, dir: impl AsRef<Path>, shapes: Vec<Vec<usize>>) -> Result<Self> {
        Ok(Self::load_state_with_tensors(comm, dir, shapes)?.0)
    }

    /// [`ShardedMetaSGD::load_state`], also returning the caller's tensors
    /// saved with [`ShardedMetaSGD::save_state_with_tensors`] (on every rank).
    pub fn load_state_with_tensors(
        comm: C,
        dir: impl AsRef<Path>,
        shapes: Vec<Vec<usize>>,
    ) -> Result<(Self, NamedTensors<A>)> {
        let local = Self::read_shard(&comm, dir.as_ref(), &shapes);
        agree(&comm, "load", local.as_ref().err())?;
        let (inner, tensors) = local?;
        let (offsets, total) = offsets(&shapes);
        let part = Partition::new(total, comm.size());
        Ok((Self::assemble(comm, inner, shapes, offsets, part), tensors))
    }

    fn read_shard(
        comm: &C,
        dir: &Path,
        shapes: &[Vec<usize>],
    ) -> Result<(MetaSGD<A>, NamedTensors<A>)> {
        let source = Source::find::<A>(dir)?;
        let (_, total) = offsets(shapes);
        if let Source::Committed { record, .. } = &source
            && record.shapes != shapes
        {
            return Err(Error::invalid_checkpoint(
                "shapes",
                format!(
                    "the checkpoint holds tensors of shapes {}, not {}",
                    shapes_text(&record.shapes),
                    shapes_text(shapes)
                ),
            ));
        }
        let old_ranks = source.ranks();
        let old = Partition::new(total, old_ranks);
        let new = Partition::new(total, comm.size());
        let mine = new.shard(comm.rank());
        let (mut rates, mut prev): (Vec<A>, Vec<A>) = (Vec::new(), Vec::new());
        let mut first: Option<MetaSGD<A>> = None;
        let mut tensors = Vec::new();
        for r in 0..old_ranks {
            let real = old.real(r);
            let overlaps = real.start < mine.end.min(total) && mine.start < real.end;
            if r != 0 && !overlaps {
                continue;
            }
            let (path, bytes) = source.read(r)?;
            let loaded = MetaSGD::<A>::from_state_bytes_with(&bytes, &KEYS)
                .map_err(|e| at_path(&path, e))?;
            let (opt, meta) = (loaded.optimizer, loaded.metadata);
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
            if r == 0 {
                tensors = loaded.tensors;
            } else if !loaded.tensors.is_empty() {
                return Err(Error::invalid_checkpoint(
                    "tensors",
                    format!(
                        "{}: only shard 0 holds the caller's tensors",
                        path.display()
                    ),
                ));
            }
            let lrs = opt.per_param_lrs();
            if lrs.len() > 1 || lrs.first().is_some_and(|a| a.shape() != [real.len()]) {
                return Err(Error::invalid_checkpoint(
                    "alpha.0",
                    format!(
                        "{} holds {} slots, the first of shape {:?}; a shard holds one of shape [{}]",
                        path.display(),
                        lrs.len(),
                        lrs.first().map(|a| a.shape().to_vec()),
                        real.len()
                    ),
                ));
            }
            if let Some(f) = &first
                && (!f.same_settings(&opt) || f.per_param_lrs().is_empty() != lrs.is_empty())
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
                prev.resize(hi - mine.start, A::ZERO);
                let old_prev = opt.previous_gradients().first();
                for i in lo..hi {
                    rates[i - mine.start] = a[i - real.start];
                    prev[i - mine.start] = old_prev.map_or(A::ZERO, |p| p[i - real.start]);
                }
            }
            if first.is_none() {
                first = Some(opt);
            }
        }
        let mut inner = first.ok_or_else(|| Error::invalid_checkpoint("file", "no shard 0"))?;
        if inner.per_param_lrs().is_empty() {
            return Ok((inner, tensors));
        }
        let pad = padding_rate(&inner);
        rates.resize(new.shard_len, pad);
        for v in rates.iter_mut().skip(new.real(comm.rank()).len()) {
            *v = pad;
        }
        // The padding's previous gradient is the zero it is stepped with.
        prev.resize(new.shard_len, A::ZERO);
        prev[new.real(comm.rank()).len()..].fill(A::ZERO);
        let has_prev = !inner.previous_gradients().is_empty();
        inner.reset_per_param_lr();
        let flat = |v: Vec<A>| ArrayD::from_shape_vec(IxDyn(&[new.shard_len]), v).expect("1-d");
        let prev = if has_prev {
            vec![flat(prev)]
        } else {
            Vec::new()
        };
        let inner = inner
            .with_state_slots(vec![flat(rates)])?
            .with_rule_state(prev)?;
        Ok((inner, tensors))
    }
}

/// Rank 0, after a commit: removes every generation not in `kept`, shard
/// files of the layout before the commit protocol, and temporary files
/// left by interrupted writes.
fn remove_stale(dir: &Path, kept: &[u64]) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io_at(dir, &e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let removed = if let Some(g) = parse_generation(&name) {
            if kept.contains(&g) {
                continue;
            }
            std::fs::remove_dir_all(&path)
        } else if (name.starts_with("shard-") && name.ends_with(".safetensors"))
            || (name.starts_with(&format!(".{COMMIT_FILE}.tmp-")))
        {
            std::fs::remove_file(&path)
        } else {
            continue;
        };
        removed.map_err(|e| {
            Error::io_at(
                &path,
                &std::io::Error::new(
                    e.kind(),
                    format!("the save was committed, but removing an old generation failed: {e}"),
                ),
            )
        })?;
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CommitRecord {
        CommitRecord {
            format: RECORD_FORMAT.into(),
            version: RECORD_VERSION,
            generation: 7,
            ranks: 2,
            global_len: 12,
            shapes: vec![vec![3, 4]],
            shards: (0..2)
                .map(|r| ShardEntry {
                    file: shard_name(r, 2),
                    bytes: 900 + r as u64,
                    crc32c: format!("{:08x}", 0xdead_0000_u32 + r as u32),
                })
                .collect(),
            kept: vec![6, 7],
        }
    }

    #[test]
    fn every_single_bit_flip_of_a_record_is_refused_or_harmless() {
        let r = record();
        let bytes = r.to_bytes().unwrap();
        assert_eq!(CommitRecord::parse(&bytes).unwrap(), r);
        let mut b = bytes.clone();
        let mut refused = 0;
        for i in 0..b.len() {
            for bit in 0..8 {
                b[i] ^= 1 << bit;
                match CommitRecord::parse(&b) {
                    Ok(got) => assert_eq!(got, r, "byte {i} bit {bit}"),
                    Err(Error::InvalidCheckpoint { .. }) => refused += 1,
                    Err(e) => panic!("{e}"),
                }
                b[i] ^= 1 << bit;
            }
        }
        assert_eq!(refused, bytes.len() * 8);
    }

    #[test]
    fn a_record_never_names_another_path() {
        for (from, to) in [
            (
                "shard-00001-of-00002.safetensors",
                "../../../../etc/passwd.safetensors",
            ),
            (
                "shard-00001-of-00002.safetensors",
                "shard-00000-of-00002.safetensors",
            ),
        ] {
            let r = record();
            let body = serde_json::to_string_pretty(&r).unwrap().replace(from, to);
            let bytes = format!("{body}\ncrc32c {}\n", crc32c_hex(body.as_bytes()));
            let e = CommitRecord::parse(bytes.as_bytes()).unwrap_err();
            assert!(e.to_string().contains("is named"), "{e}");
        }
    }

    #[test]
    fn the_fuzz_seed_is_a_valid_record() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fuzz/corpus/from_state_bytes/seed-commit"
        );
        let r = CommitRecord::parse(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!((r.generation(), r.ranks()), (1, 2));
    }

    #[test]
    fn generations_are_named_and_parsed_alike() {
        assert_eq!(parse_generation(&generation_name(42)), Some(42));
        assert_eq!(parse_generation("gen-1"), None);
        assert_eq!(parse_generation("gen-0000000x"), None);
        assert_eq!(parse_generation("COMMIT"), None);
    }
}
