//! `freshet rollback`: the model back to a retained version, as a new
//! version — through a running trainer's admin endpoint (`--admin`), or on
//! a stopped checkpoint directory (`--checkpoint`; the next `freshet run`
//! restores and publishes it).

use std::path::PathBuf;

use anyhow::Context;
use freshet_checkpoint::{CheckpointStore, RollbackMode};
use serde_json::json;

use crate::admin_client;

/// Flags of `freshet rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The version to roll back to (one of the retained versions:
    /// `freshet inspect` or `GET /admin/versions` lists them).
    #[arg(long)]
    to_version: u64,
    /// `skip`: keep reading where the trainer is, the events since the
    /// version are not applied (counted as skipped); `replay`: read them
    /// again from the version's offsets.
    #[arg(long)]
    mode: RollbackMode,
    /// A stopped checkpoint directory.
    #[arg(long, env = "FRESHET_CHECKPOINT_DIR", conflicts_with = "admin", required_unless_present = "admin")]
    checkpoint: Option<PathBuf>,
    /// The running trainer's metrics listener (`host:port`) with `[admin]`
    /// enabled; the token comes from FRESHET_ADMIN__TOKEN.
    #[arg(long)]
    admin: Option<String>,
}

/// Runs `freshet rollback`.
pub fn run(args: RollbackArgs) -> anyhow::Result<()> {
    if let Some(address) = &args.admin {
        let path = format!("/admin/rollback?to_version={}&mode={}", args.to_version, args.mode);
        let answer = admin_client::call(address, "POST", &path)?;
        println!("{answer}");
        return Ok(());
    }
    let dir = args.checkpoint.as_ref().context("--checkpoint or --admin is required")?;
    let mut store = CheckpointStore::open(dir, true).with_context(|| {
        format!("opening {} (for a running trainer, use --admin with its metrics listener)", dir.display())
    })?;
    let record = store.rollback(args.to_version, args.mode, "cli", freshet_core::now_ms())?;
    println!("{}", json!({"rollback": record}));
    Ok(())
}
