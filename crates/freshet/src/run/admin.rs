//! The admin endpoints of `freshet run`, on its metrics listener when
//! `[admin] enabled`: `POST /admin/rollback?to_version=N&mode=skip|replay`,
//! `POST /admin/backup?to=DIR` and `GET /admin/versions`. Every request needs
//! `Authorization: Bearer <admin.token>` (401 without one, 403 with another,
//! compared in constant time); a bad or unknown parameter is a 400 naming it.
//! The handlers only parse and check; the trainer thread does the work
//! between micro-batches ([`AdminRequest`]) and answers on a oneshot channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use freshet_checkpoint::RollbackMode;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

/// How long a handler waits for the trainer thread (a rollback of a large
/// model restores it whole).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// What an operator asks of the trainer thread.
#[derive(Debug)]
pub enum AdminRequest {
    /// Roll back to `to` (when `None`, the newest retained version that was
    /// published: `freshet_checkpoint::default_target`).
    Rollback {
        /// The version.
        to: Option<u64>,
        /// Skip or replay the events since.
        mode: RollbackMode,
        /// Who asked (`admin`, `quality_gate`).
        reason: &'static str,
        /// Where the answer goes.
        reply: oneshot::Sender<Answer>,
    },
    /// A consistent copy of the checkpoint in `to` (which must not exist).
    Backup {
        /// The directory.
        to: PathBuf,
        /// Where the answer goes.
        reply: oneshot::Sender<Answer>,
    },
    /// The retained versions, their disk use and the rollbacks so far.
    Versions {
        /// Where the answer goes.
        reply: oneshot::Sender<Answer>,
    },
}

/// The trainer thread's answer: a JSON body, or why not (and whose fault).
pub type Answer = Result<Value, AdminError>;

/// Why a request was not done.
#[derive(Debug)]
pub struct AdminError {
    /// 400 for the request's fault (no such version retained, a refused
    /// mode), 500 for the process's.
    pub status: StatusCode,
    /// What went wrong.
    pub message: String,
}

impl AdminError {
    /// The request's fault.
    pub fn bad(message: impl Into<String>) -> Self {
        AdminError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    /// The process's fault.
    pub fn internal(message: impl Into<String>) -> Self {
        AdminError { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into() }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({"error": self.message}))).into_response()
    }
}

#[derive(Clone)]
struct Admin {
    token: Arc<str>,
    requests: mpsc::Sender<AdminRequest>,
}

/// The admin routes, answering requests that carry `token`, handing work to
/// the trainer thread through `requests`.
pub fn routes<S: Clone + Send + Sync + 'static>(token: &str, requests: mpsc::Sender<AdminRequest>) -> Router<S> {
    Router::new()
        .route("/admin/rollback", post(rollback))
        .route("/admin/backup", post(backup))
        .route("/admin/versions", get(versions))
        .with_state(Admin { token: Arc::from(token), requests })
}

/// Equal without an early exit: the time taken does not depend on where
/// two tokens first differ (nor, beyond the longer one's length, on their lengths).
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    let len = given.len().max(expected.len());
    let mut difference = u8::from(given.len() != expected.len());
    for i in 0..len {
        difference |= given.get(i).copied().unwrap_or(0) ^ expected.get(i).copied().unwrap_or(0);
    }
    difference == 0
}

/// Why a request is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Denied {
    /// No bearer token: 401.
    Missing,
    /// Another token: 403.
    Wrong,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Missing => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({"error": "an Authorization: Bearer <admin token> header is required"})),
            )
                .into_response(),
            Denied::Wrong => {
                AdminError { status: StatusCode::FORBIDDEN, message: "wrong admin token".to_owned() }.into_response()
            }
        }
    }
}

/// Lets in a request bearing `token`.
fn authorize(headers: &HeaderMap, token: &str) -> Result<(), Denied> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        None => Err(Denied::Missing),
        Some(given) if !same_token(given.as_bytes(), token.as_bytes()) => Err(Denied::Wrong),
        Some(_) => Ok(()),
    }
}

type Params = Query<Vec<(String, String)>>;

/// The value of each of `names` in `params` (a parameter of another name,
/// or one given twice, is a 400 naming it).
fn parameters<'a, const N: usize>(
    params: &'a [(String, String)],
    names: [&str; N],
) -> Result<[Option<&'a str>; N], AdminError> {
    let mut values = [None; N];
    for (name, value) in params {
        let Some(at) = names.iter().position(|n| n == name) else {
            return Err(AdminError::bad(format!("unknown query parameter `{name}` (this endpoint takes {names:?})")));
        };
        if values[at].replace(value.as_str()).is_some() {
            return Err(AdminError::bad(format!("query parameter `{name}` is given more than once")));
        }
    }
    Ok(values)
}

