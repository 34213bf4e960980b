//! Snapshot publishing and subscription against the real broker: the served
//! parameters equal the trained ones bit for bit along a full + delta chain,
//! and aborted, torn, damaged or fenced publishes never reach a reader.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use freshet_core::{TableKind, hash_id, now_ms};
use freshet_e2e::snapshots::{
    ModelUnderTest, events_within, raw_transactional, same_params, send_values, snapshot_topic, subscribe,
    wait_for_version,
};
use freshet_e2e::{bootstrap, unique};
use freshet_publisher::{
    FullPolicy, HeaderContext, Outgoing, PublishError, PublisherHandle, QualityGate, SnapshotProducer, encode,
};
use freshet_subscriber::SubscriberEvent;
use rdkafka::producer::Producer;

const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

fn rejections(events: &[SubscriberEvent]) -> Vec<&SubscriberEvent> {
    events.iter().filter(|event| matches!(event, SubscriberEvent::Rejected { .. })).collect()
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
    let bootstrap = bootstrap();
    let model = unique("chain");
    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(1);
    let mut producer =
        SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, trained.trainer.spec())?;
    let (subscriber, log) = subscribe(&bootstrap, producer.topic())?;

    trained.train(5_000);
    let published = producer.publish(&trained.full(1))?;
    assert!(published.full && published.chunks > 1, "a model larger than one message: {published:?}");
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    same_params(&subscriber.model().expect("served"), &trained.trainer.export_params())?;

    let user_row = |model: &freshet_subscriber::ServingModel| model.row(TableKind::User, hash_id("u7")).is_some();
    assert!(user_row(&subscriber.model().expect("served")), "u7 trained");
    for version in 2..=6 {
        trained.train(1_000);
        if version == 4 {
            trained.forget("u7");
        }
        let published = producer.publish(&trained.delta(version))?;
        assert!(!published.full);
        let events = wait_for_version(&log, version, APPLY_TIMEOUT)?;
        assert!(rejections(&events).is_empty(), "{events:?}");
        let served = subscriber.model().expect("served");
        assert_eq!(served.version(), version);
        same_params(&served, &trained.trainer.export_params())?;
        if version == 4 {
            assert!(!user_row(&served), "the forget tombstone reached the subscriber");
        }
    }
    let stats = subscriber.stats();
    assert_eq!((stats.fulls_applied, stats.deltas_applied, stats.rejected), (1, 5, 0));
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn a_late_subscriber_starts_from_the_newest_full_snapshot() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    let model = unique("late");
    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(2);
    let mut producer =
        SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, trained.trainer.spec())?;
    trained.train(3_000);
    producer.publish(&trained.full(1))?;
    for version in 2..=3 {
        trained.train(500);
        producer.publish(&trained.delta(version))?;
    }
    trained.train(500);
    producer.publish(&trained.full(4))?;
    trained.train(500);
    producer.publish(&trained.delta(5))?;

    let (subscriber, log) = subscribe(&bootstrap, producer.topic())?;
    let events = wait_for_version(&log, 5, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![4, 5], "{events:?}");
    same_params(&subscriber.model().expect("served"), &trained.trainer.export_params())?;
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn an_aborted_transaction_is_never_applied() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    let model = unique("aborted");
    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(3);
    let mut producer =
        SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, trained.trainer.spec())?;
    let (subscriber, log) = subscribe(&bootstrap, producer.topic())?;
    trained.train(2_000);
    let first = producer.publish(&trained.full(1))?;
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;

    // A complete version 2 (header, chunks, commit) in a transaction that aborts.
    let mut other = ModelUnderTest::new(33);
    other.train(2_000);
    let forged = other.delta(2);
    let spec = trained.trainer.spec().clone();
    let context = HeaderContext {
        model: &model,
        spec: &spec,
        created_ms: now_ms(),
        chain_start_offset: Some(first.header_offset),
    };
    let encoded = encode(&forged, context, config.chunk_bytes);
    let mut values = vec![encoded.header_value.clone()];
    values.extend(encoded.chunks.iter().cloned());
    values.push(encoded.commit_value(first.header_offset));
    let raw = raw_transactional(&bootstrap, &unique("forger"))?;
    raw.begin_transaction()?;
    send_values(&raw, producer.topic(), &values)?;
    raw.abort_transaction(Duration::from_secs(30))?;

    trained.train(500);
    producer.publish(&trained.delta(2))?;
    let events = wait_for_version(&log, 2, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![2], "{events:?}");
    assert!(rejections(&events).is_empty(), "{events:?}");
    same_params(&subscriber.model().expect("served"), &trained.trainer.export_params())?;
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn a_publisher_killed_mid_transaction_leaves_nothing_torn() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    let model = unique("torn");
    let mut torn =
        Command::new(env!("CARGO_BIN_EXE_torn-publisher")).args([&bootstrap, &model]).stdout(Stdio::piped()).spawn()?;
    let mut line = String::new();
    BufReader::new(torn.stdout.take().expect("piped")).read_line(&mut line)?;
    assert_eq!(line.trim(), "ready", "the torn publisher did not get mid-transaction");
    torn.kill()?; // SIGKILL, with half a snapshot in an open transaction
    torn.wait()?;

    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(4);
    let (subscriber, log) = subscribe(&bootstrap, &config.topic_for(&model))?;
    // Same transactional id: initialising it aborts the dead instance's transaction.
    let mut producer =
        SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, trained.trainer.spec())?;
    trained.train(2_000);
    producer.publish(&trained.full(1))?;
    let events = wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![1], "{events:?}");
    assert!(rejections(&events).is_empty(), "{events:?}");
    same_params(&subscriber.model().expect("served"), &trained.trainer.export_params())?;
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn a_second_instance_fences_the_first() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    let model = unique("fenced");
    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(5);
    let spec = trained.trainer.spec().clone();
    let mut first = SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, &spec)?;
    trained.train(1_000);
    first.publish(&trained.full(1))?;
    let mut second = SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, &spec)?;
    trained.train(500);
    let outgoing = trained.full(2);
    let error = first.publish(&outgoing).expect_err("the first instance is fenced");
    assert!(matches!(error, PublishError::Fenced { .. }), "{error}");
    assert!(error.is_fatal());
    second.publish(&outgoing)?;

    let (subscriber, log) = subscribe(&bootstrap, second.topic())?;
    wait_for_version(&log, 2, APPLY_TIMEOUT)?;
    same_params(&subscriber.model().expect("served"), &trained.trainer.export_params())?;
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn a_damaged_chunk_is_rejected_and_the_model_kept() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    let model = unique("damaged");
    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(6);
    let mut producer =
        SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, trained.trainer.spec())?;
    let (subscriber, log) = subscribe(&bootstrap, producer.topic())?;
    trained.train(2_000);
    let first = producer.publish(&trained.full(1))?;
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    let version_one = trained.trainer.export_params();

    // Version 2, committed, with one float of a chunk flipped after the checksum was taken.
    trained.train(1_000);
    let spec = trained.trainer.spec().clone();
    let context = HeaderContext {
        model: &model,
        spec: &spec,
        created_ms: now_ms(),
        chain_start_offset: Some(first.header_offset),
    };
    let mut encoded = encode(&trained.delta(2), context, config.chunk_bytes);
    let chunk = encoded.chunks.first_mut().expect("a chunk");
    // Magic, format, variant, version, index, row count; then the first (user)
    // row's table, key, no id and value count: byte 53 is inside its first float.
    chunk[53] ^= 0x40;
    let mut values = vec![encoded.header_value.clone()];
    values.extend(encoded.chunks.iter().cloned());
    values.push(encoded.commit_value(first.header_offset));
    let raw = raw_transactional(&bootstrap, &unique("corrupter"))?;
    raw.begin_transaction()?;
    send_values(&raw, producer.topic(), &values)?;
    raw.commit_transaction(Duration::from_secs(30))?;

    let events = events_within(&log, Duration::from_secs(5));
    assert_eq!(rejections(&events).len(), 1, "{events:?}");
    assert!(applied_versions(&events).is_empty(), "{events:?}");
    let served = subscriber.model().expect("served");
    assert_eq!(served.version(), 1);
    same_params(&served, &version_one)?;

    // The next full snapshot repairs the chain.
    trained.train(500);
    producer.publish(&trained.full(3))?;
    wait_for_version(&log, 3, APPLY_TIMEOUT)?;
    same_params(&subscriber.model().expect("served"), &trained.trainer.export_params())?;
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn the_quality_gate_holds_a_degraded_version_and_publishes_when_it_recovers() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    let model = unique("gated");
    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(7);
    let producer = SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, trained.trainer.spec())?;
    let (subscriber, log) = subscribe(&bootstrap, producer.topic())?;
    let gate = QualityGate { max_rmse_increase: Some(0.05), max_logloss_increase: None };
    let policy = FullPolicy { every_deltas: 1_000, interval: Duration::from_secs(3_600) };
    let publisher = PublisherHandle::spawn(producer, gate, policy, |_| {})?;
    let with_rmse = |mut outgoing: Outgoing, rmse: f64| {
        outgoing.metrics.rating_rmse = Some(rmse);
        outgoing
    };

    trained.train(2_000);
    publisher.submit(with_rmse(trained.full(1), 0.90));
    wait_for_version(&log, 1, APPLY_TIMEOUT)?;
    trained.train(500);
    publisher.submit(with_rmse(trained.delta(2), 1.20)); // worse by 0.30: held
    let deadline = std::time::Instant::now() + APPLY_TIMEOUT;
    while publisher.stats().holds == 0 {
        assert!(std::time::Instant::now() < deadline, "the degraded version was not held");
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = publisher.stats();
    assert!(held.holding && held.published_version == 1, "{held:?}");
    assert!(applied_versions(&events_within(&log, Duration::from_secs(2))).is_empty(), "nothing new was served");

    trained.train(500);
    publisher.submit(with_rmse(trained.delta(3), 0.92)); // recovered: versions 2 and 3 go out as one delta
    let events = wait_for_version(&log, 3, APPLY_TIMEOUT)?;
    assert_eq!(applied_versions(&events), vec![3], "{events:?}");
    same_params(&subscriber.model().expect("served"), &trained.trainer.export_params())?;
    let stats = publisher.close(Duration::from_secs(10)).map_err(anyhow::Error::msg)?;
    assert_eq!((stats.published_version, stats.holds, stats.holding, stats.deltas), (3, held.holds, false, 1));
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}

