//! The dead-letter topic: every rejected message is written there as it came
//! (key and payload untouched) with headers saying why and where from.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use freshet_core::{CONTENT_TYPE_HEADER, Rejection};
use freshet_kafka::{KafkaConfig, send_threaded};
use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::config::ConsumerConfig;
use crate::error::ConsumerError;

/// Header with the reason code (see `RejectReason::as_str`).
pub const HEADER_REASON: &str = "reason";
/// Header with the human-readable rejection message.
pub const HEADER_DETAIL: &str = "detail";
/// Header with the topic the message was read from.
pub const HEADER_SOURCE_TOPIC: &str = "source_topic";
/// Header with the partition the message was read from (decimal).
pub const HEADER_SOURCE_PARTITION: &str = "source_partition";
/// Header with the offset the message was read from (decimal).
pub const HEADER_SOURCE_OFFSET: &str = "source_offset";

const DETAIL_MAX_BYTES: usize = 512;

/// Where a rejected message came from.
#[derive(Debug, Clone, Copy)]
pub struct SourcePosition<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// Counts delivery failures reported by the producer's background thread.
#[derive(Default)]
pub(crate) struct DeliveryWatch {
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryWatch {}

impl ProducerContext for DeliveryWatch {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(error.to_string());
            }
        }
    }
}

/// Writes rejected messages to the dead-letter topic.
pub struct DeadLetters {
    producer: ThreadedProducer<DeliveryWatch>,
    topic: String,
    unflushed: usize,
}

impl DeadLetters {
    /// A producer for the configured dead-letter topic (idempotent, acks=all).
    pub fn new(kafka: &KafkaConfig, config: &ConsumerConfig) -> Result<Self, ConsumerError> {
        let producer = kafka
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create_with_context(DeliveryWatch::default())?;
        Ok(DeadLetters { producer, topic: config.dlq_topic.clone(), unflushed: 0 })
    }

    /// Queues one rejected message. Call [`DeadLetters::flush`] before its
    /// offset is acknowledged anywhere.
    pub fn send(
        &mut self,
        from: SourcePosition<'_>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        content_type: Option<&[u8]>,
        rejection: &Rejection,
    ) -> Result<(), ConsumerError> {
        let message = rejection.to_string();
        let detail = truncate(&message, DETAIL_MAX_BYTES);
        let partition = from.partition.to_string();
        let offset = from.offset.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header { key: HEADER_REASON, value: Some(rejection.reason().as_str()) })
            .insert(Header { key: HEADER_DETAIL, value: Some(detail) })
            .insert(Header { key: HEADER_SOURCE_TOPIC, value: Some(from.topic) })
            .insert(Header { key: HEADER_SOURCE_PARTITION, value: Some(&partition) })
            .insert(Header { key: HEADER_SOURCE_OFFSET, value: Some(&offset) });
        if let Some(content_type) = content_type {
            headers = headers.insert(Header { key: CONTENT_TYPE_HEADER, value: Some(content_type) });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        send_threaded(&self.producer, record).map_err(|e| self.failure(e.to_string()))?;
        self.unflushed += 1;
        Ok(())
    }

    /// Waits until every queued message is acknowledged by the broker.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), ConsumerError> {
        if self.unflushed == 0 {
            return Ok(());
        }
        self.producer.flush(timeout).map_err(|e| self.failure(e.to_string()))?;
        let watch = self.producer.context();
        if watch.failures.swap(0, Ordering::Relaxed) > 0 {
            let message = watch
                .last_error
                .lock()
                .ok()
                .and_then(|mut last| last.take())
                .unwrap_or_else(|| "unknown delivery error".to_owned());
            return Err(self.failure(message));
        }
        self.unflushed = 0;
        Ok(())
    }

    fn failure(&self, message: String) -> ConsumerError {
        ConsumerError::DeadLetter { topic: self.topic.clone(), message }
    }
}

fn truncate(text: &str, max_bytes: usize) -> &str {
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
