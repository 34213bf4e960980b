//! Errors of connecting and creating topics.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use thiserror::Error;

/// Whether a transactional producer's epoch was taken by a newer producer
/// of its transactional id (another instance took over).
pub fn is_fenced(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
    )
}

/// Why a Kafka client could not be set up.
#[derive(Debug, Error)]
pub enum KafkaSetupError {
    /// The client could not be created or an admin call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The cluster cannot be reached or refuses the credentials.
    #[error("cannot connect to Kafka at {bootstrap}: {message}")]
    Connect {
        /// The bootstrap servers.
        bootstrap: String,
        /// What went wrong.
        message: String,
    },
    /// Creating a topic failed.
    #[error("topic {topic}: {message}")]
    Topic {
        /// The topic.
        topic: String,
        /// What went wrong.
        message: String,
    },
}
