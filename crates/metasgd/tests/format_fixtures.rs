//! Checkpoints written by the code of 2026-12-07 (commit aa955e9, before
//! the settings type, through a one-off test that wrote `fixtures()`) load bitwise, and the same state writes the same bytes
//! again: the file format does not change underfoot. The files in
//! `tests/fixtures/` are never regenerated; a failure here is a format break.

use metasgd::Element;
use metasgd::ndarray::{ArrayD, IxDyn};
use metasgd::{Backend, MetaSGD, NonFinitePolicy, Optimizer};

/// The optimizer each fixture holds, rebuilt by today's API.
fn trained<A: Element>(policy: NonFinitePolicy, backend: Backend) -> MetaSGD<A>
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let a = |x: f64| A::from(x).unwrap();
    // Stepped on the scalar reference (every backend gives its bits), so
    // that a build without the `simd` feature makes the same fixtures.
    let mut opt = MetaSGD::new(a(0.1))
        .with_alpha_lr(a(0.37))
        .with_inner_steps(2)
        .with_backend(Backend::Scalar)
        .with_non_finite(policy);
    let shapes: [&[usize]; 3] = [&[3, 4], &[], &[0]];
    let params: Vec<ArrayD<A>> = shapes
        .iter()
        .map(|s| ArrayD::from_elem(IxDyn(s), a(0.5)))
        .collect();
    let mut grads: Vec<ArrayD<A>> = shapes
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let n: usize = s.iter().product();
            ArrayD::from_shape_vec(
                IxDyn(s),
                (0..n).map(|i| a((i + j) as f64 * 0.3 - 1.0)).collect(),
            )
            .unwrap()
        })
        .collect();
    grads[0][[2, 2]] = a(1e6);
    let pv: Vec<&ArrayD<A>> = params.iter().collect();
    opt.step_list(&pv, &grads.iter().collect::<Vec<_>>())
        .unwrap();
    grads[0][[1, 1]] = A::nan();
    let _ = opt.step_list(&pv, &grads.iter().collect::<Vec<_>>());
    Optimizer::<A, IxDyn>::set_learning_rate(&mut opt, a(0.05));
    opt.with_backend(backend)
}

fn caller_tensor<A: Element>() -> ArrayD<A> {
    ArrayD::from_shape_vec(
        IxDyn(&[2, 3]),
        (0..6).map(|i| A::from(i as f64 / 7.0).unwrap()).collect(),
    )
    .unwrap()
}

/// Each fixture: its file name, the bytes today's code writes for it.
fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    let skip = trained::<f32>(NonFinitePolicy::Skip, Backend::Scalar);
    let propagate = trained::<f32>(NonFinitePolicy::Propagate, Backend::Auto);
    let with_tensors = trained::<f64>(NonFinitePolicy::Error, Backend::Simd);
    let t = caller_tensor::<f64>();
    // A fresh optimizer with an invalid base rate: no slots, no last valid rate.
    let fresh = MetaSGD::new(f64::NAN).with_inner_steps(7);
    vec![
        ("f32_skip.safetensors", skip.state_bytes()),
        ("f32_propagate_nan.safetensors", propagate.state_bytes()),
        (
            "f64_with_tensors.safetensors",
            with_tensors
                .state_bytes_with(&[], &[("model.w", t.view())])
                .unwrap(),
        ),
        ("f64_fresh_invalid_lr.safetensors", fresh.state_bytes()),
    ]
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bits<A: Element>(opt: &MetaSGD<A>) -> Vec<u64> {
    let mut v = vec![
        opt.get_base_lr().bits(),
        opt.get_alpha_lr().bits(),
        opt.get_inner_steps() as u64,
        opt.get_step_count() as u64,
        opt.skipped_steps() as u64,
    ];
    for a in opt.per_param_lrs() {
        v.extend(a.shape().iter().map(|&n| n as u64));
        v.extend(a.iter().map(|x| x.bits()));
    }
    v
}

/// A file's `__metadata__` pairs and its tensors (name, dtype, shape, bytes).
type Content = (
    Vec<(String, String)>,
    Vec<(String, String, Vec<usize>, Vec<u8>)>,
);

/// What a file holds: its `__metadata__` (but the header checksum, which
/// depends on the order the writer's map lists the keys in) and every
/// tensor's dtype, shape and bytes, by name.
fn content(bytes: &[u8]) -> Content {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut keys: Vec<(String, String)> = meta
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != "header_crc32c")
        .collect();
    keys.sort();
    let file = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let mut tensors: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            (
                n,
                format!("{:?}", t.dtype()),
                t.shape().to_vec(),
                t.data().to_vec(),
            )
        })
        .collect();
    tensors.sort();
    (keys, tensors)
}

#[test]
fn fixtures_write_the_same_content() {
    for (name, bytes) in fixtures() {
        assert!(
            content(&fixture(name)) == content(&bytes),
            "{name}: today's file differs from the fixture"
        );
    }
}

#[test]
fn fixtures_load_bitwise() {
    let f32_skip = MetaSGD::<f32>::from_state_bytes(&fixture("f32_skip.safetensors")).unwrap();
    let want = trained::<f32>(NonFinitePolicy::Skip, Backend::Scalar);
    assert_eq!(bits(&f32_skip), bits(&want));
    assert_eq!(f32_skip.skipped_steps(), 1);
    assert_eq!(f32_skip.get_non_finite(), NonFinitePolicy::Skip);
    assert_eq!(f32_skip.get_backend(), Backend::Scalar);

    let nan = MetaSGD::<f32>::from_state_bytes(&fixture("f32_propagate_nan.safetensors")).unwrap();
    let want = trained::<f32>(NonFinitePolicy::Propagate, Backend::Auto);
    assert_eq!(bits(&nan), bits(&want));
    assert!(nan.per_param_lrs()[0].iter().any(|a| a.is_nan()));
    assert_eq!(nan.get_step_count(), 2);

    let loaded =
        MetaSGD::<f64>::from_state_bytes_with(&fixture("f64_with_tensors.safetensors"), &[])
            .unwrap();
    let want = trained::<f64>(NonFinitePolicy::Error, Backend::Simd);
    assert_eq!(bits(&loaded.optimizer), bits(&want));
    assert_eq!(loaded.optimizer.get_non_finite(), NonFinitePolicy::Error);
    assert_eq!(loaded.optimizer.get_backend(), Backend::Simd);
    assert_eq!(loaded.tensors.len(), 1);
    assert_eq!(loaded.tensors[0].0, "model.w");
    assert_eq!(loaded.tensors[0].1, caller_tensor::<f64>());

    let fresh =
        MetaSGD::<f64>::from_state_bytes(&fixture("f64_fresh_invalid_lr.safetensors")).unwrap();
    assert!(fresh.get_base_lr().is_nan());
    assert_eq!(fresh.get_inner_steps(), 7);
    assert!(fresh.per_param_lrs().is_empty());
}
