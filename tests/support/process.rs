//! Process-level helpers for the `freshet` binary's tests: a configuration
//! for test topics, a running process with its log lines, `inspect`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
[consumer]
bootstrap = "{bootstrap}"
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
listen = "127.0.0.1:0"
{extra}
"#,
        name = unique("model"),
        group = unique("g"),
        clicks = topics.clicks,
        ratings = topics.ratings,
        dlq = topics.dlq,
        checkpoint = dir.join("checkpoint").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A running `freshet` process whose stderr lines arrive on a channel.
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `BIN ARGS PATH`, e.g. `freshet run --config FILE`.
    pub fn start(bin: &str, args: &[&str], path: &Path) -> Running {
        let mut child = Command::new(bin)
            .args(args)
            .arg(path)
            .env("RUST_LOG", "info,freshet_checkpoint=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn freshet run");
        let stderr = child.stderr.take().expect("stderr");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// Waits for the `n`-th stderr line containing `needle`.
    pub fn wait_for(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        self.wait_for_line(needle, n, timeout).is_some()
    }

    /// The `n`-th stderr line containing `needle`, waiting for it.
    pub fn wait_for_line(&self, needle: &str, n: usize, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => {
                    seen += 1;
                    if seen == n {
                        return Some(line);
                    }
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
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

/// The `address=host:port` field of a log line.
pub fn logged_address(line: &str) -> Option<String> {
    let start = line.find("address=")? + "address=".len();
    Some(line[start..].split_whitespace().next()?.to_owned())
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}
