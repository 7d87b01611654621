//! Meta-training checkpoints: a run interrupted halfway, saved, loaded and
//! continued ends bit for bit where the uninterrupted run ends; corrupt or
//! malformed files are refused.

use metasgd_core::Error;
use metasgd_kernels::Element;
use metasgd_meta::{MetaLearner, Mlp, Order, Outer, Sinusoid};
use ndarray::ArrayD;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn bits<A: Element>(v: &[ArrayD<A>]) -> Vec<u64> {
    v.iter().flat_map(|a| a.iter().map(|x| x.bits())).collect()
}

/// Meta-steps `from..to`, each on tasks drawn from a generator seeded by
/// the iteration (as an experiment that resumes its task stream would).
fn train<A: Element>(learner: &mut MetaLearner<A>, net: &Mlp, from: u64, to: u64) {
    for it in from..to {
        let mut rng = StdRng::seed_from_u64(1000 + it);
        let tasks: Vec<_> = (0..3)
            .map(|_| Sinusoid::default().sample::<A, _>(&mut rng, 5, 5))
            .collect();
        learner.meta_step(net, &tasks).unwrap();
    }
}

fn learners<A: Element>(net: &Mlp) -> Vec<(&'static str, MetaLearner<A>)> {
    let a = |x: f64| A::from(x).unwrap();
    vec![
        (
            "meta-sgd",
            MetaLearner::meta_sgd(net.init(3), a(0.02))
                .with_inner_steps(2)
                .with_outer(
                    Outer::adam(a(0.005))
                        .with_betas(a(0.8), a(0.99))
                        .with_eps(a(1e-7)),
                ),
        ),
        (
            "meta-sgd with sgd outside",
            MetaLearner::meta_sgd(net.init(3), a(0.02)).with_outer(Outer::sgd(a(0.01))),
        ),
        ("maml", MetaLearner::maml(net.init(3), a(0.02))),
        (
            "fomaml",
            MetaLearner::maml(net.init(3), a(0.02)).with_order(Order::First),
        ),
    ]
}

