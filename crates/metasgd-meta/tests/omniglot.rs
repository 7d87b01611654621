//! The Omniglot module on files written here (no data set needed): the
//! readers accept what the data set holds and refuse damaged or hostile
//! files with an error naming them; the sampler is a function of the seed
//! and the iteration; the progress counters round-trip and are checked.

use std::io::{Cursor, Write};

use metasgd_meta::omniglot::{
    self, Background, DataError, Evaluation, Progress, SIDE, SOURCE_SIDE, Sampler, Score, WAYS,
};
use metasgd_meta::{ConvNet, MetaLearner};

/// A 105x105 greyscale PNG: black (ink) where `ink(x, y)`, white elsewhere.
fn png_of(ink: impl Fn(usize, usize) -> bool, side: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, side as u32, side as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let pixels: Vec<u8> = (0..side * side)
        .map(|i| if ink(i % side, i / side) { 0 } else { 255 })
        .collect();
    let mut w = enc.write_header().unwrap();
    w.write_image_data(&pixels).unwrap();
    w.finish().unwrap();
    out
}

/// A character `c` drawn by drawer `d`: a bar whose place depends on both.
fn drawing(c: usize, d: usize) -> Vec<u8> {
    png_of(|x, y| (x / 15 == c % 7) && (y / 15 != d % 7), SOURCE_SIDE)
}

fn zip_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in files {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Two alphabets of `chars` characters with 6 drawings each.
fn background_zip(chars: usize) -> Vec<u8> {
    let mut files = Vec::new();
    for a in ["Alpha", "Beta"] {
        for c in 0..chars {
            for d in 0..6 {
                let name = format!("images_background/{a}/character{c:02}/{c:02}_{d:02}.png");
                files.push((name, drawing(c, d)));
            }
        }
    }
    zip_of(&files)
}

/// Lake's layout: 20 runs, each with 20 training and 20 test images and
/// the labels file; test item `i` is of class `(i * 7) % 20 + 1`.
fn runs_files() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for r in 1..=20 {
        let mut labels = String::new();
        for c in 1..=WAYS {
            files.push((format!("run{r:02}/training/class{c:02}.png"), drawing(c, 0)));
            let class = (c * 7) % WAYS + 1;
            files.push((format!("run{r:02}/test/item{c:02}.png"), drawing(class, 1)));
            labels +=
                &format!("run{r:02}/test/item{c:02}.png run{r:02}/training/class{class:02}.png\n");
        }
        files.push((format!("run{r:02}/class_labels.txt"), labels.into_bytes()));
    }
    files
}

