//! The trainer: micro-batches of feedback in; progressive metrics, updated
//! rows and tombstones out.
//!
//! One call to [`Trainer::train_batch`] splits the batch at forget events
//! into segments. Each segment is one step: every event is first scored with
//! the parameters from before the segment (progressive metrics), its loss
//! gradient is summed per touched row, then each touched row takes one
//! optimizer step in first-touch order (rows are independent, so the order
//! cannot change a value; the sums follow event order, so the same batches
//! always give bit-identical parameters). Expiry and the row budget run at
//! the end of the batch.

use freshet_core::kernels::axpy;
use freshet_core::keyed::{EventRef, Events, KeyedEvents, Target};
use freshet_core::score::{self, QueryTerms, ScoreContext, UserTerms};
use freshet_core::{ConfigError, Feedback, Head, ModelSpec, RowLayout, Shard, TableKind, hash_feature, hash_id};
use ndarray::ArrayView2;

use crate::admission::Admission;
use crate::config::TrainerConfig;
use crate::heads::HeadLoss;
use crate::init::init_row;
use crate::lr_schedule::PlateauSchedule;
use crate::metrics::{MetricsReading, ProgressiveMetrics};
use crate::optimizer::{Optimizer, Penalty, RowMut, StepInput, StepScratch};
use crate::report::{BatchReport, Counters};
use crate::state::{GlobalParams, Removal, RowState, Tombstone};
use crate::table::{NO_SLOT, Table};

mod handoff;
mod shard;

use shard::Outbox;
pub use shard::{GradientsError, ReplicaError};

/// The online model and its optimizer. See the crate documentation.
#[derive(Debug, Clone)]
pub struct Trainer {
    spec: ModelSpec,
    config: TrainerConfig,
    optimizer: Optimizer,
    tables: [Table; 3],
    admission: [Admission; 3],
    sums: [GradSums; 3],
    globals: GlobalParams,
    global_sums: GlobalSums,
    metrics: ProgressiveMetrics,
    schedule: PlateauSchedule,
    counters: Counters,
    clock_ms: i64,
    last_sweep_ms: i64,
    scratch: Scratch,
    /// Which rows this trainer owns (all of them, unsharded).
    shard: Shard,
    /// Gradient sums of rows other shards own, until taken.
    outbox: Outbox,
}

/// Per-table gradient sums of the current step, one slot per touched row
/// (the row's slot number lives in the table's row metadata).
#[derive(Debug, Clone)]
struct GradSums {
    width: usize,
    rows: Vec<u32>,
    grads: Vec<f32>,
    counts: Vec<u32>,
}

impl GradSums {
    fn new(width: usize) -> Self {
        GradSums { width, rows: Vec::new(), grads: Vec::new(), counts: Vec::new() }
    }

    /// Adds one event's gradient to `row` of `table`: `bias_d` on the head's
    /// bias and `d·x` on the factors (nothing on the factors without `x`).
    /// Returns the row's gradient sum, for the scalars only some rows have.
    #[inline]
    fn add(&mut self, table: &mut Table, row: u32, head: Head, bias_d: f32, d: f32, x: Option<&[f32]>) -> &mut [f32] {
        let scalars = table.scalars();
        let g = self.sum_of(table, row, 1);
        g[RowLayout::bias(head)] += bias_d;
        if let Some(x) = x {
            axpy(d, x, &mut g[scalars..]);
        }
        g
    }

    /// Adds a sum of `events` events' gradients (a row's width) to `row` of `table`.
    fn add_sum(&mut self, table: &mut Table, row: u32, grad: &[f32], events: u32) {
        self.sum_of(table, row, events).iter_mut().zip(grad).for_each(|(g, &x)| *g += x);
    }

