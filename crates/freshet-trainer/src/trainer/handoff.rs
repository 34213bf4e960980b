//! The state leaving the trainer (changed rows for incremental checkpoints,
//! the whole state for a full one, the parameters alone for snapshots) and
//! re-entering it (a saved dense state, rows and pending counts, as
//! [`crate::Restorer`] feeds them). Training itself is the parent module's.

use freshet_core::TableKind;
use freshet_core::snapshot::{ModelParams, ParamColumns};

use super::Trainer;
use crate::state::{DenseState, GlobalParams, PendingAdmission, RowRef, StateChanges, TrainerState};
use crate::table::Table;

impl Trainer {
    /// Rows and pending counts changed since the last drain, tombstones of
    /// rows removed since then, and the dense state; clears the change record.
    /// Costs a copy of the changed rows only.
    pub fn drain_dirty(&mut self) -> StateChanges {
        // Sized up front: tens of MB grown by doubling copy themselves and touch fresh pages.
        let mut rows = Vec::with_capacity(self.tables.iter().map(Table::dirty_len).sum());
        let (mut pending, mut pending_removed, mut tombstones) = (Vec::new(), Vec::new(), Vec::new());
        for (table, admission) in self.tables.iter_mut().zip(&mut self.admission) {
            table.drain(&mut rows, &mut tombstones);
            admission.drain(&mut pending, &mut pending_removed);
        }
        StateChanges {
            rows,
            tombstones,
            pending,
            pending_removed,
            dense: self.dense_state(),
            shard: self.shard.index(),
        }
    }

    /// The whole state, for a full checkpoint. The change record is kept.
    pub fn export_state(&self) -> TrainerState {
        let (mut rows, mut pending) = (Vec::new(), Vec::new());
        for (table, admission) in self.tables.iter().zip(&self.admission) {
            table.export(&mut rows);
            admission.export(&mut pending);
        }
        TrainerState { spec: self.spec.clone(), rows, pending, dense: self.dense_state() }
    }

    /// The parameters alone, for a full snapshot.
    pub fn export_params(&self) -> ModelParams {
        self.param_columns().into_params()
    }

    /// The parameters alone as columns: what the trainer thread copies for
    /// a full snapshot (a few bulk copies), leaving the rows to be built
    /// elsewhere ([`ParamColumns::into_params`]).
    pub fn param_columns(&self) -> ParamColumns {
        ParamColumns {
            spec: self.spec.clone(),
            globals: self.globals.bias,
            session_gap_ms: self.config.session_gap_ms,
            tables: self.tables.iter().map(Table::param_columns).collect(),
        }
    }

    fn dense_state(&self) -> DenseState {
        DenseState {
            algorithm: self.config.algorithm,
            bias_algorithm: self.config.bias_algorithm,
            globals: self.globals,
            clock_ms: self.clock_ms,
            last_sweep_ms: self.last_sweep_ms,
            counters: self.counters,
            metrics: self.metrics.clone(),
            schedule: self.schedule.clone(),
        }
    }

    /// Takes over a saved dense state and makes room for the rows its
    /// counters say the tables held; returns whether saved optimizer moments
    /// still apply (the update rules are the same).
    pub(crate) fn adopt_dense(&mut self, dense: DenseState) -> bool {
        let keep_moments =
            dense.algorithm == self.config.algorithm && dense.bias_algorithm == self.config.bias_algorithm;
        self.globals = if keep_moments {
            dense.globals
        } else {
            GlobalParams { m: [0.0; 2], v: [0.0; 2], steps: [0; 2], ..dense.globals }
        };
        for kind in TableKind::ALL {
            let t = dense.counters.table(kind);
            let rows = t.admitted.saturating_sub(t.expired + t.evicted + t.forgotten).min(u64::from(u32::MAX));
            self.tables[kind.index()].reserve(rows as usize);
        }
        self.clock_ms = dense.clock_ms;
        self.last_sweep_ms = dense.last_sweep_ms;
        self.counters = dense.counters;
        self.metrics = dense.metrics;
        self.schedule = dense.schedule;
        keep_moments
    }

    /// Adds a saved row (checked by the caller); without `keep_moments` its
    /// moments and step count restart from zero.
    pub(crate) fn insert_saved_row(&mut self, row: &RowRef<'_>, keep_moments: bool) {
        let table = &mut self.tables[row.table.index()];
        if keep_moments {
            table.insert_state(row);
        } else {
            table.insert_state(&RowRef { m: &[], v: &[], steps: 0, ..*row });
        }
    }

    /// Adds a saved pending admission count.
    pub(crate) fn insert_pending(&mut self, pending: &PendingAdmission) {
        self.admission[pending.table.index()].insert_state(pending);
    }
}
