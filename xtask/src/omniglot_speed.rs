//! `cargo xtask omniglot-speed`: seconds per Omniglot meta-iteration
//! (second order, meta-batch 4, 20-way 1-shot, 5 queries per class, f32,
//! random data, so no data set is needed) of metasgd-meta's `omniglot_speed`
//! example, and, when the given Python has torch, of
//! `../shared/peers/torch_omniglot_speed.py` (the same computation written
//! as PyTorch users write it) in the same run, interleaved: ours, PyTorch,
//! ours, ... Each run reports the median of its rounds; the line per method
//! gives the median over the alternations and PyTorch's time over ours.

use std::process::Command;

use crate::{build_release_example, field, median, project_root};

/// The ratio the issue asks for: PyTorch's time at least twice ours.
const TARGET: f64 = 2.0;

/// The value of `median_s_per_it=` in a run's last line.
fn median_of(out: &[u8]) -> Option<f64> {
    field(
        String::from_utf8_lossy(out).lines().last()?,
        "median_s_per_it",
    )?
    .parse()
    .ok()
}

fn run(cmd: &mut Command) -> Result<f64, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    median_of(&out.stdout).ok_or_else(|| format!("{cmd:?} printed no median_s_per_it="))
}

pub(crate) fn run_all(python: &str, alternations: usize, quick: bool) -> Result<(), String> {
    let ours = build_release_example("metasgd-meta", "omniglot_speed")?;
    let root = project_root();
    let script = root.join("../shared/peers/torch_omniglot_speed.py");
    let torch = script.exists()
        && Command::new(python)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !torch {
        println!(
            "[xtask] PyTorch not found ({python} cannot import torch, or {} is missing): timing ours only. \
python3 -m venv ENV && ENV/bin/pip install torch numpy, then --python ENV/bin/python",
            script.display()
        );
    }
    let (iters, rounds) = if quick { ("3", "1") } else { ("20", "3") };
    let common = ["--threads", "2", "--iters", iters, "--rounds", rounds];
    for method in ["meta-sgd", "maml"] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for alternation in 0..alternations.max(1) {
            let mut cmd = Command::new(&ours);
            a.push(run(cmd.args(["--method", method]).args(common))?);
            if torch {
                let mut cmd = Command::new(python);
                b.push(run(cmd
                    .arg(&script)
                    .args(["--method", method])
                    .args(common))?);
            }
            let theirs = b
                .last()
                .map_or(String::new(), |t| format!(", PyTorch {t:.4} s"));
            println!(
                "  {method} alternation {alternation}: metasgd {:.4} s{theirs}",
                a[a.len() - 1]
            );
        }
        let ours_s = median(&mut a);
        if b.is_empty() {
            println!("omniglot_speed method={method} metasgd_s_per_it={ours_s:.4}");
            continue;
        }
        let torch_s = median(&mut b);
        let ratio = torch_s / ours_s;
        println!(
            "omniglot_speed method={method} metasgd_s_per_it={ours_s:.4} torch_s_per_it={torch_s:.4} ratio={ratio:.2} (target >= {TARGET}) {}",
            if ratio >= TARGET { "met" } else { "MISSED" }
        );
    }
    Ok(())
}