    /// The gradient sum of `row` of `table` in this step (a new one of
    /// zeros if the step has not touched the row), its event count grown
    /// by `events`.
    #[inline]
    fn sum_of(&mut self, table: &mut Table, row: u32, events: u32) -> &mut [f32] {
        let slot = table.slot_mut(row);
        if *slot == NO_SLOT {
            *slot = self.rows.len() as u32;
            self.rows.push(row);
            self.counts.push(0);
            self.grads.resize(self.grads.len() + self.width, 0.0);
        }
        let s = *slot as usize;
        self.counts[s] += events;
        &mut self.grads[s * self.width..(s + 1) * self.width]
    }

    /// Forgets the sums, freeing the rows' slots in `table`.
    fn clear(&mut self, table: &mut Table) {
        for &row in &self.rows {
            *table.slot_mut(row) = NO_SLOT;
        }
        self.rows.clear();
        self.grads.clear();
        self.counts.clear();
    }
}

/// Gradient sums of the global biases in the current step.
#[derive(Debug, Clone, Default)]
struct GlobalSums {
    grads: [f32; 2],
    counts: [u32; 2],
}

/// Reused buffers, so training allocates nothing per event.
#[derive(Debug, Clone, Default)]
struct Scratch {
    /// `p_user + Σ q_feature` of the event being scored.
    user_vec: Vec<f32>,
    /// The keys and rows of each rating or click of the step.
    keys: Vec<EventKeys>,
    features: Vec<u32>,
    prior_features: Vec<u32>,
    /// A batch of decoded events, keyed for [`Trainer::train_events`].
    keyed: KeyedEvents,
    step: StepScratch,
}

/// The keys of a rating or click and the rows they had when its step began
/// (looked up once: rows are only added during a step, never moved).
#[derive(Debug, Clone, Copy)]
struct EventKeys {
    user_key: u64,
    item_key: u64,
    /// The user's row, `None` if it had none (it may be admitted in `learn`).
    user: Option<u32>,
    /// The item's row, likewise.
    item: Option<u32>,
}

/// [`Trainer::apply_step`]'s body, run by [`pulp::Arch::dispatch`].
struct ApplyStep<'t>(&'t mut Trainer);

impl pulp::WithSimd for ApplyStep<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        self.0.apply_step_here();
    }
}

/// A rating or click, reduced to what the model uses.
struct Observation<'a> {
    head: Head,
    target: f32,
    user: &'a str,
    item: &'a str,
    /// The keys of its context features.
    features: &'a [u64],
    /// Event time (epoch ms).
    ts: i64,
}

impl<'a> Observation<'a> {
    fn of(event: EventRef<'a>) -> Option<Self> {
        let (head, target) = match event.target {
            Target::Rating(rating) => (Head::Rating, rating),
            Target::Click(clicked) => (Head::Click, if clicked { 1.0 } else { 0.0 }),
            Target::Forget => return None,
        };
        Some(Observation {
            head,
            target,
            user: event.user_id,
            item: event.item_id,
            features: event.features,
            ts: event.ts,
        })
    }
}

impl Trainer {
    /// A fresh model: no rows, global biases at their initial values.
    pub fn new(spec: ModelSpec, config: TrainerConfig) -> Result<Self, ConfigError> {
        Self::new_shard(spec, config, Shard::SOLE)
    }

