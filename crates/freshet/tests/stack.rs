//! The docker-compose stack, checked without Docker: the compose file parses,
//! its freshet command lines equal deploy/local-stack.sh's and the binary
//! accepts each of them with the service's environment; and the local stack
//! (the same processes) turns produced events into changed recommendations.
//! The Kubernetes manifests' command lines and configuration pass the same check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use freshet_e2e::process::{free_port, get};
use freshet_e2e::{bootstrap, unique};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_freshet");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn local_stack(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    Command::new("bash")
        .arg(repo().join("deploy/local-stack.sh"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run local-stack.sh")
}

/// `service: command` lines from `local-stack.sh commands`.
fn local_stack_commands() -> BTreeMap<String, String> {
    let output = local_stack(&["commands"], &[]);
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once(": ").map(|(s, c)| (s.to_owned(), c.to_owned())))
        .collect()
}

#[test]
fn the_compose_file_agrees_with_the_local_stack_and_the_binary() {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("docker-compose.yml");
    let mut compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("docker-compose.yml parses");
    compose.apply_merge().expect("merge keys resolve");
    let services = compose["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().filter_map(|k| k.as_str()).collect();
    for needed in ["kafka", "kafka-init", "trainer-0", "trainer-1", "producer", "serve", "prometheus", "grafana"] {
        assert!(names.contains(&needed), "service {needed} missing: {names:?}");
    }
    for monitoring in ["prometheus", "grafana"] {
        assert_eq!(compose["services"][monitoring]["profiles"][0].as_str(), Some("monitoring"));
    }
    assert!(compose["services"]["kafka"]["image"].as_str().is_some_and(|i| i.starts_with("apache/kafka")));

    let expected = local_stack_commands();
    let host_config = repo().join("deploy/freshet.toml");
    for (service, local) in &expected {
        let spec = &compose["services"][service.as_str()];
        assert_eq!(spec["image"].as_str(), Some("freshet:latest"), "{service}");
        let words: Vec<String> = spec["command"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{service}: command is a list"))
            .iter()
            .map(|w| w.as_str().expect("a word").to_owned())
            .collect();
        let normalised =
            words.join(" ").replace("/etc/freshet/freshet.toml", "CONFIG").replace("0.0.0.0:8080", "LISTEN");
        assert_eq!(&normalised, local, "{service}: compose and local-stack.sh differ");

        // The binary accepts the command line with the service's environment.
        let environment = spec["environment"].as_mapping().expect("environment");
        let mut validate = Command::new(BIN);
        validate
            .arg("--validate")
            .args(words.iter().map(|w| w.replace("/etc/freshet/freshet.toml", &host_config.to_string_lossy())));
        for (key, value) in environment {
            let (key, value) = (key.as_str().expect("key"), value.as_str().expect("string value"));
            validate.env(key, value.replace("/etc/freshet/freshet.toml", &host_config.to_string_lossy()));
        }
        let output = validate.output().expect("freshet --validate");
        assert!(output.status.success(), "{service}: {}", String::from_utf8_lossy(&output.stderr));
    }
    let bad = Command::new(BIN).args(["--validate", "serve", "--listen", "nowhere"]).output().expect("run");
    assert!(!bad.status.success(), "a bad command line is refused");
}

#[test]
fn the_kubernetes_manifests_run_commands_the_binary_accepts() {
    let read = |name: &str| -> serde_yaml::Value {
        let text = std::fs::read_to_string(repo().join("deploy/k8s").join(name)).expect("manifest");
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name} parses: {e}"))
    };
    let work = tempfile::tempdir().expect("tempdir");
    let config = work.path().join("freshet.toml");
    let embedded =
        read("configmap.yaml")["data"]["freshet.toml"].as_str().expect("freshet.toml in the ConfigMap").to_owned();
    std::fs::write(&config, &embedded).expect("write");
    let shards =
        toml::from_str::<toml::Value>(&embedded).expect("the ConfigMap's freshet.toml parses")["model"]["shards"]
            .as_integer()
            .unwrap_or(1);
    let trainers = read("trainer-statefulset.yaml");
    assert_eq!(trainers["spec"]["replicas"].as_i64(), Some(shards), "one trainer pod per shard");
    for (manifest, kind) in [("trainer-statefulset.yaml", "StatefulSet"), ("serve-deployment.yaml", "Deployment")] {
        let workload = read(manifest);
        assert_eq!(workload["kind"].as_str(), Some(kind), "{manifest}");
        let container = &workload["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<String> = container["args"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{manifest}: args"))
            .iter()
            .map(|w| w.as_str().expect("a word").replace("/etc/freshet/freshet.toml", &config.to_string_lossy()))
            .collect();
        // Every pod of the workload: the ordinal stands for the pod-index label.
        let pods = if kind == "StatefulSet" { shards } else { 1 };
        for ordinal in 0..pods {
            let mut validate = Command::new(BIN);
            validate.arg("--validate").args(&args);
            for variable in container["env"].as_sequence().into_iter().flatten() {
                let name = variable["name"].as_str().expect("a variable's name");
                let from_label = variable["valueFrom"]["fieldRef"]["fieldPath"].as_str();
                let value = match (variable["value"].as_str(), from_label) {
                    (Some(value), _) => value.to_owned(),
                    (None, Some("metadata.labels['apps.kubernetes.io/pod-index']")) => ordinal.to_string(),
                    _ => continue,
                };
                validate.env(name, value);
            }
            let output = validate.output().expect("freshet --validate");
            assert!(output.status.success(), "{manifest}, pod {ordinal}: {}", String::from_utf8_lossy(&output.stderr));
        }
    }
    let claim = &read("trainer-statefulset.yaml")["spec"]["volumeClaimTemplates"][0];
    assert!(claim["spec"]["resources"]["requests"]["storage"].as_str().is_some(), "the trainer has a volume claim");
}

