//! Guarded updates against the real broker and real RocksDB files: a
//! poisoned stretch of ratings makes the quality gate hold, the trainer rolls
//! back on its own (skip) and the subscriber serves the rolled-back
//! parameters bit for bit; rollbacks in both modes and an online backup
//! through the admin endpoint (and its CLI), with every valid event counted
//! once as applied or skipped; SIGKILL in the middle of a rollback leaves
//! the state before or after it, never a mix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use freshet_checkpoint::{CheckpointStore, RollbackMode};
use freshet_core::synth::{SynthConfig, SynthStream};
use freshet_core::{Feedback, ModelSpec, NextOffsets, TopicPartition, now_ms};
use freshet_e2e::process::{
    Running, inspect, metric, metrics_address, published_all, snapshot_topic, wait_until, with_token, write_config,
};
use freshet_e2e::snapshots::{same_params, subscribe, wait_for_version};
use freshet_e2e::{TestTopics, bootstrap, produce_events};
use freshet_trainer::{Trainer, TrainerConfig};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_freshet");
const TOKEN: &str = "rollback-test-token-0123456789";
/// Every version stays retained, so the test can read any of them back.
const ENV: [(&str, &str); 3] = [
    ("FRESHET_CHECKPOINT__RETAIN_VERSIONS", "100000"),
    ("FRESHET_CHECKPOINT__RETAIN_EVERY_MS", "0"),
    ("FRESHET_ADMIN__TOKEN", TOKEN),
];
const WAIT: Duration = Duration::from_secs(120);

fn spec() -> ModelSpec {
    ModelSpec { dim: 8, ..ModelSpec::default() }
}

/// One synthetic rating stream (one planted model) cut into stretches;
/// the poisoned ones have each rating mirrored (`min + max − r`).
fn stretches(lengths: &[(usize, bool)]) -> Vec<Vec<Feedback>> {
    let mut stream =
        SynthStream::new(SynthConfig { seed: 5, users: 400, items: 200, click_share: 0.0, ..SynthConfig::default() });
    let (low, high) = (spec().rating_min, spec().rating_max);
    let start = now_ms();
    let mut at = 0i64;
    lengths
        .iter()
        .map(|&(count, poisoned)| {
            (0..count)
                .map(|_| {
                    at += 1;
                    let mut event = stream.next_event_at(start + at);
                    if let (true, Feedback::Rating(rating)) = (poisoned, &mut event) {
                        rating.rating = low + high - rating.rating;
                    }
                    event
                })
                .collect()
        })
        .collect()
}

fn produce(bootstrap: &str, topics: &TestTopics, events: &[Feedback]) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(produce_events(bootstrap, topics, events)).expect("produce");
}

fn gauge(metrics: &str, name: &str) -> u64 {
    metric(metrics, name).unwrap_or(-1.0) as u64
}

/// Waits until the model reflects `events` (applied plus skipped) and the
/// newest checkpoint is published.
fn wait_settled(metrics: &str, events: u64) {
    let settled = wait_until(WAIT, || {
        let counted = metric(metrics, "freshet_events_applied").zip(metric(metrics, "freshet_events_skipped"));
        counted.is_some_and(|(applied, skipped)| (applied + skipped) as u64 == events) && published_all(metrics)
    });
    assert!(settled, "the trainer did not settle at {events} events: {:?}", metric(metrics, "freshet_events_applied"));
}

