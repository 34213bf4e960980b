//! Topic creation through the admin API (the broker's auto-creation is off).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::KafkaSetupError;

/// How long [`check_connection`] waits for the cluster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A topic freshet needs, with its partition count and topic-level configs.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// Topic-level settings (`cleanup.policy`, `retention.ms`, ...).
    pub configs: BTreeMap<String, String>,
}

impl TopicSpec {
    /// A topic with default settings.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        TopicSpec { name: name.into(), partitions, replication: 1, configs: BTreeMap::new() }
    }
}

/// Checks that the cluster answers with these settings, failing fast and
/// clearly on refused credentials (SASL/TLS) instead of timing out later.
fn check_connection(kafka: &KafkaConfig) -> Result<(), KafkaSetupError> {
    let connect_error = |message: String| KafkaSetupError::Connect { bootstrap: kafka.bootstrap.clone(), message };
    let probe: BaseConsumer = kafka.client().create()?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while Instant::now() < deadline {
        // Authentication and TLS failures arrive as error events.
        if let Some(Err(error)) = probe.poll(Duration::from_millis(100)) {
            let fatal = matches!(
                error.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::Authentication
                        | RDKafkaErrorCode::SaslAuthenticationFailed
                        | RDKafkaErrorCode::SSL
                )
            );
            if fatal {
                return Err(connect_error(error.to_string()));
            }
        }
        if probe.fetch_metadata(None, Duration::from_millis(500)).is_ok() {
            return Ok(());
        }
    }
    Err(connect_error(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))
}

/// How long a metadata request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

/// The partition count of each of `topics`, in their order (blocking: a
/// metadata request). A topic that does not exist is an error naming it.
pub fn partition_counts(kafka: &KafkaConfig, topics: &[String]) -> Result<Vec<(String, u32)>, KafkaSetupError> {
    let consumer: BaseConsumer = kafka.client().create()?;
    topics
        .iter()
        .map(|topic| {
            let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
            let found = metadata.topics().iter().find(|t| t.name() == topic);
            match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    Ok((topic.clone(), t.partitions().len() as u32))
                }
                _ => Err(KafkaSetupError::Topic { topic: topic.clone(), message: "does not exist".to_owned() }),
            }
        })
        .collect()
}

/// Creates the topics that do not exist yet; existing ones are left as they
/// are. Checks the connection first (`check_connection`).
pub async fn ensure_topics(kafka: &KafkaConfig, specs: &[TopicSpec]) -> Result<(), KafkaSetupError> {
    let owned = kafka.clone();
    tokio::task::spawn_blocking(move || check_connection(&owned)).await.map_err(|error| {
        KafkaSetupError::Connect { bootstrap: kafka.bootstrap.clone(), message: error.to_string() }
    })??;
    let admin: AdminClient<DefaultClientContext> = kafka.client().create()?;
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|spec| {
            spec.configs.iter().fold(
                NewTopic::new(&spec.name, spec.partitions, TopicReplication::Fixed(spec.replication)),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaSetupError::Topic { topic, message: code.to_string() }),
        }
    }
    Ok(())
}
