//! The transactional producer: one Kafka transaction per snapshot, a
//! transactional id per model (so a second instance fences the first), the
//! chain bookkeeping (where the current full snapshot starts), and the
//! recovery from transactions a broker outage broke ([`SnapshotProducer`]).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use freshet_core::snapshot::ValueEncoding;
use freshet_core::{ModelSpec, Shard, now_ms};
use freshet_kafka::{KafkaConfig, is_fenced, send_future};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use thiserror::Error;
use tracing::{debug, info_span, warn};

use crate::config::PublisherConfig;
use crate::encode::{EncodedSnapshot, HeaderContext, encode};
use crate::outgoing::Outgoing;

/// Why a snapshot was not published.
#[derive(Debug, Clone, Error)]
pub enum PublishError {
    /// Another instance of the model took over the transactional id: this one must stop.
    #[error("fenced: another publisher of model {model:?} started (transactional id {transactional_id}); stopping")]
    Fenced {
        /// The model.
        model: String,
        /// The contested transactional id.
        transactional_id: String,
    },
    /// The transaction was aborted; publishing it again may succeed.
    #[error("snapshot transaction aborted: {0}")]
    Aborted(KafkaError),
    /// A delta came with no full snapshot published before it in this process.
    #[error("a delta snapshot needs a full snapshot published first")]
    NoChain,
    /// The caller withdrew the version before its transaction committed
    /// (its checkpoint never became durable): the transaction was aborted.
    #[error("version {version} withdrawn before it was durable; its transaction was aborted")]
    Withdrawn {
        /// The version.
        version: u64,
    },
    /// Kafka client setup failed.
    #[error("creating the snapshot producer: {0}")]
    Setup(KafkaError),
    /// The shard to publish is not one of the model's.
    #[error("shard {shard} of {count} cannot publish a model of model.shards = {shards}")]
    ShardMismatch {
        /// The shard's index.
        shard: u32,
        /// The shard count it was given.
        count: u32,
        /// The model's shard count.
        shards: u32,
    },
}

impl PublishError {
    /// Whether the publisher must stop (publishing again cannot succeed).
    /// A withdrawn version is not published again, but nothing failed.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, PublishError::Aborted(_) | PublishError::Withdrawn { .. })
    }
}

/// What one publish wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The version.
    pub version: u64,
    /// Whether it was a full snapshot.
    pub full: bool,
    /// Topic offset of the header.
    pub header_offset: i64,
    /// Chunk messages.
    pub chunks: usize,
    /// Bytes of header and chunks.
    pub bytes: usize,
    /// Rows and tombstones.
    pub entries: u64,
    /// From the start of encoding to the committed transaction.
    pub latency: Duration,
    /// The newest event time the snapshot reflects (ms since the epoch).
    pub newest_event_ms: i64,
}

/// Publishes snapshots of one model to its topic.
///
/// A failed transaction is aborted and the snapshot published again. When
/// the producer cannot go on (its abort failed, librdkafka gave up on it, or
/// the transaction coordinator fenced it after a transaction outlived the
/// transaction timeout, which a broker outage that long causes), the next
/// publish starts a new producer with the same transactional id first: its
/// initialisation completes or aborts whatever the old one left open, so a
/// version may go out twice, never half. A fence without such a transaction
/// before it means another instance took over: that stops the publisher.
pub struct SnapshotProducer {
    producer: FutureProducer,
    /// The producer's settings, for a new one.
    client: rdkafka::ClientConfig,
    /// The producer must be replaced before the next transaction.
    replace: bool,
    /// A transaction failed after being open the whole transaction timeout
    /// (the coordinator aborts such a one and bumps the epoch): a fence that
    /// follows is its doing, not another instance's.
    outlived: bool,
    model: String,
    transactional_id: String,
    topic: String,
    spec: ModelSpec,
    shard: Shard,
    chunk_bytes: usize,
    value_encoding: ValueEncoding,
    timeout: Duration,
    /// Header offset of the newest full snapshot committed by this instance.
    chain_start: Option<i64>,
}

