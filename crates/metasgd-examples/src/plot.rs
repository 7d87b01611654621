//! Line charts as SVG (plotters, no font libraries): one set-up for every
//! example's curves.

use std::error::Error;
use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

/// The colours of successive series.
pub const COLORS: [RGBColor; 7] = [
    BLUE,
    RED,
    GREEN,
    MAGENTA,
    CYAN,
    BLACK,
    RGBColor(255, 140, 0),
];

/// One curve.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend's label.
    pub name: String,
    /// `(x, y)` points, in order.
    pub points: Vec<(f64, f64)>,
    /// Line width in pixels.
    pub width: u32,
    /// A dot at every point.
    pub markers: bool,
    /// The colour.
    pub color: RGBColor,
}

impl Series {
    /// A 2-pixel line without markers, in `COLORS[i % 7]`.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, i: usize) -> Self {
        Self {
            name: name.into(),
            points,
            width: 2,
            markers: false,
            color: COLORS[i % COLORS.len()],
        }
    }

    /// With a dot at every point.
    pub fn with_markers(mut self) -> Self {
        self.markers = true;
        self
    }

    /// With a line `width` pixels wide.
    pub fn with_width(mut self, width: u32) -> Self {
        self.width = width;
        self
    }
}

/// A chart's frame: title, axis labels and ranges, where the legend goes.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The caption.
    pub title: String,
    /// The x axis' label.
    pub x_desc: String,
    /// The y axis' label.
    pub y_desc: String,
    /// The x range.
    pub x: Range<f64>,
    /// The y range.
    pub y: Range<f64>,
    /// Where the legend goes.
    pub legend: SeriesLabelPosition,
}

impl Frame {
    /// A frame whose ranges cover every point of `series` (x from 0, y with
    /// 5% margin), legend upper right.
    pub fn covering(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Self {
        let points = || series.iter().flat_map(|s| s.points.iter());
        let x_max = points().map(|p| p.0).fold(1e-9, f64::max);
        let y_min = points().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let y_max = points().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let (y_min, y_max) = if y_min.is_finite() && y_max > y_min {
            (y_min, y_max)
        } else {
            (0.0, 1.0)
        };
        let pad = 0.05 * (y_max - y_min);
        Self {
            title: title.into(),
            x_desc: x_desc.into(),
            y_desc: y_desc.into(),
            x: 0.0..x_max * 1.02,
            y: y_min - pad..y_max + pad,
            legend: SeriesLabelPosition::UpperRight,
        }
    }
}

/// Draws `series` in `frame` on `area`.
pub fn draw(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    frame: &Frame,
    series: &[Series],
) -> Result<(), Box<dyn Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(&frame.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(38)
        .y_label_area_size(64)
        .build_cartesian_2d(frame.x.clone(), frame.y.clone())?;
    chart
        .configure_mesh()
        .x_desc(&frame.x_desc)
        .y_desc(&frame.y_desc)
        .draw()?;
    for s in series {
        let style = s.color.stroke_width(s.width);
        chart
            .draw_series(LineSeries::new(s.points.clone(), style))?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if s.markers {
            let dot = s.color.filled();
            chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, dot)))?;
        }
    }
    chart
        .configure_series_labels()
        .position(frame.legend.clone())
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// An SVG of `size` pixels at `path` with one chart per `(frame, series)`
/// panel, side by side.
pub fn svg(
    path: &Path,
    size: (u32, u32),
    panels: &[(Frame, Vec<Series>)],
) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (area, (frame, series)) in areas.iter().zip(panels) {
        draw(area, frame, series)?;
    }
    root.present()?;
    Ok(())
}