    /// A fresh shard of a sharded model (see [`freshet_core::shard`]): it
    /// trains the events of the users it owns (the caller routes them by
    /// [`freshet_core::shard_of`] of the user's key), steps the rows it owns,
    /// scores with replicas of the others' item and feature rows
    /// ([`Trainer::apply_replica`]) and sums their gradients for their
    /// owners ([`Trainer::take_gradients`], [`Trainer::apply_gradients`]).
    /// `shard` must be one of the spec's: its count is `spec.shards`.
    pub fn new_shard(spec: ModelSpec, config: TrainerConfig, shard: Shard) -> Result<Self, ConfigError> {
        spec.check()?;
        config.check()?;
        if shard.count() != spec.shards {
            return Err(ConfigError::new(
                "model.shards",
                format!("is {}, but this trainer is shard {} of {}", spec.shards, shard.index(), shard.count()),
            ));
        }
        let optimizer = Optimizer::new(&config);
        let moments = optimizer.moments();
        let globals = GlobalParams {
            bias: Head::ALL.map(|head| head.initial_global(&spec)),
            m: [0.0; 2],
            v: [0.0; 2],
            steps: [0; 2],
            updates: [0; 2],
        };
        Ok(Trainer {
            optimizer,
            tables: TableKind::ALL.map(|kind| Table::new(kind, spec.dim, moments)),
            admission: TableKind::ALL.map(|kind| Admission::new(kind, config.min_count, config.max_pending)),
            sums: TableKind::ALL.map(|kind| GradSums::new(spec.row_width(kind))),
            globals,
            global_sums: GlobalSums::default(),
            metrics: ProgressiveMetrics::new(config.metric_window),
            schedule: PlateauSchedule::new(&config.lr_schedule),
            counters: Counters::default(),
            clock_ms: 0,
            last_sweep_ms: 0,
            scratch: Scratch { user_vec: vec![0.0; spec.dim], ..Scratch::default() },
            outbox: Outbox::new(&spec, shard),
            shard,
            spec,
            config,
        })
    }

    /// Trains on one micro-batch, in order; forget events take effect where
    /// they stand. See [`crate::report`] for how events are counted. The
    /// events are keyed first ([`KeyedEvents`]), then trained as
    /// [`Trainer::train_events`] trains them.
    pub fn train_batch(&mut self, batch: &[Feedback]) -> BatchReport {
        let mut keyed = std::mem::take(&mut self.scratch.keyed);
        keyed.clear();
        for event in batch {
            keyed.push(event);
        }
        let report = self.train_events(keyed.as_events());
        self.scratch.keyed = keyed;
        report
    }

    /// [`Trainer::train_batch`] of events keyed already (their ids hashed).
    pub fn train_events(&mut self, batch: Events<'_>) -> BatchReport {
        let before = self.counters;
        let mut start = 0;
        for (i, (target, ts, user, _)) in batch.keys().enumerate() {
            if target == Target::Forget {
                self.train_segment(batch.slice(start..i));
                self.clock_ms = self.clock_ms.max(ts);
                self.forget_key(user);
                self.counters.forgets += 1;
                self.counters.events_applied += 1;
                start = i + 1;
            }
        }
        self.train_segment(batch.slice(start..batch.len()));
        self.maintain();
        let metrics = &self.metrics;
        self.schedule.observe(&self.config.lr_schedule, self.counters.events_applied, || metrics.window_loss());
        self.report_since(&before)
    }

    /// Removes the user's row and pending admission count; returns the
    /// tombstone of the row, if it had one. What the user's events taught
    /// item and feature rows stays. Called directly (not through a forget
    /// event), it counts no event.
    pub fn forget(&mut self, user: &str) -> Vec<Tombstone> {
        self.forget_key(hash_id(user))
    }

    /// [`Trainer::forget`] of the user whose key is `key`.
    fn forget_key(&mut self, key: u64) -> Vec<Tombstone> {
        let users = TableKind::User.index();
        self.admission[users].remove(key);
        if self.tables[users].remove_key(key, Removal::Forgotten) {
            self.counters.users.forgotten += 1;
            vec![Tombstone { table: TableKind::User, key, cause: Removal::Forgotten }]
        } else {
            Vec::new()
        }
    }

    /// The prediction of `head` for `user` and `item` in `context` (its
    /// features, and its time for the session rule), with the current
    /// parameters: a clipped rating or a click probability. Ids without rows
    /// contribute nothing. Serving computes the same number from a snapshot
    /// of these parameters ([`freshet_core::score`]).
    pub fn predict(&self, head: Head, user: &str, item: &str, context: &ScoreContext<'_>) -> f32 {
        let features: Vec<u64> = context.features.iter().map(|(name, value)| hash_feature(name, value)).collect();
        self.predict_keys(head, hash_id(user), hash_id(item), &features, context.at_ms)
    }

