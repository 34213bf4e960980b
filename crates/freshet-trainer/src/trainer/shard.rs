//! A trainer as one shard of a sharded model ([`freshet_core::shard`]):
//! the gradients it sums for rows other shards own, the gradients other
//! shards send for rows it owns, and the replicas of the others' rows it
//! scores with. Which rows a step touches and how each is stepped is the
//! parent module's; this one only moves sums and replica values in and out.

use freshet_core::snapshot::{ParamsDelta, SnapshotRow, SnapshotTombstone};
use freshet_core::{Gradients, ModelSpec, Shard, TableGradients, TableKind};
use thiserror::Error;

use super::Trainer;
use crate::init::init_row;
use crate::keymap::KeyMap;
use crate::table::Table;

/// Gradients another shard sent that this one cannot take. Nothing of them
/// is applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GradientsError {
    /// User rows never travel between shards.
    #[error("gradients for user rows: a user's events are trained by the user's shard")]
    UserRows,
    /// Columns whose lengths do not fit together.
    #[error("gradients for {table} rows: {problem}")]
    Shape {
        /// The table.
        table: &'static str,
        /// What does not fit.
        problem: String,
    },
    /// A row this shard does not own.
    #[error("gradients for {table} row {key:#018x}, which shard {owner} owns, sent to shard {shard}")]
    NotOwned {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: u64,
        /// Its owner.
        owner: u32,
        /// This shard.
        shard: u32,
    },
}

/// A replica update that does not fit this model. Nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("replica row {key:#018x} of the {table} table has {got} values, the model's rows {expected}")]
pub struct ReplicaError {
    /// The table.
    pub table: &'static str,
    /// The row's key.
    pub key: u64,
    /// Values the row has.
    pub got: usize,
    /// The model's row width.
    pub expected: usize,
}

/// Gradient sums being collected for each other shard since they were last
/// taken: per destination, per table, one sum per row in first-touch order.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    to: Vec<Gradients>,
    /// Per destination, per table: a row's position in its columns.
    slots: Vec<[KeyMap<u32>; 3]>,
}

impl Outbox {
    pub(crate) fn new(spec: &ModelSpec, shard: Shard) -> Self {
        let count = if shard.is_sharded() { shard.count() as usize } else { 0 };
        let empty = || Gradients {
            tables: TableKind::ALL
                .map(|table| TableGradients {
                    table,
                    width: spec.row_width(table),
                    keys: Vec::new(),
                    ids: Vec::new(),
                    events: Vec::new(),
                    values: Vec::new(),
                })
                .to_vec(),
            ..Gradients::default()
        };
        Outbox { to: (0..count).map(|_| empty()).collect(), slots: (0..count).map(|_| Default::default()).collect() }
    }

    /// Adds the gradient sum of a replica `row` of `table` for its owner.
    pub(crate) fn add(&mut self, table: &Table, row: u32, grad: &[f32], events: u32) {
        let key = table.key(row);
        let owner = freshet_core::shard_of(key, self.to.len() as u32) as usize;
        let k = table.kind().index();
        let columns = &mut self.to[owner].tables[k];
        let width = columns.width;
        let slot = *self.slots[owner][k].entry(key).or_insert_with(|| {
            columns.keys.push(key);
            if table.kind().keeps_ids() {
                columns.ids.push(table.id_of(row).into());
            }
            columns.events.push(0);
            columns.values.resize(columns.values.len() + width, 0.0);
            (columns.keys.len() - 1) as u32
        }) as usize;
        columns.events[slot] += events;
        columns.values[slot * width..(slot + 1) * width].iter_mut().zip(grad).for_each(|(v, &g)| *v += g);
    }

    /// Adds a global bias's gradient sum for shard 0.
    pub(crate) fn add_global(&mut self, head: usize, grad: f32, events: u32) {
        self.to[0].globals[head] += grad;
        self.to[0].global_events[head] += events;
    }

    /// The sums collected so far, one message per destination that has
    /// any, stamped with the trainer's clock `clock_ms`; starts again empty.
    fn take(&mut self, clock_ms: i64) -> Vec<(u32, Gradients)> {
        let mut out = Vec::new();
        for (dest, (gradients, slots)) in self.to.iter_mut().zip(&mut self.slots).enumerate() {
            if gradients.is_empty() {
                continue;
            }
            let tables = gradients
                .tables
                .iter_mut()
                .filter(|t| !t.keys.is_empty())
                .map(|t| TableGradients {
                    table: t.table,
                    width: t.width,
                    keys: std::mem::take(&mut t.keys),
                    ids: std::mem::take(&mut t.ids),
                    events: std::mem::take(&mut t.events),
                    values: std::mem::take(&mut t.values),
                })
                .collect();
            let sent = Gradients {
                clock_ms,
                tables,
                globals: std::mem::take(&mut gradients.globals),
                global_events: std::mem::take(&mut gradients.global_events),
            };
            slots.iter_mut().for_each(KeyMap::clear);
            out.push((dest as u32, sent));
        }
        out
    }
}

impl Trainer {
    /// The gradient sums collected for other shards since the last call, per
    /// destination shard (none empty), stamped with this trainer's clock:
    /// every micro-batch's sum for a row since then, added up. An unsharded
    /// trainer has none.
    pub fn take_gradients(&mut self) -> Vec<(u32, Gradients)> {
        self.outbox.take(self.clock_ms)
    }