fn resume_is_bitwise<A: Element>() {
    let net = Mlp::new(&[1, 12, 12, 1]);
    let dir = std::env::temp_dir().join(format!(
        "metasgd-meta-ckpt-{}-{}",
        A::NAME,
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, fresh) in learners::<A>(&net) {
        let mut whole = fresh.clone();
        train(&mut whole, &net, 0, 8);

        let mut first = fresh.clone();
        train(&mut first, &net, 0, 4);
        let path = dir.join(format!("{name}.safetensors"));
        first.save_state(&path).unwrap();
        drop(first); // the process dies here
        let mut resumed = MetaLearner::<A>::load_state(&path).unwrap();
        assert_eq!(resumed.meta_steps(), 4, "{name}");
        train(&mut resumed, &net, 4, 8);

        assert_eq!(
            bits(resumed.params()),
            bits(whole.params()),
            "{name}: theta"
        );
        assert_eq!(
            bits(resumed.alphas()),
            bits(whole.alphas()),
            "{name}: alpha"
        );
        assert_eq!(resumed.meta_steps(), whole.meta_steps());
        // Everything else (moments, settings) too: the files are the same state.
        let again = MetaLearner::<A>::from_state_bytes_with(&whole.state_bytes_with(&[]).unwrap())
            .unwrap()
            .0;
        assert_eq!(bits(again.params()), bits(resumed.params()));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_resumed_meta_training_run_is_bitwise_equal_f32() {
    resume_is_bitwise::<f32>();
}

#[test]
fn a_resumed_meta_training_run_is_bitwise_equal_f64() {
    resume_is_bitwise::<f64>();
}

#[test]
fn caller_tensors_and_refusals() {
    let net = Mlp::new(&[1, 3, 1]);
    let mut l = MetaLearner::meta_sgd(net.init::<f64>(1), 0.01);
    train(&mut l, &net, 0, 2);
    let rng_state = ndarray::arr1(&[1.0, 2.0]).into_dyn();
    let bytes = l.state_bytes_with(&[("rng", rng_state.view())]).unwrap();
    let (back, tensors) = MetaLearner::<f64>::from_state_bytes_with(&bytes).unwrap();
    assert_eq!(tensors, vec![("rng".to_string(), rng_state)]);
    assert_eq!(bits(back.alphas()), bits(l.alphas()));
    // f64 into f32 says so.
    let e = MetaLearner::<f32>::from_state_bytes_with(&bytes).unwrap_err();
    assert!(e.to_string().contains("MetaLearner<f32>"), "{e}");
    // An optimizer checkpoint is not a learner's.
    let opt = metasgd_core::MetaSGD::new(0.01_f64).state_bytes();
    assert!(MetaLearner::<f64>::from_state_bytes_with(&opt).is_err());
    // Every single-bit flip is refused or loads the same state.
    let mut b = bytes.clone();
    let mut refused = 0;
    for i in 0..b.len() {
        for bit in 0..8 {
            b[i] ^= 1 << bit;
            match MetaLearner::<f64>::from_state_bytes_with(&b) {
                Err(Error::InvalidCheckpoint { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
                Ok((x, t)) => {
                    assert_eq!(bits(x.params()), bits(l.params()));
                    assert_eq!(bits(x.alphas()), bits(l.alphas()));
                    assert_eq!(t.len(), 1);
                }
            }
            b[i] ^= 1 << bit;
        }
    }
    assert!(refused > 0);
    // Settings out of range are reported by the next meta-step, and nothing moves.
    let mut bad = l
        .clone()
        .with_outer(Outer::adam(1e-3).with_betas(1.0, 0.999));
    let before = bits(bad.params());
    let mut rng = StdRng::seed_from_u64(0);
    let tasks = vec![Sinusoid::default().sample::<f64, _>(&mut rng, 5, 5)];
    assert!(matches!(
        bad.meta_step(&net, &tasks),
        Err(Error::InvalidHyperparameter { name: "beta1", .. })
    ));
    assert_eq!(bits(bad.params()), before);
    let mut deep = l.with_inner_steps(metasgd_core::MAX_INNER_STEPS + 1);
    assert!(matches!(
        deep.meta_step(&net, &tasks),
        Err(Error::InvalidHyperparameter {
            name: "inner_steps",
            ..
        })
    ));
}

#[test]
fn caller_counters_round_trip_and_are_checked() {
    use metasgd_meta::Extras;
    let net = Mlp::new(&[1, 3, 1]);
    let mut l = MetaLearner::meta_sgd(net.init::<f32>(1), 0.01);
    train(&mut l, &net, 0, 2);
    let extras = Extras {
        tensors: vec![("best".to_string(), ndarray::arr1(&[0.5f32]).into_dyn())],
        counters: vec![
            ("iterations".to_string(), vec![6, 12, u64::MAX]),
            ("empty".to_string(), vec![]),
        ],
    };
    let dir = std::env::temp_dir().join(format!("metasgd-meta-counters-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.safetensors");
    l.save_state_with(&path, &extras).unwrap();
    let (back, got) = MetaLearner::<f32>::load_state_with(&path).unwrap();
    assert_eq!(got, extras);
    assert_eq!(got.counter("iterations"), Some(&[6, 12, u64::MAX][..]));
    assert_eq!(got.tensor("best").map(|t| t.len()), Some(1));
    assert_eq!(bits(back.params()), bits(l.params()));
    // The loaders that know nothing of counters refuse the file, naming them.
    let e = MetaLearner::<f32>::load_state_with_tensors(&path).unwrap_err();
    assert!(e.to_string().contains("counter.iterations"), "{e}");
    assert!(MetaLearner::<f32>::load_state(&path).is_err());
    // Without counters the file is what the tensor-only writer makes.
    let plain = Extras {
        tensors: extras.tensors.clone(),
        counters: Vec::new(),
    };
    let view = [("best", extras.tensors[0].1.view())];
    assert_eq!(
        l.state_bytes_with_extras(&plain).unwrap().len(),
        l.state_bytes_with(&view).unwrap().len()
    );
    // Bad names and repeated names are refused before anything is written.
    for bad in [
        vec![("".to_string(), vec![1])],
        vec![("a\nb".to_string(), vec![1])],
        vec![("a".to_string(), vec![1]), ("a".to_string(), vec![2])],
    ] {
        let e = l.state_bytes_with_extras(&Extras {
            tensors: Vec::new(),
            counters: bad,
        });
        assert!(e.is_err());
    }
    // Every single-bit flip of a file with counters is refused or loads the same.
    let bytes = l.state_bytes_with_extras(&extras).unwrap();
    let mut b = bytes.clone();
    for i in 0..b.len() {
        b[i] ^= 0x10;
        match MetaLearner::<f32>::from_state_bytes_with_extras(&b) {
            Err(Error::InvalidCheckpoint { .. }) => {}
            Err(e) => panic!("{e}"),
            Ok((_, x)) => assert_eq!(x, extras),
        }
        b[i] ^= 0x10;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
