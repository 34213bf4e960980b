//! Flags naming a model's snapshot topic, shared by `serve` and `subscribe`.

use std::path::PathBuf;

use freshet_subscriber::SubscriberConfig;

use crate::cli_args::KafkaSettings;
use crate::config::FreshetConfig;

/// Where a model's snapshots are: from the `freshet run` configuration file,
/// overridden by flags (which the environment can set).
#[derive(Debug, clap::Args)]
pub struct SnapshotSourceArgs {
    /// The `freshet run` configuration file to take the bootstrap servers,
    /// Kafka settings, model name and snapshot topic from.
    #[arg(long, env = "FRESHET_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "FRESHET_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Model name.
    #[arg(long, env = "FRESHET_MODEL")]
    model: Option<String>,
    /// Snapshot topic (default: the configured one, else `freshet.snapshots.<model>`).
    #[arg(long, env = "FRESHET_SNAPSHOT_TOPIC")]
    topic: Option<String>,
    #[command(flatten)]
    kafka: KafkaSettings,
}

impl SnapshotSourceArgs {
    /// The subscriber's settings.
    pub fn resolve(&self) -> anyhow::Result<SubscriberConfig> {
        let mut config = FreshetConfig::load(self.config.as_deref())?;
        if let Some(bootstrap) = &self.bootstrap {
            config.consumer.bootstrap = bootstrap.clone();
        }
        if let Some(model) = &self.model {
            config.name.0 = model.clone();
        }
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
