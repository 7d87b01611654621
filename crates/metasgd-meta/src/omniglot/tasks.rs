//! Meta-training tasks and validation runs from the background alphabets.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{Background, DataError, Image, QUERY_PER_CLASS, Run, SIDE, WAYS, batch};
use crate::{Classification, Task};

/// Draws meta-training tasks from the background alphabets (all but the
/// held-out one): see the module docs.
#[derive(Clone, Debug)]
pub struct Sampler<'a> {
    background: &'a Background,
    train: Vec<usize>,
    shift: usize,
    seed: u64,
}

impl<'a> Sampler<'a> {
    /// Tasks from every alphabet but `held_out`, shifted by up to `shift`
    /// pixels, from `seed`.
    pub fn new(
        background: &'a Background,
        held_out: Option<usize>,
        shift: usize,
        seed: u64,
    ) -> Result<Self, DataError> {
        if let Some(h) = held_out
            && h >= background.len()
        {
            return Err(DataError::invalid(
                "held-out alphabet",
                format!("index {h}, there are {}", background.len()),
            ));
        }
        let train: Vec<usize> = (0..background.len())
            .filter(|&i| Some(i) != held_out)
            .collect();
        Ok(Self {
            background,
            train,
            shift: shift.min(SIDE),
            seed,
        })
    }

    /// The alphabets tasks are drawn from.
    pub fn alphabets(&self) -> &[usize] {
        &self.train
    }

    /// Meta-batch `it` of `size` tasks: a function of the seed and `it`
    /// only, so a resumed run sees the tasks the uninterrupted one would.
    pub fn meta_batch(&self, it: u64, size: usize) -> Vec<Task<Classification<f32>>> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ it);
        (0..size)
            .map(|_| {
                let a = self.train[rng.random_range(0..self.train.len())];
                self.task(a, &mut rng)
            })
            .collect()
    }

    /// One task from alphabet `alphabet`: up to 20 characters, one support
    /// and 5 query drawings each, rotated and shifted.
    fn task(&self, alphabet: usize, rng: &mut StdRng) -> Task<Classification<f32>> {
        let chars = &self.background.alphabets[alphabet].1;
        let quarter = rng.random_range(0..4);
        let mut pick: Vec<usize> = (0..chars.len()).collect();
        pick.shuffle(rng);
        pick.truncate(WAYS);
        let s = self.shift as i32;
        let jitter = |img: &Image, rng: &mut StdRng| {
            let (dy, dx) = (rng.random_range(-s..=s), rng.random_range(-s..=s));
            rotate_shift(img, quarter, dy as isize, dx as isize)
        };
        let (mut sup, mut sup_y, mut qry, mut qry_y) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (label, &c) in pick.iter().enumerate() {
            let mut drawers: Vec<usize> = (0..chars[c].len()).collect();
            drawers.shuffle(rng);
            sup.push(jitter(&chars[c][drawers[0]], rng));
            sup_y.push(label);
            for &d in &drawers[1..=QUERY_PER_CLASS] {
                qry.push(jitter(&chars[c][d], rng));
                qry_y.push(label);
            }
        }
        Task {
            support: batch(&sup.iter().collect::<Vec<_>>(), sup_y),
            query: batch(&qry.iter().collect::<Vec<_>>(), qry_y),
        }
    }
}

impl Background {
    /// 20 fixed runs like Lake's from alphabet `alphabet`: every character
    /// (up to 20) with one training and one test drawing by different
    /// drawers, drawn from `seed`. An index past the alphabets is an error.
    pub fn validation_runs(&self, alphabet: usize, seed: u64) -> Result<Vec<Run>, DataError> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5A5A_0F0F);
        let chars = &self
            .alphabets
            .get(alphabet)
            .ok_or_else(|| {
                DataError::invalid(
                    "validation alphabet",
                    format!("index {alphabet}, there are {}", self.len()),
                )
            })?
            .1;
        let runs = (0..20)
            .map(|_| {
                let mut pick: Vec<usize> = (0..chars.len()).collect();
                pick.shuffle(&mut rng);
                pick.truncate(WAYS);
                let (mut sup, mut test) = (Vec::new(), Vec::new());
                for &c in &pick {
                    let mut drawers: Vec<usize> = (0..chars[c].len()).collect();
                    drawers.shuffle(&mut rng);
                    sup.push(&chars[c][drawers[0]]);
                    test.push(&chars[c][drawers[1]]);
                }
                let ways = pick.len();
                Run {
                    support: batch(&sup, (0..ways).collect()),
                    test: batch(&test, (0..ways).collect()),
                }
            })
            .collect();
        Ok(runs)
    }
}

/// `img` (28x28) rotated by `quarter` quarter turns and shifted by
/// `(dy, dx)` (pixels moved off the side are lost, the space left is empty;
/// a shorter `img` reads as empty past its end).
pub fn rotate_shift(img: &[f32], quarter: usize, dy: isize, dx: isize) -> Image {
    let mut out = vec![0f32; SIDE * SIDE];
    let n = SIDE as isize;
    for y in 0..n {
        for x in 0..n {
            let (sy, sx) = (y - dy, x - dx);
            if sy < 0 || sx < 0 || sy >= n || sx >= n {
                continue;
            }
            let (ry, rx) = match quarter % 4 {
                0 => (sy, sx),
                1 => (sx, n - 1 - sy),
                2 => (n - 1 - sy, n - 1 - sx),
                _ => (n - 1 - sx, sy),
            };
            out[(y * n + x) as usize] = img.get((ry * n + rx) as usize).copied().unwrap_or(0.0);
        }
    }
    out
}
