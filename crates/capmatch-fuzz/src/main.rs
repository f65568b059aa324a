//! `capmatch-fuzz`: runs a fuzz target for a while, or replays inputs through one.
//! `scripts/fuzz.sh` is the way to call it (it also catches aborts).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Seeded mutation fuzzing of capmatch's inputs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The targets.
    List,
    /// Fuzzes a target; prints a JSON summary line at the end.
    Run {
        target: String,
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where crashes, hangs and the running input are written.
        #[arg(long, default_value = "fuzz/findings")]
        findings: PathBuf,
        #[arg(long, default_value_t = 20)]
        hang_seconds: u64,
        /// Address-space limit in GiB (a runaway allocation aborts instead of swapping).
        #[arg(long, default_value_t = 8)]
        memory_gib: u64,
    },
    /// Runs inputs through a target once each and says what each did.
    Replay { target: String, files: Vec<PathBuf> },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::List => {
            for t in capmatch_fuzz::targets() {
                println!("{}", t.name());
            }
        }
        Command::Run { target, minutes, seed, findings, hang_seconds, memory_gib } => {
            let t = capmatch_fuzz::target(&target).with_context(|| format!("no target {target:?} (see `capmatch-fuzz list`)"))?;
            let options = capmatch_fuzz::RunOptions {
                duration: Duration::from_secs_f64(minutes * 60.0),
                seed,
                findings,
                hang_after: Duration::from_secs(hang_seconds),
                max_memory_bytes: Some(memory_gib << 30),
            };
            let summary = capmatch_fuzz::run_for(t.as_ref(), &options)?;
            println!("{}", summary.to_json());
            if !summary.crashes.is_empty() {
                std::process::exit(2);
            }
        }
        Command::Replay { target, files } => {
            let t = capmatch_fuzz::target(&target).with_context(|| format!("no target {target:?}"))?;
            for file in files {
                let input = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.run(&input))) {
                    Ok(Ok(())) => println!("{}: accepted", file.display()),
                    Ok(Err(e)) => println!("{}: refused: {e:#}", file.display()),
                    Err(_) => println!("{}: PANICKED", file.display()),
                }
            }
        }
    }
    Ok(())
}
