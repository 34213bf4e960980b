//! The serving endpoint: scores, candidate ranking and recommendations
//! from the live model, with context features and the request's time, its
//! version, health and Prometheus metrics. docs/serving.md describes every
//! endpoint.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use freshet_core::{ConfigError, Features, Head, ScoreContext, ValidationConfig};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::follow::{SubscriberEvent, SubscriberView};
use crate::model::DEFAULT_CANDIDATES;

/// Largest `k` a request may ask for.
pub const MAX_K: usize = 1000;
/// Most items one `/recommend` may exclude.
pub const MAX_EXCLUDE: usize = 1000;
/// Query parameters that carry a context feature: `f.<name>=<value>`.
pub const FEATURE_PREFIX: &str = "f.";

/// `[serve]` settings of `freshet serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Most candidate items one `POST /rank` may score.
    pub max_rank_items: usize,
    /// Candidates a top-k scores exactly after the quantized scan picked
    /// them (at least `k`); more costs time, fewer costs recall.
    pub top_k_candidates: usize,
    /// Whether the process may use transparent huge pages: faster random
    /// row lookups (`POST /rank`), at ~10% more resident memory.
    pub huge_pages: bool,
    /// Whether `/readyz` stays 200 while the Kafka cluster does not answer.
    /// Off: a replica that cannot follow the model leaves the load
    /// balancer's rotation (its version goes stale). On: every replica keeps
    /// serving the version it holds through a Kafka outage (an outage of
    /// Kafka never becomes an outage of serving).
    pub ready_without_kafka: bool,
    /// Whether deltas are decoded and applied (not served) while their
    /// transaction waits for the trainer's checkpoint, by a second consumer
    /// reading uncommitted messages; served once committed
    /// ([`crate::SubscriberConfig::read_ahead`]).
    pub read_ahead: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_rank_items: 10_000,
            top_k_candidates: DEFAULT_CANDIDATES,
            huge_pages: false,
            ready_without_kafka: false,
            read_ahead: true,
        }
    }
}

impl ServeConfig {
    /// Checks the settings, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.max_rank_items) {
            return Err(ConfigError::new("serve.max_rank_items", "must be between 1 and 1000000"));
        }
        if !(1..=1_000_000).contains(&self.top_k_candidates) {
            return Err(ConfigError::new("serve.top_k_candidates", "must be between 1 and 1000000"));
        }
        Ok(())
    }
}

