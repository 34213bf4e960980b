//! The `freshet` command line: `produce synth` and `consume` against the real
//! broker, and flag errors that name the flag.

use std::process::{Command, Output};

use freshet_e2e::{bootstrap, unique};
use serde_json::Value;

fn freshet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_freshet")).args(args).env("RUST_LOG", "warn").output().expect("run freshet")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", String::from_utf8_lossy(&output.stdout)))
}

fn stderr_of(output: &Output) -> String {
    assert!(!output.status.success(), "unexpectedly succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

struct Topics {
    clicks: String,
    ratings: String,
    dlq: String,
}

impl Topics {
    fn new() -> Self {
        let base = unique("cli");
        Topics { clicks: format!("{base}.clicks"), ratings: format!("{base}.ratings"), dlq: format!("{base}.dlq") }
    }

    fn produce(&self, bootstrap: &str, events: u64, seed: u64) -> Value {
        let (events, seed) = (events.to_string(), seed.to_string());
        json_of(&freshet(&[
            "produce",
            "synth",
            "--bootstrap",
            bootstrap,
            "--events",
            &events,
            "--seed",
            &seed,
            "--invalid-rate",
            "0.05",
            "--bincode-share",
            "0.2",
            "--forget-share",
            "0.01",
            "--clicks-topic",
            &self.clicks,
            "--ratings-topic",
            &self.ratings,
            "--partitions",
            "3",
        ]))
    }

    fn consume(&self, bootstrap: &str, group: &str, extra: &[&str]) -> Value {
        let topics = format!("{},{}", self.clicks, self.ratings);
        let mut args = vec![
            "consume",
            "--bootstrap",
            bootstrap,
            "--group",
            group,
            "--idle-exit-ms",
            "1500",
            "--json",
            "--topics",
            &topics,
            "--dlq-topic",
            &self.dlq,
        ];
        args.extend_from_slice(extra);
        json_of(&freshet(&args))
    }
}

#[test]
fn consume_reports_exactly_what_produce_sent() {
    let bootstrap = bootstrap();
    let topics = Topics::new();
    let sent = topics.produce(&bootstrap, 4_000, 7);
    assert_eq!(sent["sent"], 4_000);
    assert_eq!(sent["delivered"], 4_000);
    assert!(sent["invalid"].as_u64().expect("invalid count") > 0);

    let group = unique("g");
    let got = topics.consume(&bootstrap, &group, &[]);
    assert_eq!(got["valid"], sent["valid"]);
    assert_eq!(got["invalid"], sent["invalid"]);
    assert_eq!(got["by_kind"], sent["by_kind"]);
    assert_eq!(got["rejects"], sent["invalid_by_reason"]);
    let last: u64 = got["last_offsets"]
        .as_object()
        .expect("last_offsets")
        .values()
        .flat_map(|partitions| partitions.as_object().expect("partitions").values())
        .map(|offset| offset.as_u64().expect("offset") + 1)
        .sum();
    assert_eq!(last, 4_000, "last offsets account for every message");

    // The group committed what it read: a second run finds nothing new.
    let again = topics.consume(&bootstrap, &group, &[]);
    assert_eq!((again["valid"].as_u64(), again["invalid"].as_u64()), (Some(0), Some(0)));

    // More traffic, read by a new group from the first run's next offsets: exactly the new messages.
    let more = topics.produce(&bootstrap, 1_000, 8);
    let start = got["next_offsets"].to_string();
    let rest = topics.consume(&bootstrap, &unique("g"), &["--start-offsets", &start]);
    assert_eq!(rest["valid"], more["valid"]);
    assert_eq!(rest["invalid"], more["invalid"]);
}

#[test]
fn bad_flags_fail_at_start_naming_the_flag() {
    let cases: [(&[&str], &str); 6] = [
        (&["produce", "synth", "--events", "10", "--invalid-rate", "1.5"], "--invalid-rate"),
        (&["produce", "synth", "--events", "0"], "--events"),
        (&["produce", "synth", "--events", "10", "--kafka", "novalue"], "--kafka"),
        (&["produce", "synth", "--events", "10", "--partitions", "0"], "--partitions"),
        (&["consume", "--json"], "--idle-exit-ms"),
        (&["consume", "--idle-exit-ms", "10", "--start-offsets", "{\"t\":{\"x\":1}}"], "--start-offsets"),
    ];
    for (args, flag) in cases {
        let stderr = stderr_of(&freshet(args));
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}

#[test]
fn bad_consumer_settings_name_the_key() {
    let stderr = stderr_of(&freshet(&["consume", "--idle-exit-ms", "10", "--topics", "a,b", "--dlq-topic", "a"]));
    assert!(stderr.contains("consumer.dlq_topic"), "{stderr}");
    let stderr = stderr_of(&freshet(&["consume", "--idle-exit-ms", "10", "--kafka", "enable.auto.commit=true"]));
    assert!(stderr.contains("kafka.enable.auto.commit"), "{stderr}");
}