fn admin_json(metrics: &str, method: &str, path: &str) -> Value {
    let (status, body) = with_token(metrics, method, path, Some(TOKEN));
    assert_eq!(status, 200, "{method} {path}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// A copy of retained version `version` of `checkpoint`, restored (the copy
/// itself stays untouched: opening a store writes to it).
fn retained_trainer(checkpoint: &Path, version: u64, work: &Path) -> Trainer {
    let prefix = format!("v{version:020}-");
    let source = std::fs::read_dir(checkpoint.join("versions"))
        .expect("retained versions")
        .filter_map(Result::ok)
        .find(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .unwrap_or_else(|| panic!("version {version} is retained"))
        .path();
    let copy = work.join(format!("restored-{version}"));
    std::fs::create_dir(&copy).expect("mkdir");
    for file in std::fs::read_dir(&source).expect("files").filter_map(Result::ok) {
        std::fs::copy(file.path(), copy.join(file.file_name())).expect("copy");
    }
    restored(&copy)
}

fn restored(dir: &Path) -> Trainer {
    let store = CheckpointStore::open(dir, false).expect("open");
    store
        .restore(&spec(), TrainerConfig { min_count: 1, ..TrainerConfig::default() })
        .expect("restore")
        .expect("state")
        .trainer
}

#[test]
fn a_poisoned_stretch_is_held_rolled_back_and_skipped_and_training_goes_on() {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let work = tempfile::tempdir().expect("tempdir");
    let extra =
        "[publisher.quality_gate]\nmax_rmse_increase = 0.05\nrollback_after_ms = 1500\n[admin]\nenabled = true\n";
    let config = write_config(work.path(), &bootstrap, &topics, extra);
    let (metrics, checkpoint) = (metrics_address(&config), work.path().join("checkpoint"));
    let (subscriber, log) = subscribe(&bootstrap, &snapshot_topic(&config)).expect("subscribe");
    let running = Running::start_with_env(BIN, &["run", "--config"], &config, &ENV);

    let [clean, poison, after] =
        <[Vec<Feedback>; 3]>::try_from(stretches(&[(20_000, false), (6_000, true), (5_000, false)]))
            .expect("three stretches");
    produce(&bootstrap, &topics, &clean);
    wait_settled(&metrics, 20_000);
    assert_eq!(gauge(&metrics, "freshet_snapshot_holds_total"), 0, "clean events pass the gate");

    let poisoned_at = Instant::now();
    produce(&bootstrap, &topics, &poison);
    assert!(wait_until(WAIT, || gauge(&metrics, "freshet_snapshot_holds_total") >= 1), "the gate never held");
    let held_after = poisoned_at.elapsed();
    assert!(wait_until(WAIT, || gauge(&metrics, "freshet_rollbacks_total") == 1), "no automatic rollback");
    let rolled_after = poisoned_at.elapsed();

    let versions = admin_json(&metrics, "GET", "/admin/versions");
    let record = &versions["rollbacks"][0];
    assert_eq!(
        (record["mode"].as_str(), record["reason"].as_str()),
        (Some("skip"), Some("quality_gate")),
        "{versions}"
    );
    let (to, version) = (record["to_version"].as_u64().expect("to"), record["version"].as_u64().expect("version"));
    assert!(record["events_skipped_after"].as_u64().expect("skipped") > 0, "{record}");
    assert!(!record["ranges"].as_array().expect("ranges").is_empty(), "the skipped offsets are kept: {record}");

    // The rollback's full snapshot is served: a new version holding version `to`'s parameters.
    wait_for_version(&log, version, WAIT).expect("the rollback is served");
    let served_at = poisoned_at.elapsed();
    let served = subscriber.model().expect("served");
    assert_eq!((served.version(), served.info().rollback_to), (version, Some(to)));
    let restored_to = retained_trainer(&checkpoint, to, work.path());
    same_params(&served, &restored_to.export_params()).expect("served = version `to`, bit for bit");
    eprintln!(
        "figures: poison → hold {:.0} ms, → rollback {:.0} ms, → served {:.0} ms (hold → served {:.0} ms)",
        held_after.as_secs_f64() * 1e3,
        rolled_after.as_secs_f64() * 1e3,
        served_at.as_secs_f64() * 1e3,
        (served_at - held_after).as_secs_f64() * 1e3
    );

    // Clean events after the poison are trained and published; nothing is held again.
    produce(&bootstrap, &topics, &after);
    wait_settled(&metrics, 31_000);
    assert_eq!(gauge(&metrics, "freshet_rollbacks_total"), 1);
    assert!(gauge(&metrics, "freshet_snapshot_version") > version);
    assert!(running.terminate().success(), "clean exit");
    let report = inspect(BIN, &checkpoint).expect("inspect");
    let (applied, skipped) =
        (report["events_applied"].as_u64().expect("applied"), report["events_skipped"].as_u64().expect("skipped"));
    assert_eq!(applied + skipped, 31_000, "every valid event counted once: {applied} applied, {skipped} skipped");
    assert!((1..=6_000).contains(&skipped), "{skipped} skipped");
    subscriber.stop(Duration::from_secs(10));
}

#[test]
fn operators_roll_back_in_both_modes_and_back_up_online_through_the_admin_endpoint() {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "[admin]\nenabled = true\n");
    let (metrics, checkpoint) = (metrics_address(&config), work.path().join("checkpoint"));
    let (subscriber, log) = subscribe(&bootstrap, &snapshot_topic(&config)).expect("subscribe");
    let running = Running::start_with_env(BIN, &["run", "--config"], &config, &ENV);
    let parts = stretches(&[(6_000, false), (4_000, false), (2_000, false), (1_000, false)]);

    produce(&bootstrap, &topics, &parts[0]);
    wait_settled(&metrics, 6_000);
    let first = gauge(&metrics, "freshet_checkpoint_version");
    produce(&bootstrap, &topics, &parts[1]);
    wait_settled(&metrics, 10_000);

    // Only operators, and only well-formed requests.
    assert_eq!(with_token(&metrics, "GET", "/admin/versions", None).0, 401);
    assert_eq!(with_token(&metrics, "GET", "/admin/versions", Some("not-the-token-at-all")).0, 403);
    let (status, body) =
        with_token(&metrics, "POST", &format!("/admin/rollback?to_version={first}&mode=skip&force=1"), Some(TOKEN));
    assert!(status == 400 && body.contains("`force`"), "{status} {body}");
    let (status, body) = with_token(&metrics, "POST", "/admin/rollback?to_version=999999&mode=skip", Some(TOKEN));
    assert!(status == 400 && body.contains("not retained"), "{status} {body}");
    assert!(!metric(&metrics, "freshet_rollbacks_total").is_some_and(|n| n > 0.0));
    let (_, text) = freshet_e2e::process::get(&metrics, "/metrics");
    assert!(!text.contains(TOKEN), "the token never shows in /metrics");
    let versions = admin_json(&metrics, "GET", "/admin/versions");
    assert!(versions["retained"].as_array().expect("retained").iter().any(|r| r["version"].as_u64() == Some(first)));

    // Replay: back to `first`, the 4,000 events after it are trained again, once.
    let replay = admin_json(&metrics, "POST", &format!("/admin/rollback?to_version={first}&mode=replay"));
    let replayed_version = replay["rollback"]["version"].as_u64().expect("version");
    assert_eq!(replay["rollback"]["events_applied_after"].as_u64(), Some(6_000), "{replay}");
    wait_settled(&metrics, 10_000);
    assert!(wait_until(WAIT, || gauge(&metrics, "freshet_events_applied") == 10_000));
    assert_eq!(gauge(&metrics, "freshet_events_skipped"), 0);
    assert!(gauge(&metrics, "freshet_checkpoint_version") > replayed_version, "the replayed events made new versions");

    // Skip, with the CLI: back to the replay's own version (version `first`'s
    // state at its offsets); the 4,000 events read since are skipped.
    let output = Command::new(BIN)
        .args(["rollback", "--admin", &metrics, "--mode", "skip", "--to-version", &replayed_version.to_string()])
        .env("FRESHET_ADMIN__TOKEN", TOKEN)
        .output()
        .expect("freshet rollback");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let skip: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(skip["rollback"]["events_skipped_after"].as_u64(), Some(4_000), "{skip}");
    let ranges = skip["rollback"]["ranges"].as_array().expect("ranges");
    let skipped_offsets: i64 =
        ranges.iter().map(|r| r["to"].as_i64().expect("to") - r["from"].as_i64().expect("from")).sum();
    assert_eq!(skipped_offsets, 4_000, "{skip}");
    produce(&bootstrap, &topics, &parts[2]);
    wait_settled(&metrics, 12_000);
    assert_eq!((gauge(&metrics, "freshet_events_applied"), gauge(&metrics, "freshet_events_skipped")), (8_000, 4_000));

    // An online backup while it runs: restored, it serves the very parameters of its version.
    let backup_dir = work.path().join("backup");
    let output = Command::new(BIN)
        .args(["backup", "--online", "--admin", &metrics, "--to"])
        .arg(&backup_dir)
        .env("FRESHET_ADMIN__TOKEN", TOKEN)
        .output()
        .expect("freshet backup");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let backup: Value = serde_json::from_slice(&output.stdout).expect("json");
    let backed_up = backup["version"].as_u64().expect("version");
    wait_for_version(&log, backed_up, WAIT).expect("the backed-up version is served");
    let served = subscriber.model().expect("served");
    assert_eq!(served.version(), backed_up);
    same_params(&served, &restored(&backup_dir).export_params()).expect("the backup holds the served version");
    produce(&bootstrap, &topics, &parts[3]);
    wait_settled(&metrics, 13_000);
    assert_eq!((gauge(&metrics, "freshet_events_applied"), gauge(&metrics, "freshet_events_skipped")), (9_000, 4_000));

    // SIGKILL while a rollback (a replay back to `first`) is under way: after
    // a restart the books still hold every event once, whether it happened or not.
    let asking = {
        let metrics = metrics.clone();
        std::thread::spawn(move || {
            with_token(&metrics, "POST", &format!("/admin/rollback?to_version={first}&mode=replay"), Some(TOKEN))
        })
    };
    std::thread::sleep(Duration::from_millis(30));
    running.kill9();
    let _ = asking.join();
    let rollbacks_before_restart = inspect(BIN, &checkpoint).expect("inspect")["rollbacks"].as_array().map(Vec::len);
    let running = Running::start_with_env(BIN, &["run", "--config"], &config, &ENV);
    wait_settled(&metrics, 13_000);
    assert!(running.terminate().success());
    let report = inspect(BIN, &checkpoint).expect("inspect");
    let (applied, skipped) =
        (report["events_applied"].as_u64().expect("applied"), report["events_skipped"].as_u64().expect("skipped"));
    assert_eq!(applied + skipped, 13_000, "{report}");
    match rollbacks_before_restart {
        Some(2) => assert_eq!((applied, skipped), (9_000, 4_000), "the rollback did not happen: the state before it"),
        Some(3) => {
            assert_eq!((applied, skipped), (13_000, 0), "the rollback happened: version {first}'s, then replayed")
        }
        other => panic!("{other:?} rollbacks"),
    }
    eprintln!("killed during a rollback: {} rollbacks were durable", rollbacks_before_restart.unwrap_or(0));
    subscriber.stop(Duration::from_secs(10));
}

/// A store of `versions` checkpoints of synthetic events, each retained.
fn store_with_versions(dir: &Path, versions: u64) -> Vec<freshet_trainer::TrainerState> {
    let mut store = CheckpointStore::open(dir, false).expect("open");
    let mut trainer =
        Trainer::new(spec(), TrainerConfig { min_count: 1, ..TrainerConfig::default() }).expect("trainer");
    let mut stream = SynthStream::new(SynthConfig { seed: 9, users: 20_000, items: 5_000, ..SynthConfig::default() });
    let mut states = vec![trainer.export_state()];
    for version in 1..=versions {
        let events: Vec<Feedback> = (0..15_000).map(|i| stream.next_event_at(1_764_400_000_000 + i)).collect();
        trainer.train_batch(&events);
        let offsets = NextOffsets::from([(TopicPartition::new("ratings", 0), 15_000 * version as i64)]);
        store.commit(&spec(), &trainer.drain_dirty(), &offsets).expect("commit");
        store.retain(version as i64).expect("retain");
        states.push(trainer.export_state());
    }
    states
}

#[test]
fn sigkill_during_a_rollback_leaves_the_state_before_or_after_it() {
    let work = tempfile::tempdir().expect("tempdir");
    let dir: PathBuf = work.path().join("checkpoint");
    let states = store_with_versions(&dir, 3);
    let target = &states[1];
    let (mut before_or_after, mut rolled) = (0, 0);
    // From before the store opens to after the rollback's write (a debug
    // build takes a few hundred ms for it here).
    let delays = [0u64, 50, 100, 150, 200, 250, 300, 350, 400, 500, 650, 3_000];
    for delay_ms in delays {
        let before = CheckpointStore::open(&dir, false).expect("open").load(&spec()).expect("load").expect("state");
        let mut child = Command::new(BIN)
            .args(["rollback", "--to-version", "1", "--mode", "replay", "--checkpoint"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let store = CheckpointStore::open(&dir, false).expect("reopens after SIGKILL");
        let after = store.load(&spec()).expect("load").expect("state");
        if after.version == before.version {
            assert_eq!(after.state, before.state, "killed at {delay_ms} ms: the state before");
            assert_eq!(after.offsets, before.offsets);
            before_or_after += 1;
        } else {
            assert_eq!(after.version, before.version + 1, "killed at {delay_ms} ms");
            assert_eq!(&after.state, target, "killed at {delay_ms} ms: version 1's state, whole");
            assert_eq!(after.offsets, NextOffsets::from([(TopicPartition::new("ratings", 0), 15_000)]));
            assert_eq!(store.current_rollback().map(|r| (r.to_version, r.mode)), Some((1, RollbackMode::Replay)));
            rolled += 1;
        }
    }
    eprintln!("rollback killed {} times: {before_or_after} left the state before, {rolled} completed", delays.len());

    assert!(rolled >= 1, "the slowest kill lets a rollback finish");
}
