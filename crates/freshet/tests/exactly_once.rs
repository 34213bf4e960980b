//! Exactly-once effect of `freshet run` across SIGKILLs, against the real
//! broker and real RocksDB files: after any crash schedule, the checkpoint's
//! `events_applied` and the user rows' update counters equal the number of
//! valid events produced, and every malformed message is in the DLQ.

use std::process::Command;
use std::time::{Duration, Instant};

use freshet_consumer::dlq::{HEADER_REASON, HEADER_SOURCE_OFFSET, HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC};
use freshet_core::RejectReason;
use freshet_core::synth::{Expected, SynthConfig};
use freshet_e2e::process::{Running, get, inspect, metric, metrics_address, wait_until, write_config};
use freshet_e2e::{TestTopics, bootstrap, header, produce_synth, read_topic};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_freshet");

#[test]
fn sigkill_at_any_moment_never_loses_or_repeats_an_update() {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 3)).expect("topics");
    let synth = SynthConfig { invalid_rate: 0.02, bincode_share: 0.1, forget_share: 0.0, ..SynthConfig::default() };
    let produced = runtime.block_on(produce_synth(&bootstrap, &topics, synth, 60_000)).expect("produce");
    let valid = produced.valid() as u64;

    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    let checkpoint = work.path().join("checkpoint");
    let metrics = metrics_address(&config);

    // Six crashes: half at 0, 74 and 148 ms after a checkpoint of the run
    // became durable (across the 150 ms until the next one, so the kill
    // lands before, while and after a write), half after a
    // (deterministically) random delay once training is under way.
    let mut delays = [700u64, 1_900, 350, 1_200, 2_600, 90].into_iter();
    for crash in 0..6 {
        let running = Running::start(BIN, &["run", "--config"], &config);
        if crash % 2 == 0 {
            let mut first_seen = None;
            let checkpointed = wait_until(Duration::from_secs(120), || {
                let Some(version) = metric(&metrics, "freshet_checkpoint_version") else { return false };
                *first_seen.get_or_insert(version) < version
            });
            assert!(checkpointed, "no checkpoint in run {crash}");
            std::thread::sleep(Duration::from_millis((crash as u64 / 2) * 74));
        } else {
            let training = wait_until(Duration::from_secs(120), || {
                metric(&metrics, "freshet_events_trained_total").is_some_and(|events| events > 0.0)
            });
            assert!(training, "no training in run {crash}");
            std::thread::sleep(Duration::from_millis(delays.next().unwrap_or(500)));
        }
        running.kill9();
        let progress = inspect(BIN, &checkpoint).expect("inspectable after a crash");
        assert!(progress["events_applied"].as_u64().expect("events_applied") <= valid, "never more than produced");
    }

    // A last run reaches the end of the topics, then stops cleanly.
    let running = Running::start(BIN, &["run", "--config"], &config);
    let ends = produced.end_offsets();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        assert!(Instant::now() < deadline, "the trainer did not reach the end of the topics");
        let reached = inspect(BIN, &checkpoint).is_some_and(|report| {
            ends.iter().all(|(tp, end)| report["offsets"][tp.to_string()].as_i64() == Some(*end))
        });
        if reached {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(running.terminate().success(), "clean exit on SIGTERM");

    let report = inspect(BIN, &checkpoint).expect("inspect");
    assert_eq!(report["events_applied"].as_u64(), Some(valid), "{report}");
    assert_eq!(report["updates_by_table"]["user"].as_u64(), Some(valid), "{report}");
    assert_eq!(report["updates_by_table"]["item"].as_u64(), Some(valid), "{report}");

    // Every malformed message reached the DLQ at least once, with its reason;
    // repeats after a crash share the same source position.
    let invalid: Vec<_> = produced
        .messages
        .iter()
        .filter_map(|(position, (expected, _))| match expected {
            Expected::Invalid(reason) => Some((position.clone(), *reason)),
            Expected::Valid(_) => None,
        })
        .collect();
    let dead = read_topic(&bootstrap, &topics.dlq, invalid.len(), Duration::from_secs(60)).expect("dlq");
    let mut found = std::collections::BTreeMap::new();
    for message in &dead {
        let position = (
            header(message, HEADER_SOURCE_TOPIC).expect("topic"),
            header(message, HEADER_SOURCE_PARTITION).and_then(|p| p.parse().ok()).expect("partition"),
            header(message, HEADER_SOURCE_OFFSET).and_then(|o| o.parse().ok()).expect("offset"),
        );
        let reason = header(message, HEADER_REASON).and_then(|r| RejectReason::parse(&r)).expect("reason");
        found.insert(position, reason);
    }
    for (position, reason) in invalid {
        assert_eq!(found.get(&position), Some(&reason), "{position:?} missing from the DLQ");
    }
}

#[test]
fn a_second_trainer_on_the_same_checkpoint_is_refused() {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 1)).expect("topics");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    let first = Running::start(BIN, &["run", "--config"], &config);
    let ready = wait_until(Duration::from_secs(60), || get(&metrics_address(&config), "/readyz").0 == 200);
    assert!(ready, "the first trainer did not get ready (its store open)");
    assert_eq!(get(&metrics_address(&config), "/admin/versions").0, 404, "admin endpoints are off unless configured");
    let second = Command::new(BIN).args(["run", "--config"]).arg(&config).output().expect("run the second");
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert!(first.terminate().success());
}

#[test]
fn run_check_validates_the_configuration_and_names_bad_keys() {
    let work = tempfile::tempdir().expect("tempdir");
    let good = work.path().join("good.toml");
    std::fs::write(&good, "name = \"m1\"\n[model]\ndim = 16\n").expect("write");
    let output = Command::new(BIN).args(["run", "--check", "--config"]).arg(&good).output().expect("run");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(printed["config"]["model"]["dim"], 16);

    let bad = work.path().join("bad.toml");
    std::fs::write(&bad, "[checkpoint]\ninterval_ms = 0\n").expect("write");
    let output = Command::new(BIN).args(["run", "--check", "--config"]).arg(&bad).output().expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("checkpoint.interval_ms"));

    // A sharded model needs the shard a process trains, named with the key.
    let sharded = work.path().join("sharded.toml");
    std::fs::write(&sharded, "[model]\nshards = 2\n").expect("write");
    let output = Command::new(BIN).args(["run", "--check", "--config"]).arg(&sharded).output().expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("model.shards"));

    let output =
        Command::new(BIN).args(["run", "--check", "--model", "bad name", "--config"]).arg(&good).output().expect("run");
    assert!(String::from_utf8_lossy(&output.stderr).contains("`name`"));
}
