//! State leaving and re-entering the trainer: changed rows since the last
//! drain (for incremental checkpoints), the full state (for restore) and the
//! parameters alone (for snapshots). Rows come sorted by (table, key).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::Algorithm;
use crate::lr_schedule::PlateauSchedule;
use crate::metrics::ProgressiveMetrics;
use crate::report::Counters;
use freshet_core::kernels::all_finite;
use freshet_core::record::{RecordError, RecordReader, RecordWriter};
use freshet_core::snapshot::{ParamsDelta, SnapshotRow, SnapshotTombstone};
use freshet_core::{ModelSpec, TableKind};

/// Why a row left its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// A forget event or call removed it.
    Forgotten,
    /// It was not updated for the TTL.
    Expired,
    /// The row budget evicted it as least recently updated.
    Evicted,
}

/// Everything about one row: parameters, optimizer state and counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowState {
    /// The row's table.
    pub table: TableKind,
    /// The 64-bit key (`hash_id` of the user or item id, `hash_feature` of a feature).
    pub key: u64,
    /// The original id string (item rows only).
    pub id: Option<String>,
    /// The parameters, laid out as [`freshet_core::RowLayout`] says.
    pub params: Vec<f32>,
    /// Adam's first moment, same layout; empty for SGD, AdaGrad and Adam
    /// with `beta1` = 0, whose first moment would only repeat the latest gradient.
    pub m: Vec<f32>,
    /// Adam's second moment or AdaGrad's squared-gradient sum (empty for SGD).
    pub v: Vec<f32>,
    /// Optimizer steps taken (Adam's bias correction uses it).
    pub steps: u32,
    /// Events whose gradient reached the row.
    pub updates: u64,
    /// Trainer clock (event time, ms) at the row's last update.
    pub last_update_ms: i64,
}

/// One saved row, borrowed: what a checkpoint store hands to
/// [`crate::Restorer::push_row`] as it reads, without building a [`RowState`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowRef<'a> {
    /// The row's table.
    pub table: TableKind,
    /// The 64-bit key.
    pub key: u64,
    /// The original id string (item rows only).
    pub id: Option<&'a str>,
    /// The parameters, laid out as [`freshet_core::RowLayout`] says.
    pub params: &'a [f32],
    /// Adam's first moment, or empty (see [`RowState::m`]).
    pub m: &'a [f32],
    /// The second moment or squared-gradient sum, or empty (see [`RowState::v`]).
    pub v: &'a [f32],
    /// Optimizer steps taken.
    pub steps: u32,
    /// Events whose gradient reached the row.
    pub updates: u64,
    /// Trainer clock at the row's last update.
    pub last_update_ms: i64,
}

impl RowState {
    /// The row, borrowed.
    pub fn view(&self) -> RowRef<'_> {
        RowRef {
            table: self.table,
            key: self.key,
            id: self.id.as_deref(),
            params: &self.params,
            m: &self.m,
            v: &self.v,
            steps: self.steps,
            updates: self.updates,
            last_update_ms: self.last_update_ms,
        }
    }
}

impl RowState {
    /// The row's parameters as snapshots carry them (the moments dropped).
    pub fn into_snapshot_row(self) -> SnapshotRow {
        SnapshotRow {
            table: self.table,
            key: self.key,
            id: self.id,
            updated_ms: self.last_update_ms,
            values: self.params,
        }
    }

    /// [`Self::into_snapshot_row`] of a copy, leaving the row as it is.
    pub fn snapshot_row(&self) -> SnapshotRow {
        SnapshotRow {
            table: self.table,
            key: self.key,
            id: self.id.clone(),
            updated_ms: self.last_update_ms,
            values: self.params.clone(),
        }
    }
}

impl From<RowRef<'_>> for RowState {
    fn from(row: RowRef<'_>) -> Self {
        RowState {
            table: row.table,
            key: row.key,
            id: row.id.map(str::to_owned),
            params: row.params.to_vec(),
            m: row.m.to_vec(),
            v: row.v.to_vec(),
            steps: row.steps,
            updates: row.updates,
            last_update_ms: row.last_update_ms,
        }
    }
}

/// A row that left the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The row's table.
    pub table: TableKind,
    /// The row's key.
    pub key: u64,
    /// Why it left.
    pub cause: Removal,
}

/// The sighting count of an id not yet admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingAdmission {
    /// The id's table.
    pub table: TableKind,
    /// The id's key.
    pub key: u64,
    /// Sightings so far.
    pub count: u32,
    /// Trainer clock at the latest sighting.
    pub last_seen_ms: i64,
}

/// The global bias of each head (indexed by [`freshet_core::Head::index`]) with its optimizer state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GlobalParams {
    /// Global bias per head.
    pub bias: [f32; 2],
    /// First moment per head (Adam).
    pub m: [f32; 2],
    /// Second moment per head (Adam, AdaGrad).
    pub v: [f32; 2],
    /// Optimizer steps per head.
    pub steps: [u32; 2],
    /// Events per head whose gradient reached the global bias.
    pub updates: [u64; 2],
}

