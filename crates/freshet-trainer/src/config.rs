//! How the trainer learns: optimizer, regularisation, admission, expiry,
//! metrics and the adaptive learning rate. Unlike the [`freshet_core::ModelSpec`],
//! all of it may change between a checkpoint and the run that restores it.

use freshet_core::ConfigError;
use freshet_core::record::{RecordError, RecordReader};
use serde::{Deserialize, Serialize};

/// The update rule applied to each touched row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Adam with bias correction from each row's own step count.
    Adam,
    /// Plain stochastic gradient descent.
    Sgd,
    /// AdaGrad: steps scaled by the root of each parameter's summed squared gradients.
    Adagrad,
}

impl Algorithm {
    /// The byte a record stores for it.
    pub(crate) fn record_tag(self) -> u8 {
        match self {
            Algorithm::Adam => 0,
            Algorithm::Sgd => 1,
            Algorithm::Adagrad => 2,
        }
    }

    /// The algorithm a record's byte names.
    pub(crate) fn from_record_tag(r: &mut RecordReader<'_>) -> Result<Self, RecordError> {
        match r.u8()? {
            0 => Ok(Algorithm::Adam),
            1 => Ok(Algorithm::Sgd),
            2 => Ok(Algorithm::Adagrad),
            other => Err(r.error(format!("algorithm {other}"))),
        }
    }

    /// How many f32 moment slots per parameter the algorithm keeps
    /// (Adam: first and second; AdaGrad: second only; SGD: none).
    pub fn moments(self) -> usize {
        match self {
            Algorithm::Adam => 2,
            Algorithm::Adagrad => 1,
            Algorithm::Sgd => 0,
        }
    }
}

/// Trainer settings. Deserialised from the `[trainer]` table; unknown keys are
/// an error. The defaults are the ones `freshet eval` uses without flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Update rule of factor vectors.
    pub algorithm: Algorithm,
    /// Update rule of biases: per-row biases, feature weights and the global
    /// bias of each head. Under SGD (either rule) a step's rate is at most
    /// 1/events: a gradient summed over a burst never steps past its mean.
    pub bias_algorithm: Algorithm,
    /// Learning rate of factor vectors.
    pub learning_rate: f32,
    /// Learning rate of biases (the floor of their rate when `bias_prior_count` is set).
    pub bias_learning_rate: f32,
    /// When set, a bias's rate is `max(bias_learning_rate, 1/(n + bias_prior_count))`,
    /// `n` counting the events that reached it: young rows follow the running
    /// mean of their residuals, shrunk towards 0 by this many pseudo-events.
    pub bias_prior_count: Option<f32>,
    /// When set to `k`, a row's factor rate is `learning_rate·(1 + k/(n + k))`,
    /// `n` counting the events that reached it: twice the rate on a row's
    /// first event, back to `learning_rate` as it matures. A young row's
    /// preference is the least known, so its first steps move it further.
    pub factor_boost_count: Option<f32>,
    /// Learning rate of each user's rating scale offset `c` (the rating head
    /// weighs an item's bias by `1 + c`); 0 keeps every scale at 1. The
    /// offset follows the bias update rule.
    pub scale_learning_rate: f32,
    /// Learning rate of each user's session offset, a rating bias of the
    /// user's current sitting; 0 keeps it at 0. It follows the bias update
    /// rule on the mean of a step's gradients: a micro-batch holding several
    /// of the user's events is one look at the sitting's level.
    pub session_learning_rate: f32,
    /// A user's rating more than this long (event time, ms) after their
    /// previous event begins a new session: the session offset restarts at 0.
    pub session_gap_ms: i64,
    /// Adam's first-moment decay. The default 0 (no momentum) steps each row
    /// along its newest summed gradient, normalised by its running RMS:
    /// momentum hurt on sparse, noisy feedback streams in our measurements.
    /// At 0 rows keep no first-moment slot (a third less memory per row).
    pub beta1: f32,
    /// Adam's second-moment decay. The default 0.99 normalises each row's
    /// step by the RMS of its last hundred or so gradients, so a row whose
    /// error shrinks takes smaller steps soon.
    pub beta2: f32,
    /// Added to the root of the second moment (Adam, AdaGrad). The default
    /// 0.01 is a floor on the gradient scale a step is normalised by: a row
    /// whose gradients are tiny (a young row facing near-zero factors) moves
    /// in proportion to them instead of by a full learning rate.
    pub epsilon: f32,
    /// L2 penalty on factors, applied once per event that touches the row.
    pub l2: f32,
    /// L2 penalty on row biases and feature weights (global biases are not
    /// penalised): shrinks them a little towards 0, which pays off where the
    /// biases drift and their running estimates are noisy.
    pub bias_l2: f32,
    /// Largest L2 norm of one row's summed gradient in a step; `None` disables clipping.
    pub clip_norm: Option<f32>,
    /// Initial factors are uniform with this standard deviation (biases start at 0).
    pub init_std: f32,
    /// Seed of the initial factors; a row's initial values depend only on it, its table and its key.
    pub seed: u64,
    /// Sightings an id needs before it gets a row (1 admits at first sight).
    pub min_count: u32,
    /// Most not-yet-admitted ids counted per table; when full, the least
    /// recently seen half is forgotten.
    pub max_pending: usize,
    /// Rows not updated for this long (event time, ms) are removed; `None` keeps them.
    pub ttl_ms: Option<i64>,
    /// Most rows per table; past it the least recently updated rows are evicted
    /// at the end of a batch, down to 15/16 of the budget. `None` is unbounded.
    pub max_rows: Option<usize>,
    /// Events per head in the sliding window of the progressive metrics.
    pub metric_window: usize,
    /// Reduce-on-plateau learning-rate schedule.
    pub lr_schedule: LrScheduleConfig,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            algorithm: Algorithm::Adam,
            bias_algorithm: Algorithm::Sgd,
            learning_rate: 0.015,
            bias_learning_rate: 0.03,
            bias_prior_count: Some(5.0),
            factor_boost_count: Some(5.0),
            scale_learning_rate: 0.1,
            session_learning_rate: 0.03,
            session_gap_ms: 3_600_000,
            beta1: 0.0,
            beta2: 0.99,
            epsilon: 1e-2,
            l2: 1e-4,
            bias_l2: 0.05,
            clip_norm: Some(10.0),
            init_std: 0.01,
            seed: 0x0066_7265_7368_6574,
            min_count: 1,
            max_pending: 1 << 20,
            ttl_ms: None,
            max_rows: None,
            metric_window: 10_000,
            lr_schedule: LrScheduleConfig::default(),
        }
    }
}

