//! A sharded model simulated in one process, deterministically: what
//! `freshet eval --shards` replays a data set through, to measure what
//! sharding costs in quality before any broker is involved.
//!
//! Each event goes to the shard of its user ([`freshet_core::shard_of`]);
//! each shard trains micro-batches of its own events as they fill (so one
//! shard is exactly `Trainer::train_batch` over chunks of the stream). Every `staleness_ms`
//! of event time (a live deployment receives events as they happen, so
//! event time stands for wall time) the shards synchronise: first every
//! shard's gradients for rows others own are delivered, and each owner
//! steps all that reached it in one step ([`Trainer::apply_gradients`]);
//! then every shard's changed rows reach the others' replicas
//! ([`Trainer::apply_replica`]). So a change to a row, local or remote, is
//! scored with elsewhere at most `staleness_ms` later. In the distributed
//! protocol a remote gradient travels after the sender's checkpoint and its
//! effect in the owner's next snapshot: about two checkpoint intervals, so
//! `staleness_ms` models a deployment checkpointing twice as often. With `staleness_ms = 0` the
//! shards synchronise after every micro-batch; with micro-batches of one
//! event that gives the unsharded model bit for bit.

use freshet_core::keyed::{EventRef, Events, KeyedEvents};
use freshet_core::{ConfigError, Feedback, ModelSpec, Shard, hash_id, shard_of};

use crate::config::TrainerConfig;
use crate::metrics::{ClickStats, RatingStats, cumulative_of};
use crate::trainer::Trainer;

/// What crossed between the shards of a [`ShardSimulation`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimulationTraffic {
    /// Synchronisations.
    pub syncs: u64,
    /// Gradient messages delivered (one per sender and owner per sync).
    pub gradient_messages: u64,
    /// Row gradients in them.
    pub gradient_rows: u64,
    /// Replica rows set or removed, summed over the shards that took them.
    pub replica_rows: u64,
}

/// Events whose rows an unsharded replay in smaller micro-batches reads
/// ahead at once ([`Trainer::warm_events`]): a micro-batch of one event has
/// no other event's cache misses to overlap with. Measured on 1M
/// synthetic clicks at batch 1: see README.
const WARM_AHEAD: usize = 16;

/// `S` shard trainers of one model, fed in event order. See the module
/// documentation.
#[derive(Debug)]
pub struct ShardSimulation {
    shards: Vec<Trainer>,
    /// Each shard's micro-batch filling up.
    pending: Vec<KeyedEvents>,
    batch: usize,
    staleness_ms: i64,
    next_sync_ms: Option<i64>,
    traffic: SimulationTraffic,
}