#[test]
fn the_local_stack_turns_new_events_into_new_recommendations() {
    let bootstrap = bootstrap();
    let work = tempfile::tempdir().expect("tempdir");
    let (serve_port, metrics_port) = (free_port(), free_port());
    let model = unique("stack");
    let env = [
        ("FRESHET_BIN", BIN.to_owned()),
        ("FRESHET_STACK_DIR", work.path().display().to_string()),
        ("FRESHET_STACK_SERVE_PORT", serve_port.to_string()),
        ("FRESHET_STACK_METRICS_PORT", metrics_port.to_string()),
        ("FRESHET_MODEL", model.clone()),
        ("FRESHET_CONSUMER__GROUP_ID", model.clone()),
    ];
    let started = local_stack(&["start"], &env);
    let stop = || local_stack(&["stop"], &env);
    if !started.status.success() {
        stop();
        panic!("local-stack start failed: {}", String::from_utf8_lossy(&started.stderr));
    }
    let address = format!("127.0.0.1:{serve_port}");
    let user = unique("alice");
    let ask = || -> Value {
        let (status, body) = get(&address, &format!("/recommend?user={user}&k=5"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    };
    let before = ask();

    // The user rates a few items; the stack trains, publishes and serves them.
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("producer");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for (n, item) in ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"].iter().cycle().take(64).enumerate() {
            let rating = if n % 2 == 0 { 5.0 } else { 0.5 };
            let event = serde_json::json!({"type": "rating", "user": user, "item": item, "rating": rating,
                "ts": freshet_core::now_ms()});
            let payload = event.to_string();
            let record = FutureRecord::to("freshet.ratings").key(&user).payload(&payload);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("delivered");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let after = loop {
        let now = ask();
        if now["items"] != before["items"] && now["version"].as_u64() > before["version"].as_u64() {
            break now;
        }
        if Instant::now() > deadline {
            stop();
            panic!("recommendations for {user} never changed: before {before}, now {now}");
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(get(&format!("127.0.0.1:{metrics_port}"), "/readyz").0, 200);
    let stopped = stop();
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let status = String::from_utf8_lossy(&local_stack(&["status"], &env).stdout).into_owned();
    // Two trainers (the default two shards), the producer and serve.
    assert_eq!(status.matches(": stopped").count(), 4, "every process stopped: {status}\n{after}");
}
