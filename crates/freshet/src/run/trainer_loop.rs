//! The trainer thread of `freshet run`: applies micro-batches in order,
//! checkpoints every interval (and before letting revoked partitions go), and
//! only then acknowledges the offsets to the source and lets the publisher
//! commit the version (its delta was handed over before the checkpoint
//! write, so its messages go out meanwhile). After each checkpoint it retains a
//! copy of the version (a rollback target) and prunes old copies; between
//! batches it serves admin requests (rollback, backup) and, when the quality
//! gate has held too long, rolls back on its own.

use std::time::{Duration, Instant};

use anyhow::Context;
use freshet_checkpoint::{CheckpointError, CheckpointStore, ExchangeCommit, RollbackMode, RollbackRecord};
use freshet_consumer::{Acknowledger, MicroBatch, SourceEvent};
use freshet_core::exchange::Channel;
use freshet_core::snapshot::Watermark;
use freshet_core::{ModelSpec, NextOffsets, now_ms};
use freshet_publisher::{Outgoing, PublisherHandle};
use freshet_trainer::{MetricsReading, StateChanges, Trainer};
use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::mpsc::Receiver;
use tokio::sync::mpsc::error::TryRecvError;
use tracing::{debug, info, info_span, warn};

use super::admin::{AdminError, AdminRequest, Answer};
use super::exchange::{ExchangeSender, ShardExchange};
use super::metrics::RunMetrics;
use super::replicas::ReplicaFeed;
use crate::config::CheckpointSettings;
use freshet_subscriber::ReplicaDelta;

/// How long a rewound source may take to confirm.
const REWIND_TIMEOUT: Duration = Duration::from_secs(60);

/// What to wait for when nothing is pending.
const IDLE_WAIT: Duration = Duration::from_secs(3600);
/// How often to look for a newly published version while one is in flight.
const PUBLISH_CHECK: Duration = Duration::from_millis(100);
/// How often to look for sent outboxes while one is waiting.
const EXCHANGE_CHECK: Duration = Duration::from_millis(200);
/// The memtables are flushed at least this long before a retained copy is
/// due (a checkpoint interval, if longer): time for the background flush
/// to finish before the copy's own.
const FLUSH_AHEAD_MIN_LEAD_MS: u64 = 500;
/// How long the final publish may take at shutdown.
const PUBLISH_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// The trainer, its store and the bookkeeping between checkpoints.
pub struct TrainerLoop {
    trainer: Trainer,
    store: CheckpointStore,
    spec: ModelSpec,
    acknowledger: Acknowledger,
    settings: CheckpointSettings,
    /// Where checkpointed versions go as snapshots, if publishing.
    publisher: Option<PublisherHandle>,
    metrics: RunMetrics,
    /// Next offset per partition of everything applied so far.
    applied: NextOffsets,
    /// Events applied since the last checkpoint.
    events_pending: u64,
    /// Whether offsets moved since the last checkpoint (rejects move them too).
    offsets_pending: bool,
    /// When the newest checkpoint started: the next is due `interval_ms`
    /// after it, so the time a checkpoint (and the retained copy after it)
    /// takes does not stretch the cadence.
    last_checkpoint: Instant,
    /// Roll back (skip) once the quality gate has held a publish this long.
    rollback_after: Option<Duration>,
    /// The hold the last automatic rollback answered (one per hold).
    rolled_back_hold: Option<Instant>,
    /// Whether the memtables were flushed ahead of the next retained copy.
    flushed_ahead: bool,
    /// Operator requests, when the admin endpoints are on.
    admin: Option<Receiver<AdminRequest>>,
    /// A shard's exchange with the other shards of a sharded model.
    sharded: Option<Sharded>,
    /// When the newest retained copy was made (ms since the epoch), if any.
    newest_retained_ms: Option<i64>,
}

