//! `MetaSGD::from_state_bytes` on arbitrary bytes: it must return, never
//! panic, and whatever it accepts must encode and load back to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metasgd::{Element, MetaSGD};

fn check<A: Element>(data: &[u8]) {
    if let Ok(opt) = MetaSGD::<A>::from_state_bytes(data) {
        let again = MetaSGD::<A>::from_state_bytes(&opt.state_bytes())
            .expect("a state this build accepted must load again");
        let bits = |o: &MetaSGD<A>| {
            let alphas: Vec<Vec<u64>> = o
                .per_param_lrs()
                .iter()
                .map(|a| a.iter().map(|x| x.bits()).collect())
                .collect();
            (
                alphas,
                o.get_base_lr().bits(),
                o.get_alpha_lr().bits(),
                o.get_step_count(),
            )
        };
        assert_eq!(bits(&again), bits(&opt));
    }
}

fuzz_target!(|data: &[u8]| {
    check::<f32>(data);
    check::<f64>(data);
});