/// Prometheus metrics of a serving process.
#[derive(Clone)]
pub struct ServeMetrics {
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    snapshots: IntCounterVec,
    publish_to_apply: HistogramVec,
    read_ahead: IntCounter,
    version: IntGauge,
    shard_version: IntGaugeVec,
    /// The shards `shard_version` has a series of, so that a shard the
    /// served model no longer has loses its series.
    shards_shown: Arc<Mutex<Vec<u32>>>,
    newest_event_ms: IntGauge,
    rows: IntGaugeVec,
    cluster: IntGauge,
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
                .buckets(prometheus::exponential_buckets(0.000_025, 1.25, 40)?),
            &["endpoint"],
        )?;
        let snapshots = IntCounterVec::new(
            Opts::new("freshet_subscriber_snapshots_total", "Snapshots by outcome (full, delta, skipped, rejected)"),
            &["outcome"],
        )?;
        let read_ahead = IntCounter::new(
            "freshet_subscriber_read_ahead_applied_total",
            "Deltas served from rows applied before their transaction committed",
        )?;
        let publish_to_apply = HistogramVec::new(
            HistogramOpts::new("freshet_subscriber_publish_to_apply_seconds", "From snapshot creation to hot swap")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
            &["kind"],
        )?;
        let version = IntGauge::new(
            "freshet_subscriber_version",
            "Snapshot version served (a sharded model's: its stalest shard's)",
        )?;
        let shard_version = IntGaugeVec::new(
            Opts::new("freshet_subscriber_shard_version", "Snapshot version served of each shard's chain"),
            &["shard"],
        )?;
        let newest_event_ms =
            IntGauge::new("freshet_subscriber_newest_event_ms", "Newest event time the served model reflects")?;
        let rows = IntGaugeVec::new(Opts::new("freshet_subscriber_rows", "Rows served per table"), &["table"])?;
        let cluster = IntGauge::new(
            "freshet_subscriber_kafka_answers",
            "1 while the Kafka cluster of the snapshots answers metadata requests",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_seconds.clone()))?;
        registry.register(Box::new(snapshots.clone()))?;
        registry.register(Box::new(publish_to_apply.clone()))?;
        registry.register(Box::new(read_ahead.clone()))?;
        registry.register(Box::new(version.clone()))?;
        registry.register(Box::new(shard_version.clone()))?;
        registry.register(Box::new(newest_event_ms.clone()))?;
        registry.register(Box::new(rows.clone()))?;
        registry.register(Box::new(cluster.clone()))?;
        Ok(ServeMetrics {
            registry,
            requests,
            request_seconds,
            snapshots,
            publish_to_apply,
            read_ahead,
            version,
            shard_version,
            shards_shown: Arc::default(),
            newest_event_ms,
            rows,
            cluster,
        })
    }

    /// Counts a subscriber event (pass it from the subscriber's callback).
    pub fn observe(&self, event: &SubscriberEvent) {
        match event {
            SubscriberEvent::Applied(report) => {
                self.snapshots.with_label_values(&[report.kind.as_str()]).inc();
                if report.read_ahead {
                    self.read_ahead.inc();
                }
                self.publish_to_apply
                    .with_label_values(&[report.kind.as_str()])
                    .observe(report.publish_to_apply_ms.max(0) as f64 / 1e3);
            }
            SubscriberEvent::Skipped { .. } => self.snapshots.with_label_values(&["skipped"]).inc(),
            SubscriberEvent::Rejected { .. } => self.snapshots.with_label_values(&["rejected"]).inc(),
        }
    }

    /// Sets the version of each shard served, and removes the series of
    /// shards shown before that the model no longer has (fewer shards).
    fn show_shard_versions(&self, shards: impl Iterator<Item = (u32, u64)>) {
        let mut shown = self.shards_shown.lock().unwrap_or_else(PoisonError::into_inner);
        let now: Vec<(u32, u64)> = shards.collect();
        for gone in shown.iter().filter(|&&old| !now.iter().any(|&(shard, _)| shard == old)) {
            let _ = self.shard_version.remove_label_values(&[gone.to_string().as_str()]);
        }
        for &(shard, version) in &now {
            self.shard_version.with_label_values(&[shard.to_string().as_str()]).set(version as i64);
        }
        *shown = now.into_iter().map(|(shard, _)| shard).collect();
    }

    fn render(&self, view: &SubscriberView) -> String {
        if let Some(answers) = view.cluster_answers() {
            self.cluster.set(i64::from(answers));
        }
        if let Some(model) = view.model() {
            let info = model.info();
            self.version.set(info.version as i64);
            self.show_shard_versions(info.shards.iter().map(|shard| (shard.shard, shard.version)));
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
    options: RouterOptions,
}

/// How the endpoint answers.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// The head that scores when a request names none.
    pub head: Head,
    /// The rules ids and context features of a request must follow (the
    /// trainer's `[validation]` table).
    pub validation: ValidationConfig,
    /// Most items one `POST /rank` may score.
    pub max_rank_items: usize,
    /// `/readyz` is 200 while the Kafka cluster does not answer
    /// ([`ServeConfig::ready_without_kafka`]).
    pub ready_without_kafka: bool,
}

impl RouterOptions {
    /// Options for `head`, with the default validation and limits.
    pub fn new(head: Head) -> Self {
        RouterOptions::of(head, ValidationConfig::default(), &ServeConfig::default())
    }

    /// Options for `head` under the `[validation]` and `[serve]` tables.
    pub fn of(head: Head, validation: ValidationConfig, serve: &ServeConfig) -> Self {
        RouterOptions {
            head,
            validation,
            max_rank_items: serve.max_rank_items,
            ready_without_kafka: serve.ready_without_kafka,
        }
    }
}