/// The small, non-row part of the state: copied whole at every drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseState {
    /// The factors' update rule; restoring under another one resets the moments.
    pub algorithm: Algorithm,
    /// The biases' update rule; restoring under another one resets the moments.
    pub bias_algorithm: Algorithm,
    /// Global biases and their optimizer state.
    pub globals: GlobalParams,
    /// The trainer clock: the largest event time seen (ms).
    pub clock_ms: i64,
    /// Trainer clock of the last TTL sweep.
    pub last_sweep_ms: i64,
    /// Running counters.
    pub counters: Counters,
    /// Progressive metrics.
    pub metrics: ProgressiveMetrics,
    /// Learning-rate schedule.
    pub schedule: PlateauSchedule,
}

/// What changed since the previous drain. Applying every delta in order to
/// the state exported before the first one gives the current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChanges {
    /// Rows created or changed (full state), sorted by (table, key).
    pub rows: Vec<RowState>,
    /// Rows removed and not re-created, sorted by (table, key).
    pub tombstones: Vec<Tombstone>,
    /// Pending admission counts created or changed.
    pub pending: Vec<PendingAdmission>,
    /// Pending admission counts that went away (admitted, dropped, expired or forgotten).
    pub pending_removed: Vec<(TableKind, u64)>,
    /// The dense state now.
    pub dense: DenseState,
    /// The shard whose rows these are (0 unsharded): a checkpoint store
    /// holds one shard's.
    pub shard: u32,
}

impl StateChanges {
    /// Whether no row or pending count changed (the dense state always comes along).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.tombstones.is_empty() && self.pending.is_empty() && self.pending_removed.is_empty()
    }

    /// A copy of the parameters alone, for incremental snapshots (optimizer
    /// state and pending counts are left out): the trainer loop hands it
    /// over while the changes themselves are being written to the checkpoint.
    pub fn params(&self, session_gap_ms: i64) -> ParamsDelta {
        ParamsDelta {
            globals: self.dense.globals.bias,
            session_gap_ms,
            rows: self.rows.iter().map(RowState::snapshot_row).collect(),
            tombstones: self.tombstones.iter().map(|t| SnapshotTombstone { table: t.table, key: t.key }).collect(),
        }
    }
}

/// The whole trainer state, for checkpoints and restore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// The spec the state was trained under.
    pub spec: ModelSpec,
    /// Every row, sorted by (table, key).
    pub rows: Vec<RowState>,
    /// Every pending admission count, sorted by (table, key).
    pub pending: Vec<PendingAdmission>,
    /// Everything else.
    pub dense: DenseState,
}

impl TrainerState {
    /// Applies a delta drained after this state was taken (or after the
    /// previous delta applied to it).
    pub fn apply(&mut self, delta: StateChanges) {
        let mut rows: BTreeMap<(TableKind, u64), RowState> =
            std::mem::take(&mut self.rows).into_iter().map(|r| ((r.table, r.key), r)).collect();
        for tombstone in &delta.tombstones {
            rows.remove(&(tombstone.table, tombstone.key));
        }
        for row in delta.rows {
            rows.insert((row.table, row.key), row);
        }
        self.rows = rows.into_values().collect();
        let mut pending: BTreeMap<(TableKind, u64), PendingAdmission> =
            std::mem::take(&mut self.pending).into_iter().map(|p| ((p.table, p.key), p)).collect();
        for key in &delta.pending_removed {
            pending.remove(key);
        }
        for row in delta.pending {
            pending.insert((row.table, row.key), row);
        }
        self.pending = pending.into_values().collect();
        self.dense = delta.dense;
    }

    /// Checks the state against the spec it is restored under.
    pub fn validate(&self, spec: &ModelSpec) -> Result<(), StateError> {
        self.check_spec(spec)?;
        self.dense.check()?;
        let mut rows = RowChecker::new(spec);
        self.rows.iter().try_for_each(|row| rows.check(&row.view()))
    }

    /// Refuses a state trained under another spec than `spec`.
    pub(crate) fn check_spec(&self, spec: &ModelSpec) -> Result<(), StateError> {
        if &self.spec == spec {
            Ok(())
        } else {
            Err(StateError::SpecMismatch { state: Box::new(self.spec.clone()), configured: Box::new(spec.clone()) })
        }
    }
}

