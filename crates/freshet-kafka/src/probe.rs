//! Whether the Kafka cluster answers: a thread asks it for metadata every
//! second, for the readiness of `freshet run` and `freshet serve`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

use crate::KafkaConfig;

/// How often the cluster is asked.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long one metadata request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The newest answer of a [`ClusterProbe`]; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ClusterStatus(Arc<AtomicBool>);

impl ClusterStatus {
    /// Whether the newest metadata request was answered (with at least one
    /// broker); false before the first answer.
    pub fn answers(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Records an answer (or its absence); whether it changed.
    fn set(&self, answered: bool) -> bool {
        self.0.swap(answered, Ordering::Relaxed) != answered
    }
}

/// The thread that keeps a [`ClusterStatus`] current; it stops (within a
/// request's timeout) when this is dropped.
#[derive(Debug)]
pub struct ClusterProbe {
    status: ClusterStatus,
    stop: Arc<AtomicBool>,
}

impl ClusterProbe {
    /// Starts asking the cluster `kafka` names; `on_change` runs on the
    /// probe's thread when the answer changes (to log it).
    pub fn start(kafka: &KafkaConfig, on_change: impl Fn(bool) + Send + 'static) -> Result<Self, KafkaError> {
        let client: BaseConsumer = kafka.client().create()?;
        let (status, stop) = (ClusterStatus::default(), Arc::new(AtomicBool::new(false)));
        let (writer, stopping) = (status.clone(), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("freshet-cluster-probe".to_owned())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    let answered = client.fetch_metadata(None, TIMEOUT).is_ok_and(|m| !m.brokers().is_empty());
                    if writer.set(answered) {
                        on_change(answered);
                    }
                    std::thread::sleep(INTERVAL);
                }
            })
            .map_err(|error| KafkaError::ClientCreation(format!("starting the cluster probe: {error}")))?;
        Ok(ClusterProbe { status, stop })
    }

    /// The newest answer, for readers on other threads.
    pub fn status(&self) -> ClusterStatus {
        self.status.clone()
    }
}

impl Drop for ClusterProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_sees_a_cluster_come_and_go() {
        let cluster = rdkafka::mocking::MockCluster::new(1).expect("a mock cluster");
        let (changes, changed) = std::sync::mpsc::channel();
        let probe = ClusterProbe::start(&KafkaConfig::new(cluster.bootstrap_servers()), move |answers| {
            let _ = changes.send(answers);
        })
        .expect("probe");
        let wait = Duration::from_secs(60);
        assert_eq!(changed.recv_timeout(wait), Ok(true), "the cluster answers");
        assert!(probe.status().answers());
        drop(cluster);
        assert_eq!(changed.recv_timeout(wait), Ok(false), "a cluster that is gone does not answer");
        assert!(!probe.status().answers());
    }

    #[test]
    fn a_status_reports_changes_only() {
        let status = ClusterStatus::default();
        assert!(!status.answers());
        assert!(status.set(true));
        assert!(!status.set(true));
        assert!(status.answers());
        assert!(status.set(false));
    }
}
