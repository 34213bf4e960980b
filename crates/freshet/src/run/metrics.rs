//! Prometheus metrics of `freshet run`: what it consumed, rejected and
//! trained, how its checkpoints and snapshots go, how far behind it is.

use std::sync::{Arc, Mutex};

use freshet_checkpoint::{CommitStats, RetainedDisk, RetainedVersion, StoreMemory};
use freshet_consumer::MicroBatch;
use freshet_core::TableKind;
use freshet_core::{NextOffsets, TopicPartition};
use freshet_publisher::{Published, PublisherEvent};
use freshet_trainer::{Counters, MetricsReading, Trainer};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

/// Every metric of `freshet run`, registered in one registry.
#[derive(Clone)]
pub struct RunMetrics {
    registry: Registry,
    events: IntCounterVec,
    rejected: IntCounterVec,
    nonfinite: IntCounter,
    sessions: IntCounter,
    batch_seconds: Histogram,
    progressive: GaugeVec,
    checkpoint_seconds: Histogram,
    trainer_handoff_seconds: HistogramVec,
    checkpoint_bytes: IntGauge,
    checkpoint_version: IntGauge,
    store_memory: IntGaugeVec,
    snapshots: IntCounterVec,
    snapshot_version: IntGauge,
    snapshot_bytes: IntGaugeVec,
    snapshot_in_flight: IntGaugeVec,
    snapshot_freshness: IntGauge,
    publish_seconds: HistogramVec,
    publish_holds: IntCounter,
    publish_aborts: IntCounter,
    consumers_replaced: IntCounter,
    rows: IntGaugeVec,
    row_changes: IntCounterVec,
    applied_offset: IntGaugeVec,
    lag: IntGaugeVec,
    events_applied: IntGauge,
    source_partitions: IntGauge,
    events_skipped: IntGauge,
    rollbacks: IntCounterVec,
    rollback_seconds: Histogram,
    retained_versions: IntGauge,
    retained_bytes: IntGauge,
    retained_version: IntGaugeVec,
    forwarded: IntCounter,
    exchange_received: IntCounterVec,
    exchange_sent: IntCounterVec,
    exchange_sent_version: IntGauge,
    replica_rows: IntCounter,
    replica_version: IntGaugeVec,
    /// The newest checkpoint's offsets, for the lag.
    checkpointed: Arc<Mutex<NextOffsets>>,
}

/// The `kind` label of a snapshot.
fn kind(full: bool) -> &'static str {
    if full { "full" } else { "delta" }
}

