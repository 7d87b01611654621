//! Checkpoints: a loaded optimizer is the saved one, bit for bit, and every
//! malformed input is an error (never a panic, never a half-loaded state).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use metasgd::ndarray::{ArrayD, IxDyn};
use metasgd::{Backend, Element, Error, MetaSGD, NonFinitePolicy, Optimizer};

/// A fresh empty directory under the system's temporary directory.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("metasgd-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Slot shapes: a matrix, a 0-d value, an empty tensor, a 3-d block.
fn shapes() -> Vec<Vec<usize>> {
    vec![vec![7, 5], vec![], vec![0, 3], vec![2, 3, 4]]
}

fn arrays<A: Element>(seed: u64, special: bool) -> Vec<ArrayD<A>> {
    shapes()
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let n = s.iter().product();
            let v = if special {
                filled(n, seed + j as u64)
            } else {
                finite(n, seed + j as u64)
            };
            ArrayD::from_shape_vec(IxDyn(s), v).unwrap()
        })
        .collect()
}

/// An optimizer with everything a checkpoint must carry: several slots
/// (0-d and empty among them), NaN alphas, alphas clamped at both bounds,
/// skipped steps, and optionally an invalid `base_lr` set after training.
fn trained<A: Element>(policy: NonFinitePolicy, backend: Backend, invalid_lr: bool) -> MetaSGD<A>
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let a = |x: f64| A::from(x).unwrap();
    let mut opt = MetaSGD::new(a(0.05))
        .with_alpha_lr(a(0.01))
        .with_inner_steps(3)
        .with_non_finite(policy)
        .with_backend(backend);
    let mut params = arrays::<A>(1, false);
    for round in 0..4 {
        // Round 1 carries NaN and infinities (propagated, skipped or refused).
        let mut grads = arrays::<A>(10 + round, round == 1);
        if round == 1 {
            grads[0][[0, 0]] = A::nan();
        }
        let gv: Vec<&ArrayD<A>> = grads.iter().collect();
        let pv: Vec<&ArrayD<A>> = params.iter().collect();
        if let Ok(next) = opt.step_list(&pv, &gv) {
            params = next;
        }
    }
    // Rescaling by 1000 pushes the larger rates to the upper clamp; then
    // large gradients on slot 0 push its rates to the lower one.
    Optimizer::<A, IxDyn>::set_learning_rate(&mut opt, a(50.0));
    let mut grads: Vec<ArrayD<A>> = params.iter().map(|p| p.mapv(|_| A::zero())).collect();
    grads[0].fill(a(100.0));
    let pv: Vec<&ArrayD<A>> = params.iter().collect();
    opt.step_list(&pv, &grads.iter().collect::<Vec<_>>())
        .unwrap();
    if invalid_lr {
        Optimizer::<A, IxDyn>::set_learning_rate(&mut opt, a(-1.0));
    }
    opt
}

/// Every getter and every alpha bit.
fn observe<A: Element>(opt: &MetaSGD<A>) -> (Vec<u64>, usize, Backend, NonFinitePolicy, Snapshot) {
    (
        vec![opt.get_base_lr().bits(), opt.get_alpha_lr().bits()],
        opt.get_inner_steps(),
        opt.get_backend(),
        opt.get_non_finite(),
        snapshot(opt),
    )
}

/// Steps both optimizers on the same inputs and asserts the same bits and
/// the same results (errors included).
fn continue_alike<A: Element>(a: &mut MetaSGD<A>, b: &mut MetaSGD<A>)
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let mut pa = arrays::<A>(50, false);
    let mut pb = pa.clone();
    for round in 0..3 {
        if round == 1 {
            // An invalid rate stored in the checkpoint is reported by both; a
            // valid one rescales both from the same last valid rate.
            for o in [&mut *a, &mut *b] {
                Optimizer::<A, IxDyn>::set_learning_rate(o, A::from(0.03).unwrap());
            }
        }
        let grads = arrays::<A>(60 + round, round == 2);
        let gv: Vec<&ArrayD<A>> = grads.iter().collect();
        let ra = a.step_list(&pa.iter().collect::<Vec<_>>(), &gv);
        let rb = b.step_list(&pb.iter().collect::<Vec<_>>(), &gv);
        match (ra, rb) {
            (Ok(na), Ok(nb)) => {
                for (x, y) in na.iter().zip(&nb) {
                    assert_eq!(bits(x.iter()), bits(y.iter()));
                }
                (pa, pb) = (na, nb);
            }
            (ra, rb) => assert_eq!(ra.err(), rb.err()),
        }
        assert_eq!(observe(a), observe(b), "round {round}");
    }
}