/// The endpoint's routes over a subscription.
pub fn router(view: SubscriberView, metrics: ServeMetrics, options: RouterOptions) -> Router {
    // Room for the largest accepted `/rank` body: every id at its longest, quoted.
    let body_limit = 64 * 1024 + options.max_rank_items * (options.validation.max_id_bytes * 6 + 4);
    Router::new()
        .route("/recommend", get(recommend))
        .route("/score", get(score))
        .route("/rank", post(rank))
        .route("/version", get(version))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(AppState { view, metrics, options })
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

fn no_model() -> ApiError {
    ApiError { status: StatusCode::SERVICE_UNAVAILABLE, message: "no model version is served yet".to_owned() }
}

type Params = Query<Vec<(String, String)>>;

/// A request's query parameters, checked against what its endpoint takes.
struct Request<'a> {
    params: Vec<(&'a str, &'a str)>,
    features: Features,
}

impl<'a> Request<'a> {
    /// Parses `params` for an endpoint taking `names` (and features, if
    /// `features`): an unknown or repeated parameter is a 400 naming it.
    fn parse(
        params: &'a [(String, String)],
        names: &[&str],
        features: bool,
        validation: &ValidationConfig,
    ) -> Result<Self, ApiError> {
        let mut request = Request { params: Vec::new(), features: Features::new() };
        for (name, value) in params {
            if let Some(feature) = name.strip_prefix(FEATURE_PREFIX).filter(|_| features) {
                if request.features.insert(feature.to_owned(), value.clone()).is_some() {
                    return Err(bad_request(format!("query parameter `{name}` is given more than once")));
                }
            } else if names.contains(&name.as_str()) {
                if request.params.iter().any(|(seen, _)| seen == name) {
                    return Err(bad_request(format!("query parameter `{name}` is given more than once")));
                }
                request.params.push((name, value));
            } else {
                let mut takes: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                if features {
                    takes.push(format!("`{FEATURE_PREFIX}<feature>`"));
                }
                let takes = if takes.is_empty() { "no parameters".to_owned() } else { takes.join(", ") };
                return Err(bad_request(format!("unknown query parameter `{name}` (this endpoint takes {takes})")));
            }
        }
        validation
            .check_features(&request.features)
            .map_err(|rejection| bad_request(format!("features: {rejection}")))?;
        Ok(request)
    }

    fn get(&self, name: &str) -> Option<&'a str> {
        self.params.iter().find(|(n, _)| *n == name).map(|(_, value)| *value)
    }

    /// A required id parameter, checked like an event's ids.
    fn id(&self, name: &'static str, validation: &ValidationConfig) -> Result<&'a str, ApiError> {
        let value = self.get(name).ok_or_else(|| bad_request(format!("missing query parameter `{name}`")))?;
        validation.check_id(name, value).map_err(|rejection| bad_request(format!("`{name}`: {rejection}")))?;
        Ok(value)
    }

    fn head(&self, default: Head) -> Result<Head, ApiError> {
        self.get("head").map_or(Ok(default), head_named)
    }

    /// The request's time: `ts` (ms since the epoch), or now.
    fn at_ms(&self) -> Result<i64, ApiError> {
        match self.get("ts") {
            None => Ok(freshet_core::now_ms()),
            Some(ts) => {
                ts.parse().map_err(|_| bad_request(format!("`ts` must be an integer (ms since the epoch), got {ts:?}")))
            }
        }
    }
}

fn head_named(name: &str) -> Result<Head, ApiError> {
    match name {
        "rating" => Ok(Head::Rating),
        "click" => Ok(Head::Click),
        other => Err(bad_request(format!("`head` must be rating or click, got {other:?}"))),
    }
}