/// What a shard of a sharded model keeps beside the unsharded loop's state.
pub struct Sharded {
    /// The decisions: marks, forwarding, outboxes.
    pub exchange: ShardExchange,
    /// The thread that sends outboxes.
    pub sender: ExchangeSender,
    /// Outboxes up to this version are forgotten by the store.
    forgotten_through: u64,
    /// The newest version whose outbox went to the sender.
    submitted_through: u64,
    /// The other shards' snapshots, for the replicas (none when publishing is off).
    replicas: Option<(ReplicaFeed, Receiver<ReplicaDelta>)>,
}

impl Sharded {
    /// A shard's exchange and its sender.
    pub fn new(
        exchange: ShardExchange,
        sender: ExchangeSender,
        replicas: Option<(ReplicaFeed, Receiver<ReplicaDelta>)>,
    ) -> Self {
        Sharded { exchange, sender, forgotten_through: 0, submitted_through: 0, replicas }
    }

    /// Hands `outbox` to the sender.
    fn submit(&mut self, outbox: freshet_core::exchange::Outbox) {
        self.submitted_through = outbox.version;
        self.sender.submit(outbox);
    }
}

/// Forgets from `store` the outboxes `sharded`'s sender reports the broker has.
fn forget_sent(store: &mut CheckpointStore, sharded: &mut Sharded) -> anyhow::Result<()> {
    let sent = sharded.sender.sent_through();
    if sent > sharded.forgotten_through {
        store.forget_outboxes(sent).context("forgetting sent outboxes")?;
        sharded.forgotten_through = sent;
    }
    Ok(())
}

/// Whether a version is retained whatever the spacing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retain {
    /// At start and after a rollback: the version to come back to.
    Now,
    /// After a checkpoint: when the policy's spacing says so.
    IfDue,
}

/// What is ready without waiting: an operator request or a replica first
/// (a busy source never starves them), then the source's next event.
fn ready(
    admin: &mut Option<Receiver<AdminRequest>>,
    replicas: Option<&mut Receiver<ReplicaDelta>>,
    events: &mut Receiver<SourceEvent>,
) -> Option<Wake> {
    if let Some(request) = admin.as_mut().and_then(|admin| admin.try_recv().ok()) {
        return Some(Wake::Admin(request));
    }
    if let Some(replica) = replicas.and_then(|replicas| replicas.try_recv().ok()) {
        return Some(Wake::Replica(replica));
    }
    match events.try_recv() {
        Ok(event) => Some(Wake::Source(Some(event))),
        Err(TryRecvError::Disconnected) => Some(Wake::Source(None)),
        Err(TryRecvError::Empty) => None,
    }
}

/// What woke the loop.
enum Wake {
    Source(Option<SourceEvent>),
    Admin(AdminRequest),
    Replica(ReplicaDelta),
    Timer,
}

impl TrainerLoop {
    /// A loop resuming after `applied` (the restored checkpoint's offsets).
    #[allow(clippy::too_many_arguments)] // the loop's parts, each from its own setup step
    pub fn new(
        trainer: Trainer,
        store: CheckpointStore,
        acknowledger: Acknowledger,
        settings: CheckpointSettings,
        publisher: Option<PublisherHandle>,
        metrics: RunMetrics,
        applied: NextOffsets,
        rollback_after: Option<Duration>,
        admin: Option<Receiver<AdminRequest>>,
        sharded: Option<Sharded>,
    ) -> Self {
        let spec = trainer.spec().clone();
        TrainerLoop {
            sharded,
            rollback_after,
            rolled_back_hold: None,
            flushed_ahead: false,
            admin,
            trainer,
            store,
            spec,
            acknowledger,
            settings,
            publisher,
            metrics,
            applied,
            events_pending: 0,
            offsets_pending: false,
            last_checkpoint: Instant::now(),
            newest_retained_ms: None,
        }
    }

