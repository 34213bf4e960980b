//! Process-level helpers for the `freshet` binary's tests: a configuration
//! for test topics, a running process with its log lines, `inspect`.

use std::io::{BufRead, BufReader};
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
