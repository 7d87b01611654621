//! `cargo xtask meta`: builds `meta-sinusoid` in release mode and runs the
//! sinusoid benchmark (Meta-SGD, MAML, first-order MAML), writing
//! `results.csv`, `learning.svg` and `sinusoid.svg` under
//! `<target>/xtask-meta/`. Every flag is passed through.

use std::process::Command;

use crate::{project_root, target_dir};

pub(crate) const USAGE: &str = "cargo xtask meta [--quick] [--shots 5,10] [--iterations N] [--methods meta-sgd,maml,fomaml] [--freq LO:HI] [--seed S] [--threads T] [--alpha-init A] [--eval-tasks N]";

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: {USAGE}");
        return Ok(());
    }
    let root = project_root();
    let target = target_dir(&root)?;
    println!("[xtask] building meta-sinusoid (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .args([
            "build",
            "--release",
            "-p",
            "metasgd-benches",
            "--bin",
            "meta-sinusoid",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building meta-sinusoid failed: {status}"));
    }
    let bin = target
        .join("release")
        .join(format!("meta-sinusoid{}", std::env::consts::EXE_SUFFIX));
    let out = target.join("xtask-meta");
    let status = Command::new(&bin)
        .args(args)
        .arg("--out")
        .arg(&out)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("meta-sinusoid failed: {status}"))
    }
}