    /// Runs until the source closes its channel, then writes a final
    /// checkpoint and publishes it. A restored model is published in full first.
    pub fn run(mut self, runtime: &Handle, mut events: Receiver<SourceEvent>) -> anyhow::Result<()> {
        if let Some(sharded) = &mut self.sharded {
            // What the broker may not have from before a crash goes out first, byte for byte.
            for outbox in self.store.outboxes().context("reading the outboxes")? {
                info!(version = outbox.version, messages = outbox.messages.len(), "sending an outbox again");
                sharded.submit(outbox);
            }
        }
        self.newest_retained_ms =
            self.store.retained().context("listing the retained versions")?.last().map(|r| r.created_ms);
        if self.store.version() > 0 {
            // A rollback written while stopped (`freshet rollback`) goes out marked as one.
            self.publish_full_of(self.store.current_rollback().map(|r| r.to_version));
            self.retain(Retain::Now)?;
        }
        let applied = self.trainer.counters().events_applied;
        self.metrics.restored(self.store.version(), applied, self.store.events_skipped());
        loop {
            let checkpoint_wait = if self.pending() {
                Duration::from_millis(self.settings.interval_ms).saturating_sub(self.last_checkpoint.elapsed())
            } else {
                IDLE_WAIT
            };
            let full_wait = self.publisher.as_ref().map_or(IDLE_WAIT, PublisherHandle::full_due_in);
            let wait = checkpoint_wait
                .min(full_wait)
                .min(self.hold_check_in())
                .min(self.exchange_check_in())
                .min(self.publish_check_in());
            let admin = &mut self.admin;
            let mut replicas = self.sharded.as_mut().and_then(|sharded| sharded.replicas.as_mut()).map(|(_, r)| r);
            // What is ready now is taken without entering the runtime (a
            // timer registered from this thread wakes the runtime's driver:
            // a system call per batch under load).
            let wake = match ready(admin, replicas.as_deref_mut(), &mut events) {
                Some(wake) => wake,
                None => runtime.block_on(async {
                    tokio::select! {
                        event = events.recv() => Wake::Source(event),
                        Some(request) = async { match admin { Some(admin) => admin.recv().await, None => None } } => {
                            Wake::Admin(request)
                        }
                        Some(replica) = async { match replicas { Some(replicas) => replicas.recv().await, None => None } } => {
                            Wake::Replica(replica)
                        }
                        () = tokio::time::sleep(wait) => Wake::Timer,
                    }
                }),
            };
            match wake {
                Wake::Source(Some(SourceEvent::Batch(batch))) => self.apply(batch),
                Wake::Source(Some(SourceEvent::Assigned(partitions))) => {
                    debug!(count = partitions.len(), "assigned");
                    self.metrics.source_partitions(self.acknowledger.partitions_assigned());
                }
                Wake::Source(Some(SourceEvent::Revoked(revocation))) => {
                    self.checkpoint().context("checkpoint before revocation")?;
                    revocation.acknowledge();
                    self.metrics.source_partitions(self.acknowledger.partitions_assigned());
                }
                Wake::Source(Some(SourceEvent::Rewound)) => warn!("a rewind nobody waits for"),
                Wake::Source(None) => {
                    self.checkpoint().context("final checkpoint")?;
                    info!(version = self.store.version(), "trainer stopped after a final checkpoint");
                    self.close_exchange()?;
                    return self.close_publisher();
                }
                Wake::Admin(request) => self.serve(request, runtime, &mut events)?,
                Wake::Replica(replica) => self.apply_replica(&replica),
                Wake::Timer => {}
            }
            if self.due() {
                self.checkpoint()?;
            } else if !self.pending() && self.publisher.as_ref().is_some_and(PublisherHandle::full_due) {
                // Idle: send the current version in full again, so the
                // topic's retention never leaves subscribers without one.
                self.publish_full();
            }
            self.check_publisher()?;
            self.check_exchange()?;
            self.metrics.consumers_replaced(self.acknowledger.consumers_replaced());
            self.roll_back_if_held(runtime, &mut events)?;
        }
    }

