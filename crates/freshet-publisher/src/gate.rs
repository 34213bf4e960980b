//! The quality gate: hold a publish while the windowed progressive metrics are
//! worse than at the last published version by more than a margin.

use freshet_core::ConfigError;
use freshet_core::snapshot::SnapshotMetrics;
use serde::{Deserialize, Serialize};

/// `[publisher.quality_gate]`: margins by which each windowed metric may be
/// worse than at the last published version. An unset margin does not gate.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QualityGate {
    /// Largest allowed rise of the rating head's windowed RMSE.
    pub max_rmse_increase: Option<f64>,
    /// Largest allowed rise of the click head's windowed log loss.
    pub max_logloss_increase: Option<f64>,
    /// Once a publish has been held this long (ms), the trainer rolls back
    /// (skip mode) to the last published version and trains on what
    /// follows; the events since that version are skipped, not trained.
    /// Off (`None`) by default.
    pub rollback_after_ms: Option<u64>,
}

/// Why a publish is held.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hold {
    /// The metric that degraded (`rating_rmse` or `click_logloss`).
    pub metric: &'static str,
    /// Its value at the last published version.
    pub published: f64,
    /// Its value now.
    pub current: f64,
}

impl QualityGate {
    /// Checks the margins, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (key, margin) in [
            ("publisher.quality_gate.max_rmse_increase", self.max_rmse_increase),
            ("publisher.quality_gate.max_logloss_increase", self.max_logloss_increase),
        ] {
            if margin.is_some_and(|m| !(m.is_finite() && m >= 0.0)) {
                return Err(ConfigError::new(key, "must be a finite number ≥ 0"));
            }
        }
        if self.rollback_after_ms == Some(0) {
            return Err(ConfigError::new("publisher.quality_gate.rollback_after_ms", "must be positive (or unset)"));
        }
        Ok(())
    }

    /// `Some` when `current` is worse than `published` by more than a margin.
    /// Metrics one side lacks (a head without events) are not compared.
    pub fn judge(&self, published: &SnapshotMetrics, current: &SnapshotMetrics) -> Option<Hold> {
        let checks = [
            ("rating_rmse", self.max_rmse_increase, published.rating_rmse, current.rating_rmse),
            ("click_logloss", self.max_logloss_increase, published.click_logloss, current.click_logloss),
        ];
        checks.into_iter().find_map(|(metric, margin, published, current)| match (margin, published, current) {
            (Some(margin), Some(published), Some(current)) if current > published + margin => {
                Some(Hold { metric, published, current })
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(rmse: Option<f64>, logloss: Option<f64>) -> SnapshotMetrics {
        SnapshotMetrics { rating_rmse: rmse, click_logloss: logloss, ..SnapshotMetrics::default() }
    }

    #[test]
    fn holds_only_past_the_margin() {
        let gate =
            QualityGate { max_rmse_increase: Some(0.1), max_logloss_increase: Some(0.05), rollback_after_ms: None };
        let published = metrics(Some(0.9), Some(0.4));
        assert_eq!(gate.judge(&published, &metrics(Some(1.0), Some(0.45))), None);
        let hold = gate.judge(&published, &metrics(Some(1.01), Some(0.4))).expect("rmse degraded");
        assert_eq!(hold.metric, "rating_rmse");
        assert_eq!(gate.judge(&published, &metrics(None, Some(0.46))).map(|h| h.metric), Some("click_logloss"));
    }

    #[test]
    fn without_margins_or_metrics_nothing_is_held() {
        let worse = metrics(Some(9.0), Some(9.0));
        assert_eq!(QualityGate::default().judge(&metrics(Some(0.1), Some(0.1)), &worse), None);
        let gate =
            QualityGate { max_rmse_increase: Some(0.0), max_logloss_increase: Some(0.0), rollback_after_ms: None };
        assert_eq!(gate.judge(&metrics(None, None), &worse), None);
    }

    #[test]
    fn negative_margins_are_refused_by_key() {
        let gate = QualityGate { max_rmse_increase: Some(-1.0), ..QualityGate::default() };
        assert_eq!(gate.check().map_err(|e| e.key), Err("publisher.quality_gate.max_rmse_increase".to_owned()));
    }
}
