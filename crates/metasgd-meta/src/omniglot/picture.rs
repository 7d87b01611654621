//! A run's classifications as a picture a person can check at a glance.

use std::fs::File;
use std::path::Path;

use super::{DataError, Run, SIDE};
use crate::Classification;

impl Run {
    /// Writes a PNG of this run: its training images on top; below, up to 8
    /// test images, each beside the training image `predicted` says it is
    /// (a green frame: right, red: wrong).
    pub fn picture(&self, predicted: &[usize], path: &Path) -> Result<(), DataError> {
        let ways = self.support.y.len();
        let cell = SIDE + 4;
        let (w, h) = (ways.max(10) * cell, 3 * cell + 24);
        let mut rgb = vec![255u8; w * h * 3];
        let mut put = |img: &[f32], x0: usize, y0: usize, frame: Option<[u8; 3]>| {
            for y in 0..cell {
                for x in 0..cell {
                    let (px, py) = (x0 + x, y0 + y);
                    if px >= w || py >= h {
                        continue;
                    }
                    let inside = (2..SIDE + 2).contains(&x) && (2..SIDE + 2).contains(&y);
                    let colour = if inside {
                        let ink = img.get((y - 2) * SIDE + (x - 2)).copied().unwrap_or(0.0);
                        let v = (255.0 * (1.0 - ink.clamp(0.0, 1.0))) as u8;
                        [v, v, v]
                    } else if let Some(f) = frame {
                        f
                    } else {
                        continue;
                    };
                    rgb[(py * w + px) * 3..][..3].copy_from_slice(&colour);
                }
            }
        };
        let image = |b: &Classification<f32>, i: usize| -> Vec<f32> {
            b.x.slice(ndarray::s![i, 0, .., ..])
                .iter()
                .copied()
                .collect()
        };
        for c in 0..ways {
            put(&image(&self.support, c), c * cell, 0, None);
        }
        let shown = predicted.iter().zip(&self.test.y).enumerate().take(8);
        for (t, (&guess, &truth)) in shown {
            if guess >= ways {
                continue;
            }
            let (x0, y0) = ((t % 4) * 5 * cell, cell + 8 + (t / 4) * (cell + 8));
            let frame = if guess == truth {
                [0, 170, 0]
            } else {
                [210, 0, 0]
            };
            put(&image(&self.test, t), x0, y0, None);
            put(&image(&self.support, guess), x0 + cell + 4, y0, Some(frame));
        }
        let io = |e: &dyn std::fmt::Display| DataError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let file = File::create(path).map_err(|e| io(&e))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(|e| io(&e))?;
        writer.write_image_data(&rgb).map_err(|e| io(&e))?;
        writer.finish().map_err(|e| io(&e))
    }
}
