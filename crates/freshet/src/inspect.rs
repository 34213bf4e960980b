//! `freshet inspect`: what a checkpoint holds, readable while `freshet run` writes it.

use std::path::PathBuf;

use anyhow::Context;

/// Flags of `freshet inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The checkpoint directory.
    #[arg(long, env = "FRESHET_CHECKPOINT_DIR")]
    checkpoint: PathBuf,
    /// Print one JSON object instead of indented JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `freshet inspect`.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let report = freshet_checkpoint::inspect(&args.checkpoint)
        .with_context(|| format!("inspecting {}", args.checkpoint.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
