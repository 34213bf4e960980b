//! Flag parsers shared by subcommands; their errors name the flag through clap.

use std::path::PathBuf;

use freshet_kafka::KafkaConfig;

use crate::config::{FreshetConfig, ModelName};

/// The configuration file and the flags that override it, shared by the
/// commands that read it. Flags win over the environment, which wins over the file.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file (TOML); see deploy/freshet.toml.
    #[arg(long, env = "FRESHET_CONFIG")]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides kafka.bootstrap).
    #[arg(long, env = "FRESHET_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Model name (overrides name).
    #[arg(long, env = "FRESHET_MODEL")]
    model: Option<String>,
}

impl ConfigArgs {
    /// The file (or the defaults), the environment overrides, then these flags; not yet checked.
    pub fn load(&self) -> anyhow::Result<FreshetConfig> {
        let mut config = FreshetConfig::load(self.config.as_deref())?;
        if let Some(bootstrap) = &self.bootstrap {
            config.kafka.bootstrap = bootstrap.clone();
        }
        if let Some(model) = &self.model {
            config.name = ModelName(model.clone());
        }
        Ok(config)
    }
}

/// Kafka client settings given as repeated `--kafka key=value` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaSettings {
    /// Extra librdkafka client setting, `key=value` (repeatable), e.g. `security.protocol=SASL_SSL`.
    #[arg(long = "kafka", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub settings: Vec<(String, String)>,
}

impl KafkaSettings {
    /// A connection to `bootstrap` with these settings.
    pub fn config(&self, bootstrap: &str) -> KafkaConfig {
        KafkaConfig { bootstrap: bootstrap.to_owned(), settings: self.settings.iter().cloned().collect() }
    }
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// A share between 0 and 1.
pub fn parse_share(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&value) { Ok(value) } else { Err("must be between 0 and 1".to_owned()) }
}

/// A strictly positive count.
pub fn parse_positive(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be positive".to_owned()),
        Ok(value) => Ok(value),
        Err(e) => Err(e.to_string()),
    }
}
