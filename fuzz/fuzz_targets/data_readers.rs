//! Every reader of a data set's files on arbitrary bytes: Omniglot's zips
//! (the background sets and Lake's runs, with their PNGs and label files),
//! a single PNG, and Fashion-MNIST's gzipped IDX files. Each must return,
//! never panic or hang, and allocate within its documented bounds; whatever
//! one accepts must have the shapes it promises.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use metasgd::meta::omniglot::{self, Background, SIDE};
use metasgd_examples::fashion_mnist::parse_idx;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = omniglot::decode_png(data, "input") {
        assert_eq!(image.len(), SIDE * SIDE);
        assert!(image.iter().all(|v| v.is_finite()));
    }
    if let Ok(runs) = omniglot::runs_from_zip(Cursor::new(data), "input") {
        assert_eq!(runs.len(), 20);
        for run in &runs {
            assert_eq!(run.support.x.shape(), [omniglot::WAYS, 1, SIDE, SIDE]);
            assert!(run.test.y.iter().all(|&c| c < omniglot::WAYS));
        }
    }
    if let Ok(bg) = Background::from_zips(vec![("input".to_string(), Cursor::new(data))]) {
        assert!(bg.len() >= 2);
        assert_eq!(bg.validation_runs(0, 0).map(|r| r.len()), Ok(20));
    }
    for dims in [1, 3] {
        if let Ok((shape, bytes)) = parse_idx(data, dims) {
            assert_eq!(shape.len(), dims as usize);
            assert_eq!(shape.iter().product::<usize>(), bytes.len());
        }
    }
});
