//! `cargo xtask bench`: builds `kernel-compare` in release mode, runs the main
//! table, then (unless `--quick`) compares the default build with a
//! `-C target-cpu=native` build on in-cache sizes, interleaving the two
//! processes. Writes `rows.csv`, `incache.csv` and `throughput.svg` under
//! `target/xtask-bench/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{field, plot, project_root, target_dir};

/// Alternating runs of each build in the in-cache comparison.
const INCACHE_ROUNDS: usize = 3;

pub(crate) fn run(quick: bool, torch: Option<&str>) -> Result<(), String> {
    let root = project_root();
    let target = target_dir(&root)?;
    let out = target.join("xtask-bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;

    println!("[xtask] building kernel-compare (release, default target)");
    let default_bin = build(&root, &target, None)?;
    let native_bin = if quick {
        None
    } else {
        println!("[xtask] building kernel-compare (release, -C target-cpu=native)");
        Some(build(&root, &target, Some(target.join("native")))?)
    };

    let rows = out.join("rows.csv");
    println!(
        "[xtask] running the kernel comparison{}",
        if quick { " (quick)" } else { "" }
    );
    let mut table = Command::new(&default_bin);
    table.arg("table").arg("--csv").arg(&rows);
    if quick {
        table.arg("--quick");
    }
    status(&mut table)?;

    if let Some(native_bin) = native_bin {
        incache(&default_bin, &native_bin, &out)?;
    }
    match torch {
        Some(python) => torch_compare(&default_bin, python, quick, &out)?,
        None => println!(
            "\n[xtask] PyTorch (torch.compile) not compared: `cargo xtask bench --torch ENV/bin/python` adds it"
        ),
    }

    let svg = out.join("throughput.svg");
    let csv = std::fs::read_to_string(&rows)
        .map_err(|e| format!("cannot read {}: {e}", rows.display()))?;
    std::fs::write(&svg, plot::throughput_svg(&csv)?)
        .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    println!("[xtask] wrote {}, {}", rows.display(), svg.display());
    Ok(())
}

/// `cargo xtask bench --adapters`: builds `adapter-compare` (feature
/// `adapters` of metasgd-benches: candle and burn) and runs it; the table
/// goes to the terminal, the rows to `target/xtask-bench/adapters.csv`.
pub(crate) fn adapters(quick: bool) -> Result<(), String> {
    let root = project_root();
    let target = target_dir(&root)?;
    let out = target.join("xtask-bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    println!("[xtask] building adapter-compare (release; candle and burn)");
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&root)
        .args(["build", "--release", "-p", "metasgd-benches"])
        .args(["--features", "adapters", "--bin", "adapter-compare"])
        .env_remove("RUSTFLAGS");
    status(&mut cmd)?;
    let bin = target
        .join("release")
        .join(format!("adapter-compare{}", std::env::consts::EXE_SUFFIX));
    let csv = out.join("adapters.csv");
    let mut run = Command::new(&bin);
    run.arg("--csv").arg(&csv);
    if quick {
        run.arg("--quick");
    }
    status(&mut run)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Builds the comparison binary; `target_dir` set means the native build.
fn build(root: &Path, target: &Path, target_dir: Option<PathBuf>) -> Result<PathBuf, String> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(root).args([
        "build",
        "--release",
        "-p",
        "metasgd-benches",
        "--bin",
        "kernel-compare",
    ]);
    let dir = match target_dir {
        Some(dir) => {
            cmd.arg("--target-dir")
                .arg(&dir)
                .env("RUSTFLAGS", "-C target-cpu=native");
            dir
        }
        None => {
            cmd.env_remove("RUSTFLAGS");
            target.to_path_buf()
        }
    };
    status(&mut cmd)?;
    Ok(dir
        .join("release")
        .join(format!("kernel-compare{}", std::env::consts::EXE_SUFFIX)))
}

fn status(cmd: &mut Command) -> Result<(), String> {
    let s = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if s.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed: {s}"))
    }
}

/// `(type, size) -> ns per element`.
type Timings = BTreeMap<(String, usize), f64>;

/// The SIMD level and timings of one `kernel-compare incache` run.
fn incache_run(bin: &Path) -> Result<(String, Timings), String> {
    let out = Command::new(bin)
        .arg("incache")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!("{} incache failed", bin.display()));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut level = String::new();
    let mut map = BTreeMap::new();
    for line in text.lines() {
        if let Some(l) = line.strip_prefix("simd level: ") {
            level = l.to_string();
        }
        let f: Vec<&str> = line.split(',').collect();
        if let ["incache", ty, n, ns] = f[..] {
            let n = n.parse().map_err(|_| format!("bad size in {line}"))?;
            let ns = ns.parse().map_err(|_| format!("bad time in {line}"))?;
            map.insert((ty.to_string(), n), ns);
        }
    }
    Ok((level, map))
}