    /// How soon to look whether the publisher published a version the store
    /// has not recorded as published yet (a long wait when none is in
    /// flight): without it a loop gone idle while a publish was under way
    /// would record it only at its next wake.
    fn publish_check_in(&self) -> Duration {
        match &self.publisher {
            Some(_) if self.store.published_version() < self.store.version() => PUBLISH_CHECK,
            _ => IDLE_WAIT,
        }
    }

    /// How soon to look whether the broker took an outbox the store still
    /// keeps (a long wait when none is waiting).
    fn exchange_check_in(&self) -> Duration {
        match &self.sharded {
            Some(sharded) if sharded.forgotten_through < sharded.submitted_through => EXCHANGE_CHECK,
            _ => IDLE_WAIT,
        }
    }

    /// How long until an automatic rollback may be due (a long wait when
    /// none can be).
    fn hold_check_in(&self) -> Duration {
        let (Some(after), Some(publisher)) = (self.rollback_after, &self.publisher) else { return IDLE_WAIT };
        match publisher.stats().held_since {
            Some(since) if Some(since) != self.rolled_back_hold => after.saturating_sub(since.elapsed()),
            _ => IDLE_WAIT.min(after),
        }
    }

    /// Rolls back (skip) to the last published version once the quality
    /// gate has held a publish for `rollback_after`, once per hold.
    fn roll_back_if_held(&mut self, runtime: &Handle, events: &mut Receiver<SourceEvent>) -> anyhow::Result<()> {
        let (Some(after), Some(publisher)) = (self.rollback_after, &self.publisher) else { return Ok(()) };
        let Some(since) = publisher.stats().held_since else { return Ok(()) };
        if since.elapsed() < after || self.rolled_back_hold == Some(since) {
            return Ok(());
        }
        self.rolled_back_hold = Some(since);
        let Some(to) = self.default_rollback_target()? else {
            warn!("quality gate held too long, but no published version is retained to roll back to");
            return Ok(());
        };
        warn!(to, held_ms = since.elapsed().as_millis() as u64, "quality gate held too long: rolling back");
        match self.rollback(to, RollbackMode::Skip, "quality_gate", runtime, events)? {
            Ok(_) => Ok(()),
            Err(refused) => {
                warn!(refused = %refused.message, "automatic rollback refused; the gate keeps holding");
                Ok(())
            }
        }
    }

    /// Does what an operator asked and answers.
    fn serve(
        &mut self,
        request: AdminRequest,
        runtime: &Handle,
        events: &mut Receiver<SourceEvent>,
    ) -> anyhow::Result<()> {
        match request {
            AdminRequest::Rollback { to, mode, reason, reply } => {
                let answer = match to.map_or_else(|| self.default_rollback_target(), |to| Ok(Some(to)))? {
                    Some(to) => {
                        self.rollback(to, mode, reason, runtime, events)?.map(|record| json!({"rollback": record}))
                    }
                    None => Err(AdminError::bad("no published version is retained to roll back to".to_owned())),
                };
                let _ = reply.send(answer);
            }
            AdminRequest::Backup { to, reply } => match self.backup(&to) {
                Ok(answer) => drop(reply.send(answer)),
                Err(error) => {
                    let _ = reply.send(Err(AdminError::internal(format!("{error:#}"))));
                    return Err(error);
                }
            },
            AdminRequest::Versions { reply } => {
                let _ = reply.send(self.versions());
            }
        }
        Ok(())
    }

    /// A consistent copy of the checkpoint, taken between batches after a
    /// checkpoint of everything applied (so it holds the newest version).
    /// The outer error is fatal, as a failed checkpoint is everywhere: the
    /// changes it drained from the trainer are in no checkpoint, so the run
    /// stops and a restart resumes from the last durable one.
    fn backup(&mut self, to: &std::path::Path) -> anyhow::Result<Answer> {
        if to.exists() {
            return Ok(Err(AdminError::bad(format!("{} exists: give a directory that does not", to.display()))));
        }
        self.checkpoint().context("checkpoint before a backup")?;
        if let Err(error) = self.store.backup(to) {
            return Ok(Err(AdminError::internal(error.to_string())));
        }
        info!(to = %to.display(), version = self.store.version(), "online backup written");
        Ok(Ok(json!({"backup": to, "version": self.store.version()})))
    }

