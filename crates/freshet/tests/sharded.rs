//! A model sharded over several `freshet run` processes, against the real
//! broker and real RocksDB files, exactly once across SIGKILLs of random
//! shards (docs/scaling.md, "Exactly once across shards"): the events are
//! produced with Kafka's own partitioner, so about (S - 1) / S of them land
//! on a shard that does not own their user and are forwarded; every item a
//! shard does not own is stepped by its owner from gradient messages. After
//! the crashes, the update counters summed over the shards equal the valid
//! events produced, for the user table and for the item table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use freshet_core::synth::SynthConfig;
use freshet_e2e::process::{Running, free_port, inspect, metric, metric_labelled, wait_until, write_config};
use freshet_e2e::{TestTopics, bootstrap, produce_synth};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_freshet");

/// One shard's process settings.
struct ShardProcess {
    index: u32,
    checkpoint: PathBuf,
    metrics: String,
}

impl ShardProcess {
    fn start(&self, config: &Path, shards: u32) -> Running {
        let index = self.index.to_string();
        let dir = self.checkpoint.to_str().expect("a UTF-8 path");
        let shards = shards.to_string();
        let env = [("FRESHET_MODEL__SHARDS", shards.as_str()), ("FRESHET_METRICS__LISTEN", self.metrics.as_str())];
        Running::start_with_env(BIN, &["run", "--shard", &index, "--checkpoint-dir", dir, "--config"], config, &env)
    }

    fn inspect(&self) -> Option<Value> {
        inspect(BIN, &self.checkpoint)
    }
}

/// The update counters of `table` summed over every shard's checkpoint.
fn updates(shards: &[ShardProcess], table: &str) -> u64 {
    shards.iter().filter_map(ShardProcess::inspect).filter_map(|r| r["updates_by_table"][table].as_u64()).sum()
}

