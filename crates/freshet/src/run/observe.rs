//! The observability endpoint of `freshet run`: `/metrics` (Prometheus),
//! `/healthz` (the process and its trainer thread are alive) and `/readyz`
//! (restored, consuming, and the Kafka cluster answering), the live page
//! ([`crate::page`]) and the admin routes when configured ([`super::admin`]),
//! plus the tasks that keep the consumer-lag gauges and the page's samples
//! current.

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
use freshet_kafka::{ClusterProbe, ClusterStatus};
use rdkafka::consumer::{BaseConsumer, Consumer};
use tracing::{debug, info};

use freshet_subscriber::SubscriberView;

use super::metrics::RunMetrics;
use crate::config::FreshetConfig;
use crate::page::{self, History};

/// How often the lag gauges are refreshed.
const LAG_INTERVAL: Duration = Duration::from_secs(5);

/// Liveness and readiness, set by the pipeline.
#[derive(Debug)]
pub struct Health {
    /// The trainer thread runs.
    pub alive: AtomicBool,
    /// The model is restored and the source started; cleared at shutdown.
    pub ready: AtomicBool,
    /// Whether the Kafka cluster answered the newest metadata request.
    cluster: ClusterStatus,
    /// Why the trainer thread stopped, if it failed (a full disk, a fenced publisher).
    pub failure: std::sync::Mutex<Option<String>>,
}

impl Health {
    /// Not alive or ready yet, with the cluster's answers from `cluster`.
    pub fn new(cluster: ClusterStatus) -> Self {
        Health { alive: AtomicBool::new(false), ready: AtomicBool::new(false), cluster, failure: Default::default() }
    }

    /// Ready to train: restored, consuming, and the cluster reachable.
    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.cluster.answers()
    }
}

#[derive(Clone)]
struct Observed {
    metrics: RunMetrics,
    health: Arc<Health>,
}

/// Binds `listen` and serves the endpoint in the background, with the
/// `extra` routes (the live page, the admin routes); returns the bound address.
pub async fn start(
    listen: SocketAddr,
    metrics: RunMetrics,
    health: Arc<Health>,
    extra: Router,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Observed { metrics, health })
        .merge(extra);
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
    let failure = observed.health.failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match failure {
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not alive: the trainer stopped: {why}\n")),
        None => flag(observed.health.alive.load(Ordering::Relaxed), "alive"),
    }
}

async fn readyz(State(observed): State<Observed>) -> impl IntoResponse {
    if observed.health.ready.load(Ordering::Relaxed) && !observed.health.cluster.answers() {
        return (StatusCode::SERVICE_UNAVAILABLE, "not ready: the Kafka cluster does not answer\n".to_owned());
    }
    flag(observed.health.ready(), "ready")
}

fn flag(up: bool, what: &str) -> (StatusCode, String) {
    if up { (StatusCode::OK, format!("{what}\n")) } else { (StatusCode::SERVICE_UNAVAILABLE, format!("not {what}\n")) }
}

/// Starts asking the cluster for metadata every second, logging when the answer changes.
pub fn watch_cluster(config: &FreshetConfig) -> anyhow::Result<ClusterProbe> {
    Ok(ClusterProbe::start(&config.kafka, |answers| {
        if answers {
            info!("the Kafka cluster answers");
        } else {
            tracing::warn!("the Kafka cluster does not answer: not ready");
        }
    })?)
}

/// Samples what the live page charts every second into `history`: the
/// watched metric families, and the version and freshness `served` holds
/// (the demo's in-process subscriber).
pub fn spawn_sampler(metrics: RunMetrics, history: History, served: Option<SubscriberView>) {
    tokio::spawn(async move {
        loop {
            let mut values = page::history::flatten(&metrics.gather(), page::history::WATCHED);
            let now = freshet_core::now_ms();
            if let Some(model) = served.as_ref().and_then(SubscriberView::model) {
                let info = model.info();
                values.push(("served_version".to_owned(), info.version as f64));
                values.push(("served_freshness_ms".to_owned(), now.saturating_sub(info.newest_event_ms) as f64));
            }
            history.record(now, values);
            tokio::time::sleep(page::history::INTERVAL).await;
        }
    });
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