/// A rollback request from its parameters: `to_version` (default: the last
/// published version) and `mode` (required).
fn rollback_parameters(params: &[(String, String)]) -> Result<(Option<u64>, RollbackMode), AdminError> {
    let [to, mode] = parameters(params, ["to_version", "mode"])?;
    let to = to
        .map(|text| {
            text.parse::<u64>()
                .map_err(|_| AdminError::bad(format!("`to_version` must be a version number, got {text:?}")))
        })
        .transpose()?;
    let mode = mode
        .ok_or_else(|| AdminError::bad("`mode` is required: skip or replay"))?
        .parse::<RollbackMode>()
        .map_err(|why| AdminError::bad(format!("`mode`: {why}")))?;
    Ok((to, mode))
}

/// Sends a request to the trainer thread and turns its answer into a response.
async fn ask(admin: &Admin, request: impl FnOnce(oneshot::Sender<Answer>) -> AdminRequest) -> Response {
    let (reply, answer) = oneshot::channel();
    if admin.requests.send(request(reply)).await.is_err() {
        return AdminError::internal("the trainer is not running").into_response();
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(Ok(body))) => axum::Json(body).into_response(),
        Ok(Ok(Err(error))) => error.into_response(),
        Ok(Err(_)) => AdminError::internal("the trainer stopped before answering").into_response(),
        Err(_) => AdminError::internal(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs())).into_response(),
    }
}

async fn rollback(State(admin): State<Admin>, headers: HeaderMap, Query(params): Params) -> Response {
    if let Err(denied) = authorize(&headers, &admin.token) {
        return denied.into_response();
    }
    match rollback_parameters(&params) {
        Ok((to, mode)) => ask(&admin, |reply| AdminRequest::Rollback { to, mode, reason: "admin", reply }).await,
        Err(error) => error.into_response(),
    }
}

async fn backup(State(admin): State<Admin>, headers: HeaderMap, Query(params): Params) -> Response {
    if let Err(denied) = authorize(&headers, &admin.token) {
        return denied.into_response();
    }
    let to = match parameters(&params, ["to"]) {
        Ok([Some(to)]) if !to.is_empty() => PathBuf::from(to),
        Ok(_) => return AdminError::bad("`to` is required: a directory that does not exist yet").into_response(),
        Err(error) => return error.into_response(),
    };
    ask(&admin, |reply| AdminRequest::Backup { to, reply }).await
}

async fn versions(State(admin): State<Admin>, headers: HeaderMap, Query(params): Params) -> Response {
    if let Err(denied) = authorize(&headers, &admin.token) {
        return denied.into_response();
    }
    if let Err(error) = parameters(&params, []) {
        return error.into_response();
    }
    ask(&admin, |reply| AdminRequest::Versions { reply }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn tokens_compare_equal_only_when_equal() {
        assert!(same_token(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_token(b"0123456789abcdeX", b"0123456789abcdef"));
        assert!(!same_token(b"0123456789abcde", b"0123456789abcdef"));
        assert!(!same_token(b"0123456789abcdef0", b"0123456789abcdef"));
        assert!(!same_token(b"", b"0123456789abcdef"));
        // A prefix padded with zero bytes is still another token.
        assert!(!same_token(b"abc\0", b"abc"));
    }

    #[test]
    fn missing_and_wrong_tokens_are_401_and_403() {
        let status = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(header::AUTHORIZATION, value.parse().expect("a header value"));
            }
            authorize(&headers, "0123456789abcdef").map_or_else(|d| d.into_response().status(), |()| StatusCode::OK)
        };
        assert_eq!(status(None), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("Basic 0123456789abcdef")), StatusCode::UNAUTHORIZED);
        assert_eq!(status(Some("Bearer nope")), StatusCode::FORBIDDEN);
        assert_eq!(status(Some("Bearer 0123456789abcdef")), StatusCode::OK);
    }

    #[test]
    fn rollback_parameters_are_checked_by_name() {
        assert_eq!(
            rollback_parameters(&params(&[("to_version", "7"), ("mode", "replay")])).expect("valid"),
            (Some(7), RollbackMode::Replay)
        );
        assert_eq!(rollback_parameters(&params(&[("mode", "skip")])).expect("valid"), (None, RollbackMode::Skip));
        let message = |pairs: &[(&str, &str)]| rollback_parameters(&params(pairs)).expect_err("invalid").message;
        assert!(message(&[("mode", "skip"), ("version", "3")]).contains("`version`"));
        assert!(message(&[("to_version", "x"), ("mode", "skip")]).contains("`to_version`"));
        assert!(message(&[("to_version", "3")]).contains("`mode` is required"));
        assert!(message(&[("mode", "undo")]).contains("skip or replay"));
        assert!(message(&[("mode", "skip"), ("mode", "skip")]).contains("more than once"));
    }
}