/// Reduce-on-plateau: every `check_every` events the windowed progressive loss
/// (rating MSE plus click log loss, over the heads that saw events) is
/// compared with the best so far; after `patience` checks without a relative
/// improvement of `threshold`, both learning rates are multiplied by `factor`,
/// never below `min_scale` times their configured value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrScheduleConfig {
    /// Whether the schedule runs at all.
    pub enabled: bool,
    /// Events between two checks.
    pub check_every: u64,
    /// Checks without improvement before a reduction.
    pub patience: u32,
    /// Multiplier applied at each reduction, in (0, 1).
    pub factor: f32,
    /// Floor of the learning-rate multiplier, in (0, 1].
    pub min_scale: f32,
    /// Relative loss decrease that counts as an improvement.
    pub threshold: f64,
}

impl Default for LrScheduleConfig {
    fn default() -> Self {
        LrScheduleConfig {
            enabled: false,
            check_every: 10_000,
            patience: 3,
            factor: 0.5,
            min_scale: 0.05,
            threshold: 1e-3,
        }
    }
}

impl TrainerConfig {
    /// Checks every setting, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        positive_finite("trainer.learning_rate", self.learning_rate)?;
        positive_finite("trainer.bias_learning_rate", self.bias_learning_rate)?;
        if let Some(prior) = self.bias_prior_count {
            positive_finite("trainer.bias_prior_count", prior)?;
        }
        if let Some(boost) = self.factor_boost_count {
            positive_finite("trainer.factor_boost_count", boost)?;
        }
        non_negative_finite("trainer.scale_learning_rate", self.scale_learning_rate)?;
        non_negative_finite("trainer.session_learning_rate", self.session_learning_rate)?;
        if self.session_gap_ms <= 0 {
            return Err(ConfigError::new("trainer.session_gap_ms", "must be positive"));
        }
        unit_open("trainer.beta1", self.beta1, true)?;
        unit_open("trainer.beta2", self.beta2, false)?;
        positive_finite("trainer.epsilon", self.epsilon)?;
        non_negative_finite("trainer.l2", self.l2)?;
        non_negative_finite("trainer.bias_l2", self.bias_l2)?;
        if let Some(clip) = self.clip_norm {
            positive_finite("trainer.clip_norm", clip)?;
        }
        non_negative_finite("trainer.init_std", self.init_std)?;
        if self.min_count == 0 {
            return Err(ConfigError::new("trainer.min_count", "must be at least 1"));
        }
        if self.max_pending < 2 {
            return Err(ConfigError::new("trainer.max_pending", "must be at least 2"));
        }
        if self.ttl_ms.is_some_and(|ttl| ttl <= 0) {
            return Err(ConfigError::new("trainer.ttl_ms", "must be positive when set"));
        }
        if self.max_rows.is_some_and(|rows| rows < 16) {
            return Err(ConfigError::new("trainer.max_rows", "must be at least 16 when set"));
        }
        if self.metric_window == 0 {
            return Err(ConfigError::new("trainer.metric_window", "must be positive"));
        }
        self.lr_schedule.check()
    }
}

