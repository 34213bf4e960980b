//! `freshet consume`: read the input topics through the real source (decode,
//! validate, dead-letter), commit what was read to the group, and print a
//! summary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use freshet_consumer::{
    ConsumerConfig, DEFAULT_CLICKS_TOPIC, DEFAULT_DLQ_TOPIC, DEFAULT_RATINGS_TOPIC, MicroBatch, Source, SourceEvent,
    StartFrom,
};
use freshet_core::{Decoder, NextOffsets, TopicPartition, ValidationConfig};
use freshet_kafka::{TopicSpec, ensure_topics};
use serde_json::{Value, json};

use crate::cli_args::{KafkaSettings, parse_positive};
use crate::progress;

/// Flags of `freshet consume`.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Consumer group id.
    #[arg(long, default_value = "freshet-consume")]
    group: String,
    /// Exit once no message arrived for this long (after partitions were assigned).
    #[arg(long, value_name = "MS", value_parser = parse_positive)]
    idle_exit_ms: u64,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Input topics, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [DEFAULT_CLICKS_TOPIC.to_owned(), DEFAULT_RATINGS_TOPIC.to_owned()])]
    topics: Vec<String>,
    /// Dead-letter topic.
    #[arg(long, default_value = DEFAULT_DLQ_TOPIC)]
    dlq_topic: String,
    /// Where partitions without an explicit offset start.
    #[arg(long, value_enum, default_value = "committed")]
    start_from: StartFromArg,
    /// Explicit next offsets, as JSON `{"topic": {"partition": offset}}` (the
    /// summary's "next_offsets"); they win over the group's committed offsets.
    #[arg(long, value_name = "JSON", value_parser = parse_offsets)]
    start_offsets: Option<NextOffsets>,
    /// How long to wait for a partition assignment before giving up.
    #[arg(long, value_name = "MS", default_value_t = 60_000, value_parser = parse_positive)]
    assign_timeout_ms: u64,
    #[command(flatten)]
    kafka: KafkaSettings,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum StartFromArg {
    Committed,
    Earliest,
    Latest,
}

impl From<StartFromArg> for StartFrom {
    fn from(arg: StartFromArg) -> Self {
        match arg {
            StartFromArg::Committed => StartFrom::Committed,
            StartFromArg::Earliest => StartFrom::Earliest,
            StartFromArg::Latest => StartFrom::Latest,
        }
    }
}

fn parse_offsets(text: &str) -> Result<NextOffsets, String> {
    let nested: BTreeMap<String, BTreeMap<String, i64>> =
        serde_json::from_str(text).map_err(|e| format!("expected {{\"topic\": {{\"partition\": offset}}}}: {e}"))?;
    let mut offsets = NextOffsets::new();
    for (topic, partitions) in nested {
        for (partition, offset) in partitions {
            let partition: i32 = partition.parse().map_err(|_| format!("partition {partition:?} is not a number"))?;
            if offset < 0 {
                return Err(format!("offset {offset} of {topic}/{partition} is negative"));
            }
            offsets.insert(TopicPartition::new(&topic, partition), offset);
        }
    }
    Ok(offsets)
}

/// What a consume run saw.
#[derive(Debug, Default)]
struct Tally {
    by_kind: BTreeMap<&'static str, u64>,
    rejects: BTreeMap<&'static str, u64>,
    last_offsets: BTreeMap<TopicPartition, i64>,
    first_batch: Option<Instant>,
    last_batch: Option<Instant>,
}

impl Tally {
    fn add(&mut self, batch: &MicroBatch) {
        for event in batch.events.iter() {
            *self.by_kind.entry(event.target.kind().as_str()).or_default() += 1;
        }
        for (reason, count) in &batch.rejected {
            *self.rejects.entry(reason.as_str()).or_default() += count;
        }
        for (tp, range) in &batch.offsets {
            let last = self.last_offsets.entry(tp.clone()).or_insert(range.last);
            *last = (*last).max(range.last);
        }
        let now = Instant::now();
        self.first_batch.get_or_insert(now);
        self.last_batch = Some(now);
    }

    fn valid(&self) -> u64 {
        self.by_kind.values().sum()
    }

    fn invalid(&self) -> u64 {
        self.rejects.values().sum()
    }

    fn to_json(&self) -> Value {
        let nested = |shift: i64| {
            let mut out: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
            for (tp, last) in &self.last_offsets {
                out.entry(&tp.topic).or_default().insert(tp.partition.to_string(), last + shift);
            }
            out
        };
        let span = match (self.first_batch, self.last_batch) {
            (Some(first), Some(last)) => last.duration_since(first).as_secs_f64(),
            _ => 0.0,
        };
        let messages = self.valid() + self.invalid();
        json!({
            "valid": self.valid(),
            "invalid": self.invalid(),
            "by_kind": self.by_kind,
            "rejects": self.rejects,
            "last_offsets": nested(0),
            "next_offsets": nested(1),
            "consume_s": span,
            "messages_per_s": if span > 0.0 { Some(messages as f64 / span) } else { None },
        })
    }
}

/// Runs `freshet consume`.
pub async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let kafka = args.kafka.config(&args.bootstrap);
    let config = ConsumerConfig {
        group_id: args.group.clone(),
        topics: args.topics.clone(),
        dlq_topic: args.dlq_topic.clone(),
        start_from: args.start_from.into(),
        ..ConsumerConfig::default()
    };
    kafka.check()?;
    config.check()?;
    ensure_topics(&kafka, &[TopicSpec::new(&config.dlq_topic, 1)]).await.context("creating the dead-letter topic")?;
    let start = args.start_offsets.clone().unwrap_or_default();
    let (source, mut batches) = Source::start(&kafka, &config, Decoder::new(ValidationConfig::default()), start)
        .context("starting the consumer")?;

    let idle_exit = Duration::from_millis(args.idle_exit_ms);
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut assigned_at: Option<Instant> = None;
    let mut last_activity = Instant::now();
    let bar = progress::counter("messages");
    loop {
        match tokio::time::timeout(Duration::from_millis(50), batches.recv()).await {
            Ok(Some(SourceEvent::Assigned(_))) => {
                assigned_at.get_or_insert_with(Instant::now);
                last_activity = Instant::now();
            }
            Ok(Some(SourceEvent::Batch(batch))) => {
                tally.add(&batch);
                source.acknowledge(&batch.next_offsets());
                bar.inc(batch.messages() as u64);
                last_activity = Instant::now();
            }
            Ok(Some(SourceEvent::Revoked(revocation))) => revocation.acknowledge(),
            Ok(Some(SourceEvent::Rewound)) => {} // this reader never rewinds
            Ok(None) => break,
            Err(_elapsed) => {}
        }
        match assigned_at {
            Some(_) if last_activity.elapsed() >= idle_exit => break,
            None if started.elapsed() >= Duration::from_millis(args.assign_timeout_ms) => {
                bail!("no partition was assigned within {} ms (do the topics exist?)", args.assign_timeout_ms)
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    tokio::task::spawn_blocking(move || source.stop()).await?.context("stopping the consumer")?;
    // Batches handed over while stopping were consumed too; count them.
    while let Ok(event) = batches.try_recv() {
        if let SourceEvent::Batch(batch) = event {
            tally.add(&batch);
        }
    }
    let summary = tally.to_json();
    if args.json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}
