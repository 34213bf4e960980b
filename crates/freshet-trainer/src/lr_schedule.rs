//! The adaptive learning rate: reduce on plateau of the windowed progressive
//! loss, with a floor (see [`crate::LrScheduleConfig`]).

use freshet_core::record::{RecordError, RecordReader, RecordWriter};
use serde::{Deserialize, Serialize};

use crate::config::LrScheduleConfig;

/// The schedule's state: the current multiplier of both learning rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateauSchedule {
    scale: f32,
    best: Option<f64>,
    checks_without_improvement: u32,
    next_check_at: u64,
}

impl PlateauSchedule {
    /// A schedule at full learning rate whose first check comes after `config.check_every` events.
    pub fn new(config: &LrScheduleConfig) -> Self {
        PlateauSchedule { scale: 1.0, best: None, checks_without_improvement: 0, next_check_at: config.check_every }
    }

    /// The current multiplier of the configured learning rates.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// Writes the schedule's state field by field (see docs/checkpoint.md).
    pub fn write_record(&self, w: &mut RecordWriter) {
        let PlateauSchedule { scale, best, checks_without_improvement, next_check_at } = self;
        w.f32(*scale);
        w.option_f64(*best);
        w.u32(*checks_without_improvement);
        w.u64(*next_check_at);
    }

    /// Reads what [`PlateauSchedule::write_record`] wrote.
    pub fn read_record(r: &mut RecordReader<'_>) -> Result<Self, RecordError> {
        let scale = r.f32()?;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(r.error(format!("a learning-rate scale of {scale}")));
        }
        Ok(PlateauSchedule {
            scale,
            best: r.option_f64()?,
            checks_without_improvement: r.u32()?,
            next_check_at: r.u64()?,
        })
    }

    /// Called after each batch with the events seen so far and the windowed
    /// loss (taken only when a check is due).
    pub(crate) fn observe(&mut self, config: &LrScheduleConfig, events: u64, loss: impl FnOnce() -> Option<f64>) {
        if !config.enabled || events < self.next_check_at {
            return;
        }
        self.next_check_at = events + config.check_every;
        let Some(loss) = loss().filter(|l| l.is_finite()) else {
            return;
        };
        match self.best {
            Some(best) if loss >= best * (1.0 - config.threshold) => {
                self.checks_without_improvement += 1;
                if self.checks_without_improvement >= config.patience {
                    self.scale = (self.scale * config.factor).max(config.min_scale);
                    self.checks_without_improvement = 0;
                    self.best = Some(loss);
                }
            }
            _ => {
                self.best = Some(loss);
                self.checks_without_improvement = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduces_after_patience_and_stops_at_the_floor() {
        let config = LrScheduleConfig {
            enabled: true,
            check_every: 10,
            patience: 2,
            factor: 0.5,
            min_scale: 0.2,
            threshold: 0.01,
        };
        let mut s = PlateauSchedule::new(&config);
        s.observe(&config, 5, || Some(1.0)); // before the first check
        assert_eq!(s.scale(), 1.0);
        let mut events = 0;
        let mut scales = Vec::new();
        for loss in [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9] {
            events += 10;
            s.observe(&config, events, || Some(loss));
            scales.push(s.scale());
        }
        assert_eq!(scales, [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2, 0.2]);
    }

    #[test]
    fn disabled_schedule_never_changes() {
        let config = LrScheduleConfig { check_every: 1, patience: 1, ..LrScheduleConfig::default() };
        let mut s = PlateauSchedule::new(&config);
        for events in 1..100 {
            s.observe(&config, events, || Some(1.0));
        }
        assert_eq!(s.scale(), 1.0);
    }
}