    /// [`Trainer::predict`] of ids and features given by their keys (the
    /// features in name order), as of `at_ms` (`None`: the model's own time).
    pub fn predict_keys(&self, head: Head, user: u64, item: u64, features: &[u64], at_ms: Option<i64>) -> f32 {
        let [users, items, feature_table] = &self.tables;
        let context = ScoreContext { at_ms, ..ScoreContext::none() };
        let user = users.get(user).map(|row| {
            let session = context.session_active(users.last_update(row), self.config.session_gap_ms);
            UserTerms::new(users.params(row), session)
        });
        let features: Vec<&[f32]> = if self.spec.context_features {
            let rows = features.iter().filter_map(|&key| feature_table.get(key));
            rows.map(|row| feature_table.params(row)).collect()
        } else {
            Vec::new()
        };
        let mut vector = vec![0.0; self.spec.dim];
        let terms = score::query(head, self.globals.bias[head.index()], user, features, &mut vector);
        let item = items.get(item).map(|row| items.params(row));
        head.predict(score::item_score(&terms, &vector, item), &self.spec)
    }

    /// The progressive metrics now.
    pub fn metrics(&self) -> MetricsReading {
        self.metrics.snapshot()
    }

    /// The progressive metrics' running sums (to take several shards'
    /// together: [`crate::cumulative_of`]).
    pub fn progressive_metrics(&self) -> &ProgressiveMetrics {
        &self.metrics
    }

    /// Running counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The model's shape.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The configuration trained under.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The trainer clock: the largest event time seen (epoch ms). TTLs use it,
    /// never the wall clock.
    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Current multiplier of the configured learning rates.
    pub fn lr_scale(&self) -> f32 {
        self.schedule.scale()
    }

    /// Rows in a table that this trainer owns (all of them, unsharded).
    pub fn rows(&self, kind: TableKind) -> usize {
        self.tables[kind.index()].owned_len()
    }

    /// Replica rows in a table: rows other shards own, kept to score with.
    pub fn replica_rows(&self, kind: TableKind) -> usize {
        let table = &self.tables[kind.index()];
        table.len() - table.owned_len()
    }

    /// Which rows this trainer owns.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Ids of a table being counted towards admission.
    pub fn pending(&self, kind: TableKind) -> usize {
        self.admission[kind.index()].len()
    }

    /// The full state of one row, if the key has one.
    pub fn row(&self, kind: TableKind, key: u64) -> Option<RowState> {
        let table = &self.tables[kind.index()];
        table.get(key).map(|row| table.row_state(row))
    }

    /// A table's parameters as a `rows × width` view (laid out as
    /// [`RowLayout`] says; strided into the arena, no copy) with the key of each arena row.
    /// Arena order changes as rows are removed.
    pub fn table_params(&self, kind: TableKind) -> (ArrayView2<'_, f32>, Vec<u64>) {
        let table = &self.tables[kind.index()];
        (table.params_view(), table.keys())
    }

    /// Sum of the update counters of a table's rows.
    pub fn update_count_sum(&self, kind: TableKind) -> u64 {
        self.tables[kind.index()].update_count_sum()
    }

    /// One step over events without forgets: score all, sum gradients, update.
    fn train_segment(&mut self, events: Events<'_>) {
        if events.is_empty() {
            return;
        }
        let fresh_from = self.tables.each_ref().map(Table::len);
        let mut keys = std::mem::take(&mut self.scratch.keys);
        keys.clear();
        let mut clock = self.clock_ms;
        for (target, ts, user_key, item_key) in events.keys() {
            clock = clock.max(ts);
            if target != Target::Forget {
                keys.push(EventKeys { user_key, item_key, user: None, item: None });
            }
        }
        self.clock_ms = clock;
        self.warm(&mut keys);
        for (observation, event_keys) in events.iter().filter_map(Observation::of).zip(&keys) {
            self.learn(&observation, event_keys, &fresh_from);
        }
        self.scratch.keys = keys;
        self.apply_step();
    }