/// Target 2: the default build (runtime dispatch) against a native build, in cache, 1 thread.
fn incache(default_bin: &Path, native_bin: &Path, out: &Path) -> Result<(), String> {
    println!();
    println!(
        "[xtask] in-cache comparison, 1 thread: default build vs -C target-cpu=native ({INCACHE_ROUNDS} alternating runs each)"
    );
    let mut samples: BTreeMap<(String, usize), (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut levels = (String::new(), String::new());
    for round in 0..INCACHE_ROUNDS {
        eprintln!("  .. round {} of {INCACHE_ROUNDS}", round + 1);
        let (ld, d) = incache_run(default_bin)?;
        let (ln, n) = incache_run(native_bin)?;
        levels = (ld, ln);
        for (k, v) in d {
            samples.entry(k).or_default().0.push(v);
        }
        for (k, v) in n {
            samples.entry(k).or_default().1.push(v);
        }
    }
    println!("  default build: {}; native build: {}", levels.0, levels.1);
    println!(
        "  {:<5} {:>6} {:>16} {:>16} {:>8}",
        "type", "size", "default ns/elem", "native ns/elem", "ratio"
    );
    let mut csv =
        String::from("dtype,size,default_ns_per_elem,native_ns_per_elem,throughput_ratio\n");
    let mut worst = f64::INFINITY;
    for ((ty, n), (mut d, mut nat)) in samples {
        let (d, nat) = (crate::median(&mut d), crate::median(&mut nat));
        let ratio = nat / d; // throughput of default relative to native
        worst = worst.min(ratio);
        println!("  {ty:<5} {n:>6} {d:>16.4} {nat:>16.4} {ratio:>8.3}");
        csv.push_str(&format!("{ty},{n},{d:.5},{nat:.5},{ratio:.4}\n"));
    }
    println!(
        "  2. default build vs native, in cache: worst ratio {worst:.3} (target >= 0.90) {}",
        if worst >= 0.90 { "met" } else { "MISSED" }
    );
    let path = out.join("incache.csv");
    std::fs::write(&path, csv).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Alternating runs of (ours, PyTorch) in the torch.compile comparison.
const TORCH_ALTERNATIONS: usize = 3;

/// `(type, size, threads)`: one row of the comparison.
type Row = (String, usize, usize);

/// `(type, size, threads) -> ns per element`.
type Rows = BTreeMap<Row, f64>;

/// The step's rows (ns per element) of one `kernel-compare table --rows-only` run.
fn our_rows(bin: &Path, quick: bool) -> Result<Rows, String> {
    let mut cmd = Command::new(bin);
    cmd.args(["table", "--rows-only", "--sizes", "20,24"]);
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if !out.status.success() {
        return Err(format!("{} table failed", bin.display()));
    }
    let mut rows = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [ty @ ("f32" | "f64"), size, threads, ns, ..] = f[..] {
            let n = match size.strip_suffix('M') {
                Some(m) => m.parse::<usize>().map(|m| m << 20),
                None => size.parse(),
            };
            if let (Ok(n), Ok(t), Ok(ns)) = (n, threads.parse(), ns.parse()) {
                rows.insert((ty.to_string(), n, t), ns);
            }
        }
    }
    Ok(rows)
}

/// The rows of one run of the PyTorch peer (`benches/peers/torch_update.py`).
fn torch_rows(python: &str, quick: bool) -> Result<Rows, String> {
    let script = project_root().join("benches/peers/torch_update.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script);
    if quick {
        cmd.args(["--rounds", "3", "--batch-ms", "2"]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{python} {} failed (is torch installed?): {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    let mut rows = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let parsed = (
            field(line, "dtype"),
            field(line, "n").and_then(|v| v.parse().ok()),
            field(line, "threads").and_then(|v| v.parse().ok()),
            field(line, "ns_per_element").and_then(|v| v.parse().ok()),
        );
        if let (Some(ty), Some(n), Some(t), Some(ns)) = parsed {
            rows.insert((ty.to_string(), n, t), ns);
        }
    }
    Ok(rows)
}

/// Our in-place step against the same update compiled by torch.compile:
/// 1M and 16M elements, f32 and f64, 1 and 2 threads, medians of
/// alternating runs; targets >= 1.0x at 16M and >= 1.2x at 1M.
fn torch_compare(bin: &Path, python: &str, quick: bool, out: &Path) -> Result<(), String> {
    println!();
    println!(
        "[xtask] against PyTorch (torch.compile), in place, K = 5: {TORCH_ALTERNATIONS} alternating runs of each"
    );
    let mut samples: BTreeMap<Row, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..TORCH_ALTERNATIONS {
        eprintln!("  .. round {} of {TORCH_ALTERNATIONS}: ours", round + 1);
        for (k, v) in our_rows(bin, quick)? {
            samples.entry(k).or_default().0.push(v);
        }
        eprintln!("  .. round {} of {TORCH_ALTERNATIONS}: PyTorch", round + 1);
        for (k, v) in torch_rows(python, quick)? {
            samples.entry(k).or_default().1.push(v);
        }
    }
    println!(
        "  {:<5} {:>5} {:>7} {:>12} {:>14} {:>7} {:>8}",
        "type", "size", "threads", "ours ns/el", "torch ns/el", "ratio", "target"
    );
    let mut csv = String::from("dtype,size,threads,ours_ns_per_elem,torch_ns_per_elem,ratio\n");
    let mut misses = 0;
    for ((ty, n, t), (mut ours, mut torch)) in samples {
        if ours.is_empty() || torch.is_empty() {
            continue;
        }
        let (o, p) = (crate::median(&mut ours), crate::median(&mut torch));
        let ratio = p / o;
        let want = if n >= 16 << 20 { 1.0 } else { 1.2 };
        let verdict = if ratio >= want { "met" } else { "MISSED" };
        misses += usize::from(ratio < want);
        println!(
            "  {ty:<5} {:>4}M {t:>7} {o:>12.4} {p:>14.4} {ratio:>6.2}x {:>5} {verdict}",
            n >> 20,
            format!(">={want}")
        );
        csv.push_str(&format!("{ty},{n},{t},{o:.5},{p:.5},{ratio:.4}\n"));
    }
    println!("  (ratio: PyTorch's time over ours; {misses} rows under target)");
    let path = out.join("torch.csv");
    std::fs::write(&path, csv).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
