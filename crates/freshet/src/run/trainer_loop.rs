//! The trainer thread of `freshet run`: applies micro-batches in order,
//! checkpoints every interval (and before letting revoked partitions go), and
//! only then acknowledges the offsets to the source.

use std::time::{Duration, Instant};

use anyhow::Context;
use freshet_checkpoint::{CheckpointStore, SourceOffsets};
use freshet_consumer::{Acknowledger, MicroBatch, NextOffsets, SourceEvent};
use freshet_trainer::{ModelSpec, Trainer};
use tokio::runtime::Handle;
use tokio::sync::mpsc::Receiver;
use tracing::{debug, info, info_span};

use crate::config::CheckpointSettings;

/// What to wait for when nothing is pending.
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// The trainer, its store and the bookkeeping between checkpoints.
pub struct TrainerLoop {
    trainer: Trainer,
    store: CheckpointStore,
    spec: ModelSpec,
    acknowledger: Acknowledger,
    settings: CheckpointSettings,
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
        applied: NextOffsets,
    ) -> Self {
        let spec = trainer.spec().clone();
        TrainerLoop {
            trainer,
            store,
            spec,
            acknowledger,
            settings,
            applied,
            events_pending: 0,
            offsets_pending: false,
            last_checkpoint: Instant::now(),
        }
    }

    /// Runs until the source closes its channel, then writes a final checkpoint.
    pub fn run(mut self, runtime: &Handle, mut events: Receiver<SourceEvent>) -> anyhow::Result<()> {
        loop {
            let wait = if self.pending() {
                Duration::from_millis(self.settings.interval_ms).saturating_sub(self.last_checkpoint.elapsed())
            } else {
                IDLE_WAIT
            };
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
                    return Ok(());
                }
                Err(_timer) => {}
            }
            if self.due() {
                self.checkpoint()?;
            }
        }
    }

    fn apply(&mut self, batch: &MicroBatch) {
        let _span = info_span!("train_batch", events = batch.events.len()).entered();
        let report = self.trainer.train_batch(&batch.events);
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
        let offsets: SourceOffsets =
            self.applied.iter().map(|(tp, next)| ((tp.topic.clone(), tp.partition), *next)).collect();
        let stats = self.store.commit(&self.spec, &delta, &offsets)?;
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
}
