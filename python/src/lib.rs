//! `freshet._native`: the Rust half of the `freshet` Python package. A
//! [`Subscriber`] follows a model's snapshot chain on a background thread
//! (the same `freshet-subscriber` code `freshet serve` runs) and scores in
//! process with the trainer's own scoring function, the GIL released; the
//! id hash, event encoding and validation are `freshet-core`'s. Errors are
//! Python exceptions carrying the Rust message.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use freshet_core::snapshot::default_snapshot_topic;
use freshet_core::{ContentType, Decoder, Features, Head, ScoreContext, ValidationConfig};
use freshet_kafka::KafkaConfig;
use freshet_subscriber::{DEFAULT_CANDIDATES, ServingModel, Subscriber as Following, SubscriberConfig};
use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// How long `close()` waits for the subscriber thread.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn value_error(message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(message.to_string())
}

fn head_named(name: &str) -> PyResult<Head> {
    match name {
        "rating" => Ok(Head::Rating),
        "click" => Ok(Head::Click),
        other => Err(value_error(format!("head must be \"rating\" or \"click\", got {other:?}"))),
    }
}

/// Follows one model's snapshot topic and serves its newest version.
#[pyclass(module = "freshet._native", name = "Subscriber")]
struct Subscriber {
    following: Option<Following>,
    validation: ValidationConfig,
}

impl Subscriber {
    fn served(&self) -> PyResult<std::sync::Arc<ServingModel>> {
        let following = self.following.as_ref().ok_or_else(|| PyRuntimeError::new_err("the subscriber is closed"))?;
        following.model().ok_or_else(|| PyRuntimeError::new_err("no model version is served yet"))
    }

    /// Checked features (the rules `freshet serve` applies to a request).
    fn features(&self, features: Option<BTreeMap<String, String>>) -> PyResult<Features> {
        let features: Features = features.unwrap_or_default();
        self.validation.check_features(&features).map_err(|rejection| value_error(format!("features: {rejection}")))?;
        Ok(features)
    }
}

#[pymethods]
impl Subscriber {
    #[new]
    #[pyo3(signature = (bootstrap, model, kafka=None, topic=None, top_k_candidates=DEFAULT_CANDIDATES))]
    fn new(
        bootstrap: &str,
        model: &str,
        kafka: Option<BTreeMap<String, String>>,
        topic: Option<String>,
        top_k_candidates: usize,
    ) -> PyResult<Self> {
        let mut connection = KafkaConfig::new(bootstrap);
        connection.settings = kafka.unwrap_or_default();
        connection.check().map_err(value_error)?;
        if top_k_candidates == 0 {
            return Err(value_error("top_k_candidates must be at least 1"));
        }
        let mut config = SubscriberConfig::new(connection, topic.unwrap_or_else(|| default_snapshot_topic(model)));
        config.top_k_candidates = top_k_candidates;
        let following =
            Following::start(&config, |_| {}).map_err(|error| PyRuntimeError::new_err(error.to_string()))?;
        Ok(Subscriber { following: Some(following), validation: ValidationConfig::default() })
    }

    /// The version served now, or None before the first full snapshot.
    #[getter]
    fn version(&self) -> Option<u64> {
        self.following.as_ref()?.model().map(|model| model.version())
    }

    /// The served version's description (`freshet serve`'s `/version`
    /// `info`) as a dict, or None before the first full snapshot.
    fn info(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let Some(model) = self.following.as_ref().and_then(Following::model) else { return Ok(None) };
        let text = serde_json::to_string(model.info()).map_err(|error| PyRuntimeError::new_err(error.to_string()))?;
        let json = py.import("json")?;
        Ok(Some(json.call_method1("loads", (text,))?.unbind()))
    }