#[test]
fn a_restarted_publisher_sends_its_version_again_harmlessly_and_its_chain_continues() -> anyhow::Result<()> {
    let bootstrap = bootstrap();
    let model = unique("restart");
    let config = snapshot_topic(&bootstrap, &model)?;
    let mut trained = ModelUnderTest::new(8);
    let spec = trained.trainer.spec().clone();
    let (subscriber, log) = subscribe(&bootstrap, &config.topic_for(&model))?;
    let mut before = SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, &spec)?;
    trained.train(2_000);
    before.publish(&trained.full(1))?;
    trained.train(500);
    before.publish(&trained.delta(2))?;
    wait_for_version(&log, 2, APPLY_TIMEOUT)?;
    drop(before);

    // The restarted trainer restores checkpoint 2 and publishes it in full again.
    let mut after = SnapshotProducer::connect(&bootstrap, &Default::default(), &config, &model, &spec)?;
    after.publish(&trained.full(2))?;
    trained.train(500);
    after.publish(&trained.delta(3))?;
    let events = wait_for_version(&log, 3, APPLY_TIMEOUT)?;
    assert!(
        events.iter().any(|e| matches!(e, SubscriberEvent::Skipped { version: 2, .. })),
        "version 2 again is skipped: {events:?}"
    );
    assert_eq!(applied_versions(&events), vec![3], "{events:?}");
    assert!(rejections(&events).is_empty(), "{events:?}");
    same_params(&subscriber.model().expect("served"), &trained.trainer.export_params())?;
    subscriber.stop(Duration::from_secs(5));
    Ok(())
}
