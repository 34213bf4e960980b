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

/// The model name a [`write_config`] file sets.
pub fn model_name(config: &Path) -> String {
    let text = std::fs::read_to_string(config).expect("the configuration");
    let line = text.lines().find(|line| line.starts_with("name = ")).expect("a name line");
    line["name = ".len()..].trim_matches('"').to_owned()
}

/// The snapshot topic of the model a [`write_config`] file names.
pub fn snapshot_topic(config: &Path) -> String {
    freshet_core::snapshot::default_snapshot_topic(&model_name(config))
}

/// Sets the model's dimension in a [`write_config`] file.
pub fn set_dim(config: &Path, dim: usize) {
    let text = std::fs::read_to_string(config).expect("the configuration");
    std::fs::write(config, text.replace("dim = 8\n", &format!("dim = {dim}\n"))).expect("the configuration");
}

/// Whether `run`'s `/metrics` at `metrics` shows its newest checkpoint published.
pub fn published_all(metrics: &str) -> bool {
    let published = metric(metrics, "freshet_snapshot_version");
    published.is_some() && published == metric(metrics, "freshet_checkpoint_version")
}

/// Whether `run` at `metrics` applied `valid` events and published its newest checkpoint.
pub fn trained_and_published(metrics: &str, valid: usize) -> bool {
    metric(metrics, "freshet_events_applied") == Some(valid as f64) && published_all(metrics)
}

/// A running `freshet` process; its stderr goes to a `.log` file beside its
/// configuration (at `RUST_LOG=info`, or `FRESHET_TEST_LOG` when set). When
/// a test fails, the end of that log is printed with the failure.
pub struct Running {
    child: Child,
    /// What was started, for the failure output.
    command: String,
    log: PathBuf,
}

impl Running {
    /// Starts `BIN ARGS PATH`, e.g. `freshet run --config FILE`.
    pub fn start(bin: &str, args: &[&str], path: &Path) -> Running {
        Running::start_with_env(bin, args, path, &[])
    }

    /// [`Running::start`] with extra environment variables.
    pub fn start_with_env(bin: &str, args: &[&str], path: &Path, env: &[(&str, &str)]) -> Running {
        let mut all: Vec<&str> = args.to_vec();
        let path = path.to_str().expect("a UTF-8 path");
        all.push(path);
        Running::spawn(bin, &all, Path::new(path).parent().unwrap_or(Path::new(".")), env)
    }

    /// Starts `BIN ARGS` with its stderr in a `.log` file in `log_dir`.
    pub fn spawn(bin: &str, args: &[&str], log_dir: &Path, env: &[(&str, &str)]) -> Running {
        let log = log_dir.join(format!("{}.log", unique("freshet")));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            // FRESHET_TEST_LOG overrides the level, for a closer look at a failing test.
            .env("RUST_LOG", std::env::var("FRESHET_TEST_LOG").unwrap_or_else(|_| "info".to_owned()))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn freshet");
        Running { child, command: args.join(" "), log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal}");
    }

    /// Waits for the process to exit on its own.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
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

/// How many lines of a process's log a failing test prints.
const LOG_TAIL_LINES: usize = 60;

impl Drop for Running {
    /// A test that fails mid-way leaves no process behind, and prints the end
    /// of the process's log (the temporary directory it is in goes away).
    fn drop(&mut self) {
        let exited = match self.child.try_wait() {
            Ok(None) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
            Ok(Some(status)) => Some(status),
            Err(_) => None,
        };
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            let how = exited.map_or_else(|| "killed by the test".to_owned(), |status| format!("had exited: {status}"));
            eprintln!("--- freshet {} ({how}): the last {} lines of its log ---", self.command, tail.len());
            for line in tail {
                eprintln!("{line}");
            }
        }
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

/// The value of the series of Prometheus metric `name` at `address` whose
/// labels contain `label` (for example `shard="1"`), if there is one.
pub fn metric_labelled(address: &str, name: &str, label: &str) -> Option<f64> {
    let (status, text) = get(address, "/metrics");
    if status != 200 {
        return None;
    }
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with('{'))
        .find(|line| line.split_once('}').is_some_and(|(labels, _)| labels.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
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

/// A plain HTTP/1.1 request with `Authorization: Bearer <token>` (none when
/// `token` is `None`): status code and body.
pub fn with_token(address: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let authorization = token.map(|token| format!("Authorization: Bearer {token}\r\n")).unwrap_or_default();
    request(
        address,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
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
