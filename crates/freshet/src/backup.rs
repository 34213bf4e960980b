//! `freshet backup`: a consistent copy of a checkpoint directory — of a
//! stopped one directly, or of a running trainer's through its admin
//! endpoint (`--online`), taken between micro-batches while it trains on.

use std::path::PathBuf;

use anyhow::Context;
use freshet_checkpoint::CheckpointStore;

use crate::admin_client;

/// Flags of `freshet backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The checkpoint directory (not in use by a running trainer).
    #[arg(long, env = "FRESHET_CHECKPOINT_DIR", required_unless_present = "online", conflicts_with = "online")]
    checkpoint: Option<PathBuf>,
    /// Where to write the copy (must not exist; with --online, a path on
    /// the trainer's machine). Restore by pointing `checkpoint.dir` at it,
    /// or moving it in place of the original.
    #[arg(long)]
    to: PathBuf,
    /// Back up a running trainer, through its admin endpoint.
    #[arg(long, requires = "admin")]
    online: bool,
    /// The running trainer's metrics listener (`host:port`) with `[admin]`
    /// enabled; the token comes from FRESHET_ADMIN__TOKEN.
    #[arg(long)]
    admin: Option<String>,
}

/// Runs `freshet backup`.
pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    if let (true, Some(address)) = (args.online, &args.admin) {
        let to = args.to.to_str().context("--to must be UTF-8 for an online backup")?;
        let answer =
            admin_client::call(address, "POST", &format!("/admin/backup?to={}", admin_client::percent_encode(to)))?;
        println!("{answer}");
        return Ok(());
    }
    let dir = args.checkpoint.as_ref().context("--checkpoint or --online is required")?;
    let store = CheckpointStore::open(dir, true)
        .with_context(|| format!("opening {} (for a running trainer, use --online)", dir.display()))?;
    store.backup(&args.to).with_context(|| format!("backing up to {}", args.to.display()))?;
    println!("{}", serde_json::json!({"backup": args.to, "version": store.version()}));
    Ok(())
}
