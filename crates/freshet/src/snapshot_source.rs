//! Flags naming a model's snapshot topic, shared by `serve` and `subscribe`.

use freshet_subscriber::SubscriberConfig;

use crate::cli_args::{ConfigArgs, KafkaSettings};
use crate::config::FreshetConfig;

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
        self.resolve_with_config().map(|(subscriber, _)| subscriber)
    }

    /// The subscriber's settings and the whole configuration they come from.
    pub fn resolve_with_config(&self) -> anyhow::Result<(SubscriberConfig, FreshetConfig)> {
        let mut config = self.config.load()?;
        if let Some(topic) = &self.topic {
            config.publisher.topic = Some(topic.clone());
        }
        config.kafka.settings.extend(self.kafka.settings.iter().cloned());
        config.check()?;
        let subscriber = SubscriberConfig {
            kafka: config.kafka.clone(),
            topic: config.publisher.topic_for(&config.name.0),
            top_k_candidates: config.serve.top_k_candidates,
            read_ahead: config.serve.read_ahead,
        };
        Ok((subscriber, config))
    }
}
