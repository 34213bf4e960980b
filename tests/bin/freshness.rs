//! Click-to-serving freshness: produces synthetic JSON events at a steady
//! rate to a running `freshet run`, follows its snapshot topic with the
//! subscriber library (what `freshet serve` embeds), and reports, for sampled
//! events, the time from produce to the swap of a snapshot whose watermark
//! covers them. Run through `bench/freshness.sh`.
//!
//! Usage: `freshness BOOTSTRAP MODEL RATINGS_TOPIC RATE SECONDS`

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use freshet_core::snapshot::Watermark;
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{encode, now_ms};
use freshet_publisher::default_snapshot_topic;
use freshet_subscriber::{Subscriber, SubscriberConfig, SubscriberEvent, SwapKind};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

/// Every this many messages one is timed.
const SAMPLE_EVERY: usize = 200;

/// Where sampled messages landed: sample index → (partition, offset).
#[derive(Clone, Default)]
struct Landed(Arc<Mutex<BTreeMap<usize, (i32, i64)>>>);

impl ClientContext for Landed {}

impl ProducerContext for Landed {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sample: usize) {
        if let (Ok(message), true) = (result, sample > 0) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(sample, (message.partition(), message.offset()));
        }
    }
}

/// One applied snapshot as seen by the bench.
struct Swap {
    at_ms: i64,
    watermark: Watermark,
    full: bool,
    bytes: usize,
    /// From the publisher building it to its swap (ms).
    publish_to_apply_ms: i64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, model, topic, rate, seconds] = args.as_slice() else {
        anyhow::bail!("usage: freshness BOOTSTRAP MODEL RATINGS_TOPIC RATE SECONDS");
    };
    let rate: usize = rate.parse().context("RATE")?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    let swaps = follow(bootstrap, model)?;
    let landed = Landed::default();
    let producer: ThreadedProducer<Landed> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap.as_str())
        .set("linger.ms", "1")
        .create_with_context(landed.clone())?;
    let sent_ms = produce(&producer, topic, rate, Duration::from_secs(seconds))?;
    producer.flush(Duration::from_secs(30))?;
    let landed = landed.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    report(topic, &sent_ms, &landed, &collect(&swaps, topic, &landed, Duration::from_secs(30)));
    Ok(())
}

/// Subscribes to the model's snapshots; swaps arrive on the receiver.
fn follow(bootstrap: &str, model: &str) -> anyhow::Result<(Subscriber, Receiver<Swap>)> {
    let (swaps, received) = channel();
    let config = SubscriberConfig::new(bootstrap, default_snapshot_topic(model));
    let subscriber = Subscriber::start(&config, move |event: &SubscriberEvent| {
        if let SubscriberEvent::Applied(report) = event {
            let _ = swaps.send(Swap {
                at_ms: now_ms(),
                watermark: report.watermark.clone(),
                full: report.kind == SwapKind::Full,
                bytes: report.bytes,
                publish_to_apply_ms: report.publish_to_apply_ms,
            });
        }
    })?;
    Ok((subscriber, received))
}

/// Sends rating events at `rate` per second for `duration`, in 10 ms steps;
/// returns the send time of each sample.
fn produce(
    producer: &ThreadedProducer<Landed>,
    topic: &str,
    rate: usize,
    duration: Duration,
) -> anyhow::Result<BTreeMap<usize, i64>> {
    let mut stream =
        SynthStream::new(SynthConfig { users: 100_000, items: 20_000, click_share: 0.0, ..SynthConfig::default() });
    let started = Instant::now();
    let (mut sent, mut sent_ms) = (0usize, BTreeMap::new());
    while started.elapsed() < duration {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as usize;
        while sent < due {
            let event = stream.next_event_at(now_ms());
            let payload = encode(&event, freshet_core::ContentType::Json);
            let sample = if sent % SAMPLE_EVERY == 0 { sent / SAMPLE_EVERY + 1 } else { 0 };
            if sample > 0 {
                sent_ms.insert(sample, now_ms());
            }
            let key = event.user().to_owned();
            let record = BaseRecord::with_opaque_to(topic, sample).payload(payload.as_slice()).key(key.as_str());
            freshet_kafka::send_threaded(producer, record).context("producing")?;
            sent += 1;
        }
        if sent % (rate.max(1)) < rate / 100 + 1 {
            eprint!("\r  sent {sent} events ({:.0} s)", started.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("\r  sent {sent} events in {:.1} s", started.elapsed().as_secs_f64());
    Ok(sent_ms)
}

/// Swaps until every landed sample is covered (or `timeout` passes).
fn collect(
    (subscriber, swaps): &(Subscriber, Receiver<Swap>),
    topic: &str,
    landed: &BTreeMap<usize, (i32, i64)>,
    timeout: Duration,
) -> Vec<Swap> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if let Ok(swap) = swaps.recv_timeout(left.min(Duration::from_millis(200))) {
            seen.push(swap);
        }
        let covered =
            |&(partition, offset): &(i32, i64)| seen.iter().any(|s| s.watermark.covers(topic, partition, offset));
        if landed.values().all(covered) {
            break;
        }
    }
    eprintln!("  {} snapshots applied, subscriber stats {:?}", seen.len(), subscriber.stats());
    seen
}

fn report(topic: &str, sent_ms: &BTreeMap<usize, i64>, landed: &BTreeMap<usize, (i32, i64)>, swaps: &[Swap]) {
    // Each sample's latency, split at the moment the publisher built the
    // snapshot that covers it: produce to built (consume, train, wait for
    // and write the checkpoint, the publisher's queue) and built to swapped
    // (encode, transaction, fetch, decode, apply).
    let (mut latencies, mut to_built, mut built_to_swap) = (Vec::new(), Vec::new(), Vec::new());
    let mut uncovered = 0;
    for (sample, &(partition, offset)) in landed {
        let first = swaps.iter().find(|s| s.watermark.covers(topic, partition, offset));
        match (first, sent_ms.get(sample)) {
            (Some(swap), Some(sent)) => {
                latencies.push(swap.at_ms - sent);
                to_built.push(swap.at_ms - sent - swap.publish_to_apply_ms);
                built_to_swap.push(swap.publish_to_apply_ms);
            }
            _ => uncovered += 1,
        }
    }
    let quantile = |values: &mut Vec<i64>, q: f64| {
        values.sort_unstable();
        values.get(((values.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(-1)
    };
    let mean_bytes = |full: bool| {
        let sizes: Vec<usize> = swaps.iter().filter(|s| s.full == full).map(|s| s.bytes).collect();
        if sizes.is_empty() { 0 } else { sizes.iter().sum::<usize>() / sizes.len() }
    };
    println!(
        "{}",
        serde_json::json!({
            "samples": latencies.len(),
            "uncovered": uncovered,
            "p50_ms": quantile(&mut latencies, 0.5),
            "p99_ms": quantile(&mut latencies, 0.99),
            "max_ms": latencies.last().copied().unwrap_or(-1),
            // The cadence spreads samples evenly over a checkpoint interval:
            // the low end is the path from produce to trained.
            "produce_to_built_p05_ms": quantile(&mut to_built, 0.05),
            "produce_to_built_p50_ms": quantile(&mut to_built, 0.5),
            "produce_to_built_p99_ms": quantile(&mut to_built, 0.99),
            "built_to_swap_p50_ms": quantile(&mut built_to_swap, 0.5),
            "built_to_swap_p99_ms": quantile(&mut built_to_swap, 0.99),
            "snapshots": swaps.len(),
            "mean_delta_bytes": mean_bytes(false),
            "mean_full_bytes": mean_bytes(true),
        })
    );
}