impl SnapshotProducer {
    /// Connects and initialises the transactional id `freshet-publisher-<model>`
    /// (`freshet-publisher-<model>-shard-<k>` for shard k of a sharded
    /// model), fencing any earlier instance of the model (or of the shard).
    /// `shard` is the one whose chain this publishes: [`Shard::SOLE`] for
    /// an unsharded model; its count must be `spec.shards`.
    pub fn connect(
        kafka: &KafkaConfig,
        config: &PublisherConfig,
        model: &str,
        spec: &ModelSpec,
        shard: Shard,
    ) -> Result<Self, PublishError> {
        if shard.count() != spec.shards {
            return Err(PublishError::ShardMismatch {
                shard: shard.index(),
                count: shard.count(),
                shards: spec.shards,
            });
        }
        let transactional_id = match shard.is_sharded() {
            false => format!("freshet-publisher-{model}"),
            true => format!("freshet-publisher-{model}-shard-{}", shard.index()),
        };
        let mut client = kafka.client();
        for (key, value) in &config.kafka {
            client.set(key, value);
        }
        client
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set("transaction.timeout.ms", config.transaction_timeout_ms.to_string())
            .set("linger.ms", "2")
            .set("message.max.bytes", (2 * 1024 * 1024).to_string());
        let producer: FutureProducer = client.create().map_err(PublishError::Setup)?;
        let timeout = Duration::from_millis(config.transaction_timeout_ms);
        let this = SnapshotProducer {
            producer,
            client,
            replace: false,
            outlived: false,
            model: model.to_owned(),
            transactional_id,
            topic: config.topic_for(model),
            spec: spec.clone(),
            shard,
            chunk_bytes: config.chunk_bytes,
            value_encoding: config.value_encoding,
            timeout,
            chain_start: None,
        };
        this.producer.init_transactions(timeout).map_err(|error| this.init_failed(error))?;
        Ok(this)
    }

    /// The snapshot topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `outgoing` in one transaction. A delta needs a full snapshot
    /// published by this instance before it.
    pub fn publish(&mut self, outgoing: &Outgoing) -> Result<Published, PublishError> {
        self.publish_when(outgoing, || true)
    }

    /// [`Self::publish`], committing only if `may_commit` says so once every
    /// message of the transaction is delivered: it may wait (for the
    /// version's checkpoint to become durable) and returns false to withdraw
    /// the version, whose transaction is then aborted
    /// ([`PublishError::Withdrawn`]). Readers of committed data never see a
    /// withdrawn version.
    pub fn publish_when(
        &mut self,
        outgoing: &Outgoing,
        may_commit: impl FnOnce() -> bool,
    ) -> Result<Published, PublishError> {
        let _span = info_span!("publish", version = outgoing.version, full = outgoing.is_full()).entered();
        let started = Instant::now();
        let chain_start = match (outgoing.is_full(), self.chain_start) {
            (true, _) => None,
            (false, Some(offset)) => Some(offset),
            (false, None) => return Err(PublishError::NoChain),
        };
        // Before encoding: while the broker is away this fails, and often.
        if self.replace {
            self.replace_producer()?;
        }
        let context = HeaderContext {
            model: &self.model,
            spec: &self.spec,
            shard: self.shard.index(),
            created_ms: now_ms(),
            chain_start_offset: chain_start,
            value_encoding: self.value_encoding,
        };
        let encoded = encode(outgoing, context, self.chunk_bytes);
        let opened = Instant::now();
        let written = self.producer.begin_transaction().and_then(|()| self.write(&encoded, chain_start, may_commit));
        match written {
            Ok(None) => {
                self.abort()?;
                Err(PublishError::Withdrawn { version: outgoing.version })
            }
            Ok(Some(header_offset)) => {
                self.outlived = false;
                if outgoing.is_full() {
                    self.chain_start = Some(header_offset);
                }
                let published = Published {
                    version: outgoing.version,
                    full: outgoing.is_full(),
                    header_offset,
                    chunks: encoded.chunks.len(),
                    bytes: encoded.bytes(),
                    entries: encoded.header.rows.iter().sum::<u64>() + encoded.header.tombstones,
                    latency: started.elapsed(),
                    newest_event_ms: outgoing.watermark.newest_event_ms,
                };
                debug!(?published, "snapshot published");
                Ok(published)
            }
            Err(error) => {
                if opened.elapsed() >= self.timeout {
                    self.outlived = true;
                }
                match self.verdict(&error) {
                    Verdict::Stop => return Err(self.fenced()),
                    Verdict::Replace => self.replace = true,
                    Verdict::Retry => {
                        warn!(%error, "aborting the snapshot transaction");
                        self.abort()?;
                    }
                }
                Err(PublishError::Aborted(error))
            }
        }
    }

    /// Aborts the open transaction. An abort that fails leaves a new producer
    /// to take over before the next try, unless another instance fenced this one.
    fn abort(&mut self) -> Result<(), PublishError> {
        if let Err(error) = self.producer.abort_transaction(self.timeout) {
            if self.verdict(&error) == Verdict::Stop {
                return Err(self.fenced());
            }
            warn!(%error, "the abort failed; a new producer takes over before the next try");
            self.replace = true;
        }
        Ok(())
    }

    /// Starts a new producer with the same transactional id in place of the
    /// current one (see [`SnapshotProducer`]).
    fn replace_producer(&mut self) -> Result<(), PublishError> {
        let producer: FutureProducer = self.client.create().map_err(PublishError::Setup)?;
        // Initialising may wait for the coordinator to finish the old transaction.
        producer.init_transactions(self.timeout).map_err(|error| self.init_failed(error))?;
        self.producer = producer;
        self.replace = false;
        self.outlived = false;
        warn!(transactional_id = %self.transactional_id, "a new snapshot producer took over");
        Ok(())
    }