fn sigkills_of_random_shards_never_lose_or_repeat_an_update(shards: u32) {
    let bootstrap = bootstrap();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let topics = runtime.block_on(TestTopics::create(&bootstrap, 6)).expect("topics");
    let synth = SynthConfig { invalid_rate: 0.01, bincode_share: 0.1, forget_share: 0.0, ..SynthConfig::default() };
    let produced = runtime.block_on(produce_synth(&bootstrap, &topics, synth, 30_000)).expect("produce");
    let valid = produced.valid() as u64;

    let work = tempfile::tempdir().expect("tempdir");
    let config = write_config(work.path(), &bootstrap, &topics, "");
    let processes: Vec<ShardProcess> = (0..shards)
        .map(|index| ShardProcess {
            index,
            checkpoint: work.path().join(format!("shard-{index}")),
            metrics: format!("127.0.0.1:{}", free_port()),
        })
        .collect();
    let mut running: Vec<Option<Running>> = processes.iter().map(|p| Some(p.start(&config, shards))).collect();

    // Five crashes of (deterministically) random shards: every other one
    // right after one of the shard's checkpoints became durable, the others
    // after a delay once the shard is training.
    let mut state = 0x9e37_79b9_u64 + u64::from(shards);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for crash in 0..5 {
        let victim = (next() % u64::from(shards)) as usize;
        let address = &processes[victim].metrics;
        if crash % 2 == 0 {
            let mut first_seen = None;
            let checkpointed = wait_until(Duration::from_secs(120), || {
                let Some(version) = metric(address, "freshet_checkpoint_version") else { return false };
                *first_seen.get_or_insert(version) < version
            });
            assert!(checkpointed, "no checkpoint of shard {victim} before crash {crash}");
            std::thread::sleep(Duration::from_millis(next() % 100));
        } else {
            let training = wait_until(Duration::from_secs(120), || {
                metric(address, "freshet_events_trained_total").is_some_and(|events| events > 0.0)
                    || metric(address, "freshet_checkpoint_version").is_some_and(|v| v > 0.0)
            });
            assert!(training, "shard {victim} not training before crash {crash}");
            std::thread::sleep(Duration::from_millis(200 + next() % 1_500));
        }
        running[victim].take().expect("running").kill9();
        assert!(updates(&processes, "user") <= valid, "never more user updates than valid events");
        running[victim] = Some(processes[victim].start(&config, shards));
    }

    // Every event's effect reaches its rows, on the user's shard and the items' owners.
    let converged = wait_until(Duration::from_secs(300), || {
        let outboxes_empty =
            processes.iter().all(|p| p.inspect().is_some_and(|r| r["outboxes"].as_array().is_some_and(Vec::is_empty)));
        // At or past the count: past it fails below at once, instead of waiting.
        outboxes_empty && updates(&processes, "user") >= valid && updates(&processes, "item") >= valid
    });
    let reports: Vec<Option<Value>> = processes.iter().map(ShardProcess::inspect).collect();
    assert!(
        converged,
        "user updates {} and item updates {} of {valid} valid events: {reports:?}",
        updates(&processes, "user"),
        updates(&processes, "item")
    );
    assert_eq!(updates(&processes, "user"), valid, "{reports:?}");
    assert_eq!(updates(&processes, "item"), valid, "{reports:?}");
    // Each shard's replicas follow the other shards' published chains.
    for process in &processes {
        let fed = wait_until(Duration::from_secs(60), || {
            let versions = (0..shards)
                .filter(|&j| j != process.index)
                .map(|j| metric_labelled(&process.metrics, "freshet_replica_version", &format!("shard=\"{j}\"")));
            versions.into_iter().all(|v| v.is_some_and(|v| v > 0.0))
                && metric(&process.metrics, "freshet_replica_rows_applied_total").is_some_and(|rows| rows > 0.0)
        });
        assert!(fed, "shard {}'s replicas took no snapshot of the others", process.index);
    }
    for process in running.iter_mut() {
        assert!(process.take().expect("running").terminate().success(), "clean exit on SIGTERM");
    }
    assert_eq!(updates(&processes, "user"), valid, "after a clean stop too");
    assert_eq!(updates(&processes, "item"), valid, "after a clean stop too");
    let reports: Vec<Value> = processes.iter().map(|p| p.inspect().expect("inspect")).collect();
    for (index, report) in reports.iter().enumerate() {
        assert_eq!(report["shard"].as_u64(), Some(index as u64), "{report}");
        assert_eq!(report["spec"]["shards"].as_u64(), Some(u64::from(shards)), "{report}");
        let channels: Vec<&str> =
            report["high_water"].as_array().expect("marks").iter().filter_map(|m| m["channel"].as_str()).collect();
        assert!(channels.contains(&"route"), "shard {index} received forwarded events: {report}");
        assert!(channels.contains(&"grads"), "shard {index} received gradients: {report}");
    }
    let events_applied: u64 = reports.iter().filter_map(|r| r["events_applied"].as_u64()).sum();
    assert_eq!(events_applied, valid, "every valid event trained once, on its user's shard");
}

#[test]
fn two_shards_survive_sigkills_exactly_once() {
    sigkills_of_random_shards_never_lose_or_repeat_an_update(2);
}

#[test]
fn three_shards_survive_sigkills_exactly_once() {
    sigkills_of_random_shards_never_lose_or_repeat_an_update(3);
}

#[test]
fn a_sharded_model_needs_a_shard_within_its_count() {
    let run = |args: &[&str]| {
        Command::new(BIN).args(["run", "--check"]).args(args).env("FRESHET_MODEL__SHARDS", "3").output().expect("run")
    };
    let missing = run(&[]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("--shard") && stderr.contains("model.shards is 3"), "{stderr}");
    let beyond = run(&["--shard", "3"]);
    assert!(String::from_utf8_lossy(&beyond.stderr).contains("0 to 2"), "{}", String::from_utf8_lossy(&beyond.stderr));
    let fine = run(&["--shard", "2"]);
    assert!(fine.status.success(), "{}", String::from_utf8_lossy(&fine.stderr));
    let checked: Value = serde_json::from_slice(&fine.stdout).expect("json");
    assert_eq!(checked["shard"], 2);
}
