//! SASL against the real broker: `deploy/kafka/kafka.sh` opens a
//! SASL_PLAINTEXT listener (PLAIN, development user `freshet`) beside the
//! plaintext one. Pass-through Kafka settings get freshet through it, a wrong
//! password is refused, and the password never shows in output or logs.

use std::process::{Command, Output};

use freshet_e2e::{bootstrap, unique};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_freshet");
const PASSWORD: &str = "freshet-secret";

/// The SASL listener's address (`FRESHET_KAFKA_SASL_BOOTSTRAP`, default port 9094).
fn sasl_bootstrap() -> String {
    std::env::var("FRESHET_KAFKA_SASL_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9094".to_owned())
}

fn sasl_flags(password: &str) -> Vec<String> {
    ["security.protocol=SASL_PLAINTEXT", "sasl.mechanisms=PLAIN", "sasl.username=freshet"]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("sasl.password={password}")])
        .flat_map(|setting| ["--kafka".to_owned(), setting])
        .collect()
}

fn freshet(args: &[String]) -> Output {
    Command::new(BIN).args(args).env("RUST_LOG", "debug").output().expect("run freshet")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn sasl_plaintext_carries_events_and_a_wrong_password_is_refused() {
    bootstrap(); // the broker is up
    let base = unique("sasl");
    let (clicks, ratings, dlq) = (format!("{base}.clicks"), format!("{base}.ratings"), format!("{base}.dlq"));
    let mut produce: Vec<String> = ["produce", "synth", "--events", "2000", "--bootstrap", &sasl_bootstrap()]
        .into_iter()
        .chain(["--clicks-topic", &clicks, "--ratings-topic", &ratings])
        .map(str::to_owned)
        .collect();
    produce.extend(sasl_flags(PASSWORD));
    let produced = freshet(&produce);
    assert!(produced.status.success(), "{}", text(&produced));
    assert!(!text(&produced).contains(PASSWORD), "the password leaked into the output");

    let mut consume: Vec<String> = ["consume", "--json", "--idle-exit-ms", "2000", "--bootstrap", &sasl_bootstrap()]
        .into_iter()
        .chain(["--topics", &format!("{clicks},{ratings}"), "--dlq-topic", &dlq, "--group", &base])
        .map(str::to_owned)
        .collect();
    consume.extend(sasl_flags(PASSWORD));
    let consumed = freshet(&consume);
    assert!(consumed.status.success(), "{}", text(&consumed));
    let summary: Value = serde_json::from_slice(&consumed.stdout).expect("a JSON summary");
    assert_eq!(summary["valid"].as_u64(), Some(2000), "{summary}");
    assert!(!text(&consumed).contains(PASSWORD), "the password leaked into the output or logs");

    let mut refused: Vec<String> = ["produce", "synth", "--events", "10", "--bootstrap", &sasl_bootstrap()]
        .into_iter()
        .map(str::to_owned)
        .collect();
    refused.extend(sasl_flags("wrong-password"));
    let refused = freshet(&refused);
    assert!(!refused.status.success(), "a wrong password must fail");
    assert!(text(&refused).contains("Authentication"), "{}", text(&refused));
}

#[test]
fn run_check_never_prints_secrets() {
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("freshet.toml");
    std::fs::write(&config, format!("[kafka]\n\"sasl.password\" = \"{PASSWORD}\"\n")).expect("write");
    let output = Command::new(BIN)
        .args(["run", "--check", "--config"])
        .arg(&config)
        .env("FRESHET_PUBLISHER__KAFKA__SSL_KEY_PASSWORD", "another-secret")
        .env("FRESHET_ADMIN__ENABLED", "true")
        .env("FRESHET_ADMIN__TOKEN", "the-admin-token-secret")
        .env("RUST_LOG", "debug")
        .output()
        .expect("run --check");
    assert!(output.status.success(), "{}", text(&output));
    let shown = text(&output);
    for secret in [PASSWORD, "another-secret", "the-admin-token-secret"] {
        assert!(!shown.contains(secret), "{secret} shown: {shown}");
    }
    assert_eq!(
        serde_json::from_slice::<Value>(&output.stdout).expect("json")["config"]["admin"]["token"],
        "<redacted>"
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(printed["config"]["kafka"]["sasl.password"], "<redacted>");
    assert_eq!(printed["config"]["publisher"]["kafka"]["ssl.key.password"], "<redacted>");
}