    /// Produces the header (waiting for its offset), the chunks and the
    /// commit record, then, once all are delivered and `may_commit` agrees,
    /// commits the transaction. Returns the header's offset, or `None` when
    /// `may_commit` withdrew the version (the transaction is left open for
    /// the caller to abort).
    fn write(
        &self,
        encoded: &EncodedSnapshot,
        chain_start: Option<i64>,
        may_commit: impl FnOnce() -> bool,
    ) -> Result<Option<i64>, KafkaError> {
        let header_offset = wait(self.send(&encoded.header_value)?)?;
        let mut deliveries = Vec::with_capacity(encoded.chunks.len() + 1);
        for chunk in &encoded.chunks {
            deliveries.push(self.send(chunk)?);
        }
        deliveries.push(self.send(&encoded.commit_value(chain_start.unwrap_or(header_offset)))?);
        for delivery in deliveries {
            wait(delivery)?;
        }
        if !may_commit() {
            return Ok(None);
        }
        // A commit that timed out is still under way: it must be called again
        // (an abort then is refused), until the coordinator settles it.
        let deadline = Instant::now() + self.timeout * 2;
        loop {
            match self.producer.commit_transaction(self.timeout) {
                Err(KafkaError::Transaction(error))
                    if error.is_retriable() && !error.txn_requires_abort() && Instant::now() < deadline =>
                {
                    warn!(%error, "the snapshot commit is not settled yet; calling it again");
                }
                other => break other.map(|()| Some(header_offset)),
            }
        }
    }

    /// Queues one message, waiting while the local queue is full.
    fn send(&self, value: &[u8]) -> Result<DeliveryFuture, KafkaError> {
        // Shard k's chain is partition k (partition 0 of one shard).
        let partition = self.shard.index() as i32;
        let record = FutureRecord::to(&self.topic).key(self.model.as_bytes()).payload(value).partition(partition);
        send_future(&self.producer, record)
    }

    /// What to do after `error` ([`decide`] with this producer's history).
    fn verdict(&self, error: &KafkaError) -> Verdict {
        let fatal = matches!(error, KafkaError::Transaction(inner) if inner.is_fatal());
        decide(is_fenced(error), fatal, self.outlived)
    }

    /// A failed `init_transactions`: fenced even then, another instance did
    /// take over; anything else (the broker is away) may pass on a later try.
    fn init_failed(&self, error: KafkaError) -> PublishError {
        if is_fenced(&error) { self.fenced() } else { PublishError::Aborted(error) }
    }

    fn fenced(&self) -> PublishError {
        PublishError::Fenced { model: self.model.clone(), transactional_id: self.transactional_id.clone() }
    }
}

/// What the publisher does after a failed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Another instance took over the transactional id.
    Stop,
    /// A new producer, then publish again.
    Replace,
    /// Abort and publish again with this producer.
    Retry,
}

/// [`Verdict`] of an error: `fenced` (the epoch was taken), `fatal` (the
/// producer cannot go on), `outlived` (a transaction failed after being
/// open the whole transaction timeout since the last commit).
fn decide(fenced: bool, fatal: bool, outlived: bool) -> Verdict {
    match (fenced, fatal, outlived) {
        (true, _, false) => Verdict::Stop,
        (true, _, true) | (false, true, _) => Verdict::Replace,
        (false, false, _) => Verdict::Retry,
    }
}

/// Waits for a delivery report on the current thread, giving the offset.
fn wait(delivery: DeliveryFuture) -> Result<i64, KafkaError> {
    match block_on(delivery) {
        Ok(Ok(delivered)) => Ok(delivered.offset),
        Ok(Err((error, _message))) => Err(error),
        Err(_canceled) => Err(KafkaError::Canceled),
    }
}

/// Drives a future to completion on this thread, parking between polls.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_stops_the_publisher_unless_a_transaction_outlived_the_timeout_before_it() {
        // Another instance took the transactional id: stop, fatal or not.
        assert_eq!(decide(true, false, false), Verdict::Stop);
        assert_eq!(decide(true, true, false), Verdict::Stop);
        // The coordinator aborted an outlived transaction and bumped the epoch.
        assert_eq!(decide(true, false, true), Verdict::Replace);
        // librdkafka gave up on the producer: a new one.
        assert_eq!(decide(false, true, false), Verdict::Replace);
        assert_eq!(decide(false, true, true), Verdict::Replace);
        // Anything else: abort and try again.
        assert_eq!(decide(false, false, false), Verdict::Retry);
        assert_eq!(decide(false, false, true), Verdict::Retry);
    }
}
