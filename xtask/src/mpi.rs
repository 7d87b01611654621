//! `cargo xtask mpi`: builds `mpi-check` with the `mpi` feature and runs it
//! under `mpirun` on 1, 2, 3 and 4 ranks, then resharding 4 -> 2 and
//! 2 -> 3; kills a rank in the middle of a save (2 ranks, then 3) and
//! resumes the last committed generation on another rank count; prints one
//! line per run and fails on any mismatch. Then runs the `train_mpi` example
//! on 2 ranks and resumes it on 3, and the Omniglot example's smoke run
//! (the distributed meta-learner on the real data) on 1, 2 and 3 ranks and
//! killed mid-save on 2 and resumed on 3 (`meta_mpi ranks=1,2,3 equal=..
//! resumed_equal=..`). `--meta-speed`: the `meta_mpi` example (Omniglot's
//! set-up on random images), 2 ranks of one thread against 1 process of two
//! threads.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{field, median, project_root, target_dir};

const INSTALL: &str =
    "install MPI and libclang first: apt-get install libopenmpi-dev openmpi-bin libclang-dev";

fn found(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `mpirun` with the flags this machine needs: `--oversubscribe` (more ranks
/// than cores) and, as root, `--allow-run-as-root`.
fn mpirun(ranks: usize) -> Command {
    let mut cmd = Command::new("mpirun");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        cmd.arg("--allow-run-as-root");
    }
    cmd.args(["--oversubscribe", "-n", &ranks.to_string()]);
    cmd
}

/// Runs `cmd` and returns its standard output, printing the lines that start with `prefix`.
fn run(mut cmd: Command, prefix: &str) -> Result<Vec<String>, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect();
    for l in &lines {
        println!("{l}");
    }
    if lines.is_empty() {
        return Err(format!("{cmd:?} printed no {prefix:?} line"));
    }
    Ok(lines)
}

/// Builds the MPI examples; returns `mpi-check`'s path (the others lie beside it).
fn build_examples() -> Result<PathBuf, String> {
    if !found("mpirun") {
        return Err(format!("mpirun not found; {INSTALL}"));
    }
    let root = project_root();
    let target = target_dir(&root)?;
    println!(
        "[xtask] building the mpi-check, train_mpi, meta_mpi and omniglot examples (release, --features mpi)"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "metasgd-dist",
            "--features",
            "mpi",
            "--example",
            "mpi-check",
            "--example",
            "train_mpi",
            "--example",
            "meta_mpi",
            "--example",
            "omniglot",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building mpi-check failed ({status}); {INSTALL}"));
    }
    Ok(target
        .join("release")
        .join("examples")
        .join(format!("mpi-check{}", std::env::consts::EXE_SUFFIX)))
}

fn mismatches(line: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("mismatches="))
        .and_then(|v| v.parse().ok())
}

/// The Omniglot example under MPI: its smoke set-up (12 meta-iterations
/// on the real data) on 1, 2 and 3 ranks gives the same parameters, and a
/// 2-rank run whose rank 0 dies in the middle of its second save (the file
/// staged, not committed) resumes on 3 ranks to the same parameters.
fn meta_check(bin: &Path, target: &Path) -> Result<(), String> {
    let data = project_root().join("../shared/data/omniglot");
    if !data.join("all_runs.zip").exists() {
        return Err(format!(
            "{}: the Omniglot data is missing (its README says where it comes from)",
            data.display()
        ));
    }
    let out = target.join("xtask-mpi-omniglot");
    let omniglot = |ranks: usize, extra: &[&str]| {
        let mut cmd = mpirun(ranks);
        cmd.arg(bin).args(["--smoke", "--data"]).arg(&data);
        cmd.arg("--out").arg(out.join(format!("ranks{ranks}")));
        cmd.args(extra);
        cmd
    };
    let crc = |line: &str| field(line, "crc32c").unwrap_or("").to_string();
    let mut sums = Vec::new();
    for ranks in 1..=3 {
        sums.push(crc(&run(omniglot(ranks, &[]), "omniglot_params")?.remove(0)));
    }
    let ckpt = out.join("checkpoint");
    let _ = std::fs::remove_dir_all(&ckpt);
    let ckpt_arg = ckpt.display().to_string();
    let mut killed = omniglot(2, &["--checkpoint", &ckpt_arg, "--die-mid-save", "2"]);
    let status = killed
        .output()
        .map_err(|e| format!("cannot run mpirun: {e}"))?
        .status;
    if status.success() {
        return Err("the run that should have died mid-save completed".into());
    }
    println!("rank 0 of 2 killed in the middle of its second save ({status}); resuming on 3 ranks");
    let line = run(omniglot(3, &["--checkpoint", &ckpt_arg]), "omniglot_params")?.remove(0);
    let resumed = crc(&line);
    let equal = sums.iter().all(|s| *s == sums[0] && !s.is_empty());
    let resumed_equal = resumed == sums[0];
    println!(
        "meta_mpi ranks=1,2,3 equal={equal} resumed_equal={resumed_equal} params_crc32c={}",
        sums[0]
    );
    if equal && resumed_equal {
        Ok(())
    } else {
        Err(format!(
            "the meta-learner differs across ranks: {sums:?}, resumed {resumed}"
        ))
    }
}