    /// Reads the rows `events` will use (those that exist now), so that
    /// training them in micro-batches smaller than the run finds them
    /// cached: their cache misses overlap here instead of queueing one
    /// micro-batch at a time. Changes nothing the model computes.
    pub fn warm_events(&mut self, events: Events<'_>) {
        let mut keys = std::mem::take(&mut self.scratch.keys);
        keys.clear();
        keys.extend(
            events
                .keys()
                .filter(|&(target, ..)| target != Target::Forget)
                .map(|(_, _, user_key, item_key)| EventKeys { user_key, item_key, user: None, item: None }),
        );
        self.warm(&mut keys);
        self.scratch.keys = keys;
    }

    /// Reads every row the step is about to use, in a tight loop of
    /// independent loads (as the index lookups before it were), so their
    /// cache misses overlap instead of queueing one by one inside the
    /// scoring loop. Changes nothing.
    fn warm(&self, keys: &mut [EventKeys]) {
        let [users, items, _] = &self.tables;
        for k in keys.iter_mut() {
            k.user = users.get(k.user_key);
        }
        for k in keys.iter_mut() {
            k.item = items.get(k.item_key);
        }
        if keys.len() < 2 {
            return; // One event's misses have nothing to overlap with.
        }
        let touch = |table: &Table, row: Option<u32>| row.map_or(0.0, |row| table.touch(row));
        let sum: f32 = keys.iter().map(|k| touch(users, k.user) + touch(items, k.item)).sum();
        std::hint::black_box(sum);
    }

    /// Scores one event with the pre-step parameters, records the metrics and
    /// adds its gradient to the step's sums. Rows admitted during this step
    /// (index ≥ `fresh_from`) are left out of the progressive score but are
    /// trained from their initial values.
    fn learn(&mut self, obs: &Observation<'_>, keys: &EventKeys, fresh_from: &[usize; 3]) {
        match obs.head {
            Head::Rating => self.counters.ratings += 1,
            Head::Click => self.counters.clicks += 1,
        }
        self.counters.events_applied += 1;
        let user = keys.user.or_else(|| self.resolve(TableKind::User, keys.user_key, obs.user));
        let item = keys.item.or_else(|| self.resolve(TableKind::Item, keys.item_key, obs.item));
        if let Some(u) = user
            && self.tables[TableKind::User.index()].start_session_if_idle(u, obs.ts, self.config.session_gap_ms)
        {
            self.counters.sessions_restarted += 1;
        }
        let mut features = std::mem::take(&mut self.scratch.features);
        features.clear();
        if self.spec.context_features {
            for &key in obs.features {
                if let Some(row) = self.resolve(TableKind::Feature, key, "") {
                    features.push(row);
                }
            }
        }

        let Trainer { tables, globals, sums, global_sums, metrics, scratch, spec, .. } = self;
        let fresh = |kind: TableKind, row: u32| row as usize >= fresh_from[kind.index()];
        let old_user = user.filter(|&r| !fresh(TableKind::User, r));
        let old_item = item.filter(|&r| !fresh(TableKind::Item, r));
        let head = obs.head;
        let prior = if old_user != user || old_item != item || features.iter().any(|&r| fresh(TableKind::Feature, r)) {
            scratch.prior_features.clear();
            scratch.prior_features.extend(features.iter().copied().filter(|&r| !fresh(TableKind::Feature, r)));
            Some(raw_score(tables, globals, head, old_user, old_item, &scratch.prior_features, &mut scratch.user_vec).0)
        } else {
            None
        };
        // Leaves `p_user + Σ q_f` in the scratch vector, for the item's gradient.
        let (score, terms) = raw_score(tables, globals, head, user, item, &features, &mut scratch.user_vec);
        let prior = prior.unwrap_or(score);
        metrics.record(head, prior, head.predict(prior, spec), obs.target);

        let d = head.gradient(score, obs.target);
        global_sums.grads[head.index()] += d;
        global_sums.counts[head.index()] += 1;
        let [user_sums, item_sums, feature_sums] = sums;
        let [users, items, feature_table] = tables;
        let item_params = item.map(|i| items.params(i));
        let item_factors = item_params.map(|v| &v[items.scalars()..]);
        if let Some(u) = user {
            let g = user_sums.add(users, u, head, d, d, item_factors);
            if head == Head::Rating {
                g[RowLayout::RATING_SCALE] += d * item_params.map_or(0.0, |v| v[RowLayout::bias(head)]);
                g[RowLayout::SESSION_OFFSET] += d;
            }
        }
        for &f in &features {
            feature_sums.add(feature_table, f, head, d, d, item_factors);
        }
        if let Some(i) = item {
            item_sums.add(items, i, head, d * terms.item_bias_weight, d, Some(&scratch.user_vec));
        }
        self.scratch.features = features;
    }