    /// The retained versions, their cost on disk and the rollbacks so far.
    fn versions(&self) -> Answer {
        let internal = |error: CheckpointError| AdminError::internal(error.to_string());
        let retained = self.store.retained().map_err(internal)?;
        Ok(json!({
            "version": self.store.version(),
            "published_version": self.store.published_version(),
            "retained_disk": self.store.retained_disk(&retained).map_err(internal)?,
            "retained": retained,
            "events_skipped": self.store.events_skipped(),
            "rollbacks": self.store.rollbacks(),
        }))
    }

    /// Rolls back to retained version `to`: checkpoints what is applied,
    /// rewrites the store as `to` in one batch ([`CheckpointStore::rollback`]),
    /// restores the trainer from it, rewinds the source for a replay, retains
    /// the new version and publishes it in full, naming `to`. The outer error
    /// is fatal (the process restarts from the store, which holds the state
    /// before or after); the inner one is the request's answer.
    fn rollback(
        &mut self,
        to: u64,
        mode: RollbackMode,
        reason: &'static str,
        runtime: &Handle,
        events: &mut Receiver<SourceEvent>,
    ) -> anyhow::Result<Result<RollbackRecord, AdminError>> {
        let _span = info_span!("rollback", to, %mode, reason).entered();
        if self.sharded.is_some() {
            let refused = "rolling back one shard of a sharded model is not built yet (docs/scaling.md)";
            return Ok(Err(AdminError::bad(refused.to_owned())));
        }
        let started = Instant::now();
        self.checkpoint().context("checkpoint before a rollback")?;
        let version_before = self.store.version();
        let config = self.trainer.config().clone();
        let (record, resumed) = match self.store.rollback_and_restore(to, mode, reason, now_ms(), &self.spec, config) {
            Ok(done) => done,
            // Written but not restored: the process restarts from the store, which holds the rollback.
            Err(error) if self.store.version() != version_before => {
                return Err(anyhow::Error::new(error).context("restoring the rolled-back checkpoint"));
            }
            Err(error @ (CheckpointError::NotRetained { .. } | CheckpointError::Rollback(_))) => {
                return Ok(Err(AdminError::bad(error.to_string())));
            }
            Err(error) => return Ok(Err(AdminError::internal(error.to_string()))),
        };
        let before = std::mem::replace(&mut self.applied, resumed.offsets);
        self.trainer = resumed.trainer;
        if mode == RollbackMode::Replay {
            // Partitions the version had not read at all are read again from their start.
            let mut to_offsets = self.applied.clone();
            for tp in before.keys() {
                to_offsets.entry(tp.clone()).or_insert(0);
            }
            self.rewind(&to_offsets, runtime, events)?;
        }
        self.retain(Retain::Now)?;
        self.publish_full_of(Some(to));
        let applied = self.trainer.counters().events_applied;
        self.metrics.rolled_back(reason, started.elapsed().as_secs_f64(), applied, self.store.events_skipped());
        self.metrics.checkpoint_version(self.store.version());
        warn!(
            version = record.version,
            to,
            %mode,
            reason,
            events_applied = record.events_applied_after,
            events_skipped = record.events_skipped_after,
            skipped_ranges = ?record.ranges,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rolled back"
        );
        Ok(Ok(record))
    }

