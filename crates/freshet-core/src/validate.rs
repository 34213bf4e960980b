//! Validation rules shared by every wire format.

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::event::{Features, Feedback};
use crate::id_hash::FEATURE_SEPARATOR;
use crate::keyed::Target;
use crate::model::ModelSpec;
use crate::reject::Rejection;

/// Limits a feedback event must respect. Deserialised from the `[validation]`
/// table of the configuration; unknown keys are an error. The accepted
/// rating range is not configured here: it is the model's
/// ([`ValidationConfig::for_model`]), so the two cannot disagree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationConfig {
    /// Largest accepted payload, in bytes.
    pub max_message_bytes: usize,
    /// Longest accepted user/item id (and feature name or value), in bytes.
    pub max_id_bytes: usize,
    /// Smallest accepted rating: the model's `rating_min`.
    #[serde(skip)]
    pub rating_min: f32,
    /// Largest accepted rating: the model's `rating_max`.
    #[serde(skip)]
    pub rating_max: f32,
    /// How far past the consumer's clock an event time may lie, in ms.
    pub max_future_skew_ms: i64,
    /// How old an event may be, in ms; `None` accepts any age (replays).
    pub max_age_ms: Option<i64>,
    /// Most context features per event.
    pub max_features: usize,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_message_bytes: 64 * 1024,
            max_id_bytes: 256,
            rating_min: ModelSpec::default().rating_min,
            rating_max: ModelSpec::default().rating_max,
            max_future_skew_ms: 10 * 60 * 1000,
            max_age_ms: None,
            max_features: 32,
        }
    }
}

impl ValidationConfig {
    /// These limits with `spec`'s rating range.
    pub fn for_model(self, spec: &ModelSpec) -> Self {
        ValidationConfig { rating_min: spec.rating_min, rating_max: spec.rating_max, ..self }
    }

    /// Checks the limits themselves, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.max_message_bytes == 0 {
            return Err(ConfigError::new("validation.max_message_bytes", "must be positive"));
        }
        if self.max_id_bytes == 0 {
            return Err(ConfigError::new("validation.max_id_bytes", "must be positive"));
        }
        if self.max_future_skew_ms < 0 {
            return Err(ConfigError::new("validation.max_future_skew_ms", "must not be negative"));
        }
        if self.max_age_ms.is_some_and(|age| age <= 0) {
            return Err(ConfigError::new("validation.max_age_ms", "must be positive when set"));
        }
        Ok(())
    }

    /// Applies every content rule to a decoded event, its time inside the
    /// window around `now_ms` (the reader's clock).
    pub fn validate(&self, event: &Feedback, now_ms: i64) -> Result<(), Rejection> {
        self.validate_at(event, Some(now_ms))
    }

    /// [`ValidationConfig::validate`] without the time window, for an event
    /// another shard forwarded: it read the event and judged its time then,
    /// against its own clock; judging it again here, later, would refuse an
    /// event that shard accepted (say after an outage longer than
    /// `max_age_ms`), which would then be in neither shard's model.
    pub fn validate_forwarded(&self, event: &Feedback) -> Result<(), Rejection> {
        self.validate_at(event, None)
    }

    fn validate_at(&self, event: &Feedback, now_ms: Option<i64>) -> Result<(), Rejection> {
        match event {
            Feedback::Click(c) => {
                self.check_event(Target::Click(c.clicked), &c.user, &c.item, c.ts, pairs(&c.features), now_ms)
            }
            Feedback::Rating(r) => {
                self.check_event(Target::Rating(r.rating), &r.user, &r.item, r.ts, pairs(&r.features), now_ms)
            }
            Feedback::Forget(f) => self.check_event(Target::Forget, &f.user, "", f.ts, std::iter::empty(), now_ms),
        }
    }

    /// The rules for an event given by its parts (`item` and `features`
    /// unread for a forget), in the order a rejection names the first
    /// broken one: the ids, the rating, the features, the time (against
    /// `now_ms`'s window; any positive time when `None`).
    pub(crate) fn check_event<'p>(
        &self,
        target: Target,
        user: &str,
        item: &str,
        ts: i64,
        features: impl ExactSizeIterator<Item = (&'p str, &'p str)>,
        now_ms: Option<i64>,
    ) -> Result<(), Rejection> {
        self.check_id("user", user)?;
        match target {
            Target::Forget => {}
            Target::Click(_) | Target::Rating(_) => {
                self.check_id("item", item)?;
                if let Target::Rating(rating) = target {
                    self.check_rating(f64::from(rating))?;
                }
                self.check_feature_pairs(features)?;
            }
        }
        self.check_ts(ts, now_ms)
    }

    /// Checks an id field: present, not empty, not too long.
    pub fn check_id(&self, field: &'static str, id: &str) -> Result<(), Rejection> {
        if id.is_empty() {
            return Err(Rejection::MissingId { field });
        }
        if id.len() > self.max_id_bytes {
            return Err(Rejection::IdTooLong { field, len: id.len(), limit: self.max_id_bytes });
        }
        Ok(())
    }

    /// Checks a rating value: finite and inside the configured range.
    pub(crate) fn check_rating(&self, value: f64) -> Result<(), Rejection> {
        if !value.is_finite() {
            return Err(Rejection::NonFinite { field: "rating" });
        }
        if value < f64::from(self.rating_min) || value > f64::from(self.rating_max) {
            return Err(Rejection::RatingOutOfRange { value, min: self.rating_min, max: self.rating_max });
        }
        Ok(())
    }

    /// The event time against the window around `now_ms`; without a clock
    /// only that it is positive.
    fn check_ts(&self, ts: i64, now_ms: Option<i64>) -> Result<(), Rejection> {
        let (earliest, latest) = match now_ms {
            Some(now_ms) => (
                self.max_age_ms.map_or(1, |age| now_ms.saturating_sub(age).max(1)),
                now_ms.saturating_add(self.max_future_skew_ms),
            ),
            None => (1, i64::MAX),
        };
        if ts < earliest || ts > latest {
            return Err(Rejection::TimestampOutOfRange { ts, earliest, latest });
        }
        Ok(())
    }

    /// Checks context features: how many, and each name and value (serving
    /// applies the same rules to a request's features).
    pub fn check_features(&self, features: &Features) -> Result<(), Rejection> {
        self.check_feature_pairs(pairs(features))
    }

    /// [`Self::check_features`] of `(name, value)` pairs, one per name.
    pub(crate) fn check_feature_pairs<'p>(
        &self,
        features: impl ExactSizeIterator<Item = (&'p str, &'p str)>,
    ) -> Result<(), Rejection> {
        if features.len() > self.max_features {
            return Err(Rejection::TooManyFeatures { count: features.len(), limit: self.max_features });
        }
        for (name, value) in features {
            let problem = if name.is_empty() {
                Some("empty name")
            } else if name.contains(FEATURE_SEPARATOR) {
                Some("name contains '='")
            } else if value.is_empty() {
                Some("empty value")
            } else if name.len() > self.max_id_bytes || value.len() > self.max_id_bytes {
                Some("name or value over the id length limit")
            } else {
                None
            };
            if let Some(problem) = problem {
                let name = name.chars().take(64).collect();
                return Err(Rejection::InvalidFeature { name, problem });
            }
        }
        Ok(())
    }
}

fn pairs(features: &Features) -> impl ExactSizeIterator<Item = (&str, &str)> {
    features.iter().map(|(name, value)| (name.as_str(), value.as_str()))
}
