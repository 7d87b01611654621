//! A CSV of curves that several runs of a program share: one row per
//! point, the run's name first, so runs of different methods (or resumed
//! runs) add to the same file and plot together.

use std::collections::BTreeMap;
use std::path::Path;

/// Every run's rows: the numeric columns after the name.
pub type Curves = BTreeMap<String, Vec<Vec<f64>>>;

/// Replaces `name`'s rows of the CSV at `path` (header `header`, a missing
/// or unreadable file counts as empty, rows of another width are dropped)
/// with `rows`, each printed with `decimals[c]` decimals in column `c`;
/// writes the file and returns every run's rows.
pub fn replace(
    path: &Path,
    header: &str,
    decimals: &[usize],
    name: &str,
    rows: Vec<Vec<f64>>,
) -> Result<Curves, String> {
    let mut all = Curves::new();
    let earlier = std::fs::read_to_string(path).unwrap_or_default();
    for line in earlier.lines().skip(1) {
        let mut fields = line.split(',');
        let run = fields.next().unwrap_or_default();
        let row: Vec<f64> = fields.map(|v| v.parse().unwrap_or(f64::NAN)).collect();
        if run != name && row.len() == decimals.len() {
            all.entry(run.to_string()).or_default().push(row);
        }
    }
    all.insert(name.to_string(), rows);
    let mut text = format!("{header}\n");
    for (run, rows) in &all {
        for row in rows {
            text.push_str(run);
            for (v, &d) in row.iter().zip(decimals) {
                text.push_str(&format!(",{v:.d$}"));
            }
            text.push('\n');
        }
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(all)
}
