//! The dead-letter topic: every rejected message is written there as it came
//! (key and payload untouched) with headers saying why and where from.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use freshet_core::{CONTENT_TYPE_HEADER, Rejection};
use freshet_kafka::{KafkaConfig, send_threaded};
use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tracing::warn;

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
/// How long one wait of [`DeadLetters::flush`] lasts before it looks at the
/// stop flag again.
const FLUSH_SLICE: Duration = Duration::from_millis(200);
/// How long [`DeadLetters::flush`] still waits once shutdown is asked for.
const FLUSH_GRACE_AT_STOP: Duration = Duration::from_secs(5);
/// How often a long wait for the broker says so in the log.
const FLUSH_REPORT_EVERY: Duration = Duration::from_secs(10);

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
    /// A message has no local deadline (`message.timeout.ms = 0`): while the
    /// broker is away librdkafka keeps retrying it, and only an error that
    /// retrying cannot cure (an unknown topic, a denied write) fails it.
    pub fn new(kafka: &KafkaConfig, config: &ConsumerConfig) -> Result<Self, ConsumerError> {
        let producer = kafka
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "0")
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

    /// Waits until every queued message is acknowledged by the broker, for
    /// as long as the broker is away (its offsets are not acknowledged
    /// before, so nothing is lost by waiting), saying so in the log every
    /// few seconds. Once `stop` is set it waits a few seconds more, then
    /// gives up with an error: the messages will be read again.
    pub fn flush(&mut self, stop: &AtomicBool) -> Result<(), ConsumerError> {
        if self.unflushed == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let mut next_report = started + FLUSH_REPORT_EVERY;
        let mut stop_seen: Option<Instant> = None;
        loop {
            let acknowledged = self.producer.flush(FLUSH_SLICE).is_ok();
            self.take_delivery_failure()?;
            if acknowledged {
                self.unflushed = 0;
                return Ok(());
            }
            let now = Instant::now();
            if stop.load(Ordering::Acquire) && now - *stop_seen.get_or_insert(now) >= FLUSH_GRACE_AT_STOP {
                let pending = self.producer.in_flight_count();
                return Err(self.failure(format!("shutting down with {pending} messages not yet acknowledged")));
            }
            if now >= next_report {
                warn!(
                    topic = %self.topic,
                    pending = self.producer.in_flight_count(),
                    waited_s = started.elapsed().as_secs(),
                    "waiting for the broker to acknowledge dead letters; reading is paused until it does"
                );
                next_report = now + FLUSH_REPORT_EVERY;
            }
        }
    }

    /// The error of a delivery the producer gave up on since the last call.
    fn take_delivery_failure(&self) -> Result<(), ConsumerError> {
        let watch = self.producer.context();
        if watch.failures.swap(0, Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let message = watch
            .last_error
            .lock()
            .ok()
            .and_then(|mut last| last.take())
            .unwrap_or_else(|| "unknown delivery error".to_owned());
        Err(self.failure(message))
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
