//! Checkpoint integrity: every single-bit flip of a checkpoint is refused or
//! loads as the very same state; mutated files never panic and never load
//! counters beyond their bounds; the model's tensors travel in the same file.

mod common;

use common::*;
use metasgd::ndarray::{ArrayD, IxDyn};
use metasgd::{Element, Error, MAX_COUNT, MAX_INNER_STEPS, MetaSGD, NonFinitePolicy, Optimizer};

/// splitmix64: a reproducible stream of random words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A random trained f32 state with 1 to 4 small slots, and (every other
/// seed) two caller tensors in the same file.
fn random_file(seed: u64) -> (Vec<u8>, Observed) {
    let mut rng = Rng(seed);
    let slots = 1 + rng.below(4) as usize;
    let shapes: Vec<Vec<usize>> = (0..slots)
        .map(|_| match rng.below(4) {
            0 => vec![],
            1 => vec![1 + rng.below(6) as usize],
            2 => vec![1 + rng.below(3) as usize, 1 + rng.below(3) as usize],
            _ => vec![0, 2],
        })
        .collect();
    let policy = [
        NonFinitePolicy::Propagate,
        NonFinitePolicy::Skip,
        NonFinitePolicy::Error,
    ][rng.below(3) as usize];
    let mut opt = MetaSGD::new(0.01 + rng.below(100) as f32 * 1e-3)
        .with_alpha_lr(rng.below(10) as f32 * 0.01)
        .with_inner_steps(1 + rng.below(6) as usize)
        .with_non_finite(policy);
    let mut params: Vec<ArrayD<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(j, s)| {
            ArrayD::from_shape_vec(IxDyn(s), finite(s.iter().product(), seed + j as u64)).unwrap()
        })
        .collect();
    for round in 0..1 + rng.below(3) {
        let grads: Vec<ArrayD<f32>> = shapes
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let n = s.iter().product();
                let v = if rng.below(4) == 0 {
                    filled(n, seed * 31 + round + j as u64)
                } else {
                    finite(n, seed * 31 + round + j as u64)
                };
                ArrayD::from_shape_vec(IxDyn(s), v).unwrap()
            })
            .collect();
        let mut views: Vec<_> = params.iter_mut().map(|p| p.view_mut()).collect();
        let gv: Vec<_> = grads.iter().map(|g| g.view()).collect();
        let _ = opt.step_list_inplace(&mut views, &gv);
    }
    let tensors: Vec<(String, ArrayD<f32>)> = if seed.is_multiple_of(2) {
        vec![
            ("w".to_string(), params[0].clone()),
            (
                "model.bias".to_string(),
                ArrayD::from_elem(IxDyn(&[3]), 0.5),
            ),
        ]
    } else {
        Vec::new()
    };
    let views: Vec<(&str, _)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.view()))
        .collect();
    let bytes = opt.state_bytes_with(&[], &views).unwrap();
    (bytes, observe(&opt, &tensors))
}

/// Everything observable of a loaded file, as bits.
type Observed = (
    Snapshot,
    Vec<u64>,
    usize,
    NonFinitePolicy,
    Vec<(String, Vec<usize>, Vec<u64>)>,
);

fn observe(opt: &MetaSGD<f32>, tensors: &[(String, ArrayD<f32>)]) -> Observed {
    (
        snapshot(opt),
        vec![opt.get_base_lr().bits(), opt.get_alpha_lr().bits()],
        opt.get_inner_steps(),
        opt.get_non_finite(),
        tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.shape().to_vec(), bits(t.iter())))
            .collect(),
    )
}

fn load(bytes: &[u8]) -> Result<Observed, Error> {
    let l = MetaSGD::<f32>::from_state_bytes_with(bytes, &[])?;
    Ok(observe(&l.optimizer, &l.tensors))
}

