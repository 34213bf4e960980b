//! The Kafka source against a real broker: exact counts, the dead-letter
//! topic, explicit start offsets, rebalances and bounded shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use freshet_consumer::dlq::{HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC};
use freshet_consumer::{ConsumerConfig, MicroBatch, Source, SourceEvent, StartFrom};
use freshet_core::synth::{Expected, SynthConfig};
use freshet_core::{Decoder, RejectReason};
use freshet_core::{NextOffsets, TopicPartition};
use freshet_e2e::{Produced, TestTopics, bootstrap, header, produce_synth, read_topic, unique};
use freshet_kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc::Receiver;

const TIMEOUT: Duration = Duration::from_secs(90);

fn config(topics: &TestTopics, group: &str) -> ConsumerConfig {
    ConsumerConfig {
        group_id: group.to_owned(),
        topics: topics.inputs(),
        dlq_topic: topics.dlq.clone(),
        start_from: StartFrom::Earliest,
        batch_max_messages: 200,
        batch_max_ms: 20,
        ..ConsumerConfig::default()
    }
}

/// A source over `topics` in a group of its own, from the start.
fn start_in_a_new_group(bootstrap: &str, topics: &TestTopics) -> (Source, tokio::sync::mpsc::Receiver<SourceEvent>) {
    Source::start(&KafkaConfig::new(bootstrap), &config(topics, &unique("g")), Decoder::default(), NextOffsets::new())
        .expect("source")
}

fn synth(invalid_rate: f64) -> SynthConfig {
    SynthConfig { invalid_rate, bincode_share: 0.2, forget_share: 0.02, ..SynthConfig::default() }
}

/// Everything one reader saw, in order.
#[derive(Debug, Default)]
struct Seen {
    batches: Vec<MicroBatch>,
    events: Vec<String>,
}

impl Seen {
    fn covered(&self) -> BTreeMap<TopicPartition, i64> {
        let mut next = BTreeMap::new();
        for batch in &self.batches {
            for (tp, n) in batch.next_offsets() {
                let entry = next.entry(tp).or_insert(n);
                *entry = (*entry).max(n);
            }
        }
        next
    }

    fn messages(&self) -> usize {
        self.batches.iter().map(MicroBatch::messages).sum()
    }
}

/// Reads events, acknowledging batches and revocations, until `done` holds.
async fn read_until(
    source: &Source,
    events: &mut Receiver<SourceEvent>,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = Instant::now() + TIMEOUT;
    while !done(seen) {
        assert!(Instant::now() < deadline, "timed out; seen {:?}", seen.events);
        match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            Ok(Some(SourceEvent::Batch(batch))) => {
                source.acknowledge(&batch.next_offsets());
                seen.events.push(format!("batch {}", batch.messages()));
                seen.batches.push(batch);
            }
            Ok(Some(SourceEvent::Assigned(partitions))) => seen.events.push(format!("assigned {}", partitions.len())),
            Ok(Some(SourceEvent::Revoked(revocation))) => {
                seen.events.push(format!("revoked {}", revocation.partitions.len()));
                revocation.acknowledge();
            }
            Ok(Some(SourceEvent::Rewound)) => seen.events.push("rewound".to_owned()),
            Ok(None) => panic!("the source stopped early"),
            Err(_) => {}
        }
    }
}