fn policies() -> [NonFinitePolicy; 3] {
    [
        NonFinitePolicy::Propagate,
        NonFinitePolicy::Skip,
        NonFinitePolicy::Error,
    ]
}

fn round_trip<A: Element>()
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let dir = temp_dir(&format!("round-trip-{}", A::NAME));
    for policy in policies() {
        for backend in available_backends() {
            for invalid_lr in [false, true] {
                let mut opt = trained::<A>(policy, backend, invalid_lr);
                // From bytes.
                let mut loaded = MetaSGD::<A>::from_state_bytes(&opt.state_bytes()).unwrap();
                assert_eq!(observe(&loaded), observe(&opt));
                // Through a file, overwriting an older checkpoint.
                let path = dir.join("opt.safetensors");
                MetaSGD::<A>::new(A::one()).save_state(&path).unwrap();
                opt.save_state(&path).unwrap();
                let mut from_file = MetaSGD::<A>::load_state(&path).unwrap();
                assert_eq!(observe(&from_file), observe(&opt));
                let again = MetaSGD::<A>::from_state_bytes(&from_file.state_bytes()).unwrap();
                assert_eq!(observe(&again), observe(&opt));
                continue_alike(&mut opt.clone(), &mut loaded);
                continue_alike(&mut opt, &mut from_file);
            }
        }
    }
    // Alphas hold NaN and both clamp bounds in at least one case.
    let opt = trained::<A>(NonFinitePolicy::Propagate, Backend::Auto, false);
    let all: Vec<A> = opt
        .per_param_lrs()
        .iter()
        .flat_map(|a| a.iter().copied())
        .collect();

    assert!(all.iter().any(|a| a.is_nan()), "no NaN alpha to carry");
    assert!(
        all.contains(&A::LO) && all.contains(&A::HI),
        "no clamped alpha"
    );
    // Nothing but the checkpoint is left in the directory.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("opt.safetensors")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn round_trip_f32() {
    round_trip::<f32>();
}

#[test]
fn round_trip_f64() {
    round_trip::<f64>();
}

#[test]
fn a_fresh_optimizer_round_trips() {
    let opt = MetaSGD::new(0.01_f64).with_inner_steps(0);
    let loaded = MetaSGD::<f64>::from_state_bytes(&opt.state_bytes()).unwrap();
    assert_eq!(observe(&loaded), observe(&opt));
    assert!(loaded.per_param_lrs().is_empty());
}

/// The error for `bytes`, asserting that loading fails.
fn refused(bytes: &[u8]) -> Error {
    match MetaSGD::<f32>::from_state_bytes(bytes) {
        Err(e) => e,
        Ok(_) => panic!("accepted {} malformed bytes", bytes.len()),
    }
}

fn field_of(e: &Error) -> &str {
    match e {
        Error::InvalidCheckpoint { field, .. } => field,
        other => panic!("expected InvalidCheckpoint, got {other:?}"),
    }
}

#[test]
fn truncations_and_bit_flips_never_panic() {
    let bytes = trained::<f32>(NonFinitePolicy::Skip, Backend::Auto, false).state_bytes();
    let mut truncations = 0;
    for len in 0..bytes.len() {
        field_of(&refused(&bytes[..len]));
        truncations += 1;
    }
    let mut flips = 0;
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            // The checksums refuse every flip (`tests/integrity.rs` checks
            // this over 20 random states); here: refused cleanly, or the
            // same state.
            if let Ok(opt) = MetaSGD::<f32>::from_state_bytes(&b) {
                let want = MetaSGD::<f32>::from_state_bytes(&bytes).unwrap();
                assert!(observe(&want) == observe(&opt), "byte {i} bit {bit}");
            }
            flips += 1;
        }
    }
    assert_eq!(truncations, bytes.len());
    assert_eq!(flips, 8 * bytes.len());
}