    /// Moves the source back to `to` and drops every batch read before the
    /// move (they are read again after it).
    fn rewind(&mut self, to: &NextOffsets, runtime: &Handle, events: &mut Receiver<SourceEvent>) -> anyhow::Result<()> {
        self.acknowledger.rewind(to);
        let mut dropped = 0usize;
        let deadline = Instant::now() + REWIND_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match runtime.block_on(async { tokio::time::timeout(left, events.recv()).await }) {
                Ok(Some(SourceEvent::Rewound)) => break,
                Ok(Some(SourceEvent::Batch(batch))) => dropped += batch.events.len(),
                Ok(Some(SourceEvent::Revoked(revocation))) => revocation.acknowledge(), // nothing pending
                Ok(Some(SourceEvent::Assigned(_))) => {}
                Ok(None) => anyhow::bail!("the source stopped during a rewind"),
                Err(_) => anyhow::bail!("the source did not rewind within {} s", REWIND_TIMEOUT.as_secs()),
            }
        }
        info!(dropped, "source rewound; events read before it are read again");
        Ok(())
    }

    /// The version a rollback goes to when none is named: the newest
    /// retained one that was published ([`freshet_checkpoint::default_target`]).
    fn default_rollback_target(&self) -> anyhow::Result<Option<u64>> {
        let retained = self.store.retained().context("listing the retained versions")?;
        let versions: Vec<u64> = retained.iter().map(|r| r.version).collect();
        Ok(freshet_checkpoint::default_target(&versions, self.store.published_version()))
    }

    /// Retains a copy of the current version (when due by the policy's
    /// spacing, or `Retain::Now`) and prunes the copies the policy drops.
    fn retain(&mut self, when: Retain) -> anyhow::Result<()> {
        let policy = self.settings.retain_policy();
        let now = now_ms();
        let due = match when {
            Retain::Now => policy.versions > 0,
            Retain::IfDue => freshet_checkpoint::retain_due(self.newest_retained_ms, now, policy),
        };
        if !due {
            let lead = self.settings.interval_ms.max(FLUSH_AHEAD_MIN_LEAD_MS);
            if !self.flushed_ahead && freshet_checkpoint::flush_ahead_due(self.newest_retained_ms, now, lead, policy) {
                self.store.flush_ahead().context("flushing ahead of a retain")?;
                self.flushed_ahead = true;
            }
            return Ok(());
        }
        let started = Instant::now();
        self.flushed_ahead = false;
        self.store.retain(now).context("retaining a version")?;
        self.newest_retained_ms = Some(now);
        let pruned = self.store.prune(policy, now).context("pruning retained versions")?;
        if !pruned.is_empty() {
            debug!(?pruned, "retained versions pruned");
        }
        self.metrics.trainer_handoff("retain", started.elapsed());
        // Only for the metrics: a failure to measure is logged, never fatal.
        match self.store.retained().and_then(|retained| Ok((self.store.retained_disk(&retained)?, retained))) {
            Ok((disk, retained)) => self.metrics.retained(&retained, &disk),
            Err(error) => warn!(%error, "measuring the retained versions"),
        }
        Ok(())
    }

    fn apply(&mut self, mut batch: MicroBatch) {
        let _span = info_span!("train_batch", events = batch.events.len()).entered();
        let started = Instant::now();
        if let Some(sharded) = &mut self.sharded {
            let inbound = sharded.exchange.admit(std::mem::take(&mut batch.received));
            for (&channel, &count) in &inbound.duplicates {
                self.metrics.exchange_received(channel, "duplicate", count);
            }
            self.metrics.exchange_received(Channel::Grads, "refused", inbound.refused);
            if !inbound.gradients.is_empty() {
                match self.trainer.apply_gradients(&inbound.gradients) {
                    Ok(_) => self.metrics.exchange_received(Channel::Grads, "applied", inbound.gradients.len()),
                    Err(error) => {
                        warn!(%error, messages = inbound.gradients.len(), "gradient messages refused");
                        self.metrics.exchange_received(Channel::Grads, "refused", inbound.gradients.len());
                    }
                }
            }
            self.metrics.exchange_received(Channel::Route, "applied", inbound.events.len());
            for event in &inbound.events {
                batch.events.push(event);
            }
            let forwarded = sharded.exchange.route(&mut batch.events);
            self.metrics.forwarded(forwarded);
        }
        let report = self.trainer.train_events(batch.events.as_events());
        self.metrics.batch(&batch, started.elapsed().as_secs_f64());
        debug!(
            events = report.events,
            rejected = batch.rejected_count(),
            nonfinite_skipped = report.nonfinite_skipped,
            "batch applied"
        );
        for (tp, next) in batch.next_offsets() {
            let entry = self.applied.entry(tp).or_insert(next);
            *entry = (*entry).max(next);
        }
        self.events_pending += report.events;
        self.offsets_pending = true;
    }

    /// Takes another shard's snapshot into the replicas.
    fn apply_replica(&mut self, replica: &ReplicaDelta) {
        match self.trainer.apply_replica(replica.shard, &replica.delta) {
            Ok(rows) => {
                self.metrics.replica(replica.shard, replica.version, rows);
                debug!(shard = replica.shard, version = replica.version, rows, "replica updated");
            }
            Err(error) => warn!(%error, shard = replica.shard, version = replica.version, "a replica snapshot refused"),
        }
    }

    fn pending(&self) -> bool {
        self.events_pending > 0 || self.offsets_pending
    }

    fn due(&self) -> bool {
        self.pending()
            && (self.events_pending >= self.settings.interval_events
                || self.last_checkpoint.elapsed() >= Duration::from_millis(self.settings.interval_ms))
    }

    /// Writes the changes since the last checkpoint with the offsets they
    /// reflect, then acknowledges those offsets to the source. The delta
    /// snapshot of the new version is handed to the publisher before the
    /// write, so its transaction is written meanwhile; it commits only once
    /// the checkpoint is durable.
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        if !self.pending() {
            return Ok(());
        }
        let version = self.store.version() + 1;
        let _span = info_span!("checkpoint", version).entered();
        let started = Instant::now();
        let delta = self.trainer.drain_dirty();
        let progressive = self.trainer.metrics();
        self.hand_delta_ahead(version, &delta, &progressive);
        let stats = match &mut self.sharded {
            None => self.store.commit(&self.spec, &delta, &self.applied)?,
            Some(sharded) => {
                let messages = sharded.exchange.outbox(version, self.trainer.take_gradients());
                let exchange = ExchangeCommit { high_water: sharded.exchange.high_water(), outbox: &messages };
                let stats = self.store.commit_with(&self.spec, &delta, &self.applied, Some(exchange))?;
                if !messages.is_empty() {
                    sharded.submit(freshet_core::exchange::Outbox { version, messages });
                }
                stats
            }
        };
        debug_assert_eq!(stats.version, version);
        if let Some(publisher) = &self.publisher {
            publisher.durable(stats.version);
            if !publisher.has_chain() || publisher.full_due() {
                self.publish_full();
            }
        }
        self.metrics.checkpoint(&stats, &self.applied, self.store.memory(), &self.trainer, &progressive);
        debug!(
            version = stats.version,
            rows = stats.rows,
            tombstones = stats.tombstones,
            bytes = stats.bytes,
            elapsed_ms = stats.elapsed.as_secs_f64() * 1e3,
            events = self.events_pending,
            "checkpoint committed"
        );
        self.acknowledger.acknowledge(&self.applied);
        self.events_pending = 0;
        self.offsets_pending = false;
        self.last_checkpoint = started;
        self.retain(Retain::IfDue)
    }

    /// Hands `delta`, the changes that make checkpoint `version` (with
    /// `progressive` metrics), to the publisher as a delta on the previous
    /// version, before the checkpoint is written: the publisher commits it
    /// only after [`PublisherHandle::durable`]. Without a chain to extend
    /// (nothing published yet) the version goes out in full once durable.
    fn hand_delta_ahead(&self, version: u64, delta: &StateChanges, progressive: &MetricsReading) {
        let Some(publisher) = &self.publisher else { return };
        if publisher.has_chain() {
            let started = Instant::now();
            let params = delta.params(self.trainer.config().session_gap_ms);
            let metrics = progressive.snapshot_metrics();
            publisher.submit_ahead(Outgoing::delta(version - 1, version, params, self.watermark(), metrics));
            self.metrics.trainer_handoff("delta", started.elapsed());
        }
    }

    /// Hands the trainer's parameters over as a full snapshot of the
    /// current checkpoint version (nothing may be pending).
    fn publish_full(&self) {
        self.publish_full_of(None);
    }

    /// [`Self::publish_full`], marked as a rollback to `rollback_to` if given.
    fn publish_full_of(&self, rollback_to: Option<u64>) {
        let Some(publisher) = &self.publisher else { return };
        if self.store.version() == 0 {
            return; // nothing checkpointed yet: the first checkpoint goes out in full
        }
        let _span = info_span!("export_full", version = self.store.version()).entered();
        let started = Instant::now();
        let mut outgoing = Outgoing::full_columns(
            self.store.version(),
            self.trainer.param_columns(),
            self.watermark(),
            self.trainer.metrics().snapshot_metrics(),
        );
        if let Some(to) = rollback_to {
            outgoing = outgoing.rolling_back_to(to);
        }
        publisher.submit(outgoing);
        self.metrics.trainer_handoff("full", started.elapsed());
    }

    /// The source offsets and newest event time of the trainer's state.
    fn watermark(&self) -> Watermark {
        Watermark { offsets: self.applied.clone(), newest_event_ms: self.trainer.clock_ms() }
    }

    /// Records newly published versions durably; stops on a fatal publisher
    /// error (another instance fenced this one).
    fn check_publisher(&mut self) -> anyhow::Result<()> {
        let Some(publisher) = &self.publisher else { return Ok(()) };
        if let Some(failure) = publisher.failure() {
            anyhow::bail!("snapshot publisher stopped: {failure}");
        }
        let stats = publisher.stats();
        self.metrics.publisher_totals(stats.holds, stats.aborts);
        self.record_published(stats.published_version)
    }

    /// Forgets the outboxes the broker has; stops when the sender stopped
    /// (another instance of the shard fenced it).
    fn check_exchange(&mut self) -> anyhow::Result<()> {
        let Some(sharded) = &mut self.sharded else { return Ok(()) };
        if let Some(failure) = sharded.sender.failure() {
            anyhow::bail!("exchange sender stopped: {failure}");
        }
        forget_sent(&mut self.store, sharded)
    }

    /// Sends what the last checkpoints left in the outbox (time-limited)
    /// and forgets what the broker took.
    fn close_exchange(&mut self) -> anyhow::Result<()> {
        let Some(mut sharded) = self.sharded.take() else { return Ok(()) };
        if let Some((feed, _)) = sharded.replicas.take() {
            feed.stop(PUBLISH_CLOSE_TIMEOUT);
        }
        let sent = sharded.sender.close(PUBLISH_CLOSE_TIMEOUT);
        info!(sent_through = sent, "exchange sender stopped");
        forget_sent(&mut self.store, &mut sharded)
    }

    /// Records `published` in the checkpoint if it is newer than what is recorded.
    fn record_published(&mut self, published: u64) -> anyhow::Result<()> {
        if published > self.store.published_version() {
            self.store.record_published(published)?;
        }
        Ok(())
    }

    /// Publishes what is pending, waits (time-limited) for the publisher to
    /// stop, and records the version it reached.
    fn close_publisher(mut self) -> anyhow::Result<()> {
        let Some(publisher) = self.publisher.take() else { return Ok(()) };
        match publisher.close(PUBLISH_CLOSE_TIMEOUT) {
            Ok(stats) => {
                self.record_published(stats.published_version)?;
                info!(
                    published = stats.published_version,
                    fulls = stats.fulls,
                    deltas = stats.deltas,
                    holds = stats.holds,
                    "publisher stopped"
                );
                Ok(())
            }
            Err(failure) => {
                warn!(%failure, "publisher failed");
                anyhow::bail!("snapshot publisher stopped: {failure}")
            }
        }
    }
}