    /// The row of `key`, admitting it if this sighting reaches `min_count`.
    /// A row another shard owns that has no replica here yet is admitted as
    /// a provisional replica from the initial values its owner gives it when
    /// the row's first gradient arrives there.
    fn resolve(&mut self, kind: TableKind, key: u64, id: &str) -> Option<u32> {
        let k = kind.index();
        if let Some(row) = self.tables[k].get(key) {
            return Some(row);
        }
        let (admitted, dropped) = self.admission[k].sight(key, self.clock_ms);
        let counters = self.counters.table_mut(kind);
        counters.pending_dropped += dropped as u64;
        if !admitted {
            return None;
        }
        let (seed, std) = (self.config.seed, self.config.init_std);
        let init = |row: &mut [f32]| init_row(seed, kind, key, std, row);
        if kind != TableKind::User && !self.shard.owns(key) {
            return Some(self.tables[k].insert_replica(key, id, self.clock_ms, init));
        }
        counters.admitted += 1;
        Some(self.tables[k].insert(key, id, self.clock_ms, init))
    }

    /// One optimizer step per touched row and per head that saw events, all
    /// in one function compiled for the instructions the optimizer picked
    /// (one dispatch per step, not per row).
    fn apply_step(&mut self) {
        self.optimizer.arch().dispatch(ApplyStep(self));
    }

    #[inline(always)]
    fn apply_step_here(&mut self) {
        let lr_scale = self.schedule.scale();
        let clock = self.clock_ms;
        let Trainer { tables, sums, optimizer, scratch, counters, globals, global_sums, shard, outbox, .. } = self;
        for (table, sums) in tables.iter_mut().zip(sums.iter_mut()) {
            let width = sums.width;
            for (slot, &row) in sums.rows.iter().enumerate() {
                let grad = &sums.grads[slot * width..(slot + 1) * width];
                let count = sums.counts[slot];
                if table.is_replica(row) {
                    outbox.add(table, row, grad, count);
                    continue;
                }
                let input =
                    StepInput { count, step: table.steps(row).saturating_add(1), prior_updates: table.updates(row) };
                if optimizer.step_here(table.row_mut(row), grad, input, lr_scale, Penalty::L2, &mut scratch.step) {
                    table.record_update(row, count, clock);
                } else {
                    counters.nonfinite_skipped += 1;
                }
            }
            sums.clear(table);
        }
        let moments = optimizer.moments();
        for h in Head::ALL.map(Head::index) {
            let count = global_sums.counts[h];
            if count == 0 {
                continue;
            }
            if !shard.owns_globals() {
                outbox.add_global(h, global_sums.grads[h], count);
                continue;
            }
            let row = RowMut {
                scalars: 1,
                params: std::slice::from_mut(&mut globals.bias[h]),
                m: if moments >= 2 { std::slice::from_mut(&mut globals.m[h]) } else { &mut [] },
                v: if moments >= 1 { std::slice::from_mut(&mut globals.v[h]) } else { &mut [] },
            };
            let input =
                StepInput { count, step: globals.steps[h].saturating_add(1), prior_updates: globals.updates[h] };
            let grad = [global_sums.grads[h]];
            if optimizer.step_here(row, &grad, input, lr_scale, Penalty::None, &mut scratch.step) {
                globals.steps[h] = input.step;
                globals.updates[h] += u64::from(count);
            } else {
                counters.nonfinite_skipped += 1;
            }
        }
        *global_sums = GlobalSums::default();
    }