    /// Steps the rows this shard owns (and the global biases, on shard 0)
    /// with the gradients other shards summed for them, `messages` (those
    /// that arrived together, from any senders) added up into ONE step, as
    /// if a micro-batch of its own had produced them: each row's update
    /// counter grows by the events in its sums. One step per arrival rather
    /// than one per message: the senders computed their sums against the
    /// same stale replica, so stepping each of them in turn would repeat
    /// one stale direction once per sender (measured in docs/scaling.md: at
    /// 4 shards it cost 0.05 RMSE, where one step costs nothing). A row
    /// without a row here is admitted first, from the initial values its
    /// senders scored with. Returns the events summed into row gradients.
    /// Every message is checked first: on an error nothing changes.
    pub fn apply_gradients(&mut self, messages: &[Gradients]) -> Result<u64, GradientsError> {
        messages.iter().try_for_each(|gradients| self.check_gradients(gradients))?;
        let mut events = 0;
        for gradients in messages {
            events += self.add_gradients(gradients);
        }
        self.apply_step();
        Ok(events)
    }

    /// Adds one checked message to the sums of the next step.
    fn add_gradients(&mut self, gradients: &Gradients) -> u64 {
        self.clock_ms = self.clock_ms.max(gradients.clock_ms);
        let (seed, std, clock) = (self.config.seed, self.config.init_std, self.clock_ms);
        let mut events = 0;
        for columns in &gradients.tables {
            let (kind, k, width) = (columns.table, columns.table.index(), columns.width);
            for (i, (&key, &n)) in columns.keys.iter().zip(&columns.events).enumerate() {
                let table = &mut self.tables[k];
                let row = match table.get(key) {
                    Some(row) => row,
                    None => {
                        self.admission[k].remove(key);
                        self.counters.table_mut(kind).admitted += 1;
                        let id = columns.ids.get(i).map_or("", |id| id);
                        table.insert(key, id, clock, |row| init_row(seed, kind, key, std, row))
                    }
                };
                self.sums[k].add_sum(table, row, &columns.values[i * width..(i + 1) * width], n);
                events += u64::from(n);
            }
        }
        if self.shard.owns_globals() {
            for h in 0..2 {
                self.global_sums.grads[h] += gradients.globals[h];
                self.global_sums.counts[h] += gradients.global_events[h];
            }
        }
        events
    }

    fn check_gradients(&self, gradients: &Gradients) -> Result<(), GradientsError> {
        for columns in &gradients.tables {
            let table = columns.table;
            if table == TableKind::User {
                return Err(GradientsError::UserRows);
            }
            let shape = |problem: String| Err(GradientsError::Shape { table: table.name(), problem });
            let (rows, width) = (columns.keys.len(), self.spec.row_width(table));
            if columns.width != width {
                return shape(format!("rows of {} values, the model's have {width}", columns.width));
            }
            if columns.events.len() != rows || columns.values.len() != rows * width {
                return shape(format!(
                    "{rows} keys with {} event counts and {} values",
                    columns.events.len(),
                    columns.values.len()
                ));
            }
            let ids = if table.keeps_ids() { rows } else { 0 };
            if columns.ids.len() != ids {
                return shape(format!("{rows} keys with {} ids", columns.ids.len()));
            }
            if let Some(&key) = columns.keys.iter().find(|&&key| !self.shard.owns(key)) {
                return Err(GradientsError::NotOwned {
                    table: table.name(),
                    key,
                    owner: self.shard.owner(key),
                    shard: self.shard.index(),
                });
            }
        }
        Ok(())
    }

    /// Takes shard `from`'s rows, as its snapshots carry them, into the
    /// replicas this shard scores with: the item and feature rows `from`
    /// owns are set or removed, and the global biases taken if `from` owns
    /// them (shard 0). User rows, and rows `from` does not own (this
    /// shard's among them), are passed over. Returns how many replica rows
    /// were set or removed. Checked whole first: on an error nothing changes.
    pub fn apply_replica(&mut self, from: u32, delta: &ParamsDelta) -> Result<usize, ReplicaError> {
        let foreign = |shard: Shard, table: TableKind, key: u64| {
            table != TableKind::User && from != shard.index() && shard.owner(key) == from
        };
        for row in delta.rows.iter().filter(|row| foreign(self.shard, row.table, row.key)) {
            let expected = self.spec.row_width(row.table);
            if row.values.len() != expected {
                return Err(ReplicaError { table: row.table.name(), key: row.key, got: row.values.len(), expected });
            }
        }
        let mut changed = 0;
        for &SnapshotTombstone { table, key } in &delta.tombstones {
            if foreign(self.shard, table, key) && self.tables[table.index()].remove_replica(key) {
                changed += 1;
            }
        }
        for SnapshotRow { table, key, id, updated_ms, values } in &delta.rows {
            if foreign(self.shard, *table, *key) {
                self.admission[table.index()].remove(*key);
                if self.tables[table.index()].set_replica(*key, id.as_deref(), *updated_ms, values) {
                    changed += 1;
                }
            }
        }
        if from == 0 && !self.shard.owns_globals() {
            self.globals.bias = delta.globals;
        }
        Ok(changed)
    }

    /// The parameters of the owned rows changed since the last drain, and
    /// tombstones of owned rows removed since then, as a snapshot delta
    /// carries them; clears the change record like [`Trainer::drain_dirty`]
    /// (without copying the dense state). What replicas elsewhere take.
    pub fn drain_params(&mut self) -> ParamsDelta {
        let (mut rows, mut tombstones) = (Vec::new(), Vec::new());
        for table in &mut self.tables {
            table.drain(&mut rows, &mut tombstones);
        }
        ParamsDelta {
            globals: self.globals.bias,
            session_gap_ms: self.config.session_gap_ms,
            rows: rows.into_iter().map(|row| row.into_snapshot_row()).collect(),
            tombstones: tombstones.iter().map(|t| SnapshotTombstone { table: t.table, key: t.key }).collect(),
        }
    }
}
