//! `harness`: verifies every GPU kernel of the workspace against its reference (`verify`) and
//! benchmarks them with the device ceilings measured in the same run (`bench`). This one binary is
//! built here with `--features cuda --release` and carried to the GPU machine.

mod anchors;
mod bench;
#[cfg(feature = "cuda")]
mod ceilings;
mod end_to_end;
mod environment;
mod items;
mod peers;
mod plots;
mod report;
mod results;
mod table;
mod verify;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "harness", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every GPU kernel against its Rust reference on fresh random inputs.
    Verify(verify::VerifyArgs),
    /// Time every benchmark case and the device ceilings; write JSON + Markdown under --out.
    Bench(bench::BenchArgs),
    /// Redraw REPORT.md and the plots of a bench directory from its results.json.
    Report(report::ReportArgs),
    /// Print what this build contains and which device it would use.
    Info,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify(args) => verify::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Info => info(),
    }
}

fn info() -> ExitCode {
    println!("commit: {}", environment::BUILD_COMMIT);
    println!(
        "cuda kernels: {}",
        if kernels::CUDA_ENABLED {
            "built in (sm_90a)"
        } else {
            "not built (no --features cuda)"
        }
    );
    #[cfg(feature = "cuda")]
    match kernels::gpu::Gpu::new(0) {
        Ok(gpu) => println!("device: {:?}", gpu.info()),
        Err(e) => println!("device: {e}"),
    }
    ExitCode::SUCCESS
}

/// Writes `value` as pretty JSON, naming the file in any error.
pub(crate) fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| format!("cannot serialize {}: {e}", path.display()))?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}
