//! The `gleaner` binary: parse the command line, load settings, start logging,
//! then build and run a node (or a worker, for one isolated source).

use std::process::ExitCode;

use clap::Parser;
use gleaner::app::App;
use gleaner::settings::{Cli, Command, Settings};

/// jemalloc instead of glibc's malloc: with a thread per core, the blocking
/// pool and sled's threads, glibc's per-thread arenas kept freed memory
/// resident, and malloc itself was a tenth of a node's CPU under load
/// (bench/profile.sh). Built with jemalloc's background thread on (see
/// Cargo.toml), so memory a burst freed goes back to the OS on an idle node
/// too; `_RJEM_MALLOC_CONF=background_thread:false` turns it off.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Node(args) => run_node(args).await,
        Command::Worker(args) => run_worker(args).await,
        Command::Preview(args) => run_preview(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gleaner: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_worker(args: gleaner::settings::WorkerArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args.node.clone())?;
    gleaner::telemetry::init(&settings.log, settings.log_format)?;
    gleaner::worker::run(args, settings).await
}

async fn run_preview(args: gleaner::settings::PreviewArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args.node.clone())?;
    // Its stdout is the answer: logs go to stderr.
    gleaner::telemetry::init_to_stderr(&settings.log, settings.log_format)?;
    gleaner::worker::preview(args, settings).await
}

async fn run_node(args: gleaner::settings::NodeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(args)?;
    gleaner::telemetry::init(&settings.log, settings.log_format)?;
    App::build(settings).await?.run_until_stopped().await
}