/// Runs a handler, counting and timing it.
fn measured(state: &AppState, endpoint: &str, answer: impl FnOnce() -> Result<Response, ApiError>) -> Response {
    let started = Instant::now();
    let answering = state.view.answering();
    let response = answer().unwrap_or_else(IntoResponse::into_response);
    drop(answering);
    state.metrics.request_seconds.with_label_values(&[endpoint]).observe(started.elapsed().as_secs_f64());
    state.metrics.requests.with_label_values(&[endpoint, response.status().as_str()]).inc();
    response
}

async fn recommend(State(state): State<AppState>, Query(params): Params) -> Response {
    measured(&state, "recommend", || {
        let validation = &state.options.validation;
        let request = Request::parse(&params, &["user", "k", "head", "exclude", "ts"], true, validation)?;
        let user = request.id("user", validation)?;
        let k = match request.get("k") {
            None => 10,
            Some(k) => k
                .parse::<usize>()
                .ok()
                .filter(|k| (1..=MAX_K).contains(k))
                .ok_or_else(|| bad_request(format!("`k` must be an integer from 1 to {MAX_K}")))?,
        };
        let head = request.head(state.options.head)?;
        let exclude: HashSet<String> = request
            .get("exclude")
            .map(|list| list.split(',').filter(|id| !id.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        if exclude.len() > MAX_EXCLUDE {
            return Err(bad_request(format!(
                "`exclude` names {} items, over the limit of {MAX_EXCLUDE}",
                exclude.len()
            )));
        }
        for id in &exclude {
            validation.check_id("item", id).map_err(|rejection| bad_request(format!("`exclude`: {rejection}")))?;
        }
        let context = ScoreContext { features: &request.features, at_ms: Some(request.at_ms()?) };
        let model = state.view.model().ok_or_else(no_model)?;
        let items = model.top_k(head, user, k, &context, &exclude);
        Ok(axum::Json(json!({"user": user, "version": model.version(), "head": head, "items": items})).into_response())
    })
}

async fn score(State(state): State<AppState>, Query(params): Params) -> Response {
    measured(&state, "score", || {
        let validation = &state.options.validation;
        let request = Request::parse(&params, &["user", "item", "head", "ts"], true, validation)?;
        let (user, item) = (request.id("user", validation)?, request.id("item", validation)?);
        let head = request.head(state.options.head)?;
        let context = ScoreContext { features: &request.features, at_ms: Some(request.at_ms()?) };
        let model = state.view.model().ok_or_else(no_model)?;
        let score = model.score(head, user, item, &context);
        Ok(axum::Json(json!({"score": score, "version": model.version(), "head": head})).into_response())
    })
}

/// The body of `POST /rank`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RankRequest {
    user: String,
    items: Vec<String>,
    #[serde(default)]
    features: Features,
    #[serde(default)]
    head: Option<String>,
    /// The request's time (ms since the epoch); now when absent.
    #[serde(default)]
    ts: Option<i64>,
}

async fn rank(
    State(state): State<AppState>,
    Query(params): Params,
    body: Result<axum::Json<RankRequest>, JsonRejection>,
) -> Response {
    measured(&state, "rank", || {
        let validation = &state.options.validation;
        Request::parse(&params, &[], false, validation)?;
        let axum::Json(request) = body.map_err(|rejection| ApiError {
            // A body in another format keeps its 415; anything wrong inside the JSON is a 400.
            status: if rejection.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE {
                rejection.status()
            } else {
                StatusCode::BAD_REQUEST
            },
            message: format!(
                "the body must be JSON {{\"user\", \"items\": [...], \"features\": {{...}}, \"head\", \"ts\"}}: {}",
                rejection.body_text()
            ),
        })?;
        validation.check_id("user", &request.user).map_err(|rejection| bad_request(format!("`user`: {rejection}")))?;
        let limit = state.options.max_rank_items;
        if request.items.len() > limit {
            return Err(bad_request(format!(
                "`items` holds {} ids, over the limit of {limit} a request (serve.max_rank_items)",
                request.items.len()
            )));
        }
        for item in &request.items {
            validation.check_id("item", item).map_err(|rejection| bad_request(format!("`items`: {rejection}")))?;
        }
        validation
            .check_features(&request.features)
            .map_err(|rejection| bad_request(format!("`features`: {rejection}")))?;
        let head = request.head.as_deref().map_or(Ok(state.options.head), head_named)?;
        let context =
            ScoreContext { features: &request.features, at_ms: Some(request.ts.unwrap_or_else(freshet_core::now_ms)) };
        let model = state.view.model().ok_or_else(no_model)?;
        let scores = model.rank(head, &request.user, &request.items, &context);
        let answer = json!({"user": request.user, "version": model.version(), "head": head, "scores": scores});
        Ok(axum::Json(answer).into_response())
    })
}

async fn version(State(state): State<AppState>, Query(params): Params) -> Response {
    measured(&state, "version", || {
        Request::parse(&params, &[], false, &state.options.validation)?;
        let model = state.view.model().ok_or_else(no_model)?;
        let info = model.info();
        let now = freshet_core::now_ms();
        let freshness_ms = now.saturating_sub(info.newest_event_ms);
        let shards: Vec<Value> = info
            .shards
            .iter()
            .map(|shard| {
                json!({"shard": shard.shard, "version": shard.version, "freshness_ms": now.saturating_sub(shard.newest_event_ms)})
            })
            .collect();
        let answer = json!({"info": info, "freshness_ms": freshness_ms, "shards": shards, "stats": state.view.stats()});
        Ok(axum::Json(answer).into_response())
    })
}

async fn healthz(State(state): State<AppState>, Query(params): Params) -> Response {
    match Request::parse(&params, &[], false, &state.options.validation) {
        Ok(_) => axum::Json(json!({"status": "ok"})).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn readyz(State(state): State<AppState>, Query(params): Params) -> Response {
    if let Err(error) = Request::parse(&params, &[], false, &state.options.validation) {
        return error.into_response();
    }
    let Some(model) = state.view.model() else { return no_model().into_response() };
    if state.view.cluster_answers() == Some(false) && !state.options.ready_without_kafka {
        let reason = "the Kafka cluster of the snapshots does not answer";
        let body = json!({"ready": false, "version": model.version(), "reason": reason});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    axum::Json(json!({"ready": true, "version": model.version()})).into_response()
}

async fn metrics_text(State(state): State<AppState>, Query(params): Params) -> Response {
    if let Err(error) = Request::parse(&params, &[], false, &state.options.validation) {
        return error.into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render(&state.view)).into_response()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use freshet_core::snapshot::{SnapshotChunk, SnapshotKind, SnapshotRow};
    use freshet_core::{ModelSpec, RowLayout, TableKind, hash_feature, hash_id};
    use tower::ServiceExt;

    use super::*;
    use crate::fixtures::header;
    use crate::model::{Builder, DEFAULT_CANDIDATES};
    use crate::swap::LiveModel;

    fn row(table: TableKind, key: u64, id: Option<&str>, fill: f32) -> SnapshotRow {
        let width = RowLayout::new(table, 8).width();
        let values = (0..width).map(|k| fill * (k as f32 + 1.0) / 8.0).collect();
        SnapshotRow { table, key, id: id.map(str::to_owned), updated_ms: 1_000, values }
    }

    /// An endpoint over a small model (or none), with a limit of 3 ranked items.
    fn app(with_model: bool) -> (Router, Arc<LiveModel>) {
        let live = live(with_model);
        let options = RouterOptions { max_rank_items: 3, ..RouterOptions::new(Head::Rating) };
        let app = router(SubscriberView::of(Arc::clone(&live)), ServeMetrics::new().expect("metrics"), options);
        (app, live)
    }

    /// A small model (or none).
    fn live(with_model: bool) -> Arc<LiveModel> {
        let live = Arc::new(LiveModel::default());
        if with_model {
            let rows = vec![
                row(TableKind::User, hash_id("u1"), None, 0.5),
                row(TableKind::Item, hash_id("i1"), Some("i1"), 0.25),
                row(TableKind::Item, hash_id("i2"), Some("i2"), -0.25),
                row(TableKind::Feature, hash_feature("device", "ios"), None, 0.125),
            ];
            let spec = ModelSpec { dim: 8, ..ModelSpec::default() };
            let mut builder =
                Builder::full(&header(1, SnapshotKind::Full, spec, [1, 2, 1], 0), None, DEFAULT_CANDIDATES)
                    .expect("valid");
            builder.apply(&SnapshotChunk { version: 1, index: 0, rows, tombstones: vec![] }).expect("applies");
            live.store(builder.finish(0));
        }
        live
    }

    #[test]
    fn a_shard_the_model_no_longer_has_loses_its_version_series() {
        let metrics = ServeMetrics::new().expect("metrics");
        let text = |metrics: &ServeMetrics| {
            let mut text = Vec::new();
            TextEncoder::new().encode(&metrics.registry.gather(), &mut text).expect("encodes");
            String::from_utf8(text).expect("text")
        };
        metrics.show_shard_versions([(0, 5), (1, 6)].into_iter());
        let two = text(&metrics);
        assert!(two.contains("freshet_subscriber_shard_version{shard=\"0\"} 5"), "{two}");
        assert!(two.contains("freshet_subscriber_shard_version{shard=\"1\"} 6"), "{two}");
        metrics.show_shard_versions([(0, 7)].into_iter());
        let one = text(&metrics);
        assert!(one.contains("freshet_subscriber_shard_version{shard=\"0\"} 7"), "{one}");
        assert!(!one.contains("shard=\"1\""), "{one}");
    }

    fn call(app: &Router, request: HttpRequest<Body>) -> (StatusCode, String) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let response = app.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("a body");
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }

    fn get(app: &Router, uri: &str) -> (StatusCode, String) {
        call(app, HttpRequest::get(uri).body(Body::empty()).expect("a request"))
    }

    fn post(app: &Router, body: &str, content_type: Option<&str>) -> (StatusCode, String) {
        let mut request = HttpRequest::post("/rank");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        call(app, request.body(Body::from(body.to_owned())).expect("a request"))
    }

    fn score_of(body: &str) -> f32 {
        let value: serde_json::Value = serde_json::from_str(body).expect("json");
        value["score"].as_f64().expect("a score") as f32
    }

    #[test]
    fn features_and_time_reach_the_score() {
        let (app, live) = app(true);
        let model = live.load().expect("served");
        let ios = Features::from([("device".to_owned(), "ios".to_owned())]);
        let (status, body) = get(&app, "/score?user=u1&item=i1&f.device=ios&ts=2000");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(score_of(&body), model.score(Head::Rating, "u1", "i1", &ScoreContext::new(&ios).at(2_000)));
        let (_, plain) = get(&app, "/score?user=u1&item=i1&ts=2000");
        assert_ne!(score_of(&plain), score_of(&body), "the feature changes the score");
        // Long after the user's last update the session offset is left out.
        let late = 1_000 + 3_600_001;
        let (_, later) = get(&app, &format!("/score?user=u1&item=i1&ts={late}"));
        assert_eq!(score_of(&later), model.score(Head::Rating, "u1", "i1", &ScoreContext::none().at(late)));
        assert_ne!(score_of(&later), score_of(&plain), "the session offset (0.5) is left out");
        let (status, body) = get(&app, "/recommend?user=u1&k=2&f.device=ios&head=click");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"i1\"") && body.contains("\"i2\""), "{body}");
    }

    #[test]
    fn unknown_repeated_and_bad_parameters_are_named() {
        let (app, _) = app(true);
        for (uri, named) in [
            ("/score?user=u1&item=i1&device=ios", "`device`"),
            ("/score?user=u1&item=i1&user=u2", "`user`"),
            ("/score?user=u1&item=i1&f.device=ios&f.device=web", "`f.device`"),
            ("/score?user=u1", "`item`"),
            ("/score?user=u1&item=i1&ts=soon", "`ts`"),
            ("/score?user=u1&item=i1&head=volume", "`head`"),
            ("/score?user=&item=i1", "user"),
            ("/score?user=u1&item=i1&f.=ios", "empty name"),
            ("/recommend?user=u1&k=0", "`k`"),
            ("/recommend?user=u1&limit=3", "`limit`"),
            ("/version?verbose=1", "`verbose`"),
            ("/readyz?x=1", "`x`"),
            ("/healthz?x=1", "`x`"),
            ("/metrics?x=1", "`x`"),
        ] {
            let (status, body) = get(&app, uri);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(body.contains(named), "{uri}: {body}");
        }
        let many: String = (0..33).map(|i| format!("&f.n{i}=v")).collect();
        let (status, body) = get(&app, &format!("/score?user=u1&item=i1{many}"));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("features"), "{body}");
    }

    #[test]
    fn rank_scores_candidates_in_order_within_the_limit() {
        let (app, live) = app(true);
        let model = live.load().expect("served");
        let json = "application/json";
        let body =
            r#"{"user":"u1","items":["i2","nothing","i1"],"features":{"device":"ios"},"head":"click","ts":1500}"#;
        let (status, answer) = post(&app, body, Some(json));
        assert_eq!(status, StatusCode::OK, "{answer}");
        let value: serde_json::Value = serde_json::from_str(&answer).expect("json");
        let ios = Features::from([("device".to_owned(), "ios".to_owned())]);
        let expected = model.rank(Head::Click, "u1", &["i2", "nothing", "i1"], &ScoreContext::new(&ios).at(1_500));
        let scores: Vec<f32> =
            value["scores"].as_array().expect("scores").iter().map(|s| s.as_f64().unwrap_or(f64::NAN) as f32).collect();
        assert_eq!(scores, expected);
        assert_eq!(
            (value["user"].as_str(), value["version"].as_u64(), value["head"].as_str()),
            (Some("u1"), Some(1), Some("click"))
        );
        let (status, answer) = post(&app, r#"{"user":"u1","items":["a","b","c","d"]}"#, Some(json));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer.contains("limit of 3") && answer.contains("serve.max_rank_items"), "{answer}");
        let (status, answer) = post(&app, r#"{"user":"u1","items":[],"context":{}}"#, Some(json));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer.contains("context"), "an unknown field is named: {answer}");
        assert_eq!(post(&app, "not json", Some(json)).0, StatusCode::BAD_REQUEST);
        assert_eq!(post(&app, body, None).0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, answer) = post(&app, r#"{"user":"u1","items":["i1"],"head":"volume"}"#, Some(json));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(answer.contains("head"), "{answer}");
    }

    #[test]
    fn nothing_is_served_before_the_first_snapshot() {
        let (app, _) = app(false);
        assert_eq!(get(&app, "/score?user=u1&item=i1").0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&app, "/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get(&app, "/healthz").0, StatusCode::OK);
        let (status, body) = post(&app, r#"{"user":"u1","items":["i1"]}"#, Some("application/json"));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    #[test]
    fn readiness_follows_the_kafka_cluster_unless_told_otherwise() {
        // A status no probe has confirmed: the cluster does not answer.
        let silent = freshet_kafka::ClusterStatus::default();
        let view = SubscriberView::of(live(true)).fed_by(silent);
        let app = router(view.clone(), ServeMetrics::new().expect("metrics"), RouterOptions::new(Head::Rating));
        let (status, body) = get(&app, "/readyz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("does not answer") && body.contains(r#""version":1"#), "{body}");
        assert_eq!(get(&app, "/score?user=u1&item=i1").0, StatusCode::OK, "it keeps serving its version");
        assert!(get(&app, "/metrics").1.contains("freshet_subscriber_kafka_answers 0"));

        let serve = ServeConfig { ready_without_kafka: true, ..ServeConfig::default() };
        let options = RouterOptions::of(Head::Rating, ValidationConfig::default(), &serve);
        let app = router(view, ServeMetrics::new().expect("metrics"), options);
        assert_eq!(get(&app, "/readyz").0, StatusCode::OK);
    }
}
