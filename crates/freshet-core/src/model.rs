//! The model's shape, shared by the trainer, the checkpoint, snapshots and
//! their subscribers: everything a saved model and the configuration that
//! reads it must agree on.

use crate::ConfigError;
use serde::{Deserialize, Serialize};

/// Smallest supported embedding dimension.
pub const MIN_DIM: usize = 8;
/// Largest supported embedding dimension.
pub const MAX_DIM: usize = 256;
/// Largest number of shards a model may have ([`ModelSpec::shards`]).
pub const MAX_SHARDS: u32 = 1024;
/// The model's shape. Deserialised from the `[model]` table; unknown keys are
/// an error. A checkpoint restores only into a trainer with an equal spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSpec {
    /// Embedding dimension of users, items and context features.
    pub dim: usize,
    /// Lower end of the rating range; rating predictions are clipped to it.
    pub rating_min: f32,
    /// Upper end of the rating range.
    pub rating_max: f32,
    /// Whether context features get rows (a linear weight and a factor vector
    /// that interacts with the item). When false, events' features are ignored.
    pub context_features: bool,
    /// How many shards hold the model's rows (docs/scaling.md): fixed when
    /// the model is created, so a checkpoint or snapshot of another count
    /// is refused. 1: one trainer holds every row.
    pub shards: u32,
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec { dim: 32, rating_min: 0.5, rating_max: 5.0, context_features: true, shards: 1 }
    }
}

impl ModelSpec {
    /// Checks the spec, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(MIN_DIM..=MAX_DIM).contains(&self.dim) {
            return Err(ConfigError::new(
                "model.dim",
                format!("must be between {MIN_DIM} and {MAX_DIM}, got {}", self.dim),
            ));
        }
        if !self.rating_min.is_finite() {
            return Err(ConfigError::new("model.rating_min", "must be finite"));
        }
        if !self.rating_max.is_finite() || self.rating_max <= self.rating_min {
            return Err(ConfigError::new("model.rating_max", "must be finite and greater than rating_min"));
        }
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(ConfigError::new(
                "model.shards",
                format!("must be between 1 and {MAX_SHARDS}, got {}", self.shards),
            ));
        }
        Ok(())
    }

    /// Floats per row of `table`: its scalars, then `dim` factors.
    pub fn row_width(&self, table: TableKind) -> usize {
        table.scalars() + self.dim
    }
}

/// Which table a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// Users, keyed by `hash_id(user)`.
    User,
    /// Items, keyed by `hash_id(item)`; rows keep the item's id string.
    Item,
    /// Context features, keyed by `hash_feature(name, value)`.
    Feature,
}

impl TableKind {
    /// Every table, in index order.
    pub const ALL: [TableKind; 3] = [TableKind::User, TableKind::Item, TableKind::Feature];

    /// Position of the table in per-table arrays.
    pub const fn index(self) -> usize {
        match self {
            TableKind::User => 0,
            TableKind::Item => 1,
            TableKind::Feature => 2,
        }
    }

    /// The table's name as configuration, JSON and metrics write it.
    pub fn name(self) -> &'static str {
        match self {
            TableKind::User => "user",
            TableKind::Item => "item",
            TableKind::Feature => "feature",
        }
    }

    /// Floats before the factors in a row: the head biases, and in user rows
    /// the rating scale offset and the session offset (see [`crate::layout::RowLayout`]).
    pub const fn scalars(self) -> usize {
        match self {
            TableKind::User => Head::ALL.len() + 2,
            TableKind::Item | TableKind::Feature => Head::ALL.len(),
        }
    }

    /// Whether rows keep their original id string (items do, for serving).
    pub fn keeps_ids(self) -> bool {
        self == TableKind::Item
    }
}

/// A prediction head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Head {
    /// Explicit ratings: squared loss `½(s − y)²`; the prediction is `s`
    /// clipped to the rating range (the loss uses the unclipped score).
    Rating,
    /// Clicks: logistic loss on the logit `s`; the prediction is `σ(s)`.
    Click,
}

impl Head {
    /// Both heads, in index order.
    pub const ALL: [Head; 2] = [Head::Rating, Head::Click];

    /// Position of the head in per-head arrays.
    pub const fn index(self) -> usize {
        match self {
            Head::Rating => 0,
            Head::Click => 1,
        }
    }

    /// What the head answers for raw score `score`: a rating inside the
    /// spec's range, or a click probability.
    pub fn predict(self, score: f32, spec: &ModelSpec) -> f32 {
        match self {
            Head::Rating => score.clamp(spec.rating_min, spec.rating_max),
            Head::Click => sigmoid(score),
        }
    }
}

/// The logistic function.
pub fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(ModelSpec::default().check(), Ok(()));
    }

    #[test]
    fn errors_name_their_key() {
        let bad_dim = ModelSpec { dim: 4, ..ModelSpec::default() };
        assert_eq!(bad_dim.check().map_err(|e| e.key), Err("model.dim".to_owned()));
        let bad_range = ModelSpec { rating_max: 0.0, ..ModelSpec::default() };
        assert_eq!(bad_range.check().map_err(|e| e.key), Err("model.rating_max".to_owned()));
        for shards in [0, 1025] {
            let bad_shards = ModelSpec { shards, ..ModelSpec::default() };
            assert_eq!(bad_shards.check().map_err(|e| e.key), Err("model.shards".to_owned()), "{shards}");
        }
        assert_eq!(ModelSpec { shards: 1024, ..ModelSpec::default() }.check(), Ok(()));
    }

    #[test]
    fn table_names_are_their_serde_names() {
        for table in TableKind::ALL {
            assert_eq!(serde_json::to_value(table).ok(), Some(serde_json::Value::from(table.name())));
        }
    }

    #[test]
    fn rating_prediction_is_clipped() {
        let spec = ModelSpec::default();
        assert_eq!(Head::Rating.predict(7.0, &spec), spec.rating_max);
        assert_eq!(Head::Rating.predict(-1.0, &spec), spec.rating_min);
    }
}
