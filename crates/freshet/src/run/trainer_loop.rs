//! The trainer thread of `freshet run`: applies micro-batches in order,
//! checkpoints every interval (and before letting revoked partitions go), and
//! only then acknowledges the offsets to the source and hands the
//! checkpointed version to the publisher.

use std::time::{Duration, Instant};

use anyhow::Context;
use freshet_checkpoint::CheckpointStore;
use freshet_consumer::{Acknowledger, MicroBatch, SourceEvent};
use freshet_core::ModelSpec;
use freshet_core::NextOffsets;
use freshet_core::snapshot::Watermark;
use freshet_publisher::{Outgoing, PublisherHandle};
use freshet_trainer::{MetricsReading, StateChanges, Trainer};
use tokio::runtime::Handle;
use tokio::sync::mpsc::Receiver;
use tracing::{debug, info, info_span, warn};

use super::metrics::RunMetrics;
use crate::config::CheckpointSettings;

/// What to wait for when nothing is pending.
const IDLE_WAIT: Duration = Duration::from_secs(3600);
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
    last_checkpoint: Instant,
}

impl TrainerLoop {
    /// A loop resuming after `applied` (the restored checkpoint's offsets).
    pub fn new(
        trainer: Trainer,
        store: CheckpointStore,
        acknowledger: Acknowledger,
        settings: CheckpointSettings,
        publisher: Option<PublisherHandle>,
        metrics: RunMetrics,
        applied: NextOffsets,
    ) -> Self {
        let spec = trainer.spec().clone();
        TrainerLoop {
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
        }
    }

    /// Runs until the source closes its channel, then writes a final
    /// checkpoint and publishes it. A restored model is published in full first.
    pub fn run(mut self, runtime: &Handle, mut events: Receiver<SourceEvent>) -> anyhow::Result<()> {
        if self.store.version() > 0 {
            self.publish_full();
        }
        loop {
            let checkpoint_wait = if self.pending() {
                Duration::from_millis(self.settings.interval_ms).saturating_sub(self.last_checkpoint.elapsed())
            } else {
                IDLE_WAIT
            };
            let full_wait = self.publisher.as_ref().and_then(PublisherHandle::full_due_in).unwrap_or(IDLE_WAIT);
            let wait = checkpoint_wait.min(full_wait);
            match runtime.block_on(async { tokio::time::timeout(wait, events.recv()).await }) {
                Ok(Some(SourceEvent::Batch(batch))) => self.apply(&batch),
                Ok(Some(SourceEvent::Assigned(partitions))) => debug!(count = partitions.len(), "assigned"),
                Ok(Some(SourceEvent::Revoked(revocation))) => {
                    self.checkpoint().context("checkpoint before revocation")?;
                    revocation.acknowledge();
                }
                Ok(None) => {
                    self.checkpoint().context("final checkpoint")?;
                    info!(version = self.store.version(), "trainer stopped after a final checkpoint");
                    return self.close_publisher();
                }
                Err(_timer) => {}
            }
            if self.due() {
                self.checkpoint()?;
            } else if !self.pending() && self.publisher.as_ref().is_some_and(PublisherHandle::full_due) {
                // Idle: send the current version in full again, so the
                // topic's retention never leaves subscribers without one.
                self.publish_full();
            }
            self.check_publisher()?;
        }
    }

    fn apply(&mut self, batch: &MicroBatch) {
        let _span = info_span!("train_batch", events = batch.events.len()).entered();
        let started = Instant::now();
        let report = self.trainer.train_batch(&batch.events);
        self.metrics.batch(batch, started.elapsed().as_secs_f64());
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

    fn pending(&self) -> bool {
        self.events_pending > 0 || self.offsets_pending
    }

    fn due(&self) -> bool {
        self.pending()
            && (self.events_pending >= self.settings.interval_events
                || self.last_checkpoint.elapsed() >= Duration::from_millis(self.settings.interval_ms))
    }

    /// Writes the changes since the last checkpoint with the offsets they
    /// reflect, then acknowledges those offsets to the source.
    fn checkpoint(&mut self) -> anyhow::Result<()> {
        if !self.pending() {
            return Ok(());
        }
        let _span = info_span!("checkpoint", version = self.store.version() + 1).entered();
        let delta = self.trainer.drain_dirty();
        let stats = self.store.commit(&self.spec, &delta, &self.applied)?;
        let progressive = self.trainer.metrics();
        self.metrics.checkpoint(&stats, &self.applied, &self.trainer, &progressive);
        self.hand_to_publisher(stats.version, delta, &progressive);
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
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Hands checkpoint `version` (the state after `delta`, with `progressive`
    /// metrics) to the publisher as a delta on the previous version, and in
    /// full too when one is due (the delta first: subscribers following the
    /// chain take it and pass over the full snapshot).
    fn hand_to_publisher(&self, version: u64, delta: StateChanges, progressive: &MetricsReading) {
        let Some(publisher) = &self.publisher else { return };
        if publisher.has_chain() {
            let params = delta.into_params(self.trainer.config().session_gap_ms);
            let metrics = progressive.snapshot_metrics();
            publisher.submit(Outgoing::delta(version - 1, version, params, self.watermark(), metrics));
        }
        if !publisher.has_chain() || publisher.full_due() {
            self.publish_full();
        }
    }

    /// Hands the trainer's parameters over as a full snapshot of the
    /// current checkpoint version (nothing may be pending).
    fn publish_full(&self) {
        let Some(publisher) = &self.publisher else { return };
        if self.store.version() == 0 {
            return; // nothing checkpointed yet: the first checkpoint goes out in full
        }
        let _span = info_span!("export_full", version = self.store.version()).entered();
        let outgoing = Outgoing::full(
            self.store.version(),
            self.trainer.export_params(),
            self.watermark(),
            self.trainer.metrics().snapshot_metrics(),
        );
        publisher.submit(outgoing);
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
