//! Errors of the Kafka source.

use rdkafka::error::KafkaError;
use thiserror::Error;

/// What can stop the Kafka source.
#[derive(Debug, Error)]
pub enum ConsumerError {
    /// Invalid settings; names the key.
    #[error(transparent)]
    Config(#[from] freshet_core::ConfigError),
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A rejected message could not be written to the dead-letter topic, so
    /// its offset is not acknowledged and it will be read again.
    #[error("dead-letter delivery to {topic} failed: {message}")]
    DeadLetter {
        /// The dead-letter topic.
        topic: String,
        /// The delivery error.
        message: String,
    },
    /// librdkafka gave up on the consumer (a fatal error); the source
    /// replaces it unless it is stopping.
    #[error("the kafka consumer failed for good: {0}")]
    Fatal(KafkaError),
    /// Connecting or creating a topic failed.
    #[error(transparent)]
    Setup(#[from] freshet_kafka::KafkaSetupError),
    /// The consumer thread could not be started.
    #[error("starting the consumer thread: {0}")]
    Spawn(std::io::Error),
    /// The consumer thread did not finish within the shutdown timeout.
    #[error("consumer did not shut down within {0} ms; abandoned")]
    ShutdownTimedOut(u64),
    /// The consumer thread panicked.
    #[error("consumer thread panicked")]
    Panicked,
}
