//! `freshet produce synth`: deterministic synthetic feedback on the input topics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use freshet_consumer::{DEFAULT_CLICKS_TOPIC, DEFAULT_RATINGS_TOPIC};
use freshet_core::synth::{Expected, Stream, SynthConfig, SynthMessage, SynthStream};
use freshet_core::{CONTENT_TYPE_HEADER, ValidationConfig, now_ms};
use freshet_kafka::{KafkaConfig, TopicSpec, ensure_topics, send_threaded};
use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde_json::json;

use crate::cli_args::{KafkaSettings, parse_positive, parse_share};
use crate::progress;

/// Producers of feedback.
#[derive(Debug, clap::Subcommand)]
pub enum ProduceCommand {
    /// Synthetic clicks and ratings from planted user/item factors.
    Synth(SynthArgs),
}

/// Flags of `freshet produce synth`.
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FRESHET_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Number of messages to send (valid and malformed).
    #[arg(long, value_parser = parse_positive)]
    events: u64,
    /// Seed of the stream; the same seed gives the same messages.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of malformed messages, cycling through every rejection reason.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    invalid_rate: f64,
    /// Send at most this many messages per second (default: as fast as possible).
    #[arg(long, value_name = "EV_PER_S", value_parser = parse_positive)]
    rate: Option<u64>,
    /// Number of distinct users.
    #[arg(long, default_value_t = 10_000)]
    users: u32,
    /// Number of distinct items.
    #[arg(long, default_value_t = 2_000)]
    items: u32,
    /// Share of valid events that are clicks (the rest are ratings and forgets).
    #[arg(long, default_value_t = 0.5, value_parser = parse_share)]
    click_share: f64,
    /// Share of valid events that are forget requests.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    forget_share: f64,
    /// Share of valid events encoded as bincode instead of JSON.
    #[arg(long, default_value_t = 0.0, value_parser = parse_share)]
    bincode_share: f64,
    /// Topic for clicks.
    #[arg(long, default_value = DEFAULT_CLICKS_TOPIC)]
    clicks_topic: String,
    /// Topic for ratings and forget requests.
    #[arg(long, default_value = DEFAULT_RATINGS_TOPIC)]
    ratings_topic: String,
    /// Partitions of each input topic when it has to be created.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=1024))]
    partitions: i32,
    #[command(flatten)]
    kafka: KafkaSettings,
}

/// Runs a produce subcommand.
pub async fn run(command: ProduceCommand) -> anyhow::Result<()> {
    match command {
        ProduceCommand::Synth(args) => synth(args).await,
    }
}

/// Counts broker acknowledgements from the producer's background thread.
#[derive(Default)]
struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((error, _)) => {
                tracing::warn!(%error, "delivery failed");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// What was sent, per kind and per expected rejection.
#[derive(Debug, Default)]
struct SentCounts {
    valid: BTreeMap<&'static str, u64>,
    invalid: BTreeMap<&'static str, u64>,
}

async fn synth(args: SynthArgs) -> anyhow::Result<()> {
    if args.clicks_topic == args.ratings_topic {
        bail!("--clicks-topic and --ratings-topic must differ");
    }
    let kafka = args.kafka.config(&args.bootstrap);
    let topics = [&args.clicks_topic, &args.ratings_topic].map(|t| TopicSpec::new(t.as_str(), args.partitions));
    ensure_topics(&kafka, &topics).await.context("creating the input topics")?;
    // Sending paces itself with sleeps: keep it off the async workers.
    tokio::task::spawn_blocking(move || send_stream(&args, &kafka)).await?
}

/// Sends the stream and prints the JSON summary.
fn send_stream(args: &SynthArgs, kafka: &KafkaConfig) -> anyhow::Result<()> {
    let producer: ThreadedProducer<Deliveries> = kafka
        .client()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "60000")
        .create_with_context(Deliveries::default())
        .context("creating the Kafka producer")?;

    let mut stream = SynthStream::new(SynthConfig {
        seed: args.seed,
        users: args.users,
        items: args.items,
        click_share: args.click_share,
        forget_share: args.forget_share,
        invalid_rate: args.invalid_rate,
        bincode_share: args.bincode_share,
        max_message_bytes: ValidationConfig::default().max_message_bytes,
        ..SynthConfig::default()
    });
    let bar = progress::bar(args.events, "messages");
    let started = Instant::now();
    let mut counts = SentCounts::default();
    for index in 0..args.events {
        if let Some(rate) = args.rate {
            pace(started, index, rate);
        }
        let message = stream.next_message_at(now_ms());
        send_synth(&producer, &message, &args.clicks_topic, &args.ratings_topic)?;
        match message.expected {
            Expected::Valid(kind) => *counts.valid.entry(kind.as_str()).or_default() += 1,
            Expected::Invalid(reason) => *counts.invalid.entry(reason.as_str()).or_default() += 1,
        }
        if index % 1024 == 0 {
            bar.set_position(index);
        }
    }
    bar.set_message("waiting for acknowledgements");
    producer.flush(Duration::from_secs(120)).context("flushing the producer")?;
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let deliveries = producer.context();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    let summary = json!({
        "sent": args.events,
        "delivered": deliveries.delivered.load(Ordering::Relaxed),
        "failed": failed,
        "valid": counts.valid.values().sum::<u64>(),
        "invalid": counts.invalid.values().sum::<u64>(),
        "by_kind": counts.valid,
        "invalid_by_reason": counts.invalid,
        "topics": {"clicks": &args.clicks_topic, "ratings": &args.ratings_topic},
        "seed": args.seed,
        "elapsed_s": elapsed,
        "events_per_s": args.events as f64 / elapsed.max(1e-9),
    });
    println!("{summary}");
    if failed > 0 {
        bail!("{failed} messages were not delivered");
    }
    Ok(())
}

/// Sends one synthetic message to the clicks or the ratings topic, with its
/// content-type header, waiting while the local queue is full.
pub fn send_synth<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &ThreadedProducer<C>,
    message: &SynthMessage,
    clicks_topic: &str,
    ratings_topic: &str,
) -> anyhow::Result<()> {
    let topic = match message.stream {
        Stream::Clicks => clicks_topic,
        Stream::Ratings => ratings_topic,
    };
    let mut record = BaseRecord::to(topic).key(message.key.as_bytes()).payload(message.payload.as_slice());
    if let Some(content_type) = &message.content_type {
        record = record.headers(
            OwnedHeaders::new().insert(Header { key: CONTENT_TYPE_HEADER, value: Some(content_type.as_str()) }),
        );
    }
    send_threaded(producer, record).context("sending")
}

/// Sleeps until message `index` is due at `rate` messages per second.
pub fn pace(started: Instant, index: u64, rate: u64) {
    let due = Duration::from_secs_f64(index as f64 / rate as f64);
    if let Some(wait) = due.checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
}
