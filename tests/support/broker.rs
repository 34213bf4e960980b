//! A Kafka broker of a test's own, from `deploy/kafka/kafka.sh` on free
//! ports, for fault tests that kill it (SIGKILL) and start it again on the
//! same data without disturbing the shared broker other tests use.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::process::free_port;

/// A running private broker; stopped and its data deleted when dropped.
pub struct PrivateBroker {
    port: u16,
    controller_port: u16,
    sasl_port: u16,
    properties: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/kafka.sh")
}

impl PrivateBroker {
    /// Starts a fresh broker (a few seconds: a JVM starts).
    pub fn start() -> anyhow::Result<Self> {
        PrivateBroker::with_properties(&[])
    }

    /// [`PrivateBroker::start`] with extra `server.properties` lines
    /// (`key=value`), e.g. a fast retention check.
    pub fn with_properties(properties: &[&str]) -> anyhow::Result<Self> {
        let mut failures = Vec::new();
        // A port free a moment ago may be taken by the time the JVM binds it: try other ports once.
        for _ in 0..2 {
            let mut ports = Vec::new();
            while ports.len() < 3 {
                let port = free_port();
                if port != 0 && !ports.contains(&port) {
                    ports.push(port);
                }
            }
            let broker = PrivateBroker {
                port: ports[0],
                controller_port: ports[1],
                sasl_port: ports[2],
                properties: properties.join("\n"),
            };
            match broker.run(&["start", "--fresh"]) {
                Ok(()) => return Ok(broker),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        bail!("no private broker started: {failures:?}")
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills it with SIGKILL and waits until it is gone.
    pub fn kill9(&self) -> anyhow::Result<()> {
        self.run(&["kill9"])
    }

    /// Starts it again on the same data and waits until it answers.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.run(&["start"])
    }

    /// Limits every client's produce rate to `bytes_per_second` (a default
    /// client quota; kept across restarts), so a large write takes seconds.
    pub fn limit_produce_rate(&self, bytes_per_second: u64) -> anyhow::Result<()> {
        let quota = format!("producer_byte_rate={bytes_per_second}");
        self.run(&["configs", "--alter", "--add-config", &quota, "--entity-type", "clients", "--entity-default"])
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new("bash")
            .arg(script())
            .args(args)
            .env("FRESHET_KAFKA_PORT", self.port.to_string())
            .env("FRESHET_KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("FRESHET_KAFKA_SASL_PORT", self.sasl_port.to_string())
            .env("FRESHET_KAFKA_HEAP", "512m")
            .env("FRESHET_KAFKA_EXTRA_PROPERTIES", &self.properties)
            .output()
            .context("running kafka.sh")?;
        if !output.status.success() {
            bail!("kafka.sh {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.run(&["stop", "--clean"]);
    }
}
