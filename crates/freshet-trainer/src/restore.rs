//! Restoring a trainer row by row, as a checkpoint store reads them, so a
//! large model never exists twice in memory (once decoded, once in the
//! arenas): each row is checked and copied straight into its table.

use freshet_core::{ModelSpec, Shard};

use crate::config::TrainerConfig;
use crate::state::{DenseState, PendingAdmission, RowChecker, RowRef, StateError, TrainerState};
use crate::trainer::Trainer;

/// A trainer being restored. Feed it the saved rows in (table, key) order,
/// then the pending admission counts, then [`Restorer::finish`]. The caller
/// checks that the saved state was trained under `spec` (a checkpoint store
/// keeps the spec beside the rows).
#[derive(Debug)]
pub struct Restorer {
    trainer: Trainer,
    keep_moments: bool,
    rows: RowChecker,
}

impl Restorer {
    /// Starts from the saved dense state. The configuration may differ from
    /// the one the state was trained with; if its algorithm does, optimizer
    /// moments and step counts restart from zero. Each table reserves room
    /// for the rows the saved counters say it held.
    pub fn new(spec: ModelSpec, config: TrainerConfig, dense: DenseState) -> Result<Self, StateError> {
        Self::new_shard(spec, config, dense, Shard::SOLE)
    }

    /// [`Restorer::new`] for `shard` of a sharded model (its count must be
    /// `spec.shards`): the saved rows are the ones it owns.
    pub fn new_shard(
        spec: ModelSpec,
        config: TrainerConfig,
        dense: DenseState,
        shard: Shard,
    ) -> Result<Self, StateError> {
        dense.check()?;
        let rows = RowChecker::new(&spec);
        let mut trainer = Trainer::new_shard(spec, config, shard)?;
        let keep_moments = trainer.adopt_dense(dense);
        Ok(Restorer { trainer, keep_moments, rows })
    }

    /// Adds the next saved row; refuses one out of (table, key) order or
    /// repeated, of the wrong width, with a non-finite value, or with an id
    /// string where its table keeps none (or without one where it does).
    pub fn push_row(&mut self, row: &RowRef<'_>) -> Result<(), StateError> {
        self.rows.check(row)?;
        self.trainer.insert_saved_row(row, self.keep_moments);
        Ok(())
    }

    /// Adds a saved pending admission count.
    pub fn push_pending(&mut self, pending: &PendingAdmission) {
        self.trainer.insert_pending(pending);
    }

    /// The restored trainer.
    pub fn finish(self) -> Trainer {
        self.trainer
    }
}

impl Trainer {
    /// Restores a trainer from a state exported earlier (under an equal spec).
    /// The configuration may differ from the one the state was trained with;
    /// if its algorithm does, the optimizer moments and step counts restart
    /// from zero. Metrics keep the window length they were saved with. To
    /// restore without holding the whole state in memory, see [`Restorer`].
    pub fn restore(spec: ModelSpec, config: TrainerConfig, state: TrainerState) -> Result<Self, StateError> {
        state.check_spec(&spec)?;
        let mut restorer = Restorer::new(spec, config, state.dense)?;
        // Rows are consumed one by one, so their memory is released as the arenas fill.
        for row in state.rows {
            restorer.push_row(&row.view())?;
        }
        for pending in &state.pending {
            restorer.push_pending(pending);
        }
        Ok(restorer.finish())
    }
}
