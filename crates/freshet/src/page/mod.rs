//! The live pages, embedded in the binary (no network at run time): the
//! learning loop on the metrics listener of `freshet run` and `freshet
//! demo` (`/`, charts drawn by the vendored uPlot from the samples of
//! [`history`]), and a box to ask `/recommend` on `freshet serve` (`/`).
//!
//! **Architecture invariant:** the pages read only what the process already
//! publishes (`/metrics` families, `/recommend`, `/version`): a number on a
//! page is a number an operator's Prometheus sees.

pub mod history;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

pub use history::History;

const UPLOT_JS: &str = include_str!("../../assets/vendor/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/vendor/uplot/uPlot.min.css");
const PAGE_CSS: &str = include_str!("../../assets/page.css");
const LOOP_HTML: &str = include_str!("../../assets/loop.html");
const LOOP_JS: &str = include_str!("../../assets/loop.js");
const SERVE_HTML: &str = include_str!("../../assets/serve.html");
const SERVE_JS: &str = include_str!("../../assets/serve.js");

/// The loop page of model `model` and its samples, for the metrics listener
/// of `freshet run`.
pub fn loop_routes(history: History, model: &str) -> Router {
    Router::new()
        .route("/", get(|query: Params| async move { page(&query, LOOP_HTML) }))
        .route("/loop/history", get(samples))
        .route("/assets/loop.js", get(|query: Params| async move { asset(&query, JAVASCRIPT, LOOP_JS) }))
        .route("/assets/uplot.js", get(|query: Params| async move { asset(&query, JAVASCRIPT, UPLOT_JS) }))
        .route("/assets/uplot.css", get(|query: Params| async move { asset(&query, CSS, UPLOT_CSS) }))
        .route("/assets/page.css", get(|query: Params| async move { asset(&query, CSS, PAGE_CSS) }))
        .with_state(Charted { history, model: model.into() })
}

/// What `/loop/history` answers from.
#[derive(Clone)]
struct Charted {
    history: History,
    model: std::sync::Arc<str>,
}

/// The recommendation page of `freshet serve`.
pub fn serve_routes() -> Router {
    Router::new()
        .route("/", get(|query: Params| async move { page(&query, SERVE_HTML) }))
        .route("/assets/serve.js", get(|query: Params| async move { asset(&query, JAVASCRIPT, SERVE_JS) }))
        .route("/assets/page.css", get(|query: Params| async move { asset(&query, CSS, PAGE_CSS) }))
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

type Params = Query<Vec<(String, String)>>;

/// A 400 naming the first parameter that is not in `known`, if any.
fn unknown(query: &Params, known: &[&str]) -> Option<Response> {
    let (name, _) = query.0.iter().find(|(name, _)| !known.contains(&name.as_str()))?;
    let error = format!("unknown query parameter `{name}`");
    Some((StatusCode::BAD_REQUEST, axum::Json(json!({"error": error}))).into_response())
}

fn page(query: &Params, html: &'static str) -> Response {
    unknown(query, &[]).unwrap_or_else(|| {
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], html)
            .into_response()
    })
}

fn asset(query: &Params, content_type: &'static str, body: &'static str) -> Response {
    unknown(query, &[]).unwrap_or_else(|| ([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `GET /loop/history[?since=MS]`: the samples taken after `since`.
async fn samples(State(charted): State<Charted>, query: Params) -> Response {
    if let Some(error) = unknown(&query, &["since"]) {
        return error;
    }
    let since = match query.0.iter().find(|(name, _)| name == "since") {
        None => 0,
        Some((_, value)) => match value.parse::<i64>() {
            Ok(since) => since,
            Err(_) => {
                let error = format!("`since` must be milliseconds since the epoch, got {value:?}");
                return (StatusCode::BAD_REQUEST, axum::Json(json!({"error": error}))).into_response();
            }
        },
    };
    let mut answer = charted.history.columns(since);
    answer["interval_ms"] = json!(history::INTERVAL.as_millis() as u64);
    answer["model"] = json!(&*charted.model);
    axum::Json(answer).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    fn call(app: &Router, uri: &str) -> (StatusCode, String) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(async {
            let response =
                app.clone().oneshot(Request::get(uri).body(Body::empty()).expect("request")).await.expect("answer");
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }

    #[test]
    fn the_pages_and_their_assets_are_served_and_unknown_parameters_named() {
        let history = History::default();
        history.record(5, vec![("freshet_rows{table=\"user\"}".into(), 3.0)]);
        let app = loop_routes(history, "m1");
        let (status, html) = call(&app, "/");
        assert_eq!(status, StatusCode::OK);
        for asset in ["/assets/loop.js", "/assets/uplot.js", "/assets/uplot.css", "/assets/page.css"] {
            assert!(html.contains(asset), "the page loads {asset}");
            assert_eq!(call(&app, asset).0, StatusCode::OK, "{asset}");
        }
        let (status, body) = call(&app, "/loop/history?since=0");
        assert_eq!(status, StatusCode::OK);
        let answer: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(answer["series"]["freshet_rows{table=\"user\"}"], json!([3.0]));
        assert_eq!(answer["model"], "m1");
        assert_eq!(call(&app, "/loop/history?since=5").1.matches("freshet_rows").count(), 0);
        let (status, body) = call(&app, "/loop/history?from=1");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("`from`"), "{body}");
        assert_eq!(call(&app, "/loop/history?since=soon").0, StatusCode::BAD_REQUEST);
        assert!(call(&app, "/?x=1").1.contains("`x`"));

        let app = serve_routes();
        let (status, html) = call(&app, "/");
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("/assets/serve.js") && html.contains("/recommend"), "{html}");
        assert_eq!(call(&app, "/assets/serve.js").0, StatusCode::OK);
    }
}
