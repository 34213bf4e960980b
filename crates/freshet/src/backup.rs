//! `freshet backup`: a consistent copy of a checkpoint directory.

use std::path::PathBuf;

use anyhow::Context;
use freshet_checkpoint::CheckpointStore;

/// Flags of `freshet backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The checkpoint directory (not in use by a running trainer).
    #[arg(long, env = "FRESHET_CHECKPOINT_DIR")]
    checkpoint: PathBuf,
    /// Where to write the copy (must not exist). Restore by pointing
    /// `checkpoint.dir` at it, or moving it in place of the original.
    #[arg(long)]
    to: PathBuf,
}

/// Runs `freshet backup`.
pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    let store = CheckpointStore::open(&args.checkpoint, true)?;
    store.backup(&args.to).with_context(|| format!("backing up to {}", args.to.display()))?;
    println!("{}", serde_json::json!({"backup": args.to, "version": store.version()}));
    Ok(())
}
