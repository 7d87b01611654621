//! A dependency-free SVG plot of throughput against size from `rows.csv`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;

/// One line of the plot: `(log2 size, GB/s)` points.
type Series = BTreeMap<String, Vec<(f64, f64)>>;

/// The columns `names` of every row of `csv`, found by the header's names.
fn columns<'a, const N: usize>(
    csv: &'a str,
    names: [&str; N],
) -> Result<Vec<[&'a str; N]>, String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let mut at = [0; N];
    for (i, name) in names.iter().enumerate() {
        at[i] = header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("rows.csv has no column {name:?} (header: {header:?})"))?;
    }
    Ok(lines
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let mut row = [""; N];
            for (r, &i) in row.iter_mut().zip(&at) {
                *r = f.get(i)?;
            }
            Some(row)
        })
        .collect())
}

/// Renders step and roofline throughput per type and thread count.
pub(crate) fn throughput_svg(csv: &str) -> Result<String, String> {
    let mut series: Series = BTreeMap::new();
    let rows = columns(
        csv,
        ["dtype", "size", "threads", "gb_per_s", "roofline_fraction"],
    )?;
    for [dtype, size, threads, gbs, frac] in rows {
        if dtype != "f32" && dtype != "f64" {
            continue;
        }
        let (Ok(n), Ok(gbs), Ok(frac)) =
            (size.parse::<f64>(), gbs.parse::<f64>(), frac.parse::<f64>())
        else {
            continue;
        };
        let x = n.log2();
        series
            .entry(format!("{dtype} {threads}T step"))
            .or_default()
            .push((x, gbs));
        // `frac` is roofline time / step time, so the roofline moves gbs / frac.
        series
            .entry(format!("{dtype} {threads}T roofline"))
            .or_default()
            .push((x, gbs / frac));
    }
    let pts = series.values().flatten();
    let (xmin, xmax) = pts
        .clone()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    // Round the top up to a multiple of 50 GB/s so the 5 grid steps read well.
    let ymax = (pts.fold(1.0_f64, |m, p| m.max(p.1)) / 50.0).ceil() * 50.0;
    let xspan = (xmax - xmin).max(1.0);
    let sx = |x: f64| LEFT + (x - xmin) / xspan * (W - LEFT - RIGHT);
    let sy = |y: f64| H - BOTTOM - y / ymax * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="22" font-size="15">metasgd step_inplace throughput (GB/s) vs elements</text>"#
    );
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let _ = writeln!(
        s,
        r#"<path d="M{x0},{y1} V{y0} H{x1}" stroke="black" fill="none"/>"#
    );
    for i in 0..=5 {
        let y = ymax * f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{y:.0}</text>"#,
            LEFT - 6.0,
            sy(y) + 4.0
        );
        let _ = writeln!(s, r##"<path d="M{x0},{} H{x1}" stroke="#ddd"/>"##, sy(y));
    }
    let mut x = xmin.ceil();
    while x <= xmax {
        let label = match x as u32 {
            e if e >= 20 => format!("{}M", 1u64 << (e - 20)),
            e if e >= 10 => format!("{}K", 1u64 << (e - 10)),
            e => format!("{}", 1u64 << e),
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
            sx(x),
            y0 + 18.0
        );
        x += 2.0;
    }
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    let mut legend_y = TOP + 10.0;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = colors[(i / 2) % colors.len()];
        let dash = if name.ends_with("roofline") {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let d: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            d.join(" ")
        );
        let lx = W - RIGHT + 12.0;
        let _ = writeln!(
            s,
            r#"<path d="M{lx},{legend_y} h24" stroke="{color}" stroke-width="2"{dash}/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{name}</text>"#,
            lx + 30.0,
            legend_y + 4.0
        );
        legend_y += 18.0;
    }
    s.push_str("</svg>\n");
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_found_by_name() {
        let csv = "threads,dtype,size,x,gb_per_s,roofline_fraction\n2,f32,1024,,10.5,0.9\nshort\n";
        let rows = columns(
            csv,
            ["dtype", "size", "threads", "gb_per_s", "roofline_fraction"],
        )
        .unwrap();
        assert_eq!(rows, vec![["f32", "1024", "2", "10.5", "0.9"]]);
        assert!(columns(csv, ["missing"]).is_err());
        let svg = throughput_svg(csv).unwrap();
        assert!(svg.contains("f32 2T step"), "{svg}");
    }
}
