//! What the trainer tells about its work: per-batch reports and running counters.
//!
//! Counting rules:
//! - every event handed to [`crate::Trainer::train_batch`] counts once in
//!   `events_applied` and once under its kind, forget events included;
//! - a rating or click adds 1 to the update counter of each row it touched
//!   (user, item, each context feature that has a row) when that row's step
//!   is written; a row whose step is skipped as non-finite gains nothing;
//! - a forget event touches no row counter: it removes the user's row (whose
//!   counter goes with it) and that user's pending admission count;
//! - ids not yet admitted have no row, so their events touch no counter of
//!   theirs. With `min_count = 1`, no expiry, budget or forget, the user
//!   rows' counters therefore sum to the number of ratings and clicks.

use freshet_core::record::{RecordError, RecordReader, RecordWriter};
use serde::{Deserialize, Serialize};

use freshet_core::TableKind;

/// Row life-cycle counters of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TableCounters {
    /// Rows created (ids admitted).
    pub admitted: u64,
    /// Rows removed by the TTL.
    pub expired: u64,
    /// Rows evicted by the row budget.
    pub evicted: u64,
    /// Rows removed by forget requests.
    pub forgotten: u64,
    /// Pending (not yet admitted) ids dropped to keep the admission map bounded.
    pub pending_dropped: u64,
}

/// Totals since the trainer's state began (they survive export and import).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Events trained on, of every kind.
    pub events_applied: u64,
    /// Rating events trained on.
    pub ratings: u64,
    /// Click events trained on.
    pub clicks: u64,
    /// Forget events applied.
    pub forgets: u64,
    /// Row (or global) steps not written because a gradient or a new value was not finite.
    pub nonfinite_skipped: u64,
    /// Events of known users that began a new session (more than
    /// `session_gap_ms` after the user's previous event).
    pub sessions_restarted: u64,
    /// The user table.
    pub users: TableCounters,
    /// The item table.
    pub items: TableCounters,
    /// The context-feature table.
    pub features: TableCounters,
}

impl Counters {
    /// Writes every counter (see docs/checkpoint.md for the order).
    pub fn write_record(&self, w: &mut RecordWriter) {
        let Counters {
            events_applied,
            ratings,
            clicks,
            forgets,
            nonfinite_skipped,
            sessions_restarted,
            users,
            items,
            features,
        } = self;
        for value in [events_applied, ratings, clicks, forgets, nonfinite_skipped, sessions_restarted] {
            w.u64(*value);
        }
        for table in [users, items, features] {
            let TableCounters { admitted, expired, evicted, forgotten, pending_dropped } = table;
            for value in [admitted, expired, evicted, forgotten, pending_dropped] {
                w.u64(*value);
            }
        }
    }

    /// Reads what [`Counters::write_record`] wrote (fields are read in the
    /// order written here, which is the order written above).
    pub fn read_record(r: &mut RecordReader<'_>) -> Result<Self, RecordError> {
        let u64 = |r: &mut RecordReader<'_>| r.u64();
        let table = |r: &mut RecordReader<'_>| -> Result<TableCounters, RecordError> {
            Ok(TableCounters {
                admitted: r.u64()?,
                expired: r.u64()?,
                evicted: r.u64()?,
                forgotten: r.u64()?,
                pending_dropped: r.u64()?,
            })
        };
        Ok(Counters {
            events_applied: u64(r)?,
            ratings: u64(r)?,
            clicks: u64(r)?,
            forgets: u64(r)?,
            nonfinite_skipped: u64(r)?,
            sessions_restarted: u64(r)?,
            users: table(r)?,
            items: table(r)?,
            features: table(r)?,
        })
    }

    /// The counters of one table.
    pub fn table(&self, kind: TableKind) -> &TableCounters {
        match kind {
            TableKind::User => &self.users,
            TableKind::Item => &self.items,
            TableKind::Feature => &self.features,
        }
    }

    pub(crate) fn table_mut(&mut self, kind: TableKind) -> &mut TableCounters {
        match kind {
            TableKind::User => &mut self.users,
            TableKind::Item => &mut self.items,
            TableKind::Feature => &mut self.features,
        }
    }
}

/// What one call to [`crate::Trainer::train_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct BatchReport {
    /// Events in the batch (all applied).
    pub events: u64,
    /// Rating events.
    pub ratings: u64,
    /// Click events.
    pub clicks: u64,
    /// Forget events.
    pub forgets: u64,
    /// Steps skipped because of non-finite values.
    pub nonfinite_skipped: u64,
    /// Rows created, over all tables.
    pub admitted: u64,
    /// Rows removed by the TTL, over all tables.
    pub expired: u64,
    /// Rows evicted by the budget, over all tables.
    pub evicted: u64,
    /// Rows removed by forget events.
    pub forgotten: u64,
    /// Multiplier of the learning rates after the batch (1 unless the schedule reduced it).
    pub lr_scale: f32,
}
