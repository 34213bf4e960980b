//! The model's shape: everything a checkpoint and the configuration that
//! restores it must agree on.

use freshet_core::ConfigError;
use serde::{Deserialize, Serialize};

use crate::heads::Head;

/// Smallest supported embedding dimension.
pub const MIN_DIM: usize = 8;
/// Largest supported embedding dimension.
pub const MAX_DIM: usize = 256;

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
}

impl Default for ModelSpec {
    fn default() -> Self {
        ModelSpec { dim: 32, rating_min: 0.5, rating_max: 5.0, context_features: true }
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
        Ok(())
    }

    /// Floats per row: one bias per head (rating, click), then `dim` factors.
    pub fn row_width(&self) -> usize {
        Head::ALL.len() + self.dim
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
    }
}
