//! `freshet subscribe`: follow a model's snapshots and print each one applied.

use std::sync::mpsc;
use std::time::Duration;

use freshet_subscriber::{Subscriber, SubscriberEvent};

use crate::shutdown::ShutdownSignal;
use crate::snapshot_source::SnapshotSourceArgs;

/// Flags of `freshet subscribe`.
#[derive(Debug, clap::Args)]
pub struct SubscribeArgs {
    #[command(flatten)]
    source: SnapshotSourceArgs,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
    /// Keep following after catching up with the topic (until Ctrl-C).
    #[arg(long)]
    follow: bool,
}

impl SubscribeArgs {
    /// Checks the configuration the flags name.
    pub fn check(&self) -> anyhow::Result<()> {
        self.source.resolve().map(drop)
    }
}

/// Runs `freshet subscribe`.
pub async fn run(args: SubscribeArgs) -> anyhow::Result<()> {
    let config = args.source.resolve()?;
    let mut shutdown = ShutdownSignal::install()?;
    let (events, received) = mpsc::channel();
    let subscriber = Subscriber::start(&config, move |event: &SubscriberEvent| {
        let _ = events.send(event.clone());
    })?;
    let json = args.json;
    let follow = args.follow;
    let view = subscriber.view();
    let printer = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        loop {
            match received.recv_timeout(Duration::from_millis(100)) {
                Ok(event) => print_event(&event, json)?,
                Err(mpsc::RecvTimeoutError::Timeout) if !follow && view.stats().caught_up => return Ok(()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    });
    tokio::select! {
        printed = printer => printed??,
        _ = shutdown.recv() => {}
    }
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

fn print_event(event: &SubscriberEvent, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(event)?);
        return Ok(());
    }
    match event {
        SubscriberEvent::Applied(report) => println!(
            "applied version {} ({}): {} rows, {} tombstones, {} bytes, checksum ok, freshness {} ms",
            report.version, report.kind, report.rows, report.tombstones, report.bytes, report.freshness_ms
        ),
        SubscriberEvent::Skipped { version, reason } => println!("skipped version {version}: {reason}"),
        SubscriberEvent::Rejected { reason } => println!("rejected: {reason}"),
    }
    Ok(())
}
