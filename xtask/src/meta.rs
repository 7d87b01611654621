//! `cargo xtask meta`: builds `metasgd-meta`'s `sinusoid` example in release
//! mode and runs the sinusoid benchmark (Meta-SGD, MAML, first-order MAML),
//! writing `results.csv`, `learning.svg` and `sinusoid.svg` under
//! `<target>/xtask-meta/`. Every flag is passed through (`--checkpoint DIR`
//! saves and resumes; `--help` lists them).

use std::process::Command;

use crate::{build_release_example, project_root, target_dir};

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let bin = build_release_example("metasgd-meta", "sinusoid")?;
    let target = target_dir(&project_root())?;
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
