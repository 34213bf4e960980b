//! Faults of the world around freshet, against real processes: the Kafka
//! broker (a private one, so other tests are not disturbed) killed with
//! SIGKILL mid-stream (and while a snapshot transaction is open) and started
//! again. `freshet run` and `freshet serve` ride it out without a restart of
//! their own, their `/readyz` says so while the cluster is away, and every
//! valid event is applied exactly once; a stopped subscriber, a full disk
//! and a SIGKILL during a large full snapshot.

use std::time::{Duration, Instant};

use freshet_core::synth::SynthConfig;
use freshet_e2e::broker::PrivateBroker;
use freshet_e2e::process::{
    Running, free_port, get, inspect, metric, metrics_address, set_dim, snapshot_topic, trained_and_published,
    wait_until, write_config,
};
use freshet_e2e::{Produced, TestTopics, produce_synth};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_freshet");
const WAIT: Duration = Duration::from_secs(120);
/// How long the broker stays away: longer than librdkafka's default message
/// timeout (30 s) and the group session timeout (45 s), so nothing may count
/// on a retry inside them, and a static member's session expires.
const OUTAGE: Duration = Duration::from_secs(50);

fn served(address: &str) -> Option<u64> {
    let (status, body) = get(address, "/version");
    (status == 200).then(|| serde_json::from_str::<Value>(&body).ok()?["info"]["version"].as_u64()).flatten()
}

#[test]
fn a_broker_killed_mid_stream_is_ridden_out_with_exact_counts() {
    let broker = PrivateBroker::start().expect("a private broker");
    let bootstrap = broker.bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    let (metrics, checkpoint) = (metrics_address(&config), work.path().join("checkpoint"));
    let running = Running::start(BIN, &["run", "--config"], &config);
    let address = format!("127.0.0.1:{}", free_port());
    let serving = Running::start(BIN, &["serve", "--listen", &address, "--config"], &config);

    // A steady stream (1 % malformed) for the whole test: chunks of 2,000,
    // each delivered (librdkafka retries through the outage) before the next.
    let producing = {
        let (bootstrap, topics) = (bootstrap.clone(), topics.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            let mut all = Produced::default();
            for seed in 0..24u64 {
                let synth = SynthConfig { seed, users: 500, items: 300, invalid_rate: 0.01, ..SynthConfig::default() };
                let chunk = runtime.block_on(produce_synth(&bootstrap, &topics, synth, 2_000)).expect("produce");
                all.messages.extend(chunk.messages);
                std::thread::sleep(Duration::from_millis(250));
            }
            all
        })
    };
    assert!(
        wait_until(WAIT, || metric(&metrics, "freshet_events_applied").is_some_and(|n| n >= 6_000.0)),
        "training started"
    );
    assert!(wait_until(WAIT, || served(&address).is_some()), "serving started");
    let published_before = metric(&metrics, "freshet_snapshot_version").unwrap_or(0.0);

    // Mid-stream (and, with a checkpoint every 150 ms, likely mid-publish).
    let killed = Instant::now();
    broker.kill9().expect("SIGKILL the broker");
    assert!(wait_until(WAIT, || get(&metrics, "/readyz").0 == 503), "run's /readyz stays 200 without a broker");
    let noticed = killed.elapsed();
    assert!(wait_until(WAIT, || get(&address, "/readyz").0 == 503), "serve's /readyz stays 200 without a broker");
    assert_eq!(get(&metrics, "/healthz").0, 200, "run is alive");
    assert!(served(&address).is_some(), "serve keeps serving its version");
    std::thread::sleep(OUTAGE.saturating_sub(killed.elapsed()));
    broker.restart().expect("the broker starts again");
    let restarted = killed.elapsed();
    assert!(wait_until(WAIT, || get(&metrics, "/readyz").0 == 200), "run's /readyz never came back");
    let ready_again = killed.elapsed();
    assert!(wait_until(WAIT, || get(&address, "/readyz").0 == 200), "serve's /readyz never came back");

    let produced = producing.join().expect("the producer");
    let valid = produced.valid() as u64;
    let ends = produced.end_offsets();
    let mut last = None;
    let reached = wait_until(Duration::from_secs(240), || {
        last = inspect(BIN, &checkpoint);
        last.as_ref()
            .is_some_and(|report| ends.iter().all(|(tp, end)| report["offsets"][tp.to_string()].as_i64() == Some(*end)))
    });
    let offsets = last.map(|report| report["offsets"].clone());
    assert!(reached, "run did not read to the end after the outage: produced up to {ends:?}, checkpoint {offsets:?}");
    let report = inspect(BIN, &checkpoint).expect("inspect");
    assert_eq!(report["events_applied"].as_u64(), Some(valid), "exactly once across the outage: {report}");
    assert_eq!(report["updates_by_table"]["user"].as_u64(), Some(valid));

    // Publishing resumed and serve followed, without a restart of either.
    let version = report["version"].as_u64().expect("version");
    assert!(
        wait_until(WAIT, || metric(&metrics, "freshet_snapshot_version") == Some(version as f64)),
        "the newest checkpoint is published after the outage"
    );
    assert!((version as f64) > published_before);
    assert!(wait_until(WAIT, || served(&address) == Some(version)), "serve follows after the outage");
    eprintln!(
        "figures: /readyz 503 {:.1} s after the SIGKILL; broker back at {:.1} s, /readyz 200 at {:.1} s; \
         {} aborted snapshot transactions; {} consumers replaced; {valid} valid events applied once",
        noticed.as_secs_f64(),
        restarted.as_secs_f64(),
        ready_again.as_secs_f64(),
        metric(&metrics, "freshet_snapshot_aborts_total").unwrap_or(0.0),
        metric(&metrics, "freshet_consumer_replaced_total").unwrap_or(0.0)
    );
    assert!(running.terminate().success(), "run exits cleanly");
    assert!(serving.terminate().success(), "serve exits cleanly");
}

