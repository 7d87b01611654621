//! Project automation, run as `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! ```text
//! cargo xtask bench [--quick] [--torch PYTHON]  kernel comparison (and torch.compile's); CSV and SVG under target/xtask-bench/
//! cargo xtask bench --adapters [--quick]  candle and burn adapters against their frameworks; adapters.csv
//! cargo xtask meta [--quick] ... the sinusoid meta-learning benchmark; CSV and SVGs under target/xtask-meta/
//! cargo xtask mpi [--elements N] [--steps S]  sharded MetaSGD under mpirun: 1-4 ranks, resharding, a rank killed mid-save; the distributed meta-learner
//! cargo xtask mpi --meta-speed  the distributed meta-learner: 2 ranks x 1 thread against 1 process x 2 threads
//! cargo xtask omniglot-speed [--python P] [--quick]  seconds per Omniglot meta-iteration, ours against PyTorch's
//! ```
//!
//! One parser (clap) reads every task's flags; `cargo xtask --help` lists them.

mod bench;
mod meta;
mod mpi;
mod omniglot_speed;
mod plot;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Project automation for metasgd.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// The kernel comparison: CSV and SVG under target/xtask-bench/.
    Bench {
        /// A short smoke run (timings not judged).
        #[arg(long)]
        quick: bool,
        /// Instead, one optimizer step of the candle and burn adapters over
        /// ResNet-50's tensors against each framework's tensor ops, its own
        /// SGD and the ndarray path: target/xtask-bench/adapters.csv.
        #[arg(long)]
        adapters: bool,
        /// Also the same update compiled by torch.compile
        /// (`benches/peers/torch_update.py`), run by this Python (one with
        /// torch: a venv's `bin/python`), interleaved: target/xtask-bench/torch.csv.
        #[arg(long, value_name = "PYTHON")]
        torch: Option<String>,
    },
    /// The sinusoid meta-learning benchmark (metasgd-meta's `sinusoid`
    /// example): CSV and SVGs under target/xtask-meta/. Every flag goes to
    /// the example (`cargo xtask meta --help` shows them).
    #[command(disable_help_flag = true)]
    Meta {
        /// The example's flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Sharded MetaSGD under mpirun on 1-4 ranks, resharding, and a rank
    /// killed mid-save.
    Mpi {
        /// Parameters of the timed run.
        #[arg(long, default_value_t = 1 << 20)]
        elements: usize,
        /// Steps of the timed run.
        #[arg(long, default_value_t = 20)]
        steps: usize,
        /// Instead, the distributed meta-learner's speed: meta-iterations
        /// per second of 2 ranks x 1 thread against 1 process x 2 threads.
        #[arg(long)]
        meta_speed: bool,
    },
    /// Seconds per Omniglot meta-iteration (second order, meta-batch 4,
    /// random data) of metasgd and, when the Python has torch, of the
    /// PyTorch peer script, interleaved, as a ratio.
    OmniglotSpeed {
        /// The Python with torch (a venv's `bin/python`).
        #[arg(long, default_value = "python3")]
        python: String,
        /// Alternations of (ours, PyTorch).
        #[arg(long, default_value_t = 3)]
        alternations: usize,
        /// One round of 3 meta-iterations per run (a smoke run).
        #[arg(long)]
        quick: bool,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Bench {
            quick,
            adapters: false,
            torch,
        } => bench::run(quick, torch.as_deref()),
        Task::Bench {
            quick,
            adapters: true,
            ..
        } => bench::adapters(quick),
        Task::Meta { args } => meta::run(&args),
        Task::Mpi {
            meta_speed: true, ..
        } => mpi::meta_speed(),
        Task::Mpi {
            elements, steps, ..
        } => mpi::run_all(elements, steps),
        Task::OmniglotSpeed {
            python,
            alternations,
            quick,
        } => omniglot_speed::run_all(&python, alternations, quick),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Builds `example` of `package` in release mode (without the caller's
/// `RUSTFLAGS`, so that a flag set for another job never changes what is
/// measured) and returns the binary's path.
fn build_release_example(package: &str, example: &str) -> Result<PathBuf, String> {
    let root = project_root();
    let target = target_dir(&root)?;
    println!("[xtask] building {package}'s {example} example (release)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .env_remove("RUSTFLAGS")
        .args(["build", "--release", "-p", package, "--example", example])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("building the {example} example failed: {status}"));
    }
    Ok(target
        .join("release")
        .join("examples")
        .join(format!("{example}{}", std::env::consts::EXE_SUFFIX)))
}

/// The value of `key=` in a line of `key=value` fields.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// The median of `v` (sorted in place; the upper one of an even count).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The workspace root (this crate lives in `<root>/xtask`).
fn project_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent().map(PathBuf::from).unwrap_or(dir)
}

/// Where cargo puts build outputs (`CARGO_TARGET_DIR`, `build.target-dir`
/// or `<root>/target`), as `cargo metadata` reports it.
fn target_dir(root: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    json_string_field(&String::from_utf8_lossy(&out.stdout), "target_directory")
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata printed no target_directory".to_string())
}

/// The value of the first `"key":"..."` in a JSON text, unescaped (enough
/// for cargo's paths; xtask stays free of dependencies).
fn json_string_field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut value = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::json_string_field;

    #[test]
    fn reads_cargo_metadata_paths() {
        let json = r#"{"packages":[],"target_directory":"/tmp/a \"b\"\\c","version":1}"#;
        assert_eq!(
            json_string_field(json, "target_directory").as_deref(),
            Some(r#"/tmp/a "b"\c"#)
        );
        assert_eq!(json_string_field(json, "workspace_root"), None);
    }
}
