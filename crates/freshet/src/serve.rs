//! `freshet serve`: answer recommendations from the newest snapshot, hot-swapped.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use freshet_core::Head;
use freshet_subscriber::Subscriber;
use freshet_subscriber::http::{RouterOptions, ServeMetrics, router, serve};

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
    /// Threads answering requests (default: one per core).
    #[arg(long, env = "FRESHET_SERVE_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

/// A head, as a flag value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HeadArg {
    Rating,
    Click,
}

impl ServeArgs {
    /// Threads of the runtime that answers requests, if set.
    pub fn threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }

    /// Checks the configuration the flags name.
    pub fn check(&self) -> anyhow::Result<()> {
        self.source.resolve().map(drop)
    }
}

/// Turns transparent huge pages off for this process, before the model
/// loads (unless `serve.huge_pages`). A served model is millions of small
/// allocations that versions free and reuse at random; a huge page stays
/// whole in memory while any of them lives in it (measured at 5M users x
/// 1M items, dim 32: peak RSS 1.38x the parameters with them, 1.28x
/// without; top-k no slower within the host's noise, a 1,000-item rank's
/// p99 ~3x slower from TLB misses).
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(%error, "transparent huge pages stay on");
    }
}

/// Runs `freshet serve` until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, file) = args.source.resolve_with_config()?;
    if !file.serve.huge_pages {
        without_huge_pages();
    }
    let mut shutdown = ShutdownSignal::install()?;
    let metrics = ServeMetrics::new().context("registering metrics")?;
    let observer = metrics.clone();
    let subscriber = Subscriber::start(&config, move |event| observer.observe(event))?;
    let head = match args.head {
        HeadArg::Rating => Head::Rating,
        HeadArg::Click => Head::Click,
    };
    let options = RouterOptions::of(head, file.validation.clone(), &file.serve);
    let app = router(subscriber.view(), metrics, options).merge(crate::page::serve_routes());
    serve(args.listen, app, async move {
        let signal = shutdown.recv().await;
        tracing::info!(signal, "shutting down");
    })
    .await
    .with_context(|| format!("serving on {}", args.listen))?;
    tokio::task::spawn_blocking(move || subscriber.stop(Duration::from_secs(5))).await?;
    Ok(())
}