impl DenseState {
    /// Writes the whole dense state as an explicit record (docs/checkpoint.md
    /// lists every field in order).
    pub fn write_record(&self, w: &mut RecordWriter) {
        let DenseState { algorithm, bias_algorithm, globals, clock_ms, last_sweep_ms, counters, metrics, schedule } =
            self;
        w.u8(algorithm.record_tag());
        w.u8(bias_algorithm.record_tag());
        let GlobalParams { bias, m, v, steps, updates } = globals;
        for values in [bias, m, v] {
            values.iter().for_each(|&x| w.f32(x));
        }
        steps.iter().for_each(|&x| w.u32(x));
        updates.iter().for_each(|&x| w.u64(x));
        w.i64(*clock_ms);
        w.i64(*last_sweep_ms);
        counters.write_record(w);
        metrics.write_record(w);
        schedule.write_record(w);
    }

    /// Reads what [`DenseState::write_record`] wrote.
    pub fn read_record(r: &mut RecordReader<'_>) -> Result<Self, RecordError> {
        let algorithm = Algorithm::from_record_tag(r)?;
        let bias_algorithm = Algorithm::from_record_tag(r)?;
        let pair = |r: &mut RecordReader<'_>| -> Result<[f32; 2], RecordError> { Ok([r.f32()?, r.f32()?]) };
        let (bias, m, v) = (pair(r)?, pair(r)?, pair(r)?);
        let steps = [r.u32()?, r.u32()?];
        let updates = [r.u64()?, r.u64()?];
        Ok(DenseState {
            algorithm,
            bias_algorithm,
            globals: GlobalParams { bias, m, v, steps, updates },
            clock_ms: r.i64()?,
            last_sweep_ms: r.i64()?,
            counters: Counters::read_record(r)?,
            metrics: ProgressiveMetrics::read_record(r)?,
            schedule: PlateauSchedule::read_record(r)?,
        })
    }

    /// Checks that the global biases and their optimizer state are finite.
    pub(crate) fn check(&self) -> Result<(), StateError> {
        let g = &self.globals;
        if [g.bias, g.m, g.v].iter().flatten().all(|x| x.is_finite()) {
            Ok(())
        } else {
            Err(StateError::NonFiniteGlobal)
        }
    }
}

/// Checks saved rows one by one, as they arrive: sorted by (table, key)
/// without repeats, their table's width, finite values, an id exactly on item rows.
#[derive(Debug, Clone)]
pub(crate) struct RowChecker {
    dim: usize,
    previous: Option<(TableKind, u64)>,
}

impl RowChecker {
    pub(crate) fn new(spec: &ModelSpec) -> Self {
        RowChecker { dim: spec.dim, previous: None }
    }

    pub(crate) fn check(&mut self, row: &RowRef<'_>) -> Result<(), StateError> {
        let (table, key) = (row.table, row.key);
        if self.previous.is_some_and(|p| p >= (table, key)) {
            return Err(StateError::Unsorted { table, key });
        }
        self.previous = Some((table, key));
        let width = table.scalars() + self.dim;
        let moments_ok = [row.m, row.v].iter().all(|m| m.is_empty() || m.len() == width);
        if row.params.len() != width || !moments_ok {
            return Err(StateError::RowWidth { table, key, expected: width });
        }
        if !(all_finite(row.params) && all_finite(row.m) && all_finite(row.v)) {
            return Err(StateError::NonFinite { table, key });
        }
        if table.keeps_ids() != row.id.is_some() {
            return Err(StateError::Id { table, key });
        }
        Ok(())
    }
}

/// Why a saved state cannot be restored.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StateError {
    /// The configuration to restore under is invalid.
    #[error(transparent)]
    Config(#[from] freshet_core::ConfigError),
    /// The state was trained under another model spec.
    #[error("state was trained with model spec {state:?}, configured spec is {configured:?}")]
    SpecMismatch {
        /// The state's spec.
        state: Box<ModelSpec>,
        /// The configured spec.
        configured: Box<ModelSpec>,
    },
    /// Rows are not sorted by (table, key), or a key repeats.
    #[error("rows out of order or repeated at {table:?} key {key:#018x}")]
    Unsorted {
        /// Table of the offending row.
        table: TableKind,
        /// Key of the offending row.
        key: u64,
    },
    /// A row's parameter or moment vector has the wrong length.
    #[error("{table:?} row {key:#018x} is not {expected} floats wide")]
    RowWidth {
        /// Table of the offending row.
        table: TableKind,
        /// Key of the offending row.
        key: u64,
        /// The spec's row width.
        expected: usize,
    },
    /// A row holds NaN or an infinity.
    #[error("{table:?} row {key:#018x} holds a non-finite value")]
    NonFinite {
        /// Table of the offending row.
        table: TableKind,
        /// Key of the offending row.
        key: u64,
    },
    /// A global bias or its optimizer state is NaN or infinite.
    #[error("a global bias or its optimizer state is not finite")]
    NonFiniteGlobal,
    /// An item row lacks its id string, or another row has one.
    #[error("{table:?} row {key:#018x} has a missing or unexpected id string")]
    Id {
        /// Table of the offending row.
        table: TableKind,
        /// Key of the offending row.
        key: u64,
    },
}