fn reaches(ends: &BTreeMap<TopicPartition, i64>) -> impl Fn(&Seen) -> bool + '_ {
    move |seen: &Seen| {
        let covered = seen.covered();
        ends.iter().all(|(tp, end)| covered.get(tp).is_some_and(|c| c >= end))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consumes_exact_counts_and_dead_letters_every_reject() {
    let bootstrap = bootstrap();
    let topics = TestTopics::create(&bootstrap, 3).await.expect("topics");
    let produced = produce_synth(&bootstrap, &topics, synth(0.1), 3_000).await.expect("produce");
    assert!(produced.invalid() >= 2 * RejectReason::OF_EVENTS.len(), "every reason appears");

    let (source, mut events) = start_in_a_new_group(&bootstrap, &topics);
    let mut seen = Seen::default();
    read_until(&source, &mut events, &mut seen, reaches(&produced.end_offsets())).await;
    tokio::task::spawn_blocking(move || source.stop()).await.expect("join").expect("clean stop");

    // Exactly every message once: offsets ranges are disjoint and complete.
    assert_eq!(seen.messages(), produced.messages.len());
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for event in seen.batches.iter().flat_map(|b| b.events.iter()) {
        *by_kind.entry(event.target.kind().as_str()).or_default() += 1;
    }
    let mut expected_kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut expected_rejects: BTreeMap<RejectReason, u64> = BTreeMap::new();
    for (expected, _) in produced.messages.values() {
        match expected {
            Expected::Valid(kind) => *expected_kinds.entry(kind.as_str()).or_default() += 1,
            Expected::Invalid(reason) => *expected_rejects.entry(*reason).or_default() += 1,
        }
    }
    assert_eq!(by_kind, expected_kinds);
    let mut rejects: BTreeMap<RejectReason, u64> = BTreeMap::new();
    for (reason, count) in seen.batches.iter().flat_map(|b| &b.rejected) {
        *rejects.entry(*reason).or_default() += count;
    }
    assert_eq!(rejects, expected_rejects);

    // Every reject is in the DLQ, with its reason, source position and payload.
    let dead = read_topic(&bootstrap, &topics.dlq, produced.invalid(), TIMEOUT).expect("dlq");
    let mut positions = BTreeSet::new();
    for message in &dead {
        let topic = header(message, HEADER_SOURCE_TOPIC).expect("source topic header");
        let partition: i32 = header(message, HEADER_SOURCE_PARTITION).and_then(|p| p.parse().ok()).expect("partition");
        let offset: i64 = header(message, HEADER_SOURCE_OFFSET).and_then(|o| o.parse().ok()).expect("offset");
        let reason = header(message, HEADER_REASON).and_then(|r| RejectReason::parse(&r)).expect("reason");
        let key = (topic, partition, offset);
        let (expected, payload) = produced.messages.get(&key).expect("DLQ points at a produced message");
        assert_eq!(*expected, Expected::Invalid(reason), "at {key:?}");
        assert_eq!(rdkafka::Message::payload(message).unwrap_or_default(), payload.as_slice());
        positions.insert(key);
    }
    assert_eq!(positions.len(), produced.invalid(), "each reject dead-lettered once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewind_reads_again_from_the_offsets_given_after_its_marker() {
    let bootstrap = bootstrap();
    let topics = TestTopics::create(&bootstrap, 2).await.expect("topics");
    let produced = produce_synth(&bootstrap, &topics, synth(0.0), 2_000).await.expect("produce");
    let ends = produced.end_offsets();
    let (source, mut events) = start_in_a_new_group(&bootstrap, &topics);
    let mut seen = Seen::default();
    read_until(&source, &mut events, &mut seen, reaches(&ends)).await;

    // Back to offset 100 of every partition: after the marker, each reads from there to its end again.
    let to: NextOffsets = ends.keys().map(|tp| (tp.clone(), 100)).collect();
    source.acknowledger().rewind(&to);
    let mut after = Seen::default();
    read_until(&source, &mut events, &mut after, |s| s.events.iter().any(|e| e == "rewound")).await;
    let marker = after.events.iter().position(|e| e == "rewound").expect("the marker");
    assert_eq!(marker, after.batches.len(), "only batches read before the rewind come before its marker");
    let mut replayed = Seen::default();
    read_until(&source, &mut events, &mut replayed, reaches(&ends)).await;
    let mut first_offsets: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    for batch in &replayed.batches {
        for (tp, range) in &batch.offsets {
            let first = first_offsets.entry(tp.clone()).or_insert(range.first);
            *first = (*first).min(range.first);
        }
    }
    assert_eq!(first_offsets, to, "every partition reads again from the offset rewound to");
    let expected: i64 = ends.values().map(|end| end - 100).sum();
    assert_eq!(replayed.messages() as i64, expected, "each message after the offset once");
    tokio::task::spawn_blocking(move || source.stop()).await.expect("join").expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_offsets_win_over_the_group_and_resume_exactly() {
    let bootstrap = bootstrap();
    let topics = TestTopics::create(&bootstrap, 2).await.expect("topics");
    let produced = produce_synth(&bootstrap, &topics, synth(0.05), 1_000).await.expect("produce");
    let ends = produced.end_offsets();
    let group = unique("g");

    // First run: read everything and commit it to the group.
    let (source, mut events) =
        Source::start(&KafkaConfig::new(&bootstrap), &config(&topics, &group), Decoder::default(), NextOffsets::new())
            .expect("source");
    read_until(&source, &mut events, &mut Seen::default(), reaches(&ends)).await;
    tokio::task::spawn_blocking(move || source.stop()).await.expect("join").expect("clean stop");
    assert_eq!(committed(&bootstrap, &group, &ends), ends, "the group committed everything");

    // Second run, same group: one partition gets an explicit offset half-way;
    // the others follow the group (already at the end).
    let (explicit_tp, explicit_end) = ends.iter().next().map(|(tp, e)| (tp.clone(), *e)).expect("a partition");
    let start = NextOffsets::from([(explicit_tp.clone(), explicit_end / 2)]);
    let resume = ConsumerConfig { start_from: StartFrom::Committed, ..config(&topics, &group) };
    let (source, mut events) =
        Source::start(&KafkaConfig::new(&bootstrap), &resume, Decoder::default(), start).expect("source");
    let mut seen = Seen::default();
    let rest = NextOffsets::from([(explicit_tp.clone(), explicit_end)]);
    read_until(&source, &mut events, &mut seen, reaches(&rest)).await;
    // Give other partitions a moment to show anything they (wrongly) would re-read.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    while let Ok(event) = events.try_recv() {
        if let SourceEvent::Batch(batch) = event {
            seen.batches.push(batch);
        }
    }
    tokio::task::spawn_blocking(move || source.stop()).await.expect("join").expect("clean stop");

    assert_eq!(seen.messages() as i64, explicit_end - explicit_end / 2, "exactly the rest");
    for batch in &seen.batches {
        for (tp, range) in &batch.offsets {
            assert_eq!(tp, &explicit_tp, "only the explicitly positioned partition had anything left");
            assert!(range.first >= explicit_end / 2);
        }
    }
}

fn committed(bootstrap: &str, group: &str, ends: &BTreeMap<TopicPartition, i64>) -> BTreeMap<TopicPartition, i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
    let mut list = TopicPartitionList::new();
    for tp in ends.keys() {
        list.add_partition(&tp.topic, tp.partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_hands_over_first_and_waits_for_the_reader() {
    let bootstrap = bootstrap();
    let topics = TestTopics::create(&bootstrap, 4).await.expect("topics");
    let produced = produce_synth(&bootstrap, &topics, synth(0.0), 2_000).await.expect("produce");
    let ends = produced.end_offsets();
    let group = unique("g");
    let settings = config(&topics, &group);

    let (first, mut first_events) =
        Source::start(&KafkaConfig::new(&bootstrap), &settings, Decoder::default(), NextOffsets::new()).expect("first");
    let mut first_seen = Seen::default();
    read_until(&first, &mut first_events, &mut first_seen, |s| !s.batches.is_empty()).await;
    assert_eq!(first.partitions_assigned(), 8, "the one member reads both topics' four partitions each");

    // A second member joins: the first must hand over its open batch, then
    // the revocation, and keep the partitions until it is acknowledged.
    let (second, mut second_events) =
        Source::start(&KafkaConfig::new(&bootstrap), &settings, Decoder::default(), NextOffsets::new())
            .expect("second");
    let revoked_at = Instant::now();
    let revocation = loop {
        assert!(revoked_at.elapsed() < TIMEOUT, "no revocation");
        match first_events.recv().await.expect("first source alive") {
            SourceEvent::Batch(batch) => {
                first.acknowledge(&batch.next_offsets());
                first_seen.batches.push(batch);
            }
            SourceEvent::Revoked(revocation) => break revocation,
            SourceEvent::Assigned(_) | SourceEvent::Rewound => {}
        }
    };
    assert_eq!(revocation.partitions.len(), 8, "eager protocol revokes everything");
    assert_eq!(first.partitions_assigned(), 0, "revoked partitions are no longer counted");
    // Nothing follows the revocation until it is acknowledged.
    let held = tokio::time::timeout(Duration::from_millis(1_500), first_events.recv()).await;
    assert!(held.is_err(), "an event arrived before the revocation was acknowledged: {held:?}");
    revocation.acknowledge();

    // After the rebalance the two members together finish the topics.
    let mut second_seen = Seen::default();
    let both_done = |a: &Seen, b: &Seen| {
        let mut covered = a.covered();
        for (tp, n) in b.covered() {
            let entry = covered.entry(tp).or_insert(n);
            *entry = (*entry).max(n);
        }
        ends.iter().all(|(tp, end)| covered.get(tp).is_some_and(|c| c >= end))
    };
    let deadline = Instant::now() + TIMEOUT;
    let mut first_assigned: Option<Vec<TopicPartition>> = None;
    let mut second_assigned: Option<Vec<TopicPartition>> = None;
    while !(both_done(&first_seen, &second_seen) && first_assigned.is_some() && second_assigned.is_some()) {
        assert!(Instant::now() < deadline, "members did not finish the topics");
        tokio::select! {
            Some(event) = first_events.recv() => match event {
                SourceEvent::Batch(batch) => {
                    let owned = first_assigned.as_ref().expect("batches only after the new assignment");
                    assert!(batch.offsets.keys().all(|tp| owned.contains(tp)), "batch of a partition not owned");
                    first.acknowledge(&batch.next_offsets());
                    first_seen.batches.push(batch);
                }
                SourceEvent::Assigned(partitions) => first_assigned = Some(partitions),
                SourceEvent::Revoked(revocation) => revocation.acknowledge(),
                SourceEvent::Rewound => unreachable!("nobody rewinds"),
            },
            Some(event) = second_events.recv() => match event {
                SourceEvent::Batch(batch) => {
                    second.acknowledge(&batch.next_offsets());
                    second_seen.batches.push(batch);
                }
                SourceEvent::Revoked(revocation) => revocation.acknowledge(),
                SourceEvent::Assigned(partitions) => second_assigned = Some(partitions),
                SourceEvent::Rewound => unreachable!("nobody rewinds"),
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let (first_owned, second_owned) = (first_assigned.unwrap_or_default(), second_assigned.unwrap_or_default());
    assert_eq!(first_owned.len() + second_owned.len(), 8, "{first_owned:?} + {second_owned:?}");
    assert!(first_owned.iter().all(|tp| !second_owned.contains(tp)), "partitions were split");
    assert_eq!((first.partitions_assigned(), second.partitions_assigned()), (first_owned.len(), second_owned.len()));
    // The second member started where the first acknowledged (group commits), so
    // together they read each message once, give or take commits still in flight.
    assert!(first_seen.messages() + second_seen.messages() >= produced.messages.len());
    for source in [first, second] {
        tokio::task::spawn_blocking(move || source.stop()).await.expect("join").expect("clean stop");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_is_bounded_even_with_a_stalled_reader() {
    let bootstrap = bootstrap();
    let topics = TestTopics::create(&bootstrap, 2).await.expect("topics");
    produce_synth(&bootstrap, &topics, synth(0.0), 2_000).await.expect("produce");
    let settings = ConsumerConfig {
        channel_capacity: 1,
        batch_max_messages: 10,
        shutdown_timeout_ms: 20_000,
        ..config(&topics, &unique("g"))
    };
    let (source, mut events) =
        Source::start(&KafkaConfig::new(&bootstrap), &settings, Decoder::default(), NextOffsets::new())
            .expect("source");
    // Wait for the first batch, then stop reading: the channel fills up and
    // the consumer thread blocks handing over the next batch.
    loop {
        match events.recv().await.expect("alive") {
            SourceEvent::Batch(_) => break,
            SourceEvent::Revoked(r) => r.acknowledge(),
            SourceEvent::Assigned(_) | SourceEvent::Rewound => {}
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopping = Instant::now();
    let result = tokio::task::spawn_blocking(move || source.stop()).await.expect("join");
    assert!(result.is_ok(), "stop failed: {result:?}");
    assert!(stopping.elapsed() < Duration::from_secs(20), "stop took {:?}", stopping.elapsed());
    drop(events);
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_during_group_join_returns_and_closes_the_channel() {
    let bootstrap = bootstrap();
    let topics = TestTopics::create(&bootstrap, 1).await.expect("topics");
    let (source, mut events) = start_in_a_new_group(&bootstrap, &topics);
    // A reader that still holds an acknowledger must see the channel close.
    let acknowledger = source.acknowledger();
    let result = tokio::task::spawn_blocking(move || source.stop()).await.expect("join");
    assert!(result.is_ok(), "stop failed: {result:?}");
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if let SourceEvent::Revoked(revocation) = event {
                revocation.acknowledge();
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the event channel stayed open after stop");
    acknowledger.acknowledge(&NextOffsets::new());
}

#[test]
fn produced_bookkeeping_counts_outcomes() {
    let mut produced = Produced::default();
    produced.messages.insert(("t".into(), 0, 0), (Expected::Invalid(RejectReason::MissingId), vec![]));
    produced.messages.insert(("t".into(), 0, 1), (Expected::Valid(freshet_core::EventKind::Click), vec![]));
    assert_eq!((produced.valid(), produced.invalid()), (1, 1));
    assert_eq!(produced.end_offsets()[&TopicPartition::new("t", 0)], 2);
}