/// Makes `counter` equal a running total kept elsewhere (totals restored
/// from a checkpoint only grow).
fn set_total(counter: &prometheus::core::GenericCounter<prometheus::core::AtomicU64>, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

impl RunMetrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
            let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let metric = IntGauge::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let metric = IntCounter::new(name, help)?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let histogram = |name: &str, help: &str, start: f64| -> Result<Histogram, prometheus::Error> {
            let metric =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(exponential_buckets(start, 2.0, 18)?))?;
            registry.register(Box::new(metric.clone()))?;
            Ok(metric)
        };
        let progressive = GaugeVec::new(
            Opts::new("freshet_progressive_metric", "Progressive (predict-then-train) metrics"),
            &["head", "metric", "span"],
        )?;
        registry.register(Box::new(progressive.clone()))?;
        let histogram_vec = |name: &str, help: &str, start: f64, count: usize, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(exponential_buckets(start, 2.0, count)?);
            let metric = HistogramVec::new(opts, labels)?;
            registry.register(Box::new(metric.clone()))?;
            Ok::<_, prometheus::Error>(metric)
        };
        let publish_seconds = histogram_vec(
            "freshet_snapshot_publish_seconds",
            "Snapshot encoding to committed transaction",
            0.001,
            16,
            &["kind"],
        )?;
        Ok(RunMetrics {
            events: counter_vec("freshet_events_trained_total", "Valid events trained on, by kind", &["kind"])?,
            rejected: counter_vec("freshet_events_rejected_total", "Messages sent to the DLQ, by reason", &["reason"])?,
            nonfinite: counter("freshet_nonfinite_skipped_total", "Row steps skipped for non-finite values")?,
            sessions: counter(
                "freshet_sessions_restarted_total",
                "Events of known users that began a new session (session offset restarted)",
            )?,
            batch_seconds: histogram("freshet_batch_seconds", "Time to train one micro-batch", 0.000_05)?,
            progressive,
            checkpoint_seconds: histogram("freshet_checkpoint_seconds", "Time to write one checkpoint", 0.000_5)?,
            trainer_handoff_seconds: histogram_vec(
                "freshet_trainer_handoff_seconds",
                "Time the trainer thread spends after a checkpoint, by step: the snapshot hand-off (delta, full) and the retained copy",
                0.000_1,
                18,
                &["step"],
            )?,
            checkpoint_bytes: gauge("freshet_checkpoint_bytes", "Bytes of the newest checkpoint's write batch")?,
            checkpoint_version: gauge("freshet_checkpoint_version", "Newest durable checkpoint version")?,
            store_memory: gauge_vec(
                "freshet_checkpoint_memory_bytes",
                "Memory RocksDB holds for the checkpoint store, by kind (memtables, table_readers, block_cache)",
                &["kind"],
            )?,
            snapshots: counter_vec("freshet_snapshots_published_total", "Snapshots published, by kind", &["kind"])?,
            snapshot_version: gauge("freshet_snapshot_version", "Newest published snapshot version")?,
            snapshot_bytes: gauge_vec("freshet_snapshot_bytes", "Bytes of the newest snapshot, by kind", &["kind"])?,
            snapshot_in_flight: gauge_vec(
                "freshet_snapshot_in_flight",
                "Version whose snapshot transaction is open now, by kind (0: none)",
                &["kind"],
            )?,
            snapshot_freshness: gauge(
                "freshet_snapshot_freshness_ms",
                "Newest snapshot: from its newest event's time to its committed transaction (ms)",
            )?,
            publish_seconds,
            publish_holds: counter("freshet_snapshot_holds_total", "Publishes held by the quality gate")?,
            publish_aborts: counter("freshet_snapshot_aborts_total", "Snapshot transactions aborted")?,
            consumers_replaced: counter(
                "freshet_consumer_replaced_total",
                "Kafka consumers replaced after librdkafka gave up on them (their partitions handed back first)",
            )?,
            rows: gauge_vec("freshet_rows", "Rows per table", &["table"])?,
            row_changes: counter_vec(
                "freshet_row_changes_total",
                "Rows admitted, expired, evicted or forgotten, per table",
                &["table", "change"],
            )?,
            applied_offset: gauge_vec(
                "freshet_checkpointed_offset",
                "Next offset per source partition in the newest checkpoint",
                &["topic", "partition"],
            )?,
            lag: gauge_vec(
                "freshet_consumer_lag",
                "Messages behind the newest checkpoint, per source partition",
                &["topic", "partition"],
            )?,
            source_partitions: gauge(
                "freshet_source_partitions_assigned",
                "Source partitions this instance reads now (assigned and not revoked)",
            )?,
            events_applied: gauge(
                "freshet_events_applied",
                "Valid events the model reflects (a rollback takes it back to its version's count)",
            )?,
            events_skipped: gauge(
                "freshet_events_skipped",
                "Valid events read but not applied: left out by skip rollbacks",
            )?,
            rollbacks: counter_vec("freshet_rollbacks_total", "Rollbacks, by reason", &["reason"])?,
            rollback_seconds: histogram("freshet_rollback_seconds", "Time of one rollback, restore included", 0.001)?,
            retained_versions: gauge("freshet_retained_versions", "Checkpoint versions retained as rollback targets")?,
            retained_bytes: gauge(
                "freshet_retained_bytes",
                "Bytes on disk only the retained versions hold (beyond the live checkpoint)",
            )?,
            retained_version: gauge_vec(
                "freshet_retained_version_created_ms",
                "When each retained version was copied (ms since the epoch), by version",
                &["version"],
            )?,
            forwarded: counter(
                "freshet_events_forwarded_total",
                "Events read on this shard's input partitions whose user another shard owns, forwarded to it once",
            )?,
            exchange_received: counter_vec(
                "freshet_exchange_received_total",
                "Messages from other shards, by channel (route, grads) and outcome (applied, duplicate, refused)",
                &["channel", "outcome"],
            )?,
            exchange_sent: counter_vec(
                "freshet_exchange_sent_total",
                "Messages sent to other shards in committed transactions, by channel (route, grads)",
                &["channel"],
            )?,
            exchange_sent_version: gauge(
                "freshet_exchange_sent_version",
                "Newest checkpoint version whose outbox the broker has (everything up to it is sent)",
            )?,
            replica_rows: counter(
                "freshet_replica_rows_applied_total",
                "Rows of other shards' snapshots taken into this shard's read-only replicas",
            )?,
            replica_version: gauge_vec(
                "freshet_replica_version",
                "Newest snapshot version of each other shard in this shard's replicas",
                &["shard"],
            )?,
            checkpointed: Arc::default(),
            registry,
        })
    }

    /// After a micro-batch was trained.
    pub fn batch(&self, batch: &MicroBatch, seconds: f64) {
        self.batch_seconds.observe(seconds);
        for (reason, count) in &batch.rejected {
            self.rejected.with_label_values(&[reason.as_str()]).inc_by(*count);
        }
    }

    /// After a checkpoint: its cost, the offsets it holds, the store's
    /// `memory` and the trainer's state with its `progressive` metrics.
    pub fn checkpoint(
        &self,
        stats: &CommitStats,
        offsets: &NextOffsets,
        memory: StoreMemory,
        trainer: &Trainer,
        progressive: &MetricsReading,
    ) {
        self.checkpoint_seconds.observe(stats.elapsed.as_secs_f64());
        self.checkpoint_bytes.set(stats.bytes as i64);
        let StoreMemory { memtables, table_readers, block_cache } = memory;
        for (kind, bytes) in [("memtables", memtables), ("table_readers", table_readers), ("block_cache", block_cache)]
        {
            self.store_memory.with_label_values(&[kind]).set(bytes as i64);
        }
        self.checkpoint_version(stats.version);
        for (tp, next) in offsets {
            self.applied_offset.with_label_values(&[tp.topic.as_str(), &tp.partition.to_string()]).set(*next);
        }
        self.checkpointed.lock().unwrap_or_else(|p| p.into_inner()).clone_from(offsets);
        self.trainer(trainer.counters(), progressive);
        for table in TableKind::ALL {
            self.rows.with_label_values(&[table.name()]).set(trainer.rows(table) as i64);
        }
    }

    /// The newest durable checkpoint version.
    pub fn checkpoint_version(&self, version: u64) {
        self.checkpoint_version.set(version as i64);
    }

    /// What the restored checkpoint holds, at start.
    pub fn restored(&self, version: u64, events_applied: u64, events_skipped: u64) {
        self.checkpoint_version(version);
        self.events_applied.set(events_applied as i64);
        self.events_skipped.set(events_skipped as i64);
    }

    /// After a rollback for `reason` that took `seconds`, leaving the model
    /// at `events_applied`, with `events_skipped` in all.
    pub fn rolled_back(&self, reason: &str, seconds: f64, events_applied: u64, events_skipped: u64) {
        self.rollbacks.with_label_values(&[reason]).inc();
        self.events_applied.set(events_applied as i64);
        self.rollback_seconds.observe(seconds);
        self.events_skipped.set(events_skipped as i64);
    }

    /// The retained versions and what they cost on disk.
    pub fn retained(&self, retained: &[RetainedVersion], disk: &RetainedDisk) {
        self.retained_versions.set(retained.len() as i64);
        self.retained_bytes.set(disk.retained_only_bytes as i64);
        self.retained_version.reset();
        for copy in retained {
            self.retained_version.with_label_values(&[&copy.version.to_string()]).set(copy.created_ms);
        }
    }

    fn trainer(&self, counters: &Counters, metrics: &MetricsReading) {
        self.events_applied.set(counters.events_applied as i64);
        for (kind, total) in [("rating", counters.ratings), ("click", counters.clicks), ("forget", counters.forgets)] {
            set_total(&self.events.with_label_values(&[kind]), total);
        }
        set_total(&self.nonfinite, counters.nonfinite_skipped);
        set_total(&self.sessions, counters.sessions_restarted);
        for table in TableKind::ALL {
            let changes = counters.table(table);
            for (change, total) in [
                ("admitted", changes.admitted),
                ("expired", changes.expired),
                ("evicted", changes.evicted),
                ("forgotten", changes.forgotten),
            ] {
                set_total(&self.row_changes.with_label_values(&[table.name(), change]), total);
            }
        }
        let figures = [
            ("rating", "rmse", "window", metrics.rating_window.rmse),
            ("rating", "mae", "window", metrics.rating_window.mae),
            ("rating", "rmse", "cumulative", metrics.rating_cumulative.rmse),
            ("rating", "mae", "cumulative", metrics.rating_cumulative.mae),
            ("click", "logloss", "window", metrics.click_window.logloss),
            ("click", "auc", "window", metrics.click_window.auc),
            ("click", "logloss", "cumulative", metrics.click_cumulative.logloss),
            ("click", "auc", "cumulative", metrics.click_cumulative.auc),
        ];
        for (head, metric, span, value) in figures {
            if let Some(value) = value {
                self.progressive.with_label_values(&[head, metric, span]).set(value);
            }
        }
    }

    /// What the publisher thread reports, on that thread.
    pub fn publisher_event(&self, event: PublisherEvent<'_>) {
        match event {
            PublisherEvent::Started { version, full } => {
                self.snapshot_in_flight.with_label_values(&[kind(full)]).set(version as i64);
            }
            // Still in flight until it commits (after its checkpoint is durable).
            PublisherEvent::Prepared { .. } => {}
            PublisherEvent::Published(published) => self.published(published),
            PublisherEvent::Aborted { .. } => {
                for kind in ["full", "delta"] {
                    self.snapshot_in_flight.with_label_values(&[kind]).set(0);
                }
            }
        }
    }

    fn published(&self, published: &Published) {
        let kind = kind(published.full);
        self.snapshot_in_flight.with_label_values(&[kind]).set(0);
        self.snapshots.with_label_values(&[kind]).inc();
        self.snapshot_version.set(published.version as i64);
        self.snapshot_bytes.with_label_values(&[kind]).set(published.bytes as i64);
        self.publish_seconds.with_label_values(&[kind]).observe(published.latency.as_secs_f64());
        if published.newest_event_ms > 0 {
            self.snapshot_freshness.set(freshet_core::now_ms().saturating_sub(published.newest_event_ms).max(0));
        }
    }

    /// Events forwarded to the shards that own their users.
    pub fn forwarded(&self, events: usize) {
        self.forwarded.inc_by(events as u64);
    }

    /// Messages from other shards on `channel` with `outcome` (`applied`, `duplicate`, `refused`).
    pub fn exchange_received(&self, channel: freshet_core::exchange::Channel, outcome: &str, count: usize) {
        if count > 0 {
            self.exchange_received.with_label_values(&[channel.name(), outcome]).inc_by(count as u64);
        }
    }

    /// An outbox the broker took: its version and the messages per channel.
    pub fn exchange_sent(&self, version: u64, outbox: &freshet_core::exchange::Outbox) {
        for channel in freshet_core::exchange::Channel::ALL {
            let count = outbox.messages.iter().filter(|m| m.channel == channel).count() as u64;
            self.exchange_sent.with_label_values(&[channel.name()]).inc_by(count);
        }
        self.exchange_sent_version.set(version as i64);
    }

    /// Snapshot `version` of shard `shard` taken into the replicas: `rows` set or removed.
    pub fn replica(&self, shard: u32, version: u64, rows: usize) {
        self.replica_rows.inc_by(rows as u64);
        self.replica_version.with_label_values(&[&shard.to_string()]).set(version as i64);
    }

    /// The publisher's hold and abort totals.
    pub fn publisher_totals(&self, holds: u64, aborts: u64) {
        set_total(&self.publish_holds, holds);
        set_total(&self.publish_aborts, aborts);
    }

    /// Time the trainer thread spent on one post-checkpoint `step`
    /// (`delta`, `full`, `retain`).
    pub fn trainer_handoff(&self, step: &str, elapsed: std::time::Duration) {
        self.trainer_handoff_seconds.with_label_values(&[step]).observe(elapsed.as_secs_f64());
    }

    /// How many source partitions this instance holds now.
    pub fn source_partitions(&self, count: usize) {
        self.source_partitions.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// How many consumers the source replaced so far.
    pub fn consumers_replaced(&self, total: u64) {
        set_total(&self.consumers_replaced, total);
    }

    /// The newest checkpoint's next offset per partition.
    pub fn checkpointed(&self) -> NextOffsets {
        self.checkpointed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the lag of each partition: its high watermark minus the checkpointed next offset.
    pub fn lag(&self, high_watermarks: &[(TopicPartition, i64)]) {
        let checkpointed = self.checkpointed();
        for (tp, high) in high_watermarks {
            let next = checkpointed.get(tp).copied().unwrap_or(0);
            self.lag.with_label_values(&[tp.topic.as_str(), &tp.partition.to_string()]).set((high - next).max(0));
        }
    }

    /// Every metric now, for the live page's samples.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8_lossy(&text).into_owned()
    }
}