    /// End of batch: the TTL sweep (at most every TTL/16 of event time) and the row budget.
    fn maintain(&mut self) {
        if let Some(ttl) = self.config.ttl_ms {
            if self.clock_ms.saturating_sub(self.last_sweep_ms) >= (ttl / 16).max(1) {
                let cutoff = self.clock_ms.saturating_sub(ttl);
                for kind in TableKind::ALL {
                    let expired = self.tables[kind.index()].expire(cutoff);
                    self.counters.table_mut(kind).expired += expired as u64;
                    self.admission[kind.index()].expire(cutoff);
                }
                self.last_sweep_ms = self.clock_ms;
            }
        }
        if let Some(budget) = self.config.max_rows {
            for kind in TableKind::ALL {
                let table = &mut self.tables[kind.index()];
                if table.owned_len() > budget {
                    let evicted = table.evict_to(budget - budget / 16);
                    self.counters.table_mut(kind).evicted += evicted as u64;
                }
            }
        }
    }

    fn report_since(&self, before: &Counters) -> BatchReport {
        let now = &self.counters;
        let tables = |f: fn(&crate::report::TableCounters) -> u64| -> u64 {
            TableKind::ALL.iter().map(|&k| f(now.table(k)) - f(before.table(k))).sum()
        };
        BatchReport {
            events: now.events_applied - before.events_applied,
            ratings: now.ratings - before.ratings,
            clicks: now.clicks - before.clicks,
            forgets: now.forgets - before.forgets,
            nonfinite_skipped: now.nonfinite_skipped - before.nonfinite_skipped,
            admitted: tables(|t| t.admitted),
            expired: tables(|t| t.expired),
            evicted: tables(|t| t.evicted),
            forgotten: tables(|t| t.forgotten),
            lr_scale: self.schedule.scale(),
        }
    }
}

/// The raw score of an event from the rows it has ([`freshet_core::score`];
/// a user's session is always active here: `learn` restarted it first),
/// leaving the query vector `p_user + Σ q_f` in `vector`.
fn raw_score(
    tables: &[Table; 3],
    globals: &GlobalParams,
    head: Head,
    user: Option<u32>,
    item: Option<u32>,
    features: &[u32],
    vector: &mut [f32],
) -> (f32, QueryTerms) {
    let [users, items, feature_table] = tables;
    let user = user.map(|u| UserTerms::new(users.params(u), true));
    let features = features.iter().map(|&f| feature_table.params(f));
    let terms = score::query(head, globals.bias[head.index()], user, features, vector);
    (score::item_score(&terms, vector, item.map(|i| items.params(i))), terms)
}

#[cfg(test)]
mod tests {
    use freshet_core::{Click, Features, Rating};

    use super::*;

    fn trainer() -> Trainer {
        let spec = ModelSpec { dim: 8, ..ModelSpec::default() };
        let config = TrainerConfig { init_std: 0.4, ..TrainerConfig::default() };
        Trainer::new(spec, config).expect("valid")
    }

    /// The loss of `event` with the current parameters.
    fn loss(t: &Trainer, head: Head, target: f32, rows: (Option<u32>, Option<u32>, &[u32])) -> f64 {
        let mut user_vec = vec![0.0; t.spec.dim];
        let (score, _) = raw_score(&t.tables, &t.globals, head, rows.0, rows.1, rows.2, &mut user_vec);
        f64::from(head.loss(score, target))
    }

