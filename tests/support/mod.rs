//! Helpers shared by the tests that run against a real Kafka broker (started
//! by `deploy/kafka/kafka.sh start`; address from `FRESHET_KAFKA_BOOTSTRAP`,
//! default `127.0.0.1:9092`). Every test works on its own uniquely named
//! topics and groups, so tests run in parallel on one broker.

pub mod broker;
pub mod browser;
pub mod process;
pub mod snapshots;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use freshet_core::CONTENT_TYPE_HEADER;
use freshet_core::TopicPartition;
use freshet_core::synth::{Expected, Stream, SynthConfig, SynthStream};
use freshet_kafka::{KafkaConfig, TopicSpec, ensure_topics};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The broker's bootstrap address, checked to answer metadata requests.
pub fn bootstrap() -> String {
    let bootstrap = std::env::var("FRESHET_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let probe: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("a metadata client");
    if let Err(error) = probe.fetch_metadata(None, Duration::from_secs(15)) {
        panic!("no Kafka broker answers at {bootstrap} ({error}); start one with `deploy/kafka/kafka.sh start`");
    }
    bootstrap
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// Input and dead-letter topic names for one test.
#[derive(Debug, Clone)]
pub struct TestTopics {
    /// Clicks topic.
    pub clicks: String,
    /// Ratings topic.
    pub ratings: String,
    /// Dead-letter topic.
    pub dlq: String,
}

impl TestTopics {
    /// Creates fresh topics: the inputs with `partitions` partitions, the DLQ with one.
    pub async fn create(bootstrap: &str, partitions: i32) -> anyhow::Result<TestTopics> {
        let base = unique("t");
        let topics = TestTopics {
            clicks: format!("{base}.clicks"),
            ratings: format!("{base}.ratings"),
            dlq: format!("{base}.dlq"),
        };
        let specs = [
            TopicSpec::new(&topics.clicks, partitions),
            TopicSpec::new(&topics.ratings, partitions),
            TopicSpec::new(&topics.dlq, 1),
        ];
        ensure_topics(&KafkaConfig::new(bootstrap), &specs).await?;
        Ok(topics)
    }

    /// The input topics.
    pub fn inputs(&self) -> Vec<String> {
        vec![self.clicks.clone(), self.ratings.clone()]
    }
}

/// Where each produced message landed and what validation must make of it.
#[derive(Debug, Default)]
pub struct Produced {
    /// Expected outcome and payload per (topic, partition, offset).
    pub messages: BTreeMap<(String, i32, i64), (Expected, Vec<u8>)>,
}

impl Produced {
    /// Number of valid messages.
    pub fn valid(&self) -> usize {
        self.messages.values().filter(|(e, _)| matches!(e, Expected::Valid(_))).count()
    }

    /// Number of malformed messages.
    pub fn invalid(&self) -> usize {
        self.messages.len() - self.valid()
    }

    /// Next offset per partition after everything produced.
    pub fn end_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        let mut ends = BTreeMap::new();
        for (topic, partition, offset) in self.messages.keys() {
            let end = ends.entry(TopicPartition::new(topic, *partition)).or_insert(0);
            *end = (*end).max(offset + 1);
        }
        ends
    }
}

/// Produces `count` synthetic messages (current timestamps) and records where each landed.
pub async fn produce_synth(
    bootstrap: &str,
    topics: &TestTopics,
    config: SynthConfig,
    count: usize,
) -> anyhow::Result<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let mut stream = SynthStream::new(config);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let mut pending = Vec::with_capacity(count);
    for _ in 0..count {
        let message = stream.next_message_at(now);
        let topic = match message.stream {
            Stream::Clicks => topics.clicks.clone(),
            Stream::Ratings => topics.ratings.clone(),
        };
        let headers = message
            .content_type
            .as_deref()
            .map(|value| OwnedHeaders::new().insert(Header { key: CONTENT_TYPE_HEADER, value: Some(value) }));
        let mut record = FutureRecord::to(&topic).key(&message.key).payload(&message.payload);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
        pending.push((topic, message.expected, message.payload, delivery));
    }
    let mut produced = Produced::default();
    for (topic, expected, payload, delivery) in pending {
        let delivered = delivery.await?.map_err(|(e, _)| e)?;
        produced.messages.insert((topic, delivered.partition, delivered.offset), (expected, payload));
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(produced)
}

/// Produces `events` as JSON (clicks to the clicks topic, the rest to the
/// ratings topic) and returns how many were delivered.
pub async fn produce_events(
    bootstrap: &str,
    topics: &TestTopics,
    events: &[freshet_core::Feedback],
) -> anyhow::Result<usize> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let topic = match event {
            freshet_core::Feedback::Click(_) => &topics.clicks,
            _ => &topics.ratings,
        };
        let payload = freshet_core::encode(event, freshet_core::ContentType::Json);
        let key = match event {
            freshet_core::Feedback::Click(click) => click.user.clone(),
            freshet_core::Feedback::Rating(rating) => rating.user.clone(),
            freshet_core::Feedback::Forget(forget) => forget.user.clone(),
        };
        let record = FutureRecord::to(topic).key(&key).payload(&payload);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    let delivered = pending.len();
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(delivered)
}

/// Reads every message of `topic` once it holds at least `at_least` of them
/// (all partitions, from the start up to their high watermarks).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let deadline = Instant::now() + timeout;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    let ends = loop {
        let mut ends = BTreeMap::new();
        for &partition in &partitions {
            let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
            ends.insert(partition, high);
        }
        if ends.values().sum::<i64>() >= at_least as i64 {
            break ends;
        }
        if Instant::now() > deadline {
            bail!("{topic} holds {} messages, fewer than {at_least}", ends.values().sum::<i64>());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let total = ends.values().sum::<i64>() as usize;
    let mut messages = Vec::with_capacity(total);
    while messages.len() < total {
        if Instant::now() > deadline {
            bail!("read {} of {total} messages from {topic} before the timeout", messages.len());
        }
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            messages.push(message.context("reading")?.detach());
        }
    }
    Ok(messages)
}

/// The value of a message header as text.
pub fn header(message: &OwnedMessage, key: &str) -> Option<String> {
    let headers = message.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}