#[test]
fn a_subscriber_stopped_past_the_delta_retention_reloads_from_the_newest_full_snapshot() {
    // Deleting old segments within a second, so the deltas a stopped
    // subscriber needs are gone when it resumes.
    let broker = PrivateBroker::with_properties(&[
        "log.initial.task.delay.ms=0",
        "log.retention.check.interval.ms=500",
        "log.segment.delete.delay.ms=0",
    ])
    .expect("a private broker");
    let bootstrap = broker.bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let work = tempfile::tempdir().expect("tempdir");
    let extra = "[publisher]\nfull_interval_ms = 1000\nfull_every_deltas = 100000\ntopic_retention_ms = 4000\n";
    let config = write_config(work.path(), &bootstrap, &topics, extra);
    // The snapshot topic with segments that roll every 500 ms (freshet
    // creates it with retention only; an existing topic is used as it is).
    let snapshots = snapshot_topic(&config);
    let mut spec = freshet_kafka::TopicSpec::new(&snapshots, 1);
    for (key, value) in [
        ("cleanup.policy", "delete"),
        ("retention.ms", "4000"),
        ("segment.ms", "500"),
        ("max.message.bytes", "2097152"),
    ] {
        spec.configs.insert(key.to_owned(), value.to_owned());
    }
    runtime
        .block_on(freshet_kafka::ensure_topics(&freshet_kafka::KafkaConfig::new(&bootstrap), &[spec]))
        .expect("topic");
    let metrics = metrics_address(&config);
    let running = Running::start(BIN, &["run", "--config"], &config);
    let address = format!("127.0.0.1:{}", free_port());
    let serving = Running::start_with_env(
        BIN,
        &["serve", "--listen", &address, "--config"],
        &config,
        &[("RUST_LOG", "info,freshet_subscriber=debug")],
    );

    let produce = |seed: u64, count: usize| {
        let synth = SynthConfig { seed, users: 500, items: 300, ..SynthConfig::default() };
        runtime.block_on(produce_synth(&bootstrap, &topics, synth, count)).expect("produce").valid() as u64
    };
    let mut valid = produce(1, 5_000);
    assert!(wait_until(WAIT, || metric(&metrics, "freshet_events_applied") == Some(valid as f64)), "trained");
    let version = metric(&metrics, "freshet_checkpoint_version").expect("version") as u64;
    assert!(wait_until(WAIT, || served(&address) == Some(version)), "serve follows");
    let fulls = |address: &str| metric(address, "freshet_subscriber_snapshots_total{outcome=\"full\"}").unwrap_or(0.0);
    let fulls_before = fulls(&address);

    // The subscriber has read at most up to the topic's end now.
    let watermarks: rdkafka::consumer::BaseConsumer =
        freshet_kafka::KafkaConfig::new(&bootstrap).client().create().expect("a client");
    let watermarks_of = || {
        rdkafka::consumer::Consumer::fetch_watermarks(&watermarks, &snapshots, 0, Duration::from_secs(10))
            .expect("watermarks")
    };
    let (_, end_at_stop) = watermarks_of();

    // Stopped while versions go on (a delta each 150 ms, a full each second)
    // until retention has deleted every snapshot it had not read, and those
    // of the next two seconds too (a fetch the broker answered after the
    // SIGSTOP may sit in the socket for it): its next offset is below the
    // topic's start. Retention runs on the broker's clock and load, so this
    // waits on the watermark, not on a duration.
    serving.signal("STOP");
    let stopped = Instant::now();
    let mut gone_below = None;
    let mut low = 0;
    while gone_below.is_none_or(|offset| low <= offset) && stopped.elapsed() < WAIT {
        valid += produce(stopped.elapsed().as_millis() as u64 + 2, 300);
        std::thread::sleep(Duration::from_millis(300));
        let (now_low, high) = watermarks_of();
        low = now_low;
        if gone_below.is_none() && stopped.elapsed() >= Duration::from_secs(2) {
            gone_below = Some(high);
        }
    }
    let end_at_stop = gone_below.unwrap_or(end_at_stop);
    assert!(low > end_at_stop, "retention deleted every snapshot the stopped subscriber had not read");
    assert!(wait_until(WAIT, || metric(&metrics, "freshet_events_applied") == Some(valid as f64)), "trained on");
    let newest = metric(&metrics, "freshet_checkpoint_version").expect("version") as u64;
    assert!(wait_until(WAIT, || metric(&metrics, "freshet_snapshot_version") == Some(newest as f64)), "published");
    serving.signal("CONT");
    assert!(wait_until(WAIT, || served(&address) == Some(newest)), "serve caught up after SIGCONT");
    // The swap comes first, the subscriber's report of it (its counters) a moment after.
    if !wait_until(WAIT, || fulls(&address) > fulls_before) {
        // What the subscriber did instead, for the failure below.
        for entry in std::fs::read_dir(work.path()).expect("dir").flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                eprintln!("== {}\n{log}", entry.path().display());
            }
        }
        eprintln!("{}", get(&address, "/version").1);
        eprintln!("version {version} newest {newest} end_at_stop {end_at_stop} low {low} now {:?}", watermarks_of());
        panic!("it did not reload a full snapshot (the deltas it needed were deleted)");
    }
    assert!(running.terminate().success());
    assert!(serving.terminate().success());
}