impl ShardSimulation {
    /// `shards` fresh shards of a model, training micro-batches of `batch`
    /// events and synchronising every `staleness_ms` of event time.
    pub fn new(spec: ModelSpec, config: TrainerConfig, batch: usize, staleness_ms: i64) -> Result<Self, ConfigError> {
        if batch == 0 {
            return Err(ConfigError::new("batch", "must be positive"));
        }
        if staleness_ms < 0 {
            return Err(ConfigError::new("staleness_ms", "must not be negative"));
        }
        spec.check()?;
        let trainers = (0..spec.shards)
            .map(|index| Trainer::new_shard(spec.clone(), config.clone(), Shard::new(index, spec.shards)?))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ShardSimulation {
            pending: trainers.iter().map(|_| KeyedEvents::with_capacity(batch, 0, 0)).collect(),
            shards: trainers,
            batch,
            staleness_ms,
            next_sync_ms: None,
            traffic: SimulationTraffic::default(),
        })
    }

    /// Feeds the next event (events come in time order) into its shard's
    /// micro-batch.
    pub fn push(&mut self, event: Feedback) {
        let shard = self.sync_before(event.ts(), || hash_id(event.user()));
        self.pending[shard].push(&event);
        self.train_if_full(shard);
    }

    /// [`ShardSimulation::push`] of an event keyed already.
    pub fn push_keyed(&mut self, event: EventRef<'_>) {
        let shard = self.sync_before(event.ts, || event.user);
        self.pending[shard].push_ref(event);
        self.train_if_full(shard);
    }

    /// Feeds `events` (in time order, after those fed before) as
    /// [`ShardSimulation::push_keyed`] would one by one, calling `before`
    /// with each event and the trainer that will train it, as that trainer
    /// is before the event's micro-batch (where the progressive prediction
    /// is taken). An unsharded model trains whole micro-batches of `events`
    /// in place, without copying them.
    pub fn push_events<E>(
        &mut self,
        events: Events<'_>,
        mut before: impl FnMut(&Trainer, EventRef<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut next = 0;
        let mut warmed_to = 0;
        while next < events.len() {
            let whole = next + self.batch <= events.len();
            if self.shards.len() == 1 && self.batch < WARM_AHEAD && next >= warmed_to {
                warmed_to = (next + WARM_AHEAD).min(events.len());
                self.shards[0].warm_events(events.slice(next..warmed_to));
            }
            if self.shards.len() > 1 || !self.pending[0].is_empty() || !whole {
                let event = events.get(next).expect("in range");
                before(self.trainer_of(event.user), event)?;
                self.push_keyed(event);
                next += 1;
                continue;
            }
            let batch = events.slice(next..next + self.batch);
            for event in batch.iter() {
                before(&self.shards[0], event)?;
                self.sync_before(event.ts, || event.user);
            }
            self.shards[0].train_events(batch);
            if self.staleness_ms == 0 {
                self.exchange();
            }
            next += self.batch;
        }
        Ok(())
    }

    /// The trainer that will train an event of `user_key` next: its
    /// owner's, which has trained every micro-batch before the event's.
    pub fn trainer_of(&self, user_key: u64) -> &Trainer {
        &self.shards[self.shard_of(user_key)]
    }

    /// Exchanges first if the event at `ts` is past the next sync; returns
    /// the shard of the event's user (whose key `user_key` gives).
    fn sync_before(&mut self, ts: i64, user_key: impl FnOnce() -> u64) -> usize {
        let due = *self.next_sync_ms.get_or_insert(ts.saturating_add(self.staleness_ms));
        if self.staleness_ms > 0 && ts >= due {
            self.exchange();
            self.next_sync_ms = Some(ts - ts.rem_euclid(self.staleness_ms) + self.staleness_ms);
        }
        match self.shards.len() {
            1 => 0,
            _ => self.shard_of(user_key()),
        }
    }

    fn shard_of(&self, user_key: u64) -> usize {
        shard_of(user_key, self.shards.len() as u32) as usize
    }

    /// Trains `shard`'s micro-batch once it is full.
    fn train_if_full(&mut self, shard: usize) {
        if self.pending[shard].len() >= self.batch {
            self.shards[shard].train_events(self.pending[shard].as_events());
            self.pending[shard].clear();
            if self.staleness_ms == 0 {
                self.exchange();
            }
        }
    }

    /// Trains what is pending and synchronises the shards: the state at the
    /// end of the stream.
    pub fn finish(&mut self) {
        for (trainer, pending) in self.shards.iter_mut().zip(&mut self.pending) {
            if !pending.is_empty() {
                trainer.train_events(pending.as_events());
                pending.clear();
            }
        }
        self.exchange();
    }

    /// The shards.
    pub fn shards(&self) -> &[Trainer] {
        &self.shards
    }

    /// The cumulative progressive metrics of every shard taken together.
    pub fn metrics(&self) -> (RatingStats, ClickStats) {
        cumulative_of(self.shards.iter().map(Trainer::progressive_metrics))
    }

    /// What crossed between the shards so far.
    pub fn traffic(&self) -> SimulationTraffic {
        self.traffic
    }

    /// Gradients to their owners, then changed rows to the replicas (what
    /// the shards trained so far; batches still filling wait).
    fn exchange(&mut self) {
        self.traffic.syncs += 1;
        if self.shards.len() == 1 {
            return;
        }
        let mut arrived: Vec<Vec<_>> = self.shards.iter().map(|_| Vec::new()).collect();
        for (owner, gradients) in self.shards.iter_mut().flat_map(Trainer::take_gradients) {
            self.traffic.gradient_messages += 1;
            self.traffic.gradient_rows += gradients.tables.iter().map(|t| t.keys.len() as u64).sum::<u64>();
            arrived[owner as usize].push(gradients);
        }
        for (trainer, messages) in self.shards.iter_mut().zip(&arrived) {
            if !messages.is_empty() {
                trainer.apply_gradients(messages).expect("a shard's gradients fit its owner");
            }
        }
        let changes: Vec<_> = self.shards.iter_mut().map(Trainer::drain_params).collect();
        for (from, delta) in changes.iter().enumerate() {
            for (to, trainer) in self.shards.iter_mut().enumerate() {
                if to != from {
                    let changed = trainer.apply_replica(from as u32, delta).expect("a shard's rows fit the model");
                    self.traffic.replica_rows += changed as u64;
                }
            }
        }
    }
}
