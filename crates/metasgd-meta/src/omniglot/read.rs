//! The data set's files: the background zips, Lake's runs, the PNGs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use super::{DataError, Image, QUERY_PER_CLASS, Run, SIDE, SOURCE_SIDE, WAYS, batch};

/// The most entries a background zip may list (each holds about 2,000).
const MAX_BACKGROUND_ENTRIES: usize = 20_000;
/// The most entries `all_runs.zip` may list (it holds about 900).
const MAX_RUN_ENTRIES: usize = 2_000;
/// The largest entry read (an Omniglot PNG is about 1 KB).
const MAX_ENTRY_BYTES: u64 = 1 << 20;
/// Lake's runs.
const RUNS: usize = 20;

/// Every background alphabet: its name, then its characters' drawings
/// (each character has at least `1 + QUERY_PER_CLASS` drawings).
#[derive(Clone, Debug)]
pub struct Background {
    pub(super) alphabets: Vec<(String, Vec<Vec<Image>>)>,
}

impl Background {
    /// Reads `images_background_small1.zip` and `images_background_small2.zip`
    /// from `dir` (an alphabet in both is counted once).
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let mut zips = Vec::new();
        for file in [
            "images_background_small1.zip",
            "images_background_small2.zip",
        ] {
            let path = dir.join(file);
            let f = File::open(&path).map_err(|e| DataError::Io {
                path: path.clone(),
                message: e.to_string(),
            })?;
            zips.push((path.display().to_string(), f));
        }
        Self::from_zips(zips)
    }

    /// [`Background::load`] from readers of the zips, each named for errors.
    pub fn from_zips<R: Read + Seek>(zips: Vec<(String, R)>) -> Result<Self, DataError> {
        let mut alphabets: BTreeMap<String, BTreeMap<String, Vec<Image>>> = BTreeMap::new();
        for (name, reader) in zips {
            let mut zip = open_zip(reader, &name, MAX_BACKGROUND_ENTRIES)?;
            let mut here: BTreeMap<String, BTreeMap<String, Vec<Image>>> = BTreeMap::new();
            for i in 0..zip.len() {
                let (entry, bytes) = entry_bytes(&mut zip, i, &name)?;
                if !entry.ends_with(".png") {
                    continue;
                }
                let parts: Vec<&str> = entry.split('/').collect();
                let [_, alphabet, character, _file] = parts[..] else {
                    return Err(DataError::invalid(
                        format!("{name}: {entry}"),
                        "not <set>/<alphabet>/<character>/<file>.png",
                    ));
                };
                let image = decode_png(&bytes, &format!("{name}: {entry}"))?;
                here.entry(alphabet.to_string())
                    .or_default()
                    .entry(character.to_string())
                    .or_default()
                    .push(image);
            }
            for (alphabet, chars) in here {
                alphabets.entry(alphabet).or_insert(chars);
            }
        }
        let alphabets: Vec<(String, Vec<Vec<Image>>)> = alphabets
            .into_iter()
            .map(|(a, chars)| (a, chars.into_values().collect()))
            .collect();
        if let Some((name, _)) = alphabets
            .iter()
            .find(|(_, c)| c.iter().any(|d| d.len() < 1 + QUERY_PER_CLASS))
        {
            return Err(DataError::invalid(
                format!("alphabet {name}"),
                format!(
                    "a character with fewer than {} drawings",
                    1 + QUERY_PER_CLASS
                ),
            ));
        }
        if alphabets.len() < 2 {
            return Err(DataError::invalid(
                "the background sets",
                format!(
                    "{} alphabet(s), at least 2 needed (one to train on, one to hold out)",
                    alphabets.len()
                ),
            ));
        }
        Ok(Self { alphabets })
    }

    /// The number of alphabets.
    pub fn len(&self) -> usize {
        self.alphabets.len()
    }

    /// Whether there is no alphabet (never, for a loaded set).
    pub fn is_empty(&self) -> bool {
        self.alphabets.is_empty()
    }

    /// Alphabet `i`'s name.
    ///
    /// # Panics
    /// If `i >= self.len()`, as slice indexing does.
    pub fn name(&self, i: usize) -> &str {
        &self.alphabets[i].0
    }

    /// The number of characters of alphabet `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`, as slice indexing does.
    pub fn characters(&self, i: usize) -> usize {
        self.alphabets[i].1.len()
    }

    /// The index of the alphabet called `name`.
    pub fn alphabet(&self, name: &str) -> Option<usize> {
        self.alphabets.iter().position(|(n, _)| n == name)
    }

    /// One line for a person: the alphabets trained on (with their
    /// character counts) and the one held out.
    pub fn describe(&self, held_out: Option<usize>) -> String {
        let train: Vec<String> = (0..self.len())
            .filter(|&i| Some(i) != held_out)
            .map(|i| format!("{} ({})", self.name(i), self.characters(i)))
            .collect();
        let held = held_out.map_or(String::from("none"), |h| {
            format!("{} ({} characters)", self.name(h), self.characters(h))
        });
        format!(
            "{} background alphabets, training on {} with rotations, held out: {held}",
            self.len(),
            train.join(", ")
        )
    }

    /// The alphabets' names, in index order.
    pub fn names(&self) -> Vec<&str> {
        self.alphabets.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// Lake's 20 runs, from `dir/all_runs.zip`.
pub fn lake_runs(dir: &Path) -> Result<Vec<Run>, DataError> {
    let path = dir.join("all_runs.zip");
    let f = File::open(&path).map_err(|e| DataError::Io {
        path: path.clone(),
        message: e.to_string(),
    })?;
    runs_from_zip(f, &path.display().to_string())
}

/// [`lake_runs`] from a reader of `all_runs.zip`, named `name` for errors.
pub fn runs_from_zip<R: Read + Seek>(reader: R, name: &str) -> Result<Vec<Run>, DataError> {
    let mut zip = open_zip(reader, name, MAX_RUN_ENTRIES)?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..zip.len() {
        let (entry, bytes) = entry_bytes(&mut zip, i, name)?;
        if !entry.ends_with('/') {
            files.insert(entry, bytes);
        }
    }
    (1..=RUNS).map(|r| one_run(&files, r, name)).collect()
}

/// Run `r` (`run01` ..) from the zip's files.
fn one_run(files: &BTreeMap<String, Vec<u8>>, r: usize, name: &str) -> Result<Run, DataError> {
    let run = format!("run{r:02}");
    let get = |file: &str| {
        files
            .get(&format!("{run}/{file}"))
            .ok_or_else(|| DataError::invalid(format!("{name}: {run}/{file}"), "missing"))
    };
    let training: Vec<Image> = (1..=WAYS)
        .map(|c| {
            let file = format!("training/class{c:02}.png");
            decode_png(get(&file)?, &format!("{name}: {run}/{file}"))
        })
        .collect::<Result<_, _>>()?;
    let labels = String::from_utf8_lossy(get("class_labels.txt")?).to_string();
    let what = format!("{name}: {run}/class_labels.txt");
    let mut tests = Vec::new();
    for line in labels.lines().filter(|l| !l.trim().is_empty()) {
        if tests.len() == WAYS {
            return Err(DataError::invalid(
                &what,
                format!("more than {WAYS} test images"),
            ));
        }
        let (item, class) = parse_label(line, &run)
            .ok_or_else(|| DataError::invalid(&what, format!("unexpected line {line:?}")))?;
        let image = decode_png(get(&item)?, &format!("{name}: {run}/{item}"))?;
        tests.push((image, class));
    }
    if tests.len() != WAYS {
        return Err(DataError::invalid(
            &what,
            format!("{} test images, expected {WAYS}", tests.len()),
        ));
    }
    let support = batch(&training.iter().collect::<Vec<_>>(), (0..WAYS).collect());
    let test = batch(
        &tests.iter().map(|(i, _)| i).collect::<Vec<_>>(),
        tests.iter().map(|(_, c)| *c).collect(),
    );
    Ok(Run { support, test })
}

/// `runNN/test/itemXX.png runNN/training/classYY.png` -> (`test/itemXX.png`,
/// `YY - 1`).
fn parse_label(line: &str, run: &str) -> Option<(String, usize)> {
    let (item, class) = line.trim().split_once(char::is_whitespace)?;
    let item = item.strip_prefix(&format!("{run}/"))?;
    let class: usize = class
        .trim()
        .strip_prefix(&format!("{run}/training/class"))?
        .strip_suffix(".png")?
        .parse()
        .ok()?;
    ((1..=WAYS).contains(&class) && item.starts_with("test/item") && !item.contains(".."))
        .then(|| (item.to_string(), class - 1))
}

fn open_zip<R: Read + Seek>(
    reader: R,
    name: &str,
    max_entries: usize,
) -> Result<zip::ZipArchive<R>, DataError> {
    let zip = zip::ZipArchive::new(reader)
        .map_err(|e| DataError::invalid(name, format!("not a readable zip ({e})")))?;
    if zip.len() > max_entries {
        return Err(DataError::invalid(
            name,
            format!(
                "{} entries, more than the {max_entries} an Omniglot file holds",
                zip.len()
            ),
        ));
    }
    Ok(zip)
}

/// The name and bytes of entry `i`, at most `MAX_ENTRY_BYTES`.
fn entry_bytes<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    i: usize,
    name: &str,
) -> Result<(String, Vec<u8>), DataError> {
    let mut entry = zip
        .by_index(i)
        .map_err(|e| DataError::invalid(format!("{name}: entry {i}"), e.to_string()))?;
    let entry_name = entry
        .name()
        .map_err(|e| DataError::invalid(format!("{name}: entry {i}"), e.to_string()))?
        .to_string();
    let what = || format!("{name}: {entry_name}");
    if entry.size() > MAX_ENTRY_BYTES {
        return Err(DataError::invalid(
            what(),
            format!("{} bytes, too large for an Omniglot file", entry.size()),
        ));
    }
    let mut bytes = Vec::with_capacity(entry.size() as usize);
    (&mut entry)
        .take(MAX_ENTRY_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::invalid(what(), e.to_string()))?;
    Ok((entry_name, bytes))
}

