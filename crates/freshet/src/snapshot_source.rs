//! Flags naming a model's snapshot topic, shared by `serve` and `subscribe`.

use freshet_subscriber::SubscriberConfig;

use crate::cli_args::{ConfigArgs, KafkaSettings};

/// Where a model's snapshots are: from the `freshet run` configuration file,
/// overridden by flags (which the environment can set).
#[derive(Debug, clap::Args)]
pub struct SnapshotSourceArgs {
    /// The `freshet run` configuration (bootstrap servers, Kafka settings,
    /// model name and snapshot topic).
    #[command(flatten)]
    config: ConfigArgs,
    /// Snapshot topic (default: the configured one, else `freshet.snapshots.<model>`).
    #[arg(long, env = "FRESHET_SNAPSHOT_TOPIC")]
    topic: Option<String>,
    #[command(flatten)]
    kafka: KafkaSettings,
}

impl SnapshotSourceArgs {
    /// The subscriber's settings.
    pub fn resolve(&self) -> anyhow::Result<SubscriberConfig> {
        let mut config = self.config.load()?;
        if let Some(topic) = &self.topic {
            config.publisher.topic = Some(topic.clone());
        }
        config.consumer.kafka.extend(self.kafka.to_map());
        config.check()?;
        Ok(SubscriberConfig {
            bootstrap: config.consumer.bootstrap,
            kafka: config.consumer.kafka,
            topic: config.publisher.topic_for(&config.name.0),
        })
    }
}
