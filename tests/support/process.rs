//! Process-level helpers for the `freshet` binary's tests: a configuration
//! for test topics, a running process, its metrics and health endpoint,
//! `inspect`. Tests wait on state (these endpoints, `inspect`), never on
//! log text; a process's log goes to a file beside its configuration.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TestTopics, unique};
use serde_json::Value;

/// A configuration for `topics` with a fresh model name, group and
/// checkpoint directory under `dir`; `extra` TOML is appended.
pub fn write_config(dir: &Path, bootstrap: &str, topics: &TestTopics, extra: &str) -> PathBuf {
    let path = dir.join("freshet.toml");
    let text = format!(
        r#"
name = "{name}"
[kafka]
bootstrap = "{bootstrap}"
[consumer]
group_id = "{group}"
topics = ["{clicks}", "{ratings}"]
dlq_topic = "{dlq}"
batch_max_messages = 200
[model]
dim = 8
[trainer]
min_count = 1
[checkpoint]
dir = "{checkpoint}"
interval_ms = 150
interval_events = 3000
[metrics]
listen = "127.0.0.1:{port}"
{extra}
"#,
        name = unique("model"),
        port = free_port(),
        group = unique("g"),
        clicks = topics.clicks,
        ratings = topics.ratings,
        dlq = topics.dlq,
        checkpoint = dir.join("checkpoint").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// The metrics and health endpoint (`host:port`) a [`write_config`] file sets.
pub fn metrics_address(config: &Path) -> String {
    let text = std::fs::read_to_string(config).expect("the configuration");
    let line = text.lines().find(|line| line.starts_with("listen = ")).expect("a metrics.listen line");
    line["listen = ".len()..].trim_matches('"').to_owned()
}

/// A running `freshet` process; its stderr goes to a `.log` file beside its configuration.
pub struct Running {
    child: Child,
}

impl Running {
    /// Starts `BIN ARGS PATH`, e.g. `freshet run --config FILE`.
    pub fn start(bin: &str, args: &[&str], path: &Path) -> Running {
        let log_dir = path.parent().unwrap_or(Path::new("."));
        let log = std::fs::File::create(log_dir.join(format!("{}.log", unique("freshet")))).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .arg(path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn freshet");
        Running { child }
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Stops the process with SIGTERM and waits for it.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("send SIGTERM");
        self.child.wait().expect("wait")
    }
}

/// Polls `condition` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sum over every series of Prometheus metric `name` at `address`'s
/// `/metrics`, if it answers and has the metric.
pub fn metric(address: &str, name: &str) -> Option<f64> {
    let (status, text) = get(address, "/metrics");
    if status != 200 {
        return None;
    }
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// `BIN inspect --json` of a checkpoint, if it answers.
pub fn inspect(bin: &str, checkpoint: &Path) -> Option<Value> {
    let output = Command::new(bin).args(["inspect", "--json", "--checkpoint"]).arg(checkpoint).output().ok()?;
    output.status.success().then(|| serde_json::from_slice(&output.stdout).ok()).flatten()
}

/// A plain HTTP/1.1 GET: status code (0 when nothing answers) and body.
pub fn get(address: &str, path: &str) -> (u16, String) {
    request(address, &format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"))
}

/// A plain HTTP/1.1 POST of a JSON `body`: status code and body.
pub fn post_json(address: &str, path: &str, body: &str) -> (u16, String) {
    request(
        address,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn request(address: &str, text: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(address) else { return (0, String::new()) };
    let _ = stream.write_all(text.as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default())
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}
