//! Every checkpoint parser on arbitrary bytes: `MetaSGD::from_state_bytes_with`
//! (single files, files with the caller's tensors, shards),
//! `MetaLearner::from_state_bytes_with` and `CommitRecord::parse`. Each must
//! return, never panic; whatever one accepts must be within the documented
//! bounds and must encode and load back to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metasgd::meta::MetaLearner;
use metasgd::{Element, MAX_COUNT, MAX_INNER_STEPS, MetaSGD};
use metasgd_dist::CommitRecord;

const SHARD_KEYS: [&str; 5] = ["shard_rank", "shard_ranks", "shard_offset", "global_len", "shapes"];

fn bits<A: Element>(v: &[metasgd::ndarray::ArrayD<A>]) -> Vec<Vec<u64>> {
    v.iter().map(|a| a.iter().map(|x| x.bits()).collect()).collect()
}

fn optimizer<A: Element>(data: &[u8], keys: &[&str]) {
    if let Ok(l) = MetaSGD::<A>::from_state_bytes_with(data, keys) {
        let o = &l.optimizer;
        assert!((1..=MAX_INNER_STEPS).contains(&o.get_inner_steps()));
        assert!(o.get_step_count() as u64 <= MAX_COUNT && o.skipped_steps() as u64 <= MAX_COUNT);
        let extra: Vec<(&str, String)> = keys.iter().map(|k| (*k, l.metadata[*k].clone())).collect();
        let tensors: Vec<(&str, _)> = l.tensors.iter().map(|(n, t)| (n.as_str(), t.view())).collect();
        let bytes = o
            .state_bytes_with(&extra, &tensors)
            .expect("a state this build accepted must encode");
        let again = MetaSGD::<A>::from_state_bytes_with(&bytes, keys)
            .expect("a state this build accepted must load again");
        assert!(again.optimizer.same_settings(o));
        assert_eq!(bits(again.optimizer.per_param_lrs()), bits(o.per_param_lrs()));
        assert_eq!(bits(again.optimizer.previous_gradients()), bits(o.previous_gradients()));
        assert_eq!(again.tensors.len(), l.tensors.len());
    }
}

fn learner<A: Element>(data: &[u8]) {
    if let Ok((l, extras)) = MetaLearner::<A>::from_state_bytes_with_extras(data) {
        let bytes = l.state_bytes_with_extras(&extras).expect("encodes");
        let (again, again_extras) =
            MetaLearner::<A>::from_state_bytes_with_extras(&bytes).expect("loads again");
        assert_eq!(again_extras.counters, extras.counters);
        assert_eq!(again_extras.tensors.len(), extras.tensors.len());
        assert_eq!(bits(again.params()), bits(l.params()));
        assert_eq!(bits(again.alphas()), bits(l.alphas()));
        assert_eq!(again.meta_steps(), l.meta_steps());
    }
}

fuzz_target!(|data: &[u8]| {
    optimizer::<f32>(data, &[]);
    optimizer::<f64>(data, &[]);
    optimizer::<f32>(data, &SHARD_KEYS);
    learner::<f32>(data);
    learner::<f64>(data);
    if let Ok(r) = CommitRecord::parse(data) {
        assert!(r.ranks() >= 1 && r.generation() >= 1);
    }
});
