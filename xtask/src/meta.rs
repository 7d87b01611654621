//! `cargo xtask meta`: builds `metasgd-meta`'s `sinusoid` example in release
//! mode and runs the sinusoid benchmark (Meta-SGD, MAML, first-order MAML),
//! writing `results.csv`, `learning.svg` and `sinusoid.svg` under
//! `<target>/xtask-meta/`. Every flag is passed through (`--checkpoint DIR`
//! saves and resumes; `--help` lists them).

use std::process::Command;

use crate::{project_root, target_dir};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let root = project_root();
    let target = target_dir(&root)?;
    println!("[xtask] building the sinusoid example of metasgd-meta (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .args([
            "build",
            "--release",
            "-p",
            "metasgd-meta",
            "--example",
            "sinusoid",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the sinusoid example failed: {status}"));
    }
    let bin = target
        .join("release")
        .join("examples")
        .join(format!("sinusoid{}", std::env::consts::EXE_SUFFIX));
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
        Err(format!("the sinusoid example failed: {status}"))
    }
}
