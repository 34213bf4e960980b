//! What the live page charts: every second, the values of the metric
//! families it shows, under the keys `/metrics` prints them with, for the
//! last ten minutes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::proto::{MetricFamily, MetricType};
use serde_json::{Value, json};

/// How often a sample is taken.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: ten minutes.
pub const KEPT: usize = 600;

/// The metric families of `freshet run` the page shows.
pub const WATCHED: &[&str] = &[
    "freshet_events_applied",
    "freshet_events_skipped",
    "freshet_events_rejected_total",
    "freshet_progressive_metric",
    "freshet_checkpoint_version",
    "freshet_snapshot_version",
    "freshet_snapshot_freshness_ms",
    "freshet_rows",
    "freshet_snapshot_holds_total",
    "freshet_rollbacks_total",
    "freshet_consumer_lag",
];

/// One sample: when, and a value per series key.
struct Sample {
    t_ms: i64,
    values: Vec<(String, f64)>,
}

/// The newest [`KEPT`] samples; cheap to clone, shared by the sampler and
/// the endpoint.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Sample>>>);

impl History {
    /// Adds a sample taken at `t_ms`, dropping the oldest beyond [`KEPT`].
    pub fn record(&self, t_ms: i64, values: Vec<(String, f64)>) {
        let mut samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(Sample { t_ms, values });
    }

    /// The samples taken after `since_ms`, as columns:
    /// `{"t": [ms…], "series": {key: [value or null…]}}`.
    pub fn columns(&self, since_ms: i64) -> Value {
        let samples = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let newer: Vec<&Sample> = samples.iter().filter(|s| s.t_ms > since_ms).collect();
        let mut series: BTreeMap<&str, Vec<Option<f64>>> = BTreeMap::new();
        for (at, sample) in newer.iter().enumerate() {
            for (key, value) in &sample.values {
                let column = series.entry(key).or_insert_with(|| vec![None; newer.len()]);
                column[at] = value.is_finite().then_some(*value);
            }
        }
        let t: Vec<i64> = newer.iter().map(|s| s.t_ms).collect();
        json!({"t": t, "series": series})
    }
}

/// The gauges and counters of `families` named in `watched`, keyed as the
/// text exposition format prints them (`name{label="value",…}`).
pub fn flatten(families: &[MetricFamily], watched: &[&str]) -> Vec<(String, f64)> {
    let mut values = Vec::new();
    for family in families.iter().filter(|f| watched.contains(&f.name())) {
        for metric in family.get_metric() {
            let value = match family.get_field_type() {
                MetricType::GAUGE => metric.get_gauge().get_value(),
                MetricType::COUNTER => metric.get_counter().get_value(),
                _ => continue,
            };
            let labels: Vec<String> =
                metric.get_label().iter().map(|pair| format!("{}=\"{}\"", pair.name(), escape(pair.value()))).collect();
            let key = if labels.is_empty() {
                family.name().to_owned()
            } else {
                format!("{}{{{}}}", family.name(), labels.join(","))
            };
            values.push((key, value));
        }
    }
    values
}

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

    use super::*;

    #[test]
    fn keys_are_the_lines_of_the_text_format() {
        let registry = Registry::new();
        let gauge = IntGauge::new("freshet_rows_total_x", "x").expect("gauge");
        let counter =
            IntCounterVec::new(Opts::new("freshet_events_rejected_total", "y"), &["reason", "a"]).expect("counter");
        registry.register(Box::new(gauge.clone())).expect("register");
        registry.register(Box::new(counter.clone())).expect("register");
        gauge.set(7);
        counter.with_label_values(&["bad \"json\"", "z"]).inc_by(3);
        let families = registry.gather();
        let values = flatten(&families, &["freshet_rows_total_x", "freshet_events_rejected_total"]);
        let text = TextEncoder::new().encode_to_string(&families).expect("text");
        assert_eq!(values.len(), 2);
        for (key, value) in &values {
            assert!(text.lines().any(|line| line == format!("{key} {value}")), "{key} {value} not in\n{text}");
        }
        assert!(flatten(&families, &["freshet_rows_total_x"]).iter().all(|(key, _)| key == "freshet_rows_total_x"));
    }

    #[test]
    fn columns_hold_what_was_sampled_after_a_time_and_no_more_than_kept() {
        let history = History::default();
        history.record(1_000, vec![("a".into(), 1.0)]);
        history.record(2_000, vec![("a".into(), 2.0), ("b".into(), f64::NAN)]);
        history.record(3_000, vec![("b".into(), 5.0)]);
        assert_eq!(
            history.columns(1_000),
            json!({"t": [2_000, 3_000], "series": {"a": [2.0, null], "b": [null, 5.0]}})
        );
        assert_eq!(history.columns(3_000), json!({"t": [], "series": {}}));
        for t in 0..(KEPT as i64 + 10) {
            history.record(10_000 + t, vec![("a".into(), t as f64)]);
        }
        let columns = history.columns(0);
        assert_eq!(columns["t"].as_array().map(Vec::len), Some(KEPT));
        assert_eq!(columns["series"]["a"][0], json!(10.0));
    }
}