impl LrScheduleConfig {
    /// Checks the schedule, naming the offending key.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.check_every == 0 {
            return Err(ConfigError::new("trainer.lr_schedule.check_every", "must be positive"));
        }
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(ConfigError::new("trainer.lr_schedule.factor", "must be in (0, 1)"));
        }
        if !(self.min_scale > 0.0 && self.min_scale <= 1.0) {
            return Err(ConfigError::new("trainer.lr_schedule.min_scale", "must be in (0, 1]"));
        }
        if !(self.threshold.is_finite() && self.threshold >= 0.0) {
            return Err(ConfigError::new("trainer.lr_schedule.threshold", "must be finite and not negative"));
        }
        Ok(())
    }
}

fn positive_finite(key: &str, value: f32) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new(key, format!("must be positive and finite, got {value}")))
    }
}

fn non_negative_finite(key: &str, value: f32) -> Result<(), ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::new(key, format!("must be finite and not negative, got {value}")))
    }
}

/// `[0, 1)` when `zero_ok`, else `(0, 1)`.
fn unit_open(key: &str, value: f32, zero_ok: bool) -> Result<(), ConfigError> {
    let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if low_ok && value < 1.0 {
        Ok(())
    } else {
        let range = if zero_ok { "[0, 1)" } else { "(0, 1)" };
        Err(ConfigError::new(key, format!("must be in {range}, got {value}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(TrainerConfig::default().check(), Ok(()));
    }

    #[test]
    fn errors_name_their_key() {
        let cases = [
            (TrainerConfig { learning_rate: 0.0, ..Default::default() }, "trainer.learning_rate"),
            (TrainerConfig { beta2: 1.0, ..Default::default() }, "trainer.beta2"),
            (TrainerConfig { factor_boost_count: Some(0.0), ..Default::default() }, "trainer.factor_boost_count"),
            (TrainerConfig { clip_norm: Some(f32::NAN), ..Default::default() }, "trainer.clip_norm"),
            (TrainerConfig { min_count: 0, ..Default::default() }, "trainer.min_count"),
            (TrainerConfig { scale_learning_rate: -0.1, ..Default::default() }, "trainer.scale_learning_rate"),
            (TrainerConfig { session_gap_ms: 0, ..Default::default() }, "trainer.session_gap_ms"),
            (TrainerConfig { ttl_ms: Some(0), ..Default::default() }, "trainer.ttl_ms"),
            (
                TrainerConfig {
                    lr_schedule: LrScheduleConfig { factor: 1.5, ..Default::default() },
                    ..Default::default()
                },
                "trainer.lr_schedule.factor",
            ),
        ];
        for (config, key) in cases {
            assert_eq!(config.check().map_err(|e| e.key), Err(key.to_owned()));
        }
    }
}