#[test]
fn every_single_bit_flip_is_refused_or_harmless() {
    let (mut flips, mut refused, mut same) = (0u64, 0u64, 0u64);
    for seed in 0..20 {
        let (bytes, want) = random_file(seed);
        assert_eq!(load(&bytes).unwrap(), want, "seed {seed} round trip");
        let mut b = bytes.clone();
        for i in 0..b.len() {
            for bit in 0..8 {
                b[i] ^= 1 << bit;
                flips += 1;
                match load(&b) {
                    Err(Error::InvalidCheckpoint { .. }) => refused += 1,
                    Err(e) => panic!("seed {seed} byte {i} bit {bit}: not a checkpoint error: {e}"),
                    Ok(got) => {
                        assert_eq!(
                            got, want,
                            "seed {seed} byte {i} bit {bit} loaded another state"
                        );
                        same += 1;
                    }
                }
                b[i] ^= 1 << bit;
            }
        }
    }
    eprintln!("{flips} single-bit flips: {refused} refused, {same} loaded the same state");
    assert_eq!(refused + same, flips);
    assert!(flips > 100_000, "{flips}");
}

/// A version 1 file (no checksums) from raw parts, with the given counters.
fn v1_file(inner: u64, steps: u64, skipped: u64, alpha: &[f32]) -> Vec<u8> {
    let header = format!(
        r#"{{"__metadata__":{{"format":"metasgd","format_version":"1","dtype":"f32","non_finite":"skip","backend":"auto","slots":"1"}},"base_lr":{{"dtype":"F32","shape":[],"data_offsets":[0,4]}},"alpha_lr":{{"dtype":"F32","shape":[],"data_offsets":[4,8]}},"inner_steps":{{"dtype":"U64","shape":[],"data_offsets":[8,16]}},"step_count":{{"dtype":"U64","shape":[],"data_offsets":[16,24]}},"skipped_steps":{{"dtype":"U64","shape":[],"data_offsets":[24,32]}},"alpha.0":{{"dtype":"F32","shape":[{}],"data_offsets":[32,{}]}}}}"#,
        alpha.len(),
        32 + 4 * alpha.len()
    );
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    for v in [0.01_f32, 0.001] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for v in [inner, steps, skipped] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for v in alpha {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

#[test]
fn mutated_files_never_panic_nor_load_unbounded_counters() {
    let mut rng = Rng(7);
    let mut sources: Vec<Vec<u8>> = (0..10).map(|s| random_file(100 + s).0).collect();
    // Unchecked version 1 files: here a mutation can land in a counter.
    for s in 0..10u64 {
        sources.push(v1_file(
            1 + s % 5,
            s * 3,
            s,
            &[0.01, 0.02, f32::NAN][..(s % 4) as usize],
        ));
    }
    let (mut loaded, mut tried) = (0, 0);
    for n in 0..20_000 {
        let src = &sources[n % sources.len()];
        let mut b = src.clone();
        for _ in 0..1 + rng.below(4) {
            match rng.below(5) {
                0 => {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] = rng.next() as u8;
                }
                2 => b.truncate(rng.below(b.len() as u64 + 1) as usize),
                3 => {
                    // Rewrite 8 bytes: a counter, a length, an offset.
                    let i = rng.below(b.len().saturating_sub(8) as u64 + 1) as usize;
                    let word = rng.next().to_le_bytes();
                    let end = (i + 8).min(b.len());
                    b[i..end].copy_from_slice(&word[..end - i]);
                }
                _ => {
                    let i = rng.below(b.len() as u64 + 1) as usize;
                    b.insert(i, rng.next() as u8);
                }
            }
            if b.is_empty() {
                break;
            }
        }
        tried += 1;
        if let Ok(l) = MetaSGD::<f32>::from_state_bytes_with(&b, &[]) {
            loaded += 1;
            let o = &l.optimizer;
            assert!(
                (1..=MAX_INNER_STEPS).contains(&o.get_inner_steps()),
                "mutation {n}"
            );
            assert!(o.get_step_count() as u64 <= MAX_COUNT, "mutation {n}");
            assert!(o.skipped_steps() as u64 <= MAX_COUNT, "mutation {n}");
        }
    }
    eprintln!("{tried} mutated files, {loaded} loaded (all within bounds)");
    assert_eq!(tried, 20_000);
}

#[test]
fn counters_beyond_their_bounds_are_refused_in_unchecked_files() {
    assert!(MetaSGD::<f32>::from_state_bytes(&v1_file(5, 3, 0, &[0.01])).is_ok());
    for (inner, steps, skipped, field) in [
        (MAX_INNER_STEPS as u64 + 1, 0, 0, "inner_steps"),
        (1 << 40, 0, 0, "inner_steps"),
        (0, 0, 0, "inner_steps"),
        (5, MAX_COUNT + 1, 0, "step_count"),
        (5, 0, u64::MAX, "skipped_steps"),
    ] {
        match MetaSGD::<f32>::from_state_bytes(&v1_file(inner, steps, skipped, &[0.01])) {
            Err(Error::InvalidCheckpoint { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // The builder's bound is the loader's: a step reports it, nothing changes.
    let mut opt = MetaSGD::new(0.01_f32).with_inner_steps(MAX_INNER_STEPS + 1);
    let mut w = metasgd::ndarray::array![1.0_f32];
    let e = opt.step_inplace(w.view_mut(), metasgd::ndarray::array![1.0].view());
    assert!(
        matches!(
            e,
            Err(Error::InvalidHyperparameter {
                name: "inner_steps",
                ..
            })
        ),
        "{e:?}"
    );
    assert_eq!((w[0], opt.get_step_count()), (1.0, 0));
}

#[test]
fn the_model_and_its_optimizer_share_one_file() {
    let dir = std::env::temp_dir().join(format!("metasgd-integrity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.safetensors");
    let mut opt = MetaSGD::new(0.05_f64).with_inner_steps(2);
    let mut w = ArrayD::from_shape_vec(IxDyn(&[2, 3]), finite::<f64>(6, 1)).unwrap();
    let b = ArrayD::from_elem(IxDyn(&[]), 0.25_f64);
    let g = ArrayD::from_shape_vec(IxDyn(&[2, 3]), finite::<f64>(6, 2)).unwrap();
    opt.step_inplace(w.view_mut(), g.view()).unwrap();
    opt.save_state_with_tensors(&path, &[("layer1.w", w.view()), ("layer1.b", b.view())])
        .unwrap();
    let (mut back, tensors) = MetaSGD::<f64>::load_state_with_tensors(&path).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["layer1.w", "layer1.b"], "saved order");
    assert_eq!(bits(tensors[0].1.iter()), bits(w.iter()));
    assert_eq!(tensors[1].1.shape(), b.shape());
    // Resuming from the pair is the uninterrupted run, bit for bit.
    let mut w2 = tensors[0].1.clone();
    opt.step_inplace(w.view_mut(), g.view()).unwrap();
    back.step_inplace(w2.view_mut(), g.view()).unwrap();
    assert_eq!(bits(w.iter()), bits(w2.iter()));
    assert_eq!(snapshot(&opt), snapshot(&back));

    // A file with tensors is not silently read as an optimizer alone.
    let e = MetaSGD::<f64>::load_state(&path).unwrap_err();
    assert!(e.to_string().contains("load_state_with_tensors"), "{e}");
    // A plain optimizer file loads with no tensors.
    opt.save_state(&path).unwrap();
    assert!(
        MetaSGD::<f64>::load_state_with_tensors(&path)
            .unwrap()
            .1
            .is_empty()
    );

    // Bad names are refused and nothing is written.
    for names in [vec!["", "x"], vec!["a", "a"], vec!["bad\nname", "x"]] {
        let before = std::fs::read(&path).unwrap();
        let t: Vec<(&str, _)> = names.iter().map(|n| (*n, b.view())).collect();
        assert!(opt.save_state_with_tensors(&path, &t).is_err(), "{names:?}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
    let long = "n".repeat(metasgd::checkpoint::MAX_NAME_LEN + 1);
    assert!(
        opt.save_state_with_tensors(&path, &[(long.as_str(), b.view())])
            .is_err()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