#[test]
fn a_broker_killed_while_a_snapshot_transaction_is_open_loses_nothing() {
    let broker = PrivateBroker::start().expect("a private broker");
    let bootstrap = broker.bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    // ~20k users at dim 64: a full snapshot of about 6 MB.
    let synth = SynthConfig { users: 20_000, items: 1_000, ..SynthConfig::default() };
    let produced = runtime.block_on(produce_synth(&bootstrap, &topics, synth, 40_000)).expect("produce");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    set_dim(&config, 64);
    let (metrics, checkpoint) = (metrics_address(&config), work.path().join("checkpoint"));
    let snapshots = snapshot_topic(&config);
    let trained_and_published = |metrics: &str| trained_and_published(metrics, produced.valid());
    let running = Running::start(BIN, &["run", "--config"], &config);
    assert!(wait_until(Duration::from_secs(300), || trained_and_published(&metrics)), "the first run");
    assert!(running.terminate().success());
    let version = inspect(BIN, &checkpoint).expect("inspect")["version"].as_u64().expect("version");

    // At 1 MB/s, the restart's full snapshot keeps its transaction open
    // for seconds: the broker dies in the middle of it.
    broker.limit_produce_rate(1 << 20).expect("a produce quota");
    let running = Running::start(BIN, &["run", "--config"], &config);
    let in_flight = || metric(&metrics, "freshet_snapshot_in_flight{kind=\"full\"}").unwrap_or(0.0);
    assert!(wait_until(WAIT, || in_flight() > 0.0), "the restart publishes its version in full");
    broker.kill9().expect("SIGKILL the broker");
    assert_eq!(in_flight(), version as f64, "killed while the transaction of the full snapshot was open");
    std::thread::sleep(Duration::from_secs(3));
    broker.restart().expect("the broker starts again");

    // The publisher finishes or aborts and retries that transaction by
    // itself: the version goes out whole, and run never stopped.
    let published = wait_until(Duration::from_secs(240), || {
        trained_and_published(&metrics) && metric(&metrics, "freshet_snapshot_in_flight").unwrap_or(1.0) == 0.0
    });
    assert!(published, "the full snapshot went out after the outage");
    assert_eq!(get(&metrics, "/healthz").0, 200, "run is alive: {}", get(&metrics, "/healthz").1);
    let aborts = metric(&metrics, "freshet_snapshot_aborts_total").unwrap_or(0.0);
    assert!(running.terminate().success());

    // A subscriber reads a whole, untorn version equal to the checkpoint.
    let (subscriber, log) = freshet_e2e::snapshots::subscribe(&bootstrap, &snapshots).expect("subscribe");
    let seen = freshet_e2e::snapshots::wait_for_version(&log, version, WAIT).expect("served");
    let rejected: Vec<_> =
        seen.iter().filter(|event| matches!(event, freshet_subscriber::SubscriberEvent::Rejected { .. })).collect();
    assert!(rejected.is_empty(), "nothing torn or damaged reached the subscriber: {rejected:?}");
    let store = freshet_checkpoint::CheckpointStore::open(&checkpoint, false).expect("open");
    assert_eq!(store.version(), version, "the restart trained nothing new");
    let spec = freshet_core::ModelSpec { dim: 64, ..freshet_core::ModelSpec::default() };
    let config = freshet_trainer::TrainerConfig { min_count: 1, ..freshet_trainer::TrainerConfig::default() };
    let trainer = store.restore(&spec, config).expect("restore").expect("state").trainer;
    let served = subscriber.model().expect("served");
    freshet_e2e::snapshots::same_params(&served, &trainer.export_params()).expect("bit for bit");
    eprintln!("figures: {aborts} aborted snapshot transactions across the outage");
    subscriber.stop(Duration::from_secs(10));
}

