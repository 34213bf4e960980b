//! `freshet run` publishes, `freshet subscribe` and `freshet serve` follow:
//! against the real broker, the served version is the last checkpoint and
//! the HTTP endpoint answers recommendations, scores and errors.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use freshet_core::TableKind;
use freshet_core::synth::SynthConfig;
use freshet_e2e::process::{Running, free_port, get, inspect, metric, metrics_address, write_config};
use freshet_e2e::{TestTopics, bootstrap, produce_synth};
use freshet_subscriber::{ServingModel, Subscriber, SubscriberConfig};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_freshet");

#[test]
fn run_publishes_and_subscribe_and_serve_follow_it() {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let synth = SynthConfig { users: 500, items: 300, ..SynthConfig::default() };
    let produced = runtime.block_on(produce_synth(&bootstrap, &topics, synth, 20_000)).expect("produce");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "[publisher]\nchunk_bytes = 16384\n");
    let checkpoint = work.path().join("checkpoint");

    let running = Running::start(BIN, &["run", "--config"], &config);
    let metrics_address = metrics_address(&config);
    let deadline = Instant::now() + Duration::from_secs(120);
    while inspect(BIN, &checkpoint).and_then(|r| r["events_applied"].as_u64()) != Some(produced.valid() as u64) {
        assert!(Instant::now() < deadline, "the trainer did not apply every event");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(get(&metrics_address, "/healthz").0, 200);
    assert_eq!(get(&metrics_address, "/readyz").0, 200);
    // Both topics' two partitions: the one member of the group reads all four.
    assert_eq!(metric(&metrics_address, "freshet_source_partitions_assigned"), Some(4.0));
    let (status, metrics) = get(&metrics_address, "/metrics");
    assert_eq!(status, 200);
    for name in [
        "freshet_events_trained_total{kind=\"rating\"}",
        "freshet_batch_seconds_bucket",
        "freshet_checkpoint_seconds_count",
        "freshet_checkpoint_version",
        "freshet_snapshots_published_total{kind=\"full\"}",
        "freshet_snapshot_publish_seconds_bucket",
        "freshet_progressive_metric{head=\"rating\",metric=\"rmse\",span=\"window\"}",
        "freshet_rows{table=\"user\"}",
        "freshet_row_changes_total{change=\"admitted\",table=\"item\"}",
        "freshet_checkpointed_offset{",
        "freshet_sessions_restarted_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    assert!(running.terminate().success(), "clean exit on SIGTERM");
    let report = inspect(BIN, &checkpoint).expect("inspect");
    let version = report["version"].as_u64().expect("version");
    assert_eq!(report["published_version"].as_u64(), Some(version), "the final checkpoint was published: {report}");

    let subscribed =
        Command::new(BIN).args(["subscribe", "--json", "--config"]).arg(&config).output().expect("subscribe");
    assert!(subscribed.status.success(), "{}", String::from_utf8_lossy(&subscribed.stderr));
    let events: Vec<Value> = String::from_utf8_lossy(&subscribed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let applied: Vec<&Value> = events.iter().filter(|e| e["event"] == "applied").collect();
    assert_eq!(applied.first().map(|e| e["kind"].clone()), Some("full".into()), "{events:?}");
    assert_eq!(applied.last().and_then(|e| e["version"].as_u64()), Some(version), "{events:?}");
    assert!(applied.iter().all(|e| e["checksum"].as_u64().is_some()), "{events:?}");

    let address = format!("127.0.0.1:{}", free_port());
    let serving = Running::start(BIN, &["serve", "--listen", &address, "--config"], &config);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready once it serves a model; caught up once it serves the last version.
    while std::net::TcpStream::connect(&address).is_err() || get(&address, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "serve never became ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    while served(&address) != Some(version) {
        assert!(Instant::now() < deadline, "serve never reached version {version}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = get(&address, "/recommend?user=u1&k=5");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    assert_eq!((answer["user"].as_str(), answer["version"].as_u64()), (Some("u1"), Some(version)), "{answer}");
    let items = answer["items"].as_array().expect("items");
    assert_eq!(items.len(), 5, "{answer}");
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().expect("score")).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked: {scores:?}");
    let first_item = items[0]["item"].as_str().expect("an item id");
    assert!(first_item.starts_with('i'), "real item ids: {first_item}");
    let (status, body) = get(&address, &format!("/recommend?user=u1&k=5&exclude={first_item}"));
    assert_eq!(status, 200);
    assert!(!body.contains(&format!("\"{first_item}\"")), "excluded: {body}");

    let (status, body) = get(&address, "/recommend?user=never-seen&k=3");
    assert_eq!(status, 200, "unknown users get a bias-based answer: {body}");
    let (status, body) = get(&address, &format!("/score?user=u1&item={first_item}"));
    let score: Value = serde_json::from_str(&body).expect("json");
    assert_eq!((status, score["version"].as_u64()), (200, Some(version)), "{body}");
    let (status, body) = get(&address, "/recommend?k=3");
    assert_eq!(status, 400);
    assert!(body.contains("user"), "{body}");
    assert_eq!(get(&address, "/recommend?user=u1&k=lots").0, 400);
    assert_eq!(get(&address, "/score?user=u1&item=i1&head=volume").0, 400);
    // Context features change the score the trainer's clicks were scored with; a bare name is a 400.
    let click = |query: &str| -> f64 {
        let (status, body) = get(&address, &format!("/score?user=u1&item={first_item}&head=click&ts=0{query}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("json")["score"].as_f64().expect("a score")
    };
    assert_ne!(click("&f.device=ios"), click(""), "the device feature was trained on and is served");
    assert_eq!(click("&f.device=never-seen"), click(""), "an unknown value scores with zero parameters");
    let (status, body) = get(&address, &format!("/score?user=u1&item={first_item}&device=ios"));
    assert_eq!(status, 400);
    assert!(body.contains("`device`"), "the unknown parameter is named: {body}");
    let (status, metrics) = get(&address, "/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains(&format!("freshet_subscriber_version {version}")), "{metrics}");
    assert!(metrics.contains("freshet_serve_requests_total{endpoint=\"recommend\",status=\"400\"}"), "{metrics}");
    assert!(serving.terminate().success(), "serve exits cleanly on SIGTERM");
}

/// Whether two served models hold bit-identical parameters.
fn identical(a: &ServingModel, b: &ServingModel) -> bool {
    let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    bits(&a.globals()) == bits(&b.globals())
        && TableKind::ALL.iter().all(|&table| {
            a.rows(table).count() == b.rows(table).count()
                && a.rows(table)
                    .all(|(key, _, values)| b.row(table, key).is_some_and(|other| bits(&other) == bits(&values)))
        })
}

/// Follows `config`'s snapshot topic until `version` is served from a chain
/// that starts after `after_offset`; returns that model.
fn served_version(config: &SubscriberConfig, version: u64, after_offset: i64) -> Arc<ServingModel> {
    let subscriber = Subscriber::start(config, |_| {}).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(model) = subscriber.model()
            && model.version() == version
            && model.info().chain_start_offset > after_offset
        {
            subscriber.stop(Duration::from_secs(5));
            return model;
        }
        assert!(Instant::now() < deadline, "version {version} after offset {after_offset} was not served");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_clean_restart_serves_bit_identical_parameters() {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let produced =
        runtime.block_on(produce_synth(&bootstrap, &topics, SynthConfig::default(), 10_000)).expect("produce");
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    let checkpoint = work.path().join("checkpoint");
    let model_name =
        toml::from_str::<toml::Table>(&std::fs::read_to_string(&config).expect("config")).expect("toml")["name"]
            .as_str()
            .expect("a name")
            .to_owned();
    let snapshots = SubscriberConfig::new(bootstrap.clone(), format!("freshet.snapshots.{model_name}"));

    let running = Running::start(BIN, &["run", "--config"], &config);
    let deadline = Instant::now() + Duration::from_secs(120);
    while inspect(BIN, &checkpoint).and_then(|r| r["events_applied"].as_u64()) != Some(produced.valid() as u64) {
        assert!(Instant::now() < deadline, "the trainer did not apply every event");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(running.terminate().success());
    let version = inspect(BIN, &checkpoint).and_then(|r| r["version"].as_u64()).expect("version");
    let before = served_version(&snapshots, version, -1);

    // The restarted trainer restores the checkpoint and publishes it in full: a new chain.
    let restarted = Running::start(BIN, &["run", "--config"], &config);
    let metrics = metrics_address(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !get(&metrics, "/metrics").1.contains("freshet_snapshots_published_total{kind=\"full\"} 1") {
        assert!(Instant::now() < deadline, "the restarted trainer did not publish its version in full");
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = served_version(&snapshots, version, before.info().chain_start_offset);
    assert!(restarted.terminate().success());
    assert!(identical(&before, &after), "the restored model differs from the one before shutdown");
}

/// The version `freshet serve` at `address` answers with, if it answers.
fn served(address: &str) -> Option<u64> {
    let (status, body) = get(address, "/version");
    (status == 200).then(|| serde_json::from_str::<Value>(&body).ok()?["info"]["version"].as_u64()).flatten()
}

/// Starts `freshet serve` for `config` on a free port.
fn serve(config: &std::path::Path) -> (Running, String) {
    let address = format!("127.0.0.1:{}", free_port());
    (Running::start(BIN, &["serve", "--listen", &address, "--config"], config), address)
}

#[test]
fn a_serve_killed_mid_chain_comes_back_serving_the_newest_version() {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 2)).expect("topics");
    let produce = |seed: u64, events: usize| {
        let synth = SynthConfig { seed, users: 400, items: 200, ..SynthConfig::default() };
        runtime.block_on(produce_synth(&bootstrap, &topics, synth, events)).expect("produce").valid() as u64
    };
    let mut valid = produce(1, 6_000);
    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    let checkpoint = work.path().join("checkpoint");
    let running = Running::start(BIN, &["run", "--config"], &config);
    let published = || inspect(BIN, &checkpoint).and_then(|r| r["published_version"].as_u64()).unwrap_or(0);
    let wait = |what: &str, mut condition: Box<dyn FnMut() -> bool + '_>| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !condition() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("a first published version", Box::new(|| published() >= 1));

    let (serving, address) = serve(&config);
    wait("serve answers", Box::new(|| served(&address).is_some()));
    let first = served(&address).expect("a version");
    valid += produce(2, 4_000);
    // Killed once it has applied a delta after its first version: mid-chain.
    wait("serve follows the chain", Box::new(|| served(&address).is_some_and(|v| v > first)));
    serving.kill9();
    valid += produce(3, 4_000);

    let (restarted, address) = serve(&config);
    let started = Instant::now();
    wait("serve answers again", Box::new(|| served(&address).is_some()));
    let answering_after = started.elapsed();
    // Once the trainer has applied every event and published it, the
    // restarted serve serves that newest version.
    let trained = || inspect(BIN, &checkpoint).and_then(|r| r["events_applied"].as_u64()) == Some(valid);
    wait("the trainer applies every event", Box::new(trained));
    // The trainer's own metrics: the newest checkpoint and the newest version published.
    let run_metrics = metrics_address(&config);
    let version_of = |name: &str| metric(&run_metrics, name).map(|v| v as u64);
    let newest = || match (version_of("freshet_checkpoint_version"), version_of("freshet_snapshot_version")) {
        (Some(checkpointed), Some(published)) if checkpointed == published => Some(published),
        _ => None,
    };
    wait("the newest checkpoint is published", Box::new(|| newest().is_some()));
    let newest_published = newest();
    wait("the restarted serve reaches the newest version", Box::new(|| served(&address) == newest_published));
    eprintln!("restarted serve answered after {answering_after:?}");
    assert!(restarted.terminate().success(), "serve exits cleanly");
    assert!(running.terminate().success(), "run exits cleanly");
}
