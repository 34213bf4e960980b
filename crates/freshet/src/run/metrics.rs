//! Prometheus metrics of `freshet run`: what it consumed, rejected and
//! trained, how its checkpoints and snapshots go, how far behind it is.

use std::sync::{Arc, Mutex};

use freshet_checkpoint::CommitStats;
use freshet_consumer::MicroBatch;
use freshet_core::TableKind;
use freshet_core::{NextOffsets, TopicPartition};
use freshet_publisher::Published;
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
    checkpoint_bytes: IntGauge,
    checkpoint_version: IntGauge,
    snapshots: IntCounterVec,
    snapshot_version: IntGauge,
    snapshot_bytes: IntGaugeVec,
    publish_seconds: HistogramVec,
    publish_holds: IntCounter,
    publish_aborts: IntCounter,
    rows: IntGaugeVec,
    row_changes: IntCounterVec,
    applied_offset: IntGaugeVec,
    lag: IntGaugeVec,
    /// The newest checkpoint's offsets, for the lag.
    checkpointed: Arc<Mutex<NextOffsets>>,
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
        let publish_seconds = HistogramVec::new(
            HistogramOpts::new("freshet_snapshot_publish_seconds", "Snapshot encoding to committed transaction")
                .buckets(exponential_buckets(0.001, 2.0, 16)?),
            &["kind"],
        )?;
        registry.register(Box::new(publish_seconds.clone()))?;
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
            checkpoint_bytes: gauge("freshet_checkpoint_bytes", "Bytes of the newest checkpoint's write batch")?,
            checkpoint_version: gauge("freshet_checkpoint_version", "Newest durable checkpoint version")?,
            snapshots: counter_vec("freshet_snapshots_published_total", "Snapshots published, by kind", &["kind"])?,
            snapshot_version: gauge("freshet_snapshot_version", "Newest published snapshot version")?,
            snapshot_bytes: gauge_vec("freshet_snapshot_bytes", "Bytes of the newest snapshot, by kind", &["kind"])?,
            publish_seconds,
            publish_holds: counter("freshet_snapshot_holds_total", "Publishes held by the quality gate")?,
            publish_aborts: counter("freshet_snapshot_aborts_total", "Snapshot transactions aborted")?,
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

    /// After a checkpoint: its cost, the offsets it holds and the trainer's
    /// state with its `progressive` metrics.
    pub fn checkpoint(
        &self,
        stats: &CommitStats,
        offsets: &NextOffsets,
        trainer: &Trainer,
        progressive: &MetricsReading,
    ) {
        self.checkpoint_seconds.observe(stats.elapsed.as_secs_f64());
        self.checkpoint_bytes.set(stats.bytes as i64);
        self.checkpoint_version.set(stats.version as i64);
        for (tp, next) in offsets {
            self.applied_offset.with_label_values(&[tp.topic.as_str(), &tp.partition.to_string()]).set(*next);
        }
        self.checkpointed.lock().unwrap_or_else(|p| p.into_inner()).clone_from(offsets);
        self.trainer(trainer.counters(), progressive);
        for table in TableKind::ALL {
            self.rows.with_label_values(&[table.name()]).set(trainer.rows(table) as i64);
        }
    }

    fn trainer(&self, counters: &Counters, metrics: &MetricsReading) {
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

    /// After a snapshot transaction committed.
    pub fn published(&self, published: &Published) {
        let kind = if published.full { "full" } else { "delta" };
        self.snapshots.with_label_values(&[kind]).inc();
        self.snapshot_version.set(published.version as i64);
        self.snapshot_bytes.with_label_values(&[kind]).set(published.bytes as i64);
        self.publish_seconds.with_label_values(&[kind]).observe(published.latency.as_secs_f64());
    }

    /// The publisher's hold and abort totals.
    pub fn publisher_totals(&self, holds: u64, aborts: u64) {
        set_total(&self.publish_holds, holds);
        set_total(&self.publish_aborts, aborts);
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

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8_lossy(&text).into_owned()
    }
}
