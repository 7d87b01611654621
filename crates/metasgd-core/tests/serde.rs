//! `MetaSGD` through serde_json: every float bit survives, NaN payloads and
//! infinities included, and bad documents are errors.
#![cfg(feature = "serde")]

use metasgd_core::kernels::Element;
use metasgd_core::{MetaSGD, NonFinitePolicy, Optimizer};
use ndarray::{ArrayD, IxDyn};

fn bits<A: Element>(opt: &MetaSGD<A>) -> Vec<Vec<u64>> {
    let mut v: Vec<Vec<u64>> = opt
        .per_param_lrs()
        .iter()
        .map(|a| a.iter().map(|x| x.bits()).collect())
        .collect();
    v.push(vec![
        opt.get_base_lr().bits(),
        opt.get_alpha_lr().bits(),
        opt.get_inner_steps() as u64,
        opt.get_step_count() as u64,
        opt.skipped_steps() as u64,
    ]);
    v
}

fn trained<A: Element>() -> MetaSGD<A>
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let a = |x: f64| A::from(x).unwrap();
    let mut opt = MetaSGD::new(a(0.1))
        .with_alpha_lr(a(0.37))
        .with_inner_steps(2)
        .with_non_finite(NonFinitePolicy::Propagate);
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
    grads[0][[1, 1]] = A::nan();
    grads[0][[2, 2]] = a(1e6);
    let pv: Vec<&ArrayD<A>> = params.iter().collect();
    opt.step_list(&pv, &grads.iter().collect::<Vec<_>>())
        .unwrap();
    // An invalid rate is part of the state too (reported at the next step).
    Optimizer::<A, IxDyn>::set_learning_rate(&mut opt, A::infinity());
    opt
}

fn round_trip<A: Element>()
where
    MetaSGD<A>: Optimizer<A, IxDyn>,
{
    let opt = trained::<A>();
    let json = serde_json::to_string(&opt).unwrap();
    assert!(
        json.contains("\"nan:0x")
            && json.contains("\"inf\"")
            && json.contains("\"alpha_lr\":\"0.37\""),
        "{json}"
    );
    let back: MetaSGD<A> = serde_json::from_str(&json).unwrap();
    assert_eq!(bits(&back), bits(&opt));
    assert_eq!(back.get_non_finite(), opt.get_non_finite());
    assert_eq!(back.get_backend(), opt.get_backend());
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
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
fn bad_documents_are_errors() {
    let json = serde_json::to_string(&trained::<f32>()).unwrap();
    let f32_doc = |s: &str| {
        serde_json::from_str::<MetaSGD<f32>>(s)
            .err()
            .map(|e| e.to_string())
    };
    let cases = [
        (
            "unknown field",
            f32_doc(&json.replacen('{', "{\"extra\":1,", 1)),
        ),
        (
            "future version",
            f32_doc(&json.replace(
                &format!("\"format_version\":\"{}\"", metasgd_core::FORMAT_VERSION),
                "\"format_version\":\"9\"",
            )),
        ),
        (
            "not a float",
            f32_doc(&json.replace("\"alpha_lr\":\"0.37\"", "\"alpha_lr\":\"0.3x7\"")),
        ),
        (
            "shape and data disagree",
            f32_doc(&json.replace("\"shape\":[3,4]", "\"shape\":[3,5]")),
        ),
        (
            "bad special",
            f32_doc(&json.replace("\"inf\"", "\"infinity\"")),
        ),
        (
            "inner_steps 0",
            f32_doc(&json.replace("\"inner_steps\":2", "\"inner_steps\":0")),
        ),
    ];
    for (what, err) in cases {
        let err = err.unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(!err.is_empty(), "{what}");
    }
    let e = serde_json::from_str::<MetaSGD<f64>>(&json)
        .unwrap_err()
        .to_string();
    assert!(e.contains("f32") && e.contains("MetaSGD<f64>"), "{e}");
}