#[test]
fn sigkill_during_a_full_snapshot_of_more_than_100_mb_leaves_nothing_torn() {
    let bootstrap = freshet_e2e::bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    // ~220k users at dim 128: a full snapshot of about 120 MB.
    let synth = SynthConfig { users: 300_000, items: 2_000, click_share: 0.0, ..SynthConfig::default() };
    let produced = runtime.block_on(produce_synth(&bootstrap, &topics, synth, 400_000)).expect("produce");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    set_dim(&config, 128);
    let (metrics, checkpoint) = (metrics_address(&config), work.path().join("checkpoint"));
    let snapshots = snapshot_topic(&config);

    let running = Running::start(BIN, &["run", "--config"], &config);
    let applied = wait_until(Duration::from_secs(600), || trained_and_published(&metrics, produced.valid()));
    assert!(applied, "the first run trained and published everything");
    assert!(running.terminate().success());
    let report = inspect(BIN, &checkpoint).expect("inspect");
    let version = report["version"].as_u64().expect("version");

    // A restart publishes the restored model in full; kill it while the
    // transaction is open (its chunks are in the log, uncommitted).
    let watermarks: rdkafka::consumer::BaseConsumer =
        freshet_kafka::KafkaConfig::new(&bootstrap).client().create().expect("a client");
    // Asked again while the broker is too busy to answer in time (a 120 MB
    // transaction is being written): a failed request is not a watermark of 0.
    let high = || {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match rdkafka::consumer::Consumer::fetch_watermarks(&watermarks, &snapshots, 0, Duration::from_secs(10)) {
                Ok((_, high)) => return high,
                Err(error) => assert!(Instant::now() < deadline, "the snapshot topic's watermarks: {error}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = high();
    let restarted = Running::start(BIN, &["run", "--config"], &config);
    assert!(wait_until(Duration::from_secs(300), || high() > before + 20), "the full snapshot never went out");
    restarted.kill9();
    let torn_at = high();

    // A subscriber never sees the torn snapshot: it serves the version from
    // the chain before it; the next run publishes it in full again, which
    // the subscriber takes as the same version on a new chain.
    let (subscriber, log) = freshet_e2e::snapshots::subscribe(&bootstrap, &snapshots).expect("subscribe");
    let mut seen = freshet_e2e::snapshots::wait_for_version(&log, version, Duration::from_secs(600)).expect("served");
    let last = Running::start(BIN, &["run", "--config"], &config);
    let republished = wait_until(Duration::from_secs(600), || {
        metric(&metrics, "freshet_snapshots_published_total{kind=\"full\"}").is_some_and(|n| n >= 1.0)
    });
    assert!(republished, "the next run published the version in full");
    // The watermark is the last stable offset (librdkafka's default
    // isolation is read_committed): the commit returns once the coordinator
    // has prepared it, and the markers that move the offset follow.
    assert!(wait_until(Duration::from_secs(60), || high() > torn_at), "after the torn transaction");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seen
        .iter()
        .any(|e| matches!(e, freshet_subscriber::SubscriberEvent::Skipped { version: v, .. } if *v == version))
    {
        assert!(Instant::now() < deadline, "the republished full snapshot never reached the subscriber: {seen:?}");
        seen.extend(freshet_e2e::snapshots::events_within(&log, Duration::from_millis(500)));
    }
    let rejected: Vec<_> =
        seen.iter().filter(|event| matches!(event, freshet_subscriber::SubscriberEvent::Rejected { .. })).collect();
    assert!(rejected.is_empty(), "nothing torn or damaged reached the subscriber: {rejected:?}");
    let served = subscriber.model().expect("served");
    assert_eq!(served.version(), version);
    assert!(last.terminate().success());
    let store = freshet_checkpoint::CheckpointStore::open(&checkpoint, false).expect("open");
    let spec = freshet_core::ModelSpec { dim: 128, ..freshet_core::ModelSpec::default() };
    let config = freshet_trainer::TrainerConfig { min_count: 1, ..freshet_trainer::TrainerConfig::default() };
    let trainer = store.restore(&spec, config).expect("restore").expect("state").trainer;
    freshet_e2e::snapshots::same_params(&served, &trainer.export_params()).expect("bit for bit");
    let bytes: usize = trainer.export_params().rows.iter().map(|row| 4 * row.values.len() + 18).sum();
    assert!(bytes > 100 << 20, "a model of {} MB", bytes >> 20);
    subscriber.stop(Duration::from_secs(10));
}

/// A tmpfs of `mib` MiB mounted on `dir` (CI runs as root); unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(dir.to_owned())
    }

    /// Bytes still free.
    fn free(&self) -> u64 {
        let output =
            std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(&self.0).output().expect("df");
        String::from_utf8_lossy(&output.stdout).lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df avail")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_run_with_an_error_that_says_so_and_a_restart_resumes_exactly() {
    let bootstrap = freshet_e2e::bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    let disk = Tmpfs::mount(&work.path().join("disk"), 64);
    let checkpoint = work.path().join("disk/checkpoint");
    let metrics = metrics_address(&config);
    let checkpoint_flag = checkpoint.display().to_string();
    let args = ["run", "--checkpoint-dir", checkpoint_flag.as_str(), "--config"];
    let produce = |seed: u64, count: usize| {
        let synth = SynthConfig { seed, users: 2_000, items: 500, ..SynthConfig::default() };
        runtime.block_on(produce_synth(&bootstrap, &topics, synth, count)).expect("produce").valid() as u64
    };

    let mut valid = produce(1, 20_000);
    let running = Running::start(BIN, &args, &config);
    assert!(wait_until(WAIT, || metric(&metrics, "freshet_events_applied") == Some(valid as f64)), "trained");
    let good = inspect(BIN, &checkpoint).expect("inspect")["version"].as_u64().expect("version");

    // Watch /healthz from now on, until the process is gone.
    let watching = {
        let metrics = metrics.clone();
        std::thread::spawn(move || {
            let mut reported = None;
            let gone = wait_until(Duration::from_secs(300), || {
                let (status, body) = get(&metrics, "/healthz");
                if status == 503 {
                    reported.get_or_insert(body);
                }
                status == 0
            });
            (gone, reported)
        })
    };
    // Fill the disk, leaving 64 KiB; the next checkpoints cannot be written.
    let filler = work.path().join("disk/filler");
    let free = disk.free();
    std::fs::write(&filler, vec![0u8; free.saturating_sub(64 << 10) as usize]).expect("fill the disk");
    valid += produce(2, 20_000);
    let (stopped, reported) = watching.join().expect("the watcher");
    assert!(stopped, "run kept going on a full disk");
    let status = running.wait();
    assert!(!status.success(), "run exits with an error on a full disk");
    let body = reported.expect("/healthz reported the failure before the process exited");
    assert!(body.contains("No space left on device"), "/healthz says why: {body}");

    // Nothing on disk is damaged: the last good checkpoint is there, and
    // with space again a restart resumes with exact counts.
    std::fs::remove_file(&filler).expect("free the disk");
    let report = inspect(BIN, &checkpoint).expect("inspectable after the failure");
    assert!(report["version"].as_u64().expect("version") >= good, "{report}");
    let running = Running::start(BIN, &args, &config);
    assert!(wait_until(WAIT, || metric(&metrics, "freshet_events_applied") == Some(valid as f64)), "resumed");
    assert!(running.terminate().success());
    let report = inspect(BIN, &checkpoint).expect("inspect");
    assert_eq!(report["events_applied"].as_u64(), Some(valid), "exactly once across the full disk: {report}");
    assert_eq!(report["updates_by_table"]["user"].as_u64(), Some(valid));
}