    /// The subscriber's counters as a dict.
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let following = self.following.as_ref().ok_or_else(|| PyRuntimeError::new_err("the subscriber is closed"))?;
        let text =
            serde_json::to_string(&following.stats()).map_err(|error| PyRuntimeError::new_err(error.to_string()))?;
        Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
    }

    /// Waits until version `version` or a newer one is served; returns the
    /// version served, or raises TimeoutError after `timeout` seconds.
    #[pyo3(signature = (version, timeout))]
    fn wait_for_version(&self, py: Python<'_>, version: u64, timeout: f64) -> PyResult<u64> {
        if !(timeout.is_finite() && timeout >= 0.0) {
            return Err(value_error(format!("timeout must be a non-negative number of seconds, got {timeout}")));
        }
        let deadline = Instant::now() + Duration::from_secs_f64(timeout);
        loop {
            let served = self.version();
            if let Some(served) = served.filter(|served| *served >= version) {
                return Ok(served);
            }
            if Instant::now() >= deadline {
                return Err(PyTimeoutError::new_err(format!(
                    "version {version} not served within {timeout} s (serving {served:?})"
                )));
            }
            py.check_signals()?;
            py.detach(|| std::thread::sleep(Duration::from_millis(20)));
        }
    }

    /// The head's prediction for `user` and `item`, as `freshet serve`'s
    /// `/score` computes it (`ts`: the request's time in ms, default now).
    #[pyo3(signature = (user, item, features=None, head="rating", ts=None))]
    fn score(
        &self,
        py: Python<'_>,
        user: &str,
        item: &str,
        features: Option<BTreeMap<String, String>>,
        head: &str,
        ts: Option<i64>,
    ) -> PyResult<f32> {
        let (head, features, model) = (head_named(head)?, self.features(features)?, self.served()?);
        let at = ts.unwrap_or_else(freshet_core::now_ms);
        Ok(py.detach(|| model.score(head, user, item, &ScoreContext::new(&features).at(at))))
    }

    /// One score per item of `items`, in order, as a float32 numpy array
    /// (`POST /rank`).
    #[pyo3(signature = (user, items, features=None, head="rating", ts=None))]
    fn rank<'py>(
        &self,
        py: Python<'py>,
        user: &str,
        items: Vec<String>,
        features: Option<BTreeMap<String, String>>,
        head: &str,
        ts: Option<i64>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let (head, features, model) = (head_named(head)?, self.features(features)?, self.served()?);
        let at = ts.unwrap_or_else(freshet_core::now_ms);
        let scores = py.detach(|| model.rank(head, user, &items, &ScoreContext::new(&features).at(at)));
        Ok(scores.into_pyarray(py))
    }

    /// The `k` best items for `user`, best first, as `(item, score)` pairs
    /// (`/recommend`); `exclude` items are left out.
    #[pyo3(signature = (user, k, features=None, exclude=Vec::new(), head="rating", ts=None))]
    #[allow(clippy::too_many_arguments)]
    fn top_k(
        &self,
        py: Python<'_>,
        user: &str,
        k: usize,
        features: Option<BTreeMap<String, String>>,
        exclude: Vec<String>,
        head: &str,
        ts: Option<i64>,
    ) -> PyResult<Vec<(String, f32)>> {
        let (head, features, model) = (head_named(head)?, self.features(features)?, self.served()?);
        let at = ts.unwrap_or_else(freshet_core::now_ms);
        let exclude: HashSet<String> = exclude.into_iter().collect();
        let best = py.detach(|| model.top_k(head, user, k, &ScoreContext::new(&features).at(at), &exclude));
        Ok(best.into_iter().map(|recommendation| (recommendation.item, recommendation.score)).collect())
    }

    /// Stops following (waiting at most a few seconds); scoring afterwards
    /// raises RuntimeError.
    fn close(&mut self, py: Python<'_>) {
        if let Some(following) = self.following.take() {
            py.detach(|| following.stop(CLOSE_TIMEOUT));
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&mut self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) {
        self.close(py);
    }
}

/// The 64-bit key of a user or item id (XXH3-64, docs/id-hash.md).
#[pyfunction]
fn hash_id(id: &str) -> u64 {
    freshet_core::hash_id(id)
}

/// The 64-bit key of the context feature `name=value`.
#[pyfunction]
fn hash_feature(name: &str, value: &str) -> u64 {
    freshet_core::hash_feature(name, value)
}

fn content_type(format: &str) -> PyResult<ContentType> {
    match format {
        "json" => Ok(ContentType::Json),
        "bincode" => Ok(ContentType::Bincode),
        other => Err(value_error(format!("format must be \"json\" or \"bincode\", got {other:?}"))),
    }
}

fn validation(rating_min: Option<f32>, rating_max: Option<f32>) -> ValidationConfig {
    let defaults = ValidationConfig::default();
    ValidationConfig {
        rating_min: rating_min.unwrap_or(defaults.rating_min),
        rating_max: rating_max.unwrap_or(defaults.rating_max),
        ..defaults
    }
}

/// Validates a JSON event (bytes of the documented schema) and encodes it
/// in `format`; raises ValueError naming the reason when it is invalid.
/// Returns the payload and the value of its `content-type` header.
#[pyfunction]
#[pyo3(signature = (json, format="json", rating_min=None, rating_max=None))]
fn encode_json_event<'py>(
    py: Python<'py>,
    json: &[u8],
    format: &str,
    rating_min: Option<f32>,
    rating_max: Option<f32>,
) -> PyResult<(Bound<'py, PyBytes>, &'static str)> {
    let format = content_type(format)?;
    let decoder = Decoder::new(validation(rating_min, rating_max));
    let event = decoder
        .decode(json, None, freshet_core::now_ms())
        .map_err(|rejection| value_error(format!("{}: {rejection}", rejection.reason().as_str())))?;
    Ok((PyBytes::new(py, &freshet_core::encode(&event, format)), format.mime()))
}

/// The reason code a consumer gives `payload` (with `content_type`, the
/// header's value; None means JSON) when it rejects it, as the dead-letter
/// topic's `reason` header names it; None for a valid event. The message
/// comes second.
#[pyfunction]
#[pyo3(signature = (payload, content_type=None, rating_min=None, rating_max=None))]
fn rejection(
    payload: &[u8],
    content_type: Option<&str>,
    rating_min: Option<f32>,
    rating_max: Option<f32>,
) -> Option<(&'static str, String)> {
    let decoder = Decoder::new(validation(rating_min, rating_max));
    let rejected = decoder.decode(payload, content_type.map(str::as_bytes), freshet_core::now_ms()).err()?;
    Some((rejected.reason().as_str(), rejected.to_string()))
}

/// The native module.
#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Subscriber>()?;
    module.add_function(wrap_pyfunction!(hash_id, module)?)?;
    module.add_function(wrap_pyfunction!(hash_feature, module)?)?;
    module.add_function(wrap_pyfunction!(encode_json_event, module)?)?;
    module.add_function(wrap_pyfunction!(rejection, module)?)?;
    module.add("DEFAULT_CANDIDATES", DEFAULT_CANDIDATES)?;
    Ok(())
}
