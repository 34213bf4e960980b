//! The serving endpoint: recommendations and scores from the live model,
//! its version, health and Prometheus metrics.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde_json::json;

use crate::follow::{SubscriberEvent, SubscriberView};
use freshet_core::Head;

/// Largest `k` a request may ask for.
const MAX_K: usize = 1000;

/// Prometheus metrics of a serving process.
#[derive(Clone)]
pub struct ServeMetrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    snapshots: IntCounterVec,
    publish_to_apply: HistogramVec,
    version: IntGauge,
    newest_event_ms: IntGauge,
    rows: IntGaugeVec,
}

impl ServeMetrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("freshet_serve_requests_total", "HTTP requests by endpoint and status"),
            &["endpoint", "status"],
        )?;
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("freshet_serve_request_seconds", "HTTP request latency by endpoint")
                .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 16)?),
            &["endpoint"],
        )?;
        let snapshots = IntCounterVec::new(
            Opts::new("freshet_subscriber_snapshots_total", "Snapshots by outcome (full, delta, skipped, rejected)"),
            &["outcome"],
        )?;
        let publish_to_apply = HistogramVec::new(
            HistogramOpts::new("freshet_subscriber_publish_to_apply_seconds", "From snapshot creation to hot swap")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
            &["kind"],
        )?;
        let version = IntGauge::new("freshet_subscriber_version", "Snapshot version served")?;
        let newest_event_ms =
            IntGauge::new("freshet_subscriber_newest_event_ms", "Newest event time the served model reflects")?;
        let rows = IntGaugeVec::new(Opts::new("freshet_subscriber_rows", "Rows served per table"), &["table"])?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(snapshots.clone()))?;
        registry.register(Box::new(publish_to_apply.clone()))?;
        registry.register(Box::new(version.clone()))?;
        registry.register(Box::new(newest_event_ms.clone()))?;
        registry.register(Box::new(rows.clone()))?;
        Ok(ServeMetrics {
            registry,
            requests,
            request_seconds,
            snapshots,
            publish_to_apply,
            version,
            newest_event_ms,
            rows,
        })
    }

    /// Counts a subscriber event (pass it from the subscriber's callback).
    pub fn observe(&self, event: &SubscriberEvent) {
        match event {
            SubscriberEvent::Applied(report) => {
                self.snapshots.with_label_values(&[report.kind]).inc();
                self.publish_to_apply
                    .with_label_values(&[report.kind])
                    .observe(report.publish_to_apply_ms.max(0) as f64 / 1e3);
            }
            SubscriberEvent::Skipped { .. } => self.snapshots.with_label_values(&["skipped"]).inc(),
            SubscriberEvent::Rejected { .. } => self.snapshots.with_label_values(&["rejected"]).inc(),
        }
    }

    fn render(&self, view: &SubscriberView) -> String {
        if let Some(model) = view.model() {
            let info = model.info();
            self.version.set(info.version as i64);
            self.newest_event_ms.set(info.newest_event_ms);
            for (table, count) in &info.rows {
                self.rows.with_label_values(&[table.as_str()]).set(*count as i64);
            }
        }
        let mut text = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8_lossy(&text).into_owned()
    }
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    view: SubscriberView,
    metrics: ServeMetrics,
    head: Head,
}

/// The endpoint's routes over a subscription; `head` is the default head.
pub fn router(view: SubscriberView, metrics: ServeMetrics, head: Head) -> Router {
    Router::new()
        .route("/recommend", get(recommend))
        .route("/score", get(score))
        .route("/version", get(version))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { view, metrics, head })
}

/// Serves `router` on `listen` until `shutdown` resolves.
pub async fn serve(
    listen: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "serving");
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// An error answer: its status and a message naming the problem.
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError { status: StatusCode::BAD_REQUEST, message: message.into() }
}

type Params = Query<HashMap<String, String>>;

/// A request's parsed parameters, or the 400 answer naming the problem.
fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    match params.get(name).map(String::as_str) {
        Some(value) if !value.is_empty() => Ok(value),
        _ => Err(bad_request(format!("missing query parameter `{name}`"))),
    }
}

fn head_of(params: &HashMap<String, String>, default: Head) -> Result<Head, ApiError> {
    match params.get("head").map(String::as_str) {
        None => Ok(default),
        Some("rating") => Ok(Head::Rating),
        Some("click") => Ok(Head::Click),
        Some(other) => Err(bad_request(format!("`head` must be rating or click, got {other:?}"))),
    }
}

fn no_model() -> ApiError {
    ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: "no model version is served yet".to_owned() }
}

/// Runs a handler, counting and timing it.
fn measured(state: &AppState, endpoint: &str, answer: impl FnOnce() -> Result<Response, ApiError>) -> Response {
    let started = Instant::now();
    let response = answer().unwrap_or_else(IntoResponse::into_response);
    state.metrics.request_seconds.with_label_values(&[endpoint]).observe(started.elapsed().as_secs_f64());
    state.metrics.requests.with_label_values(&[endpoint, response.status().as_str()]).inc();
    response
}

async fn recommend(State(state): State<AppState>, Query(params): Params) -> Response {
    measured(&state, "recommend", || {
        let user = param(&params, "user")?;
        let k = match params.get("k") {
            None => 10,
            Some(k) => k
                .parse::<usize>()
                .ok()
                .filter(|k| (1..=MAX_K).contains(k))
                .ok_or_else(|| bad_request(format!("`k` must be an integer from 1 to {MAX_K}")))?,
        };
        let head = head_of(&params, state.head)?;
        let exclude: HashSet<String> = params
            .get("exclude")
            .map(|list| list.split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let model = state.view.model().ok_or_else(no_model)?;
        let items = model.top_k(head, user, k, &exclude);
        Ok(axum::Json(json!({"user": user, "version": model.version(), "head": head, "items": items})).into_response())
    })
}

async fn score(State(state): State<AppState>, Query(params): Params) -> Response {
    measured(&state, "score", || {
        let (user, item) = (param(&params, "user")?, param(&params, "item")?);
        let head = head_of(&params, state.head)?;
        let model = state.view.model().ok_or_else(no_model)?;
        let score = model.score(head, user, item);
        Ok(axum::Json(json!({"score": score, "version": model.version(), "head": head})).into_response())
    })
}

async fn version(State(state): State<AppState>) -> Response {
    measured(&state, "version", || {
        let model = state.view.model().ok_or_else(no_model)?;
        let info = model.info();
        let freshness_ms = freshet_core::now_ms() - info.newest_event_ms;
        Ok(axum::Json(json!({"info": info, "freshness_ms": freshness_ms, "stats": state.view.stats()})).into_response())
    })
}

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.view.model() {
        Some(model) => axum::Json(json!({"ready": true, "version": model.version()})).into_response(),
        None => no_model().into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&state.view)).into_response()
}
