//! The transactional producer: one Kafka transaction per snapshot, a
//! transactional id per model (so a second instance fences the first), and
//! the chain bookkeeping (where the current full snapshot starts).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use freshet_core::snapshot::ValueEncoding;
use freshet_core::{ModelSpec, now_ms};
use freshet_kafka::{KafkaConfig, send_future};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
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
    /// The producer can no longer be used.
    #[error("fatal Kafka producer error: {0}")]
    Fatal(KafkaError),
    /// The transaction was aborted; publishing it again may succeed.
    #[error("snapshot transaction aborted: {0}")]
    Aborted(KafkaError),
    /// A delta came with no full snapshot published before it in this process.
    #[error("a delta snapshot needs a full snapshot published first")]
    NoChain,
    /// Kafka client setup failed.
    #[error("creating the snapshot producer: {0}")]
    Setup(KafkaError),
}

impl PublishError {
    /// Whether the publisher must stop (publishing again cannot succeed).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, PublishError::Aborted(_))
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
}

/// Publishes snapshots of one model to its topic.
pub struct SnapshotProducer {
    producer: FutureProducer,
    model: String,
    transactional_id: String,
    topic: String,
    spec: ModelSpec,
    chunk_bytes: usize,
    value_encoding: ValueEncoding,
    timeout: Duration,
    /// Header offset of the newest full snapshot committed by this instance.
    chain_start: Option<i64>,
}

impl SnapshotProducer {
    /// Connects and initialises the transactional id `freshet-publisher-<model>`,
    /// fencing any earlier instance of the model.
    pub fn connect(
        kafka: &KafkaConfig,
        config: &PublisherConfig,
        model: &str,
        spec: &ModelSpec,
    ) -> Result<Self, PublishError> {
        let transactional_id = format!("freshet-publisher-{model}");
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
            model: model.to_owned(),
            transactional_id,
            topic: config.topic_for(model),
            spec: spec.clone(),
            chunk_bytes: config.chunk_bytes,
            value_encoding: config.value_encoding,
            timeout,
            chain_start: None,
        };
        this.producer.init_transactions(timeout).map_err(|error| this.classify(error))?;
        Ok(this)
    }

    /// The snapshot topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `outgoing` in one transaction. A delta needs a full snapshot
    /// published by this instance before it.
    pub fn publish(&mut self, outgoing: &Outgoing) -> Result<Published, PublishError> {
        let _span = info_span!("publish", version = outgoing.version, full = outgoing.is_full()).entered();
        let started = Instant::now();
        let chain_start = match (outgoing.is_full(), self.chain_start) {
            (true, _) => None,
            (false, Some(offset)) => Some(offset),
            (false, None) => return Err(PublishError::NoChain),
        };
        let context = HeaderContext {
            model: &self.model,
            spec: &self.spec,
            created_ms: now_ms(),
            chain_start_offset: chain_start,
            value_encoding: self.value_encoding,
        };
        let encoded = encode(outgoing, context, self.chunk_bytes);
        self.producer.begin_transaction().map_err(|error| self.classify(error))?;
        match self.write(&encoded, chain_start) {
            Ok(header_offset) => {
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
                };
                debug!(?published, "snapshot published");
                Ok(published)
            }
            Err(error) => {
                let error = self.classify(error);
                if !error.is_fatal() {
                    warn!(%error, "aborting the snapshot transaction");
                    if let Err(abort) = self.producer.abort_transaction(self.timeout) {
                        return Err(self.classify(abort));
                    }
                }
                Err(error)
            }
        }
    }

    /// Produces the header (waiting for its offset), the chunks and the
    /// commit record, then commits the transaction. Returns the header's offset.
    fn write(&self, encoded: &EncodedSnapshot, chain_start: Option<i64>) -> Result<i64, KafkaError> {
        let header_offset = wait(self.send(&encoded.header_value)?)?;
        let mut deliveries = Vec::with_capacity(encoded.chunks.len() + 1);
        for chunk in &encoded.chunks {
            deliveries.push(self.send(chunk)?);
        }
        deliveries.push(self.send(&encoded.commit_value(chain_start.unwrap_or(header_offset)))?);
        for delivery in deliveries {
            wait(delivery)?;
        }
        self.producer.commit_transaction(self.timeout)?;
        Ok(header_offset)
    }

    /// Queues one message, waiting while the local queue is full.
    fn send(&self, value: &[u8]) -> Result<DeliveryFuture, KafkaError> {
        let record = FutureRecord::to(&self.topic).key(self.model.as_bytes()).payload(value).partition(0);
        send_future(&self.producer, record)
    }

    fn classify(&self, error: KafkaError) -> PublishError {
        let fenced = matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
        );
        let fatal = match &error {
            KafkaError::Transaction(inner) => inner.is_fatal(),
            _ => false,
        };
        if fenced {
            PublishError::Fenced { model: self.model.clone(), transactional_id: self.transactional_id.clone() }
        } else if fatal {
            PublishError::Fatal(error)
        } else {
            PublishError::Aborted(error)
        }
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
