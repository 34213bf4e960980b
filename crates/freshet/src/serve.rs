//! `freshet serve`: answer recommendations from the newest snapshot, hot-swapped.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use freshet_core::Head;
use freshet_subscriber::Subscriber;
use freshet_subscriber::http::{ServeMetrics, router, serve};

use crate::shutdown::ShutdownSignal;
use crate::snapshot_source::SnapshotSourceArgs;

/// Flags of `freshet serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    source: SnapshotSourceArgs,
    /// Address to listen on.
    #[arg(long, env = "FRESHET_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Head that scores when a request names none: rating or click.
    #[arg(long, value_enum, default_value = "rating")]
    head: HeadArg,
}

/// A head, as a flag value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HeadArg {
    Rating,
    Click,
}

impl ServeArgs {
    /// Checks the configuration the flags name.
    pub fn check(&self) -> anyhow::Result<()> {
        self.source.resolve().map(drop)
    }
}

/// Runs `freshet serve` until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.source.resolve()?;
    let mut shutdown = ShutdownSignal::install()?;
    let metrics = ServeMetrics::new().context("registering metrics")?;
    let observer = metrics.clone();
    let subscriber = Subscriber::start(&config, move |event| observer.observe(event))?;
    let head = match args.head {
        HeadArg::Rating => Head::Rating,
        HeadArg::Click => Head::Click,
    };
    let app = router(subscriber.view(), metrics, head);
    serve(args.listen, app, async move {
        let signal = shutdown.recv().await;
        tracing::info!(signal, "shutting down");
    })
    .await
    .with_context(|| format!("serving on {}", args.listen))?;
    tokio::task::spawn_blocking(move || subscriber.stop(Duration::from_secs(5))).await?;
    Ok(())
}