/// A 105x105 PNG as ink (1 = stroke), downsampled to 28x28 by area
/// averaging; `what` names it in errors.
pub fn decode_png(bytes: &[u8], what: &str) -> Result<Image, DataError> {
    let mut decoder = png::Decoder::new_with_limits(
        std::io::Cursor::new(bytes),
        png::Limits {
            bytes: MAX_ENTRY_BYTES as usize,
        },
    );
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| DataError::invalid(what, format!("not a PNG ({e})")))?;
    let (width, height) = (reader.info().width, reader.info().height);
    if (width, height) != (SOURCE_SIDE as u32, SOURCE_SIDE as u32) {
        return Err(DataError::invalid(
            what,
            format!("{width}x{height} pixels, expected {SOURCE_SIDE}x{SOURCE_SIDE}"),
        ));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DataError::invalid(what, "image too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| DataError::invalid(what, e.to_string()))?;
    let channels = info.color_type.samples();
    let colour = match info.color_type {
        png::ColorType::Grayscale | png::ColorType::GrayscaleAlpha => 1,
        png::ColorType::Rgb | png::ColorType::Rgba => 3,
        png::ColorType::Indexed => {
            return Err(DataError::invalid(
                what,
                "an indexed PNG that did not expand",
            ));
        }
    };
    let pixels = buf
        .get(..SOURCE_SIDE * SOURCE_SIDE * channels)
        .ok_or_else(|| DataError::invalid(what, "fewer pixels than its size"))?;
    let ink: Vec<f32> = pixels
        .chunks(channels)
        .map(|px| {
            1.0 - px[..colour].iter().map(|&v| f32::from(v)).sum::<f32>() / (255.0 * colour as f32)
        })
        .collect();
    Ok(downsample(&ink))
}

/// Area averaging from 105x105 to 28x28.
fn downsample(src: &[f32]) -> Image {
    let scale = SOURCE_SIDE as f64 / SIDE as f64;
    // The overlap of output cell `o` with source pixel `s` along one axis.
    let overlap = |o: usize, s: usize| -> f64 {
        let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
        ((s + 1) as f64).min(hi) - (s as f64).max(lo)
    };
    let cover = |o: usize| {
        (o as f64 * scale) as usize..(((o + 1) as f64 * scale).ceil() as usize).min(SOURCE_SIDE)
    };
    let mut out = vec![0f32; SIDE * SIDE];
    for oy in 0..SIDE {
        for ox in 0..SIDE {
            let mut sum = 0.0;
            for y in cover(oy) {
                let wy = overlap(oy, y);
                for x in cover(ox) {
                    sum += wy * overlap(ox, x) * f64::from(src[y * SOURCE_SIDE + x]);
                }
            }
            out[oy * SIDE + ox] = (sum / (scale * scale)) as f32;
        }
    }
    out
}