    /// Every parameter the event touches: analytic gradient (what `learn`
    /// sums) against a central finite difference of the loss.
    #[test]
    fn gradients_of_each_head_match_finite_differences() {
        let features =
            Features::from([("device".to_owned(), "ios".to_owned()), ("page".to_owned(), "home".to_owned())]);
        let events = [
            Feedback::Rating(Rating {
                user: "u".into(),
                item: "i".into(),
                rating: 4.5,
                ts: 1,
                features: features.clone(),
            }),
            Feedback::Click(Click {
                user: "u".into(),
                item: "i".into(),
                clicked: true,
                ts: 1,
                features: features.clone(),
            }),
            Feedback::Click(Click { user: "u".into(), item: "i".into(), clicked: false, ts: 1, features }),
        ];
        for event in &events {
            let mut t = trainer();
            let mut keyed = KeyedEvents::new();
            keyed.push(event);
            let obs = Observation::of(keyed.iter().next().expect("one event")).expect("not a forget");
            // Admit the rows, then give the global bias a non-trivial value.
            let user = t.resolve(TableKind::User, hash_id(obs.user), obs.user).expect("admitted");
            let item = t.resolve(TableKind::Item, hash_id(obs.item), obs.item).expect("admitted");
            let feature_rows: Vec<u32> =
                obs.features.iter().map(|&key| t.resolve(TableKind::Feature, key, "").expect("admitted")).collect();
            for (k, row) in [(0usize, user), (1, item), (2, feature_rows[0]), (2, feature_rows[1])] {
                // Every scalar non-zero, the user's scale and session offsets included.
                let scalars = t.tables[k].scalars();
                t.tables[k].row_mut(row).params[..scalars].fill(0.1 * (k as f32 + 1.0));
            }
            t.globals.bias[obs.head.index()] = 0.3;
            let fresh_from = t.tables.each_ref().map(Table::len);
            let keys = EventKeys { user_key: hash_id(obs.user), item_key: hash_id(obs.item), user: None, item: None };
            t.learn(&obs, &keys, &fresh_from);

            let h = 1e-2f32;
            let rows = (Some(user), Some(item), feature_rows.as_slice());
            let mut checked = 0;
            let touched = [
                (TableKind::User, user),
                (TableKind::Item, item),
                (TableKind::Feature, feature_rows[0]),
                (TableKind::Feature, feature_rows[1]),
            ];
            for (kind, row) in touched {
                let k = kind.index();
                let slot = *t.tables[k].slot_mut(row) as usize;
                let width = t.spec.row_width(kind);
                let analytic: Vec<f32> = t.sums[k].grads[slot * width..(slot + 1) * width].to_vec();
                for (j, &analytic) in analytic.iter().enumerate() {
                    let original = t.tables[k].params(row)[j];
                    t.tables[k].row_mut(row).params[j] = original + h;
                    let up = loss(&t, obs.head, obs.target, rows);
                    t.tables[k].row_mut(row).params[j] = original - h;
                    let down = loss(&t, obs.head, obs.target, rows);
                    t.tables[k].row_mut(row).params[j] = original;
                    let numeric = (up - down) / f64::from(2.0 * h);
                    let a = f64::from(analytic);
                    assert!(
                        (numeric - a).abs() < 2e-3 * (1.0 + a.abs()),
                        "{:?} {kind:?} param {j}: {numeric} vs {a}",
                        obs.head
                    );
                    checked += 1;
                }
            }
            let g = obs.head.index();
            let original = t.globals.bias[g];
            t.globals.bias[g] = original + h;
            let up = loss(&t, obs.head, obs.target, rows);
            t.globals.bias[g] = original - h;
            let down = loss(&t, obs.head, obs.target, rows);
            t.globals.bias[g] = original;
            let numeric = (up - down) / f64::from(2.0 * h);
            assert!((numeric - f64::from(t.global_sums.grads[g])).abs() < 2e-3);
            assert_eq!(checked, 12 + 3 * 10, "a user row has 4 scalars, the others 2, dim 8");
        }
    }
}
