//! The `freshet` command: CLI, configuration and pipeline wiring. Model and
//! format logic live in the library crates.

mod admin_client;
mod backup;
mod cli_args;
mod config;
mod consume;
mod demo;
mod env_overrides;
mod eval;
mod inspect;
mod logging;
mod page;
mod produce;
mod progress;
mod rollback;
mod run;
mod serve;
mod shutdown;
mod snapshot_source;
mod subscribe;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Batches are allocated on the consumer thread and freed on the trainer's:
/// mimalloc handles that cross-thread pattern far better than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// freshet: a real-time feedback learner for recommendation and search.
#[derive(Debug, Parser)]
#[command(name = "freshet", version, about)]
struct Cli {
    /// Log output format (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: logging::LogFormat,
    /// Only check the command line (and for run, serve and subscribe the
    /// configuration: file, environment and flags), print `{"ok":true}` and exit.
    #[arg(long, global = true)]
    validate: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole loop in one process on an in-process Kafka: produce, train, checkpoint, publish, serve.
    Demo(demo::DemoArgs),
    /// Produce feedback events to Kafka.
    #[command(subcommand)]
    Produce(produce::ProduceCommand),
    /// Consume and validate feedback events, routing bad ones to the DLQ; print a summary.
    Consume(consume::ConsumeArgs),
    /// Replay a ratings (and clicks) file prequentially through the trainer; print metrics and throughput.
    Eval(eval::EvalArgs),
    /// Train continuously: consume, train, checkpoint; resume exactly after a crash.
    Run(run::RunArgs),
    /// Show what a checkpoint holds (works while `freshet run` holds it).
    Inspect(inspect::InspectArgs),
    /// Copy a checkpoint directory consistently (of a running trainer with --online).
    Backup(backup::BackupArgs),
    /// Roll the model back to a retained version, as a new version (on a running trainer with --admin).
    Rollback(rollback::RollbackArgs),
    /// Serve recommendations over HTTP from the newest snapshot, hot-swapped.
    Serve(serve::ServeArgs),
    /// Follow a model's snapshots and print each one applied.
    Subscribe(subscribe::SubscribeArgs),
}

/// What `--validate` checks beyond clap's parsing.
fn validate(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => drop(args.resolve()?),
        Command::Serve(args) => args.check()?,
        Command::Subscribe(args) => args.check()?,
        _ => {}
    }
    println!("{}", serde_json::json!({"ok": true}));
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command
        && let Some(threads) = args.threads()
    {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if cli.validate {
            return validate(&cli.command);
        }
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Produce(command) => produce::run(command).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Eval(args) => eval::run(args),
            Command::Run(args) => run::run(args).await,
            Command::Inspect(args) => inspect::run(args),
            Command::Backup(args) => backup::run(args),
            Command::Rollback(args) => rollback::run(args),
            Command::Serve(args) => serve::run(args).await,
            Command::Subscribe(args) => subscribe::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