fn invalid(e: DataError) -> (String, String) {
    match e {
        DataError::Invalid { what, reason } => (what, reason),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_png_becomes_ink_at_28_pixels() {
    // All white: no ink; all black: ink 1 everywhere.
    let white = omniglot::decode_png(&png_of(|_, _| false, SOURCE_SIDE), "white").unwrap();
    let black = omniglot::decode_png(&png_of(|_, _| true, SOURCE_SIDE), "black").unwrap();
    assert_eq!(white.len(), SIDE * SIDE);
    assert!(white.iter().all(|&v| v == 0.0));
    assert!(
        black.iter().all(|&v| (v - 1.0).abs() < 1e-6),
        "{:?}",
        &black[..4]
    );
    // The left 15 columns of 105 are ink: output columns 0-3 (4 x 3.75 = 15) are.
    let left = omniglot::decode_png(&png_of(|x, _| x < 15, SOURCE_SIDE), "left").unwrap();
    for y in 0..SIDE {
        for x in 0..SIDE {
            let want = if x < 4 { 1.0 } else { 0.0 };
            assert!(
                (left[y * SIDE + x] - want).abs() < 1e-6,
                "({x}, {y}): {}",
                left[y * SIDE + x]
            );
        }
    }
    // Another size, garbage, a truncated file: refused, naming the input.
    let (what, reason) =
        invalid(omniglot::decode_png(&png_of(|_, _| false, 28), "small").unwrap_err());
    assert_eq!(what, "small");
    assert!(
        reason.contains("28x28 pixels, expected 105x105"),
        "{reason}"
    );
    assert!(omniglot::decode_png(b"not a png", "junk").is_err());
    // Cut in the signature, the header, and the middle of the image data.
    let whole = drawing(1, 1);
    let idat = whole.windows(4).position(|w| w == b"IDAT").unwrap();
    let len = u32::from_be_bytes(whole[idat - 4..idat].try_into().unwrap()) as usize;
    for cut in [5, 20, idat + 4 + len / 2] {
        assert!(
            omniglot::decode_png(&whole[..cut], "cut").is_err(),
            "cut at {cut}"
        );
    }
}

#[test]
fn lakes_runs_are_read_with_their_labels() {
    let runs = omniglot::runs_from_zip(Cursor::new(zip_of(&runs_files())), "all_runs.zip").unwrap();
    assert_eq!(runs.len(), 20);
    for run in &runs {
        assert_eq!(run.support.x.shape(), [WAYS, 1, SIDE, SIDE]);
        assert_eq!(run.support.y, (0..WAYS).collect::<Vec<_>>());
        let classes: Vec<usize> = (1..=WAYS).map(|c| (c * 7) % WAYS).collect();
        assert_eq!(run.test.y, classes);
    }
}

#[test]
fn damaged_runs_are_refused_with_the_file_named() {
    let files = runs_files();
    let read = |files: &[(String, Vec<u8>)]| {
        omniglot::runs_from_zip(Cursor::new(zip_of(files)), "all_runs.zip").map(|_| ())
    };
    // A missing image.
    let missing: Vec<_> = files
        .iter()
        .filter(|(n, _)| n != "run07/test/item03.png")
        .cloned()
        .collect();
    let (what, reason) = invalid(read(&missing).unwrap_err());
    assert_eq!(
        (what.as_str(), reason.as_str()),
        ("all_runs.zip: run07/test/item03.png", "missing")
    );
    // Label lines that point elsewhere, name a class out of range, or repeat.
    for bad in [
        "run01/test/item01.png run02/training/class01.png",
        "run01/test/item01.png run01/training/class21.png",
        "run01/../run02/test/item01.png run01/training/class01.png",
        "run01/test/../../etc/passwd run01/training/class01.png",
        "just one field",
    ] {
        let mut edited = files.clone();
        let labels = edited
            .iter_mut()
            .find(|(n, _)| n == "run01/class_labels.txt")
            .unwrap();
        labels.1 = format!("{bad}\n").into_bytes();
        let (what, reason) = invalid(read(&edited).unwrap_err());
        assert!(what.ends_with("run01/class_labels.txt"), "{bad}: {what}");
        assert!(reason.contains("unexpected line"), "{bad}: {reason}");
    }
    let mut long = files.clone();
    let labels = long
        .iter_mut()
        .find(|(n, _)| n == "run02/class_labels.txt")
        .unwrap();
    labels.1 = [labels.1.clone(), labels.1.clone()].concat();
    assert!(
        invalid(read(&long).unwrap_err())
            .1
            .contains("more than 20 test images")
    );
    // Not a zip at all, and a zip with too many entries.
    assert!(omniglot::runs_from_zip(Cursor::new(b"PK\x03\x04 nope".to_vec()), "x").is_err());
    let many: Vec<_> = (0..2001).map(|i| (format!("e{i}"), Vec::new())).collect();
    let (_, reason) = invalid(read(&many).unwrap_err());
    assert!(reason.contains("2001 entries"), "{reason}");
}

#[test]
fn the_background_sets_and_the_sampler() {
    let zips = vec![("bg.zip".to_string(), Cursor::new(background_zip(25)))];
    let bg = Background::from_zips(zips).unwrap();
    assert_eq!(bg.names(), ["Alpha", "Beta"]);
    assert_eq!((bg.characters(0), bg.alphabet("Beta")), (25, Some(1)));
    assert!(
        bg.describe(Some(1))
            .contains("held out: Beta (25 characters)")
    );
    // Tasks come from the alphabets not held out, 20 ways, 1 + 5 drawings.
    let sampler = Sampler::new(&bg, Some(1), 2, 9).unwrap();
    assert_eq!(sampler.alphabets(), [0]);
    let batch = sampler.meta_batch(3, 4);
    assert_eq!(batch.len(), 4);
    for task in &batch {
        assert_eq!(task.support.x.shape(), [WAYS, 1, SIDE, SIDE]);
        assert_eq!(task.query.x.shape(), [WAYS * 5, 1, SIDE, SIDE]);
        assert_eq!(task.query.y.iter().filter(|&&y| y == 7).count(), 5);
    }
    // A function of (seed, iteration) only.
    let again = Sampler::new(&bg, Some(1), 2, 9).unwrap().meta_batch(3, 4);
    assert!(
        batch
            .iter()
            .zip(&again)
            .all(|(a, b)| a.query.x == b.query.x && a.support.y == b.support.y)
    );
    assert_ne!(batch[0].query.x, sampler.meta_batch(4, 4)[0].query.x);
    assert_ne!(
        batch[0].query.x,
        Sampler::new(&bg, Some(1), 2, 10).unwrap().meta_batch(3, 4)[0]
            .query
            .x
    );
    // Validation runs: up to 20 characters, one training and one test drawing each.
    let runs = bg.validation_runs(1, 0).unwrap();
    assert_eq!(runs.len(), 20);
    assert!(bg.validation_runs(2, 0).is_err());
    assert_eq!(runs[0].support.x.shape(), [20, 1, SIDE, SIDE]);
    assert!(Sampler::new(&bg, Some(2), 0, 0).is_err());
    // One alphabet, or a character with too few drawings: refused.
    let one: Vec<_> = (0..6)
        .map(|d| (format!("s/A/c/{d}.png"), drawing(0, d)))
        .collect();
    assert!(
        invalid(
            Background::from_zips(vec![("one".into(), Cursor::new(zip_of(&one)))]).unwrap_err()
        )
        .1
        .contains("at least 2")
    );
    let few: Vec<_> = (0..5)
        .flat_map(|d| {
            [
                (format!("s/A/c/{d}.png"), drawing(0, d)),
                (format!("s/B/c/{d}.png"), drawing(0, d)),
            ]
        })
        .collect();
    let (what, _) = invalid(
        Background::from_zips(vec![("few".into(), Cursor::new(zip_of(&few)))]).unwrap_err(),
    );
    assert_eq!(what, "alphabet A");
    let odd = vec![("s/A/c/d/e.png".to_string(), drawing(0, 0))];
    let (what, _) = invalid(
        Background::from_zips(vec![("odd".into(), Cursor::new(zip_of(&odd)))]).unwrap_err(),
    );
    assert_eq!(what, "odd: s/A/c/d/e.png");
}

#[test]
fn scores_and_progress_counters() {
    let zips = vec![("bg.zip".to_string(), Cursor::new(background_zip(20)))];
    let bg = Background::from_zips(zips).unwrap();
    let net = ConvNet::new(WAYS);
    let learner = MetaLearner::meta_sgd(net.init::<f32>(0), 0.4);
    let runs = bg.validation_runs(0, 1).unwrap();
    let e = Evaluation::measure(&net, &learner, &runs, &runs[..3], 1234).unwrap();
    assert_eq!(
        (e.validation.total, e.lake.total, e.millis),
        (400, 60, 1234)
    );
    assert!(e.validation.wrong_support <= 400 && e.lake.wrong_batch <= 60);
    assert_eq!(e.lake, omniglot::score(&net, &learner, &runs[..3]).unwrap());
    let progress = Progress {
        evaluations: vec![
            e,
            Evaluation {
                iterations: 5,
                millis: 2000,
                ..e
            },
        ],
        millis: 2500,
    };
    let extras = progress.to_extras();
    assert_eq!(Progress::from_extras(&extras).unwrap(), progress);
    assert_eq!(progress.best(), Some(&progress.evaluations[0]));
    // Another program's counters, columns of different lengths, a count past
    // its total, time running backwards: refused.
    let mut other = extras.clone();
    other.counters[0].0 = "iterations".into();
    let mut short = extras.clone();
    short.counters[3].1.pop();
    let mut past = extras.clone();
    past.counters[2].1[0] = 401;
    let mut backwards = extras.clone();
    backwards.counters[1].1[1] = 1;
    for (name, bad) in [
        ("other", other),
        ("short", short),
        ("past", past),
        ("backwards", backwards),
    ] {
        assert!(Progress::from_extras(&bad).is_err(), "{name}");
    }
    let s = Score {
        wrong_support: 1,
        wrong_batch: 3,
        total: 4,
    };
    assert_eq!((s.support_error(), s.batch_error()), (0.25, 0.75));
}
