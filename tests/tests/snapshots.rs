//! Snapshot publishing and subscription against the real broker: the served
//! parameters equal the trained ones bit for bit along a full + delta chain,
//! and aborted, torn, damaged, fenced, held or repeated publishes never put a
//! wrong model in front of a reader.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use freshet_core::snapshot::ValueEncoding;
use freshet_core::{TableKind, hash_id};
use freshet_e2e::snapshots::{
    ModelUnderTest, Scenario, events_within, same_params, same_scores, sample_triples, wait_for_version,
};
use freshet_publisher::{FullPolicy, Outgoing, PublishError, PublisherEvent, PublisherHandle, QualityGate};
use freshet_subscriber::SubscriberEvent;

const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `what` holds, asked every 20 ms for at most [`APPLY_TIMEOUT`].
fn eventually(what: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    while !what() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    what()
}

fn rejections(events: &[SubscriberEvent]) -> usize {
    events.iter().filter(|event| matches!(event, SubscriberEvent::Rejected { .. })).count()
}

fn applied_versions(events: &[SubscriberEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            SubscriberEvent::Applied(report) => Some(report.version),
            _ => None,
        })
        .collect()
}

#[test]
fn the_subscriber_serves_the_trained_parameters_bit_for_bit_along_the_chain() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("chain", 1)?;
    let mut producer = scenario.producer()?;
    let (subscriber, log) = scenario.subscribe()?;

    scenario.trained.train(5_000);
    let published = producer.publish(&scenario.trained.full(1))?;
    assert!(published.full && published.chunks > 1, "a model larger than one message: {published:?}");
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    same_params(&subscriber.model().expect("served"), &scenario.trained.trainer.export_params())?;
    let has_u7 = || subscriber.model().expect("served").row(TableKind::User, hash_id("u7")).is_some();
    assert!(has_u7(), "u7 trained");
    for version in 2..=6 {
        scenario.trained.train(1_000);
        if version == 4 {
            scenario.trained.forget("u7");
        }
        assert!(!producer.publish(&scenario.trained.delta(version))?.full);
        let events = wait_for_version(&log, version, APPLY_TIMEOUT)?;
        assert_eq!(rejections(&events), 0, "{events:?}");
        let model = subscriber.model().expect("served");
        assert_eq!(model.version(), version);
        same_params(&model, &scenario.trained.trainer.export_params())?;
        same_scores(&model, &scenario.trained, &sample_triples(&scenario.trained, 300, version))?;
        if version == 4 {
            assert!(!has_u7(), "the forget tombstone reached the subscriber");
        }
    }
    let stats = subscriber.stats();
    assert_eq!((stats.fulls_applied, stats.deltas_applied, stats.rejected), (1, 5, 0));
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn f16_snapshots_serve_scores_within_1e_3_of_the_trainers_and_are_smaller() -> anyhow::Result<()> {
    let mut exact = Scenario::with_model("exact", ModelUnderTest::with_context(9))?;
    let mut half = Scenario::with_model("half", ModelUnderTest::with_context(9))?;
    half.config.value_encoding = ValueEncoding::F16;
    let (mut exact_producer, mut half_producer) = (exact.producer()?, half.producer()?);
    let (half_subscriber, log) = half.subscribe()?;
    let mut bytes = [0usize; 2];
    for version in 1..=3 {
        exact.trained.train(2_000);
        half.trained.train(2_000);
        let (a, b) = match version {
            1 => (exact.trained.full(1), half.trained.full(1)),
            _ => (exact.trained.delta(version), half.trained.delta(version)),
        };
        assert_eq!(a, b, "the same stream trains the same model");
        if version > 1 {
            bytes[0] += exact_producer.publish(&a)?.bytes;
            bytes[1] += half_producer.publish(&b)?.bytes;
        } else {
            exact_producer.publish(&a)?;
            half_producer.publish(&b)?;
        }
        wait_for_version(&log, version, APPLY_TIMEOUT)?;
        let model = half_subscriber.model().expect("served");
        let mut worst = 0.0f32;
        for t in sample_triples(&half.trained, 1_000, version) {
            let context = t.context();
            let served = model.score(t.head, &t.user, &t.item, &context);
            worst = worst.max((served - half.trained.trainer.predict(t.head, &t.user, &t.item, &context)).abs());
        }
        assert!(worst < 1e-3, "version {version}: a served score {worst} away from the trainer's");
    }
    // Deltas at dim 8 carry little beside their values; at dim 32 the ratio
    // is 1.77 (`an_f16_delta_at_dim_32_is_under_half_what_format_3_sent`).
    assert!(bytes[0] as f64 / bytes[1] as f64 > 1.4, "f32 {} B, f16 {} B of deltas", bytes[0], bytes[1]);
    half_subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn a_late_subscriber_starts_from_the_newest_full_snapshot() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("late", 2)?;
    let mut producer = scenario.producer()?;
    for version in 1..=5 {
        scenario.trained.train(1_000);
        let outgoing =
            if matches!(version, 1 | 4) { scenario.trained.full(version) } else { scenario.trained.delta(version) };
        producer.publish(&outgoing)?;
    }
    let (subscriber, log) = scenario.subscribe()?;
    let events = wait_for_version(&log, 5, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![4, 5], "{events:?}");
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn an_aborted_transaction_is_never_applied() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("aborted", 3)?;
    let mut producer = scenario.producer()?;
    let (subscriber, log) = scenario.subscribe()?;
    scenario.trained.train(2_000);
    let first = producer.publish(&scenario.trained.full(1))?;
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;

    // A complete version 2 of another model (header, chunks, commit), aborted.
    let mut other = ModelUnderTest::new(33);
    other.train(2_000);
    scenario.write_in_transaction(&scenario.forge(&other.delta(2), first.header_offset, |_| {}), false)?;

    scenario.trained.train(500);
    producer.publish(&scenario.trained.delta(2))?;
    let events = wait_for_version(&log, 2, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![2], "{events:?}");
    assert_eq!(rejections(&events), 0, "{events:?}");
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn a_publisher_killed_mid_transaction_leaves_nothing_torn() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("torn", 4)?;
    let mut torn = Command::new(env!("CARGO_BIN_EXE_torn-publisher"))
        .args([&scenario.bootstrap, &scenario.model])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(torn.stdout.take().expect("piped")).read_line(&mut line)?;
    assert_eq!(line.trim(), "ready", "the torn publisher did not get mid-transaction");
    torn.kill()?; // SIGKILL, with half a snapshot in an open transaction
    torn.wait()?;

    let (subscriber, log) = scenario.subscribe()?;
    // Same transactional id: initialising it aborts the dead instance's transaction.
    let mut producer = scenario.producer()?;
    scenario.trained.train(2_000);
    producer.publish(&scenario.trained.full(1))?;
    let events = wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![1], "{events:?}");
    assert_eq!(rejections(&events), 0, "{events:?}");
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn a_second_instance_fences_the_first() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("fenced", 5)?;
    let mut first = scenario.producer()?;
    scenario.trained.train(1_000);
    first.publish(&scenario.trained.full(1))?;
    let mut second = scenario.producer()?;
    scenario.trained.train(500);
    let outgoing = scenario.trained.full(2);
    let error = first.publish(&outgoing).expect_err("the first instance is fenced");
    assert!(matches!(error, PublishError::Fenced { .. }) && error.is_fatal(), "{error}");
    second.publish(&outgoing)?;

    let (subscriber, log) = scenario.subscribe()?;
    wait_for_version(&log, 2, APPLY_TIMEOUT)?;
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn a_damaged_chunk_is_rejected_and_the_model_kept() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("damaged", 6)?;
    let mut producer = scenario.producer()?;
    let (subscriber, log) = scenario.subscribe()?;
    scenario.trained.train(2_000);
    let first = producer.publish(&scenario.trained.full(1))?;
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    let version_one = scenario.trained.trainer.export_params();

    // Version 2, committed, with one float of a chunk flipped after the checksum was taken.
    scenario.trained.train(1_000);
    let delta = scenario.trained.delta(2);
    let damaged = scenario.forge(&delta, first.header_offset, |encoded| {
        // Magic, format, variant, version, index, row count; then the first (user)
        // row's table, key, no id, update time and value count: byte 61 is inside its first float.
        encoded.chunks[0][61] ^= 0x40;
    });
    scenario.write_in_transaction(&damaged, true)?;

    let events = events_within(&log, Duration::from_secs(5));
    assert_eq!(rejections(&events), 1, "{events:?}");
    assert!(applied_versions(&events).is_empty(), "{events:?}");
    let served = subscriber.model().expect("served");
    assert_eq!(served.version(), 1);
    same_params(&served, &version_one)?;

    // The next full snapshot repairs the chain.
    scenario.trained.train(500);
    producer.publish(&scenario.trained.full(3))?;
    wait_for_version(&log, 3, APPLY_TIMEOUT)?;
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn the_quality_gate_holds_a_degraded_version_and_publishes_when_it_recovers() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("gated", 7)?;
    let (subscriber, log) = scenario.subscribe()?;
    let gate = QualityGate { max_rmse_increase: Some(0.05), ..QualityGate::default() };
    let policy = FullPolicy { every_deltas: 1_000, interval: Duration::from_secs(3_600) };
    let publisher = PublisherHandle::spawn(scenario.producer()?, gate, policy, |_| {})?;
    let with_rmse = |mut outgoing: Outgoing, rmse: f64| {
        outgoing.metrics.rating_rmse = Some(rmse);
        outgoing
    };

    scenario.trained.train(2_000);
    publisher.submit(with_rmse(scenario.trained.full(1), 0.90));
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    scenario.trained.train(500);
    publisher.submit(with_rmse(scenario.trained.delta(2), 1.20)); // worse by 0.30: held
    assert!(eventually(|| publisher.stats().holds > 0), "the degraded version was not held");
    let held = publisher.stats();
    assert!(held.holding() && held.published_version == 1, "{held:?}");
    assert!(applied_versions(&events_within(&log, Duration::from_secs(2))).is_empty(), "nothing new was served");

    scenario.trained.train(500);
    publisher.submit(with_rmse(scenario.trained.delta(3), 0.92)); // recovered: versions 2 and 3 go out as one delta
    let events = wait_for_version(&log, 3, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![3], "{events:?}");
    let stats = publisher.close(Duration::from_secs(10))?;
    assert_eq!((stats.published_version, stats.holds, stats.holding(), stats.deltas), (3, held.holds, false, 1));
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn a_restarted_publisher_sends_its_version_again_harmlessly_and_its_chain_continues() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("restart", 8)?;
    let (subscriber, log) = scenario.subscribe()?;
    let mut before = scenario.producer()?;
    scenario.trained.train(2_000);
    before.publish(&scenario.trained.full(1))?;
    scenario.trained.train(500);
    before.publish(&scenario.trained.delta(2))?;
    wait_for_version(&log, 2, APPLY_TIMEOUT)?;
    drop(before);

    // The restarted trainer restores checkpoint 2 and publishes it in full again.
    let mut after = scenario.producer()?;
    after.publish(&scenario.trained.full(2))?;
    scenario.trained.train(500);
    after.publish(&scenario.trained.delta(3))?;
    let events = wait_for_version(&log, 3, APPLY_TIMEOUT)?;
    let skipped_two = events.iter().any(|e| matches!(e, SubscriberEvent::Skipped { version: 2, .. }));
    assert!(skipped_two, "version 2 again is skipped: {events:?}");
    assert_eq!(applied_versions(&events), vec![3], "{events:?}");
    assert_eq!(rejections(&events), 0, "{events:?}");
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn a_due_full_snapshot_follows_its_delta_so_followers_pass_over_it() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("delta-then-full", 9)?;
    let (subscriber, log) = scenario.subscribe()?;
    let policy = FullPolicy { every_deltas: 2, interval: Duration::from_secs(3_600) };
    let publisher = PublisherHandle::spawn(scenario.producer()?, QualityGate::default(), policy, |_| {})?;
    scenario.trained.train(2_000);
    publisher.submit(scenario.trained.full(1));
    let mut events = wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    for version in 2..=3 {
        scenario.trained.train(500);
        // As the trainer loop hands versions over: the delta, then the same version in full when due.
        publisher.submit(scenario.trained.delta(version));
        events.extend(wait_for_version(&log, version, APPLY_TIMEOUT)?);
        // The subscriber can apply the delta before the publisher thread has
        // counted it: ask when a full is due only once it has.
        let counted = freshet_e2e::process::wait_until(APPLY_TIMEOUT, || publisher.stats().deltas >= version - 1);
        anyhow::ensure!(counted, "the publisher counted delta {version}");
        if publisher.full_due() {
            publisher.submit(scenario.trained.full(version));
        }
    }
    events.extend(events_within(&log, Duration::from_secs(3)));
    let stats = publisher.close(Duration::from_secs(10))?;
    assert_eq!((stats.fulls, stats.deltas, stats.published_version), (2, 2, 3), "{stats:?}");
    assert_eq!(applied_versions(&events), vec![1, 2, 3], "{events:?}");
    let passed_over = events.iter().any(|e| matches!(e, SubscriberEvent::Skipped { version: 3, .. }));
    assert!(passed_over, "the full snapshot of version 3 is passed over: {events:?}");
    let served = subscriber.model().expect("served");
    assert!(!served.info().full, "version 3 came as a delta");

    // A subscriber that joins now starts from that full snapshot.
    let (late, late_log) = scenario.subscribe()?;
    let joined = wait_for_version(&late_log, 3, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&joined), vec![3], "{joined:?}");
    assert!(late.model().expect("served").info().full);
    late.stop(Duration::from_secs(5));
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn a_delta_handed_over_ahead_commits_only_once_durable_and_is_withdrawn_if_never() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("ahead", 10)?;
    let (subscriber, log) = scenario.subscribe()?;
    let policy = FullPolicy { every_deltas: 1_000, interval: Duration::from_secs(3_600) };
    let (prepared_tx, prepared) = std::sync::mpsc::channel();
    let on_event = move |event: PublisherEvent<'_>| {
        if let PublisherEvent::Prepared { version } = event {
            let _ = prepared_tx.send(version);
        }
    };
    let publisher = PublisherHandle::spawn(scenario.producer()?, QualityGate::default(), policy, on_event)?;
    scenario.trained.train(2_000);
    publisher.submit(scenario.trained.full(1));
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    assert_eq!(prepared.recv_timeout(APPLY_TIMEOUT)?, 1, "a version submitted as durable commits at once");
    let chain_start = publisher.stats().last.expect("version 1 published").header_offset;
    // Deltas are read ahead once the subscriber has reached the end of the topic.
    assert!(eventually(|| subscriber.stats().caught_up), "the subscriber reaches the end");

    // Handed over while its checkpoint is written: every message is
    // delivered, and a read_committed subscriber sees none of it. The
    // subscriber's read-ahead drafts it meanwhile, and serves the draft once
    // the transaction commits.
    scenario.trained.train(500);
    publisher.submit_ahead(scenario.trained.delta(2));
    assert_eq!(prepared.recv_timeout(APPLY_TIMEOUT)?, 2, "version 2's messages are delivered before it is durable");
    let waiting = events_within(&log, Duration::from_secs(2));
    assert!(applied_versions(&waiting).is_empty(), "not served before it is durable: {waiting:?}");
    assert_eq!(publisher.stats().published_version, 1);
    assert_eq!(subscriber.stats().read_ahead_built, 1, "drafted while it waited: {:?}", subscriber.stats());
    publisher.durable(2);
    let events = wait_for_version(&log, 2, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![2], "{events:?}");
    assert_eq!(rejections(&events), 0, "{events:?}");
    let read_ahead = |events: &[SubscriberEvent]| {
        events.iter().any(|event| matches!(event, SubscriberEvent::Applied(report) if report.read_ahead))
    };
    assert!(read_ahead(&events), "served from the draft: {events:?}");
    same_params(&subscriber.model().expect("served"), &scenario.trained.trainer.export_params())?;
    same_scores(&subscriber.model().expect("served"), &scenario.trained, &sample_triples(&scenario.trained, 1_000, 2))?;

    // Version 3 never becomes durable (its checkpoint failed): closing
    // withdraws it, and its transaction is aborted rather than left open.
    scenario.trained.train(500);
    let third = scenario.trained.delta(3);
    publisher.submit_ahead(third.clone());
    assert_eq!(prepared.recv_timeout(APPLY_TIMEOUT)?, 3);
    let stats = publisher.close(Duration::from_secs(10))?;
    assert_eq!((stats.published_version, stats.deltas), (2, 1), "{stats:?}");
    let withdrawn = events_within(&log, Duration::from_secs(2));
    assert!(applied_versions(&withdrawn).is_empty(), "a withdrawn version is never served: {withdrawn:?}");
    let stats = subscriber.stats();
    assert_eq!((stats.read_ahead_built, stats.read_ahead_applied), (2, 1), "drafted, never served: {stats:?}");
    // A transaction left open would hold every reader at its first message
    // until the 60 s transaction timeout: the same version written and
    // committed after it is served well before that.
    scenario.write_in_transaction(&scenario.forge(&third, chain_start, |_| {}), true)?;
    let events = wait_for_version(&log, 3, Duration::from_secs(20))?;
    assert_eq!(applied_versions(&events), vec![3], "{events:?}");
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn the_read_ahead_stops_at_a_full_snapshot_and_drafts_the_deltas_after_it() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("ahead-full", 11)?;
    let mut producer = scenario.producer()?;
    let (subscriber, log) = scenario.subscribe()?;
    scenario.trained.train(2_000);
    producer.publish(&scenario.trained.full(1))?;
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    assert!(eventually(|| subscriber.stats().caught_up), "the subscriber reaches the end");

    // A full snapshot held uncommitted for a second: the read-ahead meets
    // its header first and stops there until the committed stream applied it.
    scenario.trained.train(500);
    producer.publish_when(&scenario.trained.full(2), || {
        std::thread::sleep(Duration::from_secs(1));
        true
    })?;
    wait_for_version(&log, 2, APPLY_TIMEOUT)?;
    assert_eq!(subscriber.stats().read_ahead_built, 0, "a full snapshot is not drafted");

    // The read-ahead goes on after it: the next delta is drafted before it commits.
    scenario.trained.train(500);
    producer.publish_when(&scenario.trained.delta(3), || eventually(|| subscriber.stats().read_ahead_built == 1))?;
    let events = wait_for_version(&log, 3, APPLY_TIMEOUT)?;
    let stats = subscriber.stats();
    assert_eq!((stats.read_ahead_built, stats.read_ahead_applied), (1, 1), "{stats:?}");
    assert!(
        events.iter().any(|event| matches!(event, SubscriberEvent::Applied(report) if report.read_ahead)),
        "{events:?}"
    );
    scenario.assert_served_and_stop(subscriber)
}

#[test]
fn a_subscriber_catches_up_while_snapshots_keep_coming() -> anyhow::Result<()> {
    let mut scenario = Scenario::new("live", 12)?;
    let mut producer = scenario.producer()?;
    scenario.trained.train(1_000);
    producer.publish(&scenario.trained.full(1))?;
    let (subscriber, log) = scenario.subscribe()?;
    // A delta every ~100 ms: librdkafka's end-of-partition event, which
    // needs a fetch to come back empty, does not come while they do.
    let started = Instant::now();
    let mut version = 1;
    while !subscriber.stats().caught_up && started.elapsed() < Duration::from_secs(20) {
        version += 1;
        scenario.trained.train(200);
        producer.publish(&scenario.trained.delta(version))?;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(subscriber.stats().caught_up, "caught up while snapshots kept coming: {:?}", subscriber.stats());
    wait_for_version(&log, version, APPLY_TIMEOUT)?;
    scenario.assert_served_and_stop(subscriber)
}