/// `cargo xtask mpi --meta-speed`: meta-iterations per second of 2 ranks of
/// one thread against 1 process of two threads, interleaved, medians of 3
/// rounds of each.
pub(crate) fn meta_speed() -> Result<(), String> {
    let bin = build_examples()?;
    let bin = bin.with_file_name(format!("meta_mpi{}", std::env::consts::EXE_SUFFIX));
    let (mut two, mut one, mut bytes) = (Vec::new(), Vec::new(), String::new());
    for round in 0..3 {
        for (ranks, threads) in [(2, 1), (1, 2)] {
            let mut cmd = mpirun(ranks);
            // Open MPI binds each rank to one core by default: a process of
            // two threads must be free to use both.
            cmd.args([
                "--bind-to",
                "none",
                "-x",
                &format!("RAYON_NUM_THREADS={threads}"),
            ]);
            cmd.arg(&bin).arg("12");
            let line = run(cmd, "meta_speed")?.remove(0);
            let s: f64 = field(&line, "s_per_iteration")
                .and_then(|v| v.parse().ok())
                .ok_or("no timing")?;
            if ranks == 2 {
                two.push(1.0 / s);
                bytes = field(&line, "bytes_per_rank").unwrap_or("").to_string();
            } else {
                one.push(1.0 / s);
            }
            println!(
                "  round {round}: {ranks} rank(s) x {threads} thread(s): {:.3} meta-iterations/s",
                1.0 / s
            );
        }
    }
    let (s1, s2) = (median(&mut two), median(&mut one));
    println!(
        "meta_mpi_speed ranks2x1={s1:.3} process1x2={s2:.3} ratio={:.3} bytes_per_rank={bytes}",
        s1 / s2
    );
    Ok(())
}

pub(crate) fn run_all(elements: usize, steps: usize) -> Result<(), String> {
    let bin = build_examples()?;
    let target = target_dir(&project_root())?;
    let mut lines = Vec::new();
    for ranks in 1..=4 {
        let mut cmd = mpirun(ranks);
        cmd.arg(&bin).args([
            "run",
            "--elements",
            &elements.to_string(),
            "--steps",
            &steps.to_string(),
        ]);
        lines.extend(run(cmd, "ranks=")?);
    }
    for (from, to) in [(4, 2), (2, 3)] {
        let dir = target
            .join("xtask-mpi")
            .join(format!("reshard-{from}-{to}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let first = 3;
        let total = 6;
        let mut save = mpirun(from);
        save.arg(&bin)
            .arg("reshard-save")
            .args(dir_args(&dir))
            .args(["--steps", &first.to_string()]);
        run_quiet(save)?;
        lines.extend(run(resume(&bin, &dir, from, to, first, total), "reshard ")?);
    }
    // A rank killed mid-save: the job dies, the previous generation resumes.
    for (from, to, kill) in [(2, 3, 1), (3, 2, 0)] {
        let dir = target
            .join("xtask-mpi")
            .join(format!("kill-{from}-rank{kill}"));
        let _ = std::fs::remove_dir_all(&dir);
        let (first, more) = (3, 2);
        let mut save = mpirun(from);
        save.arg(&bin).arg("kill-save").args(dir_args(&dir)).args([
            "--steps",
            &first.to_string(),
            "--more",
            &more.to_string(),
            "--kill-rank",
            &kill.to_string(),
        ]);
        let out = save
            .output()
            .map_err(|e| format!("cannot run {save:?}: {e}"))?;
        if out.status.success() {
            return Err(format!(
                "{save:?} should have died mid-save, but succeeded:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        left.sort();
        println!(
            "killed rank {kill} of {from} mid-save ({}), left {}; resuming on {to} ranks",
            out.status,
            left.join(" ")
        );
        let total = first + more + 1;
        lines.extend(run(resume(&bin, &dir, from, to, first, total), "reshard ")?);
    }
    // The README's training example: 2 ranks, then resumed on 3.
    let example = target
        .join("release")
        .join("examples")
        .join(format!("train_mpi{}", std::env::consts::EXE_SUFFIX));
    let dir = target.join("xtask-mpi").join("train");
    let _ = std::fs::remove_dir_all(&dir);
    for (ranks, steps) in [(2, "100"), (3, "150")] {
        let mut cmd = mpirun(ranks);
        cmd.arg(&example).arg(&dir).arg(steps);
        run(cmd, &format!("{ranks} ranks:"))?;
    }
    // The sharded step against the plain all-reduce step, timed in the same
    // rounds (3 and 4 ranks oversubscribe 2 cores: their times are the
    // machine's, not the method's).
    for line in lines.iter().filter(|l| l.starts_with("ranks=")) {
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let (Some(ranks), Some(ratio)) = (field("ranks="), field("sharded_vs_plain=")) {
            let target = if ranks == 1.0 { 1.1 } else { 1.0 };
            println!(
                "sharded step / plain all-reduce step, {ranks} rank(s): {ratio:.3} (target <= {target}) {}",
                if ratio <= target { "met" } else { "MISSED" }
            );
        }
    }
    let bad: Vec<&String> = lines.iter().filter(|l| mismatches(l) != Some(0)).collect();
    if !bad.is_empty() {
        return Err(format!("mismatches: {bad:?}"));
    }
    println!(
        "[xtask] sharded MetaSGD is bitwise equal to one process on 1-4 ranks, across resharding, and after a rank killed mid-save"
    );
    let omniglot = bin.with_file_name(format!("omniglot{}", std::env::consts::EXE_SUFFIX));
    meta_check(&omniglot, &target)
}

/// `mpi-check reshard-resume` on `to` ranks: loads what `from` ranks saved
/// after `first` steps, runs to `total`, compares with one process.
fn resume(bin: &Path, dir: &Path, from: usize, to: usize, first: usize, total: usize) -> Command {
    let mut cmd = mpirun(to);
    cmd.arg(bin)
        .arg("reshard-resume")
        .args(dir_args(dir))
        .args([
            "--from",
            &from.to_string(),
            "--steps",
            &first.to_string(),
            "--total",
            &total.to_string(),
        ]);
    cmd
}

fn dir_args(dir: &Path) -> [String; 2] {
    ["--dir".to_string(), dir.display().to_string()]
}

fn run_quiet(mut cmd: Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
