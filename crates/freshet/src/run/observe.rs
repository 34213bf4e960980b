//! The observability endpoint of `freshet run`: `/metrics` (Prometheus),
//! `/healthz` (the process and its trainer thread are alive) and `/readyz`
//! (restored, consuming, and the publisher not stopped), plus the task that
//! keeps the consumer-lag gauges current.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use freshet_core::TopicPartition;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{debug, info};

use super::metrics::RunMetrics;
use crate::config::FreshetConfig;

/// How often the lag gauges are refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Liveness and readiness, set by the pipeline.
#[derive(Debug, Default)]
pub struct Health {
    /// The trainer thread runs.
    pub alive: AtomicBool,
    /// The model is restored and the source started; cleared at shutdown.
    pub ready: AtomicBool,
}

#[derive(Clone)]
struct Observed {
    metrics: RunMetrics,
    health: Arc<Health>,
}

/// Binds `listen` and serves the endpoint in the background; returns the bound address.
pub async fn start(listen: SocketAddr, metrics: RunMetrics, health: Arc<Health>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Observed { metrics, health });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    });
    info!(%address, "metrics and health endpoint listening");
    Ok(address)
}

async fn render(State(observed): State<Observed>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], observed.metrics.render())
}

async fn healthz(State(observed): State<Observed>) -> impl IntoResponse {
    flag(observed.health.alive.load(Ordering::Relaxed), "alive")
}

async fn readyz(State(observed): State<Observed>) -> impl IntoResponse {
    flag(observed.health.ready.load(Ordering::Relaxed), "ready")
}

fn flag(up: bool, what: &str) -> (StatusCode, String) {
    if up { (StatusCode::OK, format!("{what}\n")) } else { (StatusCode::SERVICE_UNAVAILABLE, format!("not {what}\n")) }
}

/// Refreshes the lag gauges every few seconds from the partitions' high watermarks.
pub fn spawn_lag_task(config: &FreshetConfig, metrics: RunMetrics) -> anyhow::Result<()> {
    let watermarks: BaseConsumer = config.kafka.client().create()?;
    let watermarks = Arc::new(watermarks);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LAG_INTERVAL).await;
            let (client, metrics) = (Arc::clone(&watermarks), metrics.clone());
            let _ = tokio::task::spawn_blocking(move || {
                let highs: Vec<(TopicPartition, i64)> = metrics
                    .checkpointed()
                    .into_keys()
                    .filter_map(|tp| match client.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(5)) {
                        Ok((_, high)) => Some((tp, high)),
                        Err(error) => {
                            debug!(%error, %tp, "high watermark");
                            None
                        }
                    })
                    .collect();
                metrics.lag(&highs);
            })
            .await;
        }
    });
    Ok(())
}
