//! `cargo xtask bench`: builds `kernel-compare` in release mode, runs the main
//! table, then (unless `--quick`) compares the default build with a
//! `-C target-cpu=native` build on in-cache sizes, interleaving the two
//! processes. Writes `rows.csv`, `incache.csv` and `throughput.svg` under
//! `target/xtask-bench/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{plot, project_root, target_dir};

/// Alternating runs of each build in the in-cache comparison.
const INCACHE_ROUNDS: usize = 3;

pub(crate) fn run(quick: bool) -> Result<(), String> {
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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
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
        let (d, nat) = (median(&mut d), median(&mut nat));
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
