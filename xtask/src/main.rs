//! Project automation, run as `cargo xtask <command>`.
//!
//! Thin orchestration only: every command is a sequence of `cargo` invocations (and
//! `cargo deny`), so that what CI runs is exactly what a developer runs. The library
//! crates are never linked into this binary: `loadtest` drives the demo gateway as a
//! child process, over HTTP.

mod bench;
mod demo;
mod loadtest;
mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Project automation for the tower-health-ai workspace"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Run the whole test suite: unit, integration, example and doc tests of every crate.
    Test,
    /// What CI runs: fmt check, clippy (-D warnings), tests, docs (-D warnings), cargo-deny.
    Ci,
    /// Run every criterion bench, then summarize each layer against its baseline and peer.
    Bench {
        /// Print the summary of the results already on disk, without running anything.
        #[arg(long)]
        summary_only: bool,
        /// Extra arguments passed to the bench binaries (after `--`), e.g. a filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Serve the demo gateway (release build): `cargo xtask demo -- --help` lists its flags.
    Demo {
        /// Flags for the gateway (after `--`), e.g. `--listen 0.0.0.0:3000`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the demo gateway before and after the stack, under one realistic workload.
    Loadtest(loadtest::LoadtestArgs),
    /// Run the release gateway against a chaos provider at ten times its capacity, then
    /// check that every promise held (exactly one outcome each, no 500, metrics equal to
    /// the client's counts, nothing held after, memory flat, the circuit opened and closed).
    Soak(soak::SoakArgs),
}

/// The workspace root: xtask's parent directory, as `cargo run` (which `cargo xtask`
/// is) tells the running binary. The path compiled in is only the fallback: a build
/// directory shared between clones (as `.ci/run`'s is) may hold an xtask built in another
/// clone, whose compiled-in path is that clone's.
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Test => test(),
        Task::Ci => ci(),
        Task::Bench { summary_only, args } => bench::run(summary_only, &args),
        Task::Demo { args } => demo(&args),
        Task::Loadtest(args) => loadtest::run(&args),
        Task::Soak(args) => soak::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failed) => {
            eprintln!("xtask: {failed}");
            ExitCode::FAILURE
        }
    }
}

/// The README's demo command: the gateway example, built in release mode. With
/// `--instances N` (N > 1), N gateways on consecutive ports (see [`demo::instances`]).
fn demo(args: &[String]) -> Result<(), String> {
    if let Some(plan) = demo::Instances::from_args(args)? {
        return demo::instances(&plan);
    }
    let mut argv = vec![
        "run",
        "--release",
        "--locked",
        "--package",
        "health-ai-examples",
        "--example",
        "gateway",
        "--",
    ];
    argv.extend(args.iter().map(String::as_str));
    cargo(&argv, &[])
}

/// The README's test command, and the test step of CI.
fn test() -> Result<(), String> {
    cargo(&["test", "--workspace", "--all-features", "--locked"], &[])
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    test()?;
    soak::run(&soak::SoakArgs::ci())?;
    cargo(
        &[
            "doc",
            "--workspace",
            "--all-features",
            "--no-deps",
            "--locked",
        ],
        &[("RUSTDOCFLAGS", "-Dwarnings")],
    )?;
    // Advisories need the advisory database from the network, which CI machines lack;
    // see deny.toml.
    cargo(
        &[
            "deny",
            "--all-features",
            "check",
            "bans",
            "licenses",
            "sources",
        ],
        &[],
    )
}

/// Runs `cargo <args>` with extra environment variables, echoing the command first.
fn cargo(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let shown: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{k}={}", shell_word(v)))
        .chain(std::iter::once("cargo".to_owned()))
        .chain(args.iter().map(|a| shell_word(a)))
        .collect();
    eprintln!("\n$ {}", shown.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .map_err(|e| format!("could not run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", shown.join(" ")))
    }
}

/// `arg` as a shell would need it typed: quoted when it holds anything but plain
/// characters (`--bench '*'`), so that the echoed command can be pasted.
fn shell_word(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn echoed_commands_can_be_pasted() {
        assert_eq!(shell_word("--locked"), "--locked");
        assert_eq!(shell_word("*"), "'*'");
        assert_eq!(shell_word("cache/1 thread"), "'cache/1 thread'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