/// `bytes` with the first `from` replaced by `to` (same length).
fn replace_bytes(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to);
    out
}

/// A safetensors file from raw parts: a JSON header and a data section.
fn raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

const META: &str = r#""__metadata__":{"format":"metasgd","format_version":"1","dtype":"f32","non_finite":"propagate","backend":"auto","slots":"0"}"#;

/// The tensors of an empty-slot f32 state after `META`, 32 data bytes.
const SCALARS: &str = r#""base_lr":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"alpha_lr":{"dtype":"F32","shape":[],"data_offsets":[4,8]},"inner_steps":{"dtype":"U64","shape":[],"data_offsets":[8,16]},"step_count":{"dtype":"U64","shape":[],"data_offsets":[16,24]},"skipped_steps":{"dtype":"U64","shape":[],"data_offsets":[24,32]}"#;

fn scalar_data(inner_steps: u64) -> Vec<u8> {
    let mut d = 0.01_f32.to_le_bytes().to_vec();
    d.extend_from_slice(&0.001_f32.to_le_bytes());
    d.extend_from_slice(&inner_steps.to_le_bytes());
    d.extend_from_slice(&3u64.to_le_bytes());
    d.extend_from_slice(&0u64.to_le_bytes());
    d
}

#[test]
fn hand_written_files() {
    // The hand-written minimal file is valid: the layout is what the README says.
    let ok =
        MetaSGD::<f32>::from_state_bytes(&raw(&format!("{{{META},{SCALARS}}}"), &scalar_data(5)))
            .unwrap();
    assert_eq!(
        (ok.get_step_count(), ok.get_inner_steps(), ok.get_base_lr()),
        (3, 5, 0.01)
    );

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("0-byte file", vec![], "file"),
        (
            "header length past the end",
            raw("{}", &[])[..4].to_vec(),
            "file",
        ),
        (
            "header longer than the file",
            {
                let mut b = raw("{}", &[]);
                b[0] = 200;
                b
            },
            "file",
        ),
        ("header not JSON", raw("{not json", &[]), "file"),
        (
            "offsets past the data",
            raw(
                &format!("{{{META},{}}}", SCALARS.replace("[24,32]", "[24,40]")),
                &scalar_data(5),
            ),
            "file",
        ),
        (
            "overlapping offsets",
            raw(
                &format!("{{{META},{}}}", SCALARS.replace("[4,8]", "[0,4]")),
                &scalar_data(5),
            ),
            "file",
        ),
        (
            "shape that disagrees with the offsets",
            raw(
                &format!(
                    "{{{META},{}}}",
                    SCALARS.replace(
                        r#""shape":[],"data_offsets":[0,4]"#,
                        r#""shape":[2],"data_offsets":[0,4]"#
                    )
                ),
                &scalar_data(5),
            ),
            "file",
        ),
        (
            "trailing bytes",
            {
                let mut b = raw(&format!("{{{META},{SCALARS}}}"), &scalar_data(5));
                b.push(0);
                b
            },
            "file",
        ),
        (
            "no metadata",
            raw(&format!("{{{SCALARS}}}"), &scalar_data(5)),
            "__metadata__",
        ),
        (
            "another format",
            raw(
                &format!("{{{},{SCALARS}}}", META.replace("\"metasgd\"", "\"adam\"")),
                &scalar_data(5),
            ),
            "__metadata__.format",
        ),
        (
            "a version from the future",
            raw(
                &format!(
                    "{{{},{SCALARS}}}",
                    META.replace(r#""format_version":"1""#, r#""format_version":"3""#)
                ),
                &scalar_data(5),
            ),
            "format_version",
        ),
        (
            "a version 2 file without its checksums",
            raw(
                &format!(
                    "{{{},{SCALARS}}}",
                    META.replace(r#""format_version":"1""#, r#""format_version":"2""#)
                ),
                &scalar_data(5),
            ),
            "header_crc32c",
        ),
        (
            "inner_steps beyond MAX_INNER_STEPS",
            raw(&format!("{{{META},{SCALARS}}}"), &scalar_data(1001)),
            "inner_steps",
        ),
        (
            "an unknown policy",
            raw(
                &format!("{{{},{SCALARS}}}", META.replace("propagate", "ignore")),
                &scalar_data(5),
            ),
            "non_finite",
        ),
        (
            "an unknown backend",
            raw(
                &format!("{{{},{SCALARS}}}", META.replace("auto", "gpu")),
                &scalar_data(5),
            ),
            "backend",
        ),
        (
            "an unknown metadata key",
            raw(
                &format!(
                    "{{{},{SCALARS}}}",
                    META.replace(r#""slots":"0""#, r#""slots":"0","extra":"x""#)
                ),
                &scalar_data(5),
            ),
            "__metadata__.extra",
        ),
        (
            "a slot count that is not a number",
            raw(
                &format!(
                    "{{{},{SCALARS}}}",
                    META.replace(r#""slots":"0""#, r#""slots":"-1""#)
                ),
                &scalar_data(5),
            ),
            "__metadata__.slots",
        ),
        (
            "a missing alpha",
            raw(
                &format!(
                    "{{{},{SCALARS}}}",
                    META.replace(r#""slots":"0""#, r#""slots":"1""#)
                ),
                &scalar_data(5),
            ),
            "alpha.0",
        ),
        (
            "a missing counter",
            raw(
                &format!(
                    "{{{META},{}}}",
                    SCALARS.replace(
                        r#","skipped_steps":{"dtype":"U64","shape":[],"data_offsets":[24,32]}"#,
                        ""
                    )
                ),
                &scalar_data(5)[..24],
            ),
            "skipped_steps",
        ),
        (
            "an extra tensor",
            raw(
                &format!(
                    "{{{META},{SCALARS},\"bias\":{{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[32,36]}}}}"
                ),
                &[scalar_data(5), vec![0; 4]].concat(),
            ),
            "bias",
        ),
        (
            "inner_steps = 0",
            raw(&format!("{{{META},{SCALARS}}}"), &scalar_data(0)),
            "inner_steps",
        ),
        (
            "a counter of the wrong dtype",
            raw(
                &format!(
                    "{{{META},{}}}",
                    SCALARS.replace(
                        r#""inner_steps":{"dtype":"U64""#,
                        r#""inner_steps":{"dtype":"F64""#
                    )
                ),
                &scalar_data(5),
            ),
            "inner_steps",
        ),
        (
            "a hyperparameter that is not 0-d",
            raw(
                &format!(
                    "{{{META},{}}}",
                    SCALARS.replace(
                        r#""shape":[],"data_offsets":[0,4]"#,
                        r#""shape":[1],"data_offsets":[0,4]"#
                    )
                ),
                &scalar_data(5),
            ),
            "base_lr",
        ),
        (
            "an alpha that is no learning rate",
            raw(
                &format!(
                    "{{{},{SCALARS},\"alpha.0\":{{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[32,40]}}}}",
                    META.replace(r#""slots":"0""#, r#""slots":"1""#)
                ),
                &[
                    scalar_data(5),
                    0.5_f32.to_le_bytes().to_vec(),
                    (-1.0_f32).to_le_bytes().to_vec(),
                ]
                .concat(),
            ),
            "alpha.0",
        ),
        (
            "an invalid last valid rate",
            raw(
                &format!(
                    "{{{META},{SCALARS},\"last_valid_lr\":{{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[32,36]}}}}"
                ),
                &[scalar_data(5), 0.0_f32.to_le_bytes().to_vec()].concat(),
            ),
            "last_valid_lr",
        ),
    ];
    for (what, bytes, field) in &cases {
        let e = refused(bytes);
        assert_eq!(field_of(&e), *field, "{what}: {e}");
    }
    assert_eq!(cases.len(), 25);
}

#[test]
fn wrong_dtype_says_so() {
    let f32_file = MetaSGD::new(0.01_f32).state_bytes();
    let e = MetaSGD::<f64>::from_state_bytes(&f32_file).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("f32") && msg.contains("MetaSGD<f64>"), "{msg}");
    // A tensor whose dtype disagrees with the metadata is caught too.
    let mut opt = MetaSGD::new(0.01_f32);
    opt.step(
        &metasgd::ndarray::array![1.0_f32],
        &metasgd::ndarray::array![0.5],
    )
    .unwrap();
    let bytes = replace_bytes(
        &opt.state_bytes(),
        br#""alpha.0":{"dtype":"F32""#,
        br#""alpha.0":{"dtype":"I32""#,
    );
    // The header checksum catches the edit before the header is parsed.
    let e = refused(&bytes);
    assert_eq!(field_of(&e), "header", "{e}");
}

#[test]
fn files_that_cannot_be_read() {
    let dir = temp_dir("unreadable");
    let e = MetaSGD::<f32>::load_state(&dir).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "a directory: {e:?}");
    let e = MetaSGD::<f32>::load_state(dir.join("missing.safetensors")).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                kind: std::io::ErrorKind::NotFound,
                ..
            }
        ),
        "{e:?}"
    );
    let empty = dir.join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let e = MetaSGD::<f32>::load_state(&empty).unwrap_err();
    assert!(e.to_string().contains("empty.safetensors"), "{e}");
    // Saving into a directory that does not exist fails and leaves nothing.
    let e = MetaSGD::new(0.01_f32)
        .save_state(dir.join("no/such/dir/x.safetensors"))
        .unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    // Saving over a directory fails and keeps it.
    std::fs::create_dir(dir.join("taken")).unwrap();
    assert!(
        MetaSGD::new(0.01_f32)
            .save_state(dir.join("taken"))
            .is_err()
    );
    assert!(dir.join("taken").is_dir());
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["empty.safetensors", "taken"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn other_tools_can_read_the_file() {
    let opt = trained::<f64>(NonFinitePolicy::Propagate, Backend::Auto, false);
    let bytes = opt.state_bytes();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: &HashMap<String, String> = header.metadata().as_ref().unwrap();
    assert_eq!(meta["format"], "metasgd");
    assert_eq!(meta["format_version"], "2");
    assert_eq!(meta["dtype"], "f64");
    assert_eq!(meta["slots"], "4");
    for (j, alpha) in opt.per_param_lrs().iter().enumerate() {
        let t = file.tensor(&format!("alpha.{j}")).unwrap();
        assert_eq!(t.shape(), alpha.shape());
        let got: Vec<u64> = t
            .data()
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, bits(alpha.iter()));
    }
    let steps = file.tensor("step_count").unwrap();
    assert_eq!(steps.data(), (opt.get_step_count() as u64).to_le_bytes());
}

/// The fuzz target's seeds load, and every input the fuzzer ever crashed on
/// (kept in `fuzz/regressions/`) is now refused or loaded cleanly.
#[test]
fn fuzz_seeds_and_regressions() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut seeds = 0;
    for entry in std::fs::read_dir(root.join("corpus/from_state_bytes")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("seed-") {
            continue; // what the fuzzer added to the corpus (not in git)
        }
        let bytes = std::fs::read(&path).unwrap();
        const SHARD: [&str; 5] = [
            "shard_rank",
            "shard_ranks",
            "shard_offset",
            "global_len",
            "shapes",
        ];
        let ok = match name.as_str() {
            // The commit record's parser is tested in metasgd-dist.
            "seed-commit" => true,
            "seed-meta-f32" => {
                metasgd::meta::MetaLearner::<f32>::from_state_bytes_with(&bytes).is_ok()
            }
            "seed-v2-shard-f32" => MetaSGD::<f32>::from_state_bytes_with(&bytes, &SHARD).is_ok(),
            n if n.ends_with("f32") => MetaSGD::<f32>::from_state_bytes_with(&bytes, &[]).is_ok(),
            _ => MetaSGD::<f64>::from_state_bytes(&bytes).is_ok(),
        };
        assert!(ok, "{name} does not load");
        seeds += 1;
    }
    assert_eq!(seeds, 7);
    for entry in std::fs::read_dir(root.join("regressions")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "README") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let _ = MetaSGD::<f32>::from_state_bytes(&bytes);
        let _ = MetaSGD::<f64>::from_state_bytes(&bytes);
    }
}
